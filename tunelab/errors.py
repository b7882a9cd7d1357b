"""User-facing errors: the CLI prints these as one clear message, never as a traceback."""


class TunelabError(Exception):
    """A mistake the user can fix (bad config, bad data, missing file). Printed without a traceback."""


class ConfigError(TunelabError):
    """The YAML config or a command-line override is invalid."""


class DataError(TunelabError):
    """The input data has problems; the message lists them with file, line and column."""


class Interrupted(TunelabError):
    """The user pressed Ctrl-C; state was saved. The CLI exits with 130, as shells expect."""
