"""Unlabelled texts to predict on or send to a server: a data file, a .txt file (one text per line), or stdin.

Every text comes back as a non-empty, valid Unicode string; anything else is one DataError naming the
line (or row) and the command's own options, before any model is loaded.
"""

from __future__ import annotations

import codecs
import sys
from dataclasses import dataclass
from pathlib import Path

from tunelab.data.load import FORMATS, SettingNames, Wanted, check_not_utf16, detect_format, load_file
from tunelab.errors import DataError

TEXT_FORMATS = FORMATS.replace(" or ", ", ") + " or .txt (one text per line)"
MAX_SHOWN = 10


@dataclass
class Texts:
    texts: list[str]
    pairs: list[str] | None
    where: list[int]  # the line (or row) each text came from

    def __len__(self) -> int:
        return len(self.texts)


def read_texts(source: str | Path, text_column: str = "text", pair_column: str | None = None,
               option: str = "--input", column_option: str = "--text-column") -> Texts:
    """Texts (and their pairs) from a file or '-' (stdin, one text per line). `option` names the input in errors."""
    if str(source) == "-":
        return _lines(sys.stdin.buffer.read(), "stdin")
    path = Path(source)
    if not path.exists():
        raise DataError(f"{option}: {path} does not exist")
    if path.is_dir():
        raise DataError(f"{option}: {path} is a folder; give a file: {TEXT_FORMATS}")
    if path.suffix.lower() == ".txt":
        try:
            return _lines(path.read_bytes(), str(path))
        except OSError as exc:
            raise DataError(f"{path}: cannot read file ({exc.strerror})") from None
    try:
        fmt = detect_format(path)
    except DataError:
        raise DataError(f"{option}: cannot tell the format of {path} from its extension; use {TEXT_FORMATS}") from None
    from tunelab.data.validate import validate

    wanted = Wanted(text_column, None, pair_column, None)
    cols = load_file(path, wanted, fmt, "utf-8", SettingNames(columns=column_option, encoding=None))
    rows, problems = validate(cols, wanted, None)
    if problems:
        shown = "\n".join(f"  {p}" for p in problems[:MAX_SHOWN])
        more = f"\n  ... and {len(problems) - MAX_SHOWN} more" if len(problems) > MAX_SHOWN else ""
        raise DataError(f"{path}: {len(problems)} row(s) hold no text to predict on:\n{shown}{more}")
    if not len(rows):
        raise DataError(f"{path}: no rows; nothing to predict")
    return Texts(rows.text, rows.text_pair, rows.where)


def _lines(raw: bytes, name: str) -> Texts:
    """One text per non-blank line of UTF-8 bytes; an undecodable line is an error naming it."""
    check_not_utf16(name, raw, "utf-8", SettingNames(encoding=None))
    if raw.startswith(codecs.BOM_UTF8):
        raw = raw[len(codecs.BOM_UTF8):]
    texts, where = [], []
    for number, line in enumerate(raw.split(b"\n"), start=1):
        try:
            text = line.decode("utf-8").rstrip("\r")
        except UnicodeDecodeError as exc:
            raise DataError(f"{name}:line {number}: bytes that are not valid UTF-8 at byte {exc.start + 1} of the "
                            "line; save the text as UTF-8") from None
        if text.strip():
            texts.append(text)
            where.append(number)
    if not texts:
        raise DataError(f"{name}: no text (every line is blank); nothing to predict")
    return Texts(texts, None, where)


__all__ = ["Texts", "read_texts", "TEXT_FORMATS"]
