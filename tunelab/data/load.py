"""Read a labelled file (CSV, TSV, JSONL, JSON, Parquet) into columns, keeping where each row came from.

Loaders never raise on a user's data mistake: what they cannot read becomes a `Problem` naming the
file, the line (as an editor numbers it) and the column. A new format is one function in `LOADERS`.
"""

from __future__ import annotations

import bisect
import codecs
import csv
import gzip
import io
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

from tunelab.errors import DataError

csv.field_size_limit(sys.maxsize)  # long texts are legal; length limits are a cleaning choice


@dataclass
class Problem:
    """One thing wrong with the input. `where` is a line (CSV/JSONL), an item (JSON) or a row (Parquet)."""

    file: str
    where: int | None
    column: str | None
    reason: str  # short machine key: empty_text, unknown_label, malformed, ...
    message: str
    unit: str = "line"

    def __str__(self) -> str:
        place = self.file if self.where is None else f"{self.file}:{self.unit} {self.where}"
        col = f": column '{self.column}'" if self.column else ""
        return f"{place}{col}: {self.message}"

    def to_dict(self) -> dict:
        return {"file": self.file, self.unit: self.where, "column": self.column, "reason": self.reason, "message": self.message}


@dataclass
class Columns:
    """The wanted columns of one file, as raw values (str, list, number or None when absent)."""

    file: str
    unit: str
    where: list[int] = field(default_factory=list)
    text: list = field(default_factory=list)
    text_pair: list = field(default_factory=list)
    label: list = field(default_factory=list)
    ids: list = field(default_factory=list)
    row_problems: dict[int, list[Problem]] = field(default_factory=dict)  # row index -> problems
    file_problems: list[Problem] = field(default_factory=list)  # lines that could not become rows
    empty_rows: int = 0  # blank lines / rows with every field empty: dropped silently, counted

    def __len__(self) -> int:
        return len(self.text)


@dataclass(frozen=True)
class SettingNames:
    """The settings a message asks the user to change: the config's keys, or a command's own options."""

    columns: str = "data.text_column / data.label_column"
    encoding: str | None = "data.encoding"  # None: the caller reads UTF-8 only
    format: str | None = "data.format"  # None: the format always comes from the extension


CONFIG_NAMES = SettingNames()


@dataclass(frozen=True)
class Wanted:
    """Which columns to read: text is always needed; the others when named."""

    text: str
    label: str | None
    text_pair: str | None = None
    id: str | None = None

    def names(self) -> list[str]:
        return [c for c in (self.text, self.text_pair, self.label, self.id) if c]


FORMATS = ".csv, .tsv, .jsonl, .json or .parquet"


def detect_format(path: Path, fmt: str = "auto", names: SettingNames = CONFIG_NAMES) -> str:
    if fmt != "auto":
        return fmt
    suffixes = [s.lower() for s in path.suffixes if s.lower() != ".gz"]
    ext = suffixes[-1].lstrip(".") if suffixes else ""
    if ext in ("csv", "tsv", "jsonl", "json", "parquet"):
        return ext
    if ext == "ndjson":
        return "jsonl"
    raise DataError(f"{path}: cannot tell the format from the extension '{ext or '(none)'}'; "
                    f"use {FORMATS}" + (f", or set {names.format}" if names.format else ""))


# ------------------------------------------------------------------ text decoding

BAD_BYTE = re.compile(r"[\udc80-\udcff]")  # how surrogateescape keeps an undecodable byte
_BOMS = ((codecs.BOM_UTF32_LE, "UTF-32"), (codecs.BOM_UTF32_BE, "UTF-32"),  # before UTF-16: FF FE starts both
         (codecs.BOM_UTF16_LE, "UTF-16"), (codecs.BOM_UTF16_BE, "UTF-16"))


def _encoding_hint(names: SettingNames, encoding: str) -> str:
    """How to read the file right: name the setting where the caller has one (predict reads UTF-8 only)."""
    return f"set {names.encoding}: {encoding} (or save it as UTF-8)" if names.encoding else "save it as UTF-8"


def check_not_utf16(path: Path | str, raw: bytes, encoding: str, names: SettingNames = CONFIG_NAMES) -> None:
    """A UTF-16/32 file read as UTF-8 would show NUL-riddled column names: name the encoding instead.

    Excel and Windows tools write UTF-16 with a byte-order mark; without one, ASCII text in UTF-16 has a
    NUL byte next to every character, which UTF-8 text (and most binary junk) does not.
    """
    if codecs.lookup(encoding).name not in ("utf-8", "utf-8-sig", "ascii"):
        return
    for bom, name in _BOMS:
        if raw.startswith(bom):
            raise DataError(f"{path} looks {name} encoded (byte-order mark); "
                            + _encoding_hint(names, name.lower()))
    head = raw[:4096]
    nuls = head.count(0)
    if len(head) >= 8 and nuls >= len(head) // 4:
        width = 4 if nuls > len(head) * 0.6 else 2  # ASCII: 1/2 of UTF-16's bytes are NUL, 3/4 of UTF-32's
        little = head[1::2].count(0) > head[0::2].count(0)
        name = f"utf-{8 * width}-{'le' if little else 'be'}"
        raise DataError(f"{path} looks {name.upper()} encoded ({nuls} of its first {len(head)} bytes are NUL); "
                        + _encoding_hint(names, name))


def decode_file(path: Path, encoding: str, names: SettingNames = CONFIG_NAMES) -> tuple[str, list[int], list[int]]:
    """Decode a whole file, keeping undecodable bytes as surrogates so every other problem is still found.

    Returns the text, the byte offsets of undecodable bytes, and the byte offset of each line start.
    """
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: file does not exist") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read file ({exc.strerror})") from None
    if raw.startswith(b"\x1f\x8b"):  # detect_format accepts name.csv.gz
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise DataError(f"{path}: not a readable gzip file ({exc})") from None
    try:
        codecs.lookup(encoding)
    except LookupError:
        raise DataError(f"data.encoding: unknown encoding '{encoding}'") from None
    check_not_utf16(path, raw, encoding, names)
    if raw.startswith(codecs.BOM_UTF8) and codecs.lookup(encoding).name in ("utf-8", "utf-8-sig"):
        raw = raw[3:]
    text = raw.decode(encoding, errors="surrogateescape")
    bad = []
    if BAD_BYTE.search(text):
        pos = 0
        while len(bad) < 10_000:
            try:
                raw[pos:].decode(encoding)
                break
            except UnicodeDecodeError as exc:
                bad.append(pos + exc.start)
                pos += exc.end
    line_starts = [0] + [m.end() for m in re.finditer(b"\n", raw)] if bad else [0]
    return text, bad, line_starts


class _RowSink:
    """Appends rows to `Columns`, flagging rows that hold undecodable bytes."""

    def __init__(self, cols: Columns, wanted: Wanted, bad_bytes: list[int], line_starts: list[int], encoding: str,
                 names: SettingNames):
        self.cols, self.wanted = cols, wanted
        self.bad_bytes, self.line_starts, self.encoding, self.names = bad_bytes, line_starts, encoding, names

    def add(self, where: int, values: tuple, problems: list[Problem] | None = None, last_line: int | None = None) -> None:
        """values: (text, text_pair, label, id) as read; problems: what the loader already found."""
        cols = self.cols
        if self.bad_bytes and any(isinstance(v, str) and BAD_BYTE.search(v) for v in values):
            problems = (problems or []) + [Problem(
                cols.file, where, None, "invalid_unicode",
                f"bytes that are not valid {self.encoding}{self._offsets(where, last_line)}; re-save the file as UTF-8"
                + (f", or set {self.names.encoding} (e.g. latin-1)" if self.names.encoding else ""), cols.unit)]
        if problems:
            cols.row_problems[len(cols.where)] = problems
        cols.where.append(where)
        cols.text.append(values[0])
        cols.text_pair.append(values[1])
        cols.label.append(values[2])
        cols.ids.append(values[3])

    def _offsets(self, where: int, last_line: int | None) -> str:
        if self.cols.unit != "line":  # a JSON item spans lines of its own
            return ""
        last = last_line or where
        found = [b for b in self.bad_bytes if where <= bisect.bisect_right(self.line_starts, b) <= last]
        return f" at byte offset {', '.join(str(b) for b in found[:3])}" if found else ""

    def add_record(self, where: int, obj: dict) -> None:
        """A JSON object: a wanted field missing from it is a problem of that row."""
        names = (self.wanted.text, self.wanted.text_pair, self.wanted.label, self.wanted.id)
        problems = [Problem(self.cols.file, where, n, "missing_field", f"field '{n}' is missing", self.cols.unit)
                    for n in names if n is not None and n not in obj]
        self.add(where, tuple(obj.get(n) if n else None for n in names), problems)


# ------------------------------------------------------------------ loaders

def _missing_columns(file: str, header: list[str], wanted: Wanted, where: int | None, unit: str,
                     names: SettingNames) -> None:
    missing = [c for c in wanted.names() if c not in header]
    if missing:
        raise DataError(f"{file}:{unit} {where}: missing column{'s' if len(missing) > 1 else ''} "
                        f"{', '.join(repr(m) for m in missing)}; the header has: {', '.join(repr(h) for h in header)} "
                        f"(set {names.columns} to the right names)")


def read_delimited(path: Path, wanted: Wanted, encoding: str, delimiter: str, names: SettingNames) -> Columns:
    file = str(path)
    text, bad, starts = decode_file(path, encoding, names)
    cols = Columns(file, "line")
    sink = _RowSink(cols, wanted, bad, starts, encoding, names)
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, strict=True)
    header, prev = None, 0
    while True:
        start = prev + 1
        try:
            row = next(reader)
        except StopIteration:
            break
        except csv.Error as exc:
            prev = reader.line_num
            msg = str(exc)
            if "unexpected end of data" in msg:
                msg = "a quoted field is never closed (the file may be truncated); the rest of the file could not be read"
            cols.file_problems.append(Problem(file, start, None, "malformed", f"malformed CSV: {msg}"))
            continue
        prev = reader.line_num
        if header is None:
            header = [h.strip() for h in row]
            if not any(header):
                raise DataError(f"{file}: the first line is empty; it must be the header naming the columns")
            _missing_columns(file, header, wanted, 1, "line", names)
            ti, pi, li, ii = (header.index(n) if n else None for n in (wanted.text, wanted.text_pair, wanted.label, wanted.id))
            continue
        if not row or all(not f.strip() for f in row):
            cols.empty_rows += 1
            continue
        if len(row) != len(header):
            cols.file_problems.append(Problem(
                file, start, None, "malformed",
                f"malformed row: {len(row)} field{'s' if len(row) != 1 else ''}, but the header has {len(header)}"
                + (" (an unquoted delimiter inside a text? quote the field)" if len(row) > len(header) else "")))
            continue
        sink.add(start, (row[ti], None if pi is None else row[pi], None if li is None else row[li],
                         None if ii is None else row[ii]), last_line=prev)
    if header is None:
        raise DataError(f"{file}: the file is empty; expected a header line and rows")
    return cols


# Every loader: (path, wanted columns, text encoding, the setting names its hints use) -> Columns.

def read_csv(path: Path, wanted: Wanted, encoding: str, names: SettingNames = CONFIG_NAMES) -> Columns:
    return read_delimited(path, wanted, encoding, ",", names)


def read_tsv(path: Path, wanted: Wanted, encoding: str, names: SettingNames = CONFIG_NAMES) -> Columns:
    return read_delimited(path, wanted, encoding, "\t", names)


def read_jsonl(path: Path, wanted: Wanted, encoding: str, names: SettingNames = CONFIG_NAMES) -> Columns:
    file = str(path)
    text, bad, starts = decode_file(path, encoding, names)
    cols = Columns(file, "line")
    sink = _RowSink(cols, wanted, bad, starts, encoding, names)

    def parsed():
        for number, line in enumerate(text.splitlines(), start=1):
            if not line.strip():
                cols.empty_rows += 1
                continue
            try:
                yield number, json.loads(line)
            except json.JSONDecodeError as exc:
                cols.file_problems.append(Problem(file, number, None, "malformed",
                                                  f"malformed JSON at column {exc.colno}: {exc.msg}"))

    _add_records(cols, sink, parsed())
    _check_any_column(cols, wanted, names)
    return cols


def read_json(path: Path, wanted: Wanted, encoding: str, names: SettingNames = CONFIG_NAMES) -> Columns:
    file = str(path)
    text, bad, starts = decode_file(path, encoding, names)
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise DataError(f"{file}:line {exc.lineno}: malformed JSON at column {exc.colno}: {exc.msg}") from None
    if isinstance(data, dict) and len(data) == 1 and isinstance(next(iter(data.values())), list):
        data = next(iter(data.values()))  # {"data": [...]} as many exports write it
    if not isinstance(data, list):
        raise DataError(f"{file}: expected a JSON array of objects (or use JSON Lines, one object per line)")
    cols = Columns(file, "item")
    sink = _RowSink(cols, wanted, bad, starts, encoding, names)
    _add_records(cols, sink, enumerate(data, start=1))
    _check_any_column(cols, wanted, names)
    return cols


def read_parquet(path: Path, wanted: Wanted, encoding: str, names: SettingNames = CONFIG_NAMES) -> Columns:
    import pyarrow as pa
    import pyarrow.parquet as pq

    file = str(path)
    try:
        table = pq.read_table(path)
    except FileNotFoundError:
        raise DataError(f"{path}: file does not exist") from None
    except Exception as exc:  # pyarrow raises many types for a corrupt file
        raise DataError(f"{file}: not a readable Parquet file ({exc})") from None
    _missing_columns(file, table.column_names, wanted, None, "row", names)
    for name in (wanted.text, wanted.text_pair):
        kind = table.schema.field(name).type if name else pa.string()
        if not _holds_text(kind):
            raise DataError(f"{file}: column '{name}' holds {kind} values; a text column must hold strings")
    cols = Columns(file, "row")
    n = table.num_rows
    cols.where = list(range(1, n + 1))

    def get(name):
        if not name:
            return [None] * n
        column = table.column(name)
        try:
            return column.to_pylist()
        except UnicodeDecodeError:  # Arrow strings should be UTF-8, but not every writer checks
            values = [None if b is None else b.decode("utf-8", "surrogateescape")
                      for b in column.cast(pa.large_binary()).to_pylist()]
            for i, value in enumerate(values):
                if value is not None and BAD_BYTE.search(value):
                    cols.row_problems.setdefault(i, []).append(Problem(
                        file, i + 1, name, "invalid_unicode", "bytes that are not valid UTF-8", "row"))
            return values

    cols.text, cols.text_pair, cols.label, cols.ids = (
        get(wanted.text), get(wanted.text_pair), get(wanted.label), get(wanted.id))
    return cols


def _holds_text(kind) -> bool:
    import pyarrow as pa

    if pa.types.is_dictionary(kind):  # pandas categoricals
        kind = kind.value_type
    return pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_null(kind) or (
        hasattr(pa.types, "is_string_view") and pa.types.is_string_view(kind))


def _add_records(cols: Columns, sink: _RowSink, records) -> None:
    """(number, parsed JSON value) pairs -> rows; a value that is not an object is a malformed row."""
    for number, obj in records:
        if isinstance(obj, dict):
            sink.add_record(number, obj)
        else:
            cols.file_problems.append(Problem(cols.file, number, None, "malformed",
                                              f"expected a JSON object, got {type(obj).__name__}", cols.unit))


def _check_any_column(cols: Columns, wanted: Wanted, names: SettingNames) -> None:
    """A field missing from *every* record is a wrong column name, not a row problem: say so once."""
    if not len(cols):
        return
    for name in wanted.names():
        if all(any(p.column == name and p.reason == "missing_field" for p in cols.row_problems.get(i, ()))
               for i in range(len(cols))):
            raise DataError(f"{cols.file}: no record has the field '{name}' "
                            f"(set {names.columns} to the right names)")


LOADERS = {"csv": read_csv, "tsv": read_tsv, "jsonl": read_jsonl, "json": read_json, "parquet": read_parquet}


def load_file(path: Path, wanted: Wanted, fmt: str = "auto", encoding: str = "utf-8",
              names: SettingNames = CONFIG_NAMES) -> Columns:
    """Read one file's wanted columns. Raises DataError only when nothing sensible can be read.

    `names`: the settings its messages tell the user to change (the config's, or a command's options)."""
    path = Path(path)
    if not path.exists():
        where = "" if path.is_absolute() else f" (relative paths start from {Path.cwd()})"
        raise DataError(f"{path}: file does not exist{where}")
    if path.is_dir():
        raise DataError(f"{path} is a folder; expected a data file ({FORMATS})")
    return LOADERS[detect_format(path, fmt, names)](path, wanted, encoding, names)
