"""User-facing errors: the CLI prints these as one clear message, never as a traceback."""


class TunelabError(Exception):
    """A mistake the user can fix (bad config, bad data, missing file). Printed without a traceback."""


class ConfigError(TunelabError):
    """The YAML config or a command-line override is invalid."""


class DataError(TunelabError):
    """The input data has problems; the message lists them with file, line and column."""


class Interrupted(TunelabError):
    """Ctrl-C or SIGTERM stopped the work; state was saved. The CLI exits with 128 + `signum` (130 for Ctrl-C,
    143 for SIGTERM), as shells and schedulers expect."""

    def __init__(self, message: str, signum: int = 2):  # 2: SIGINT
        super().__init__(message)
        self.signum = signum
