"""Read token-classification data into `Sentences`: CoNLL columns, token JSONL, or text with entity offsets.

Readers follow `tunelab.data.load`: a user's data mistake never raises; the sentence is left out and the
mistake becomes ONE `Problem` naming the file and the line (as an editor numbers it), so the data stage can
list or drop bad sentences as it does bad rows. `DataError` is raised only for file-level failures (missing or
unreadable file, unknown encoding, a key that no record has).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field, replace
from pathlib import Path

from tunelab.data.load import BAD_BYTE, Problem, decode_file
from tunelab.errors import DataError
from tunelab.tasks.ner.spans import tags_from_entities

CONLL_SUFFIXES = (".conll", ".txt", ".iob", ".bio")
JSONL_SUFFIXES = (".jsonl", ".json")
WORD = re.compile(r"\w+(?:[-']\w+)*|[^\w\s]")  # words of a raw text: runs of letters/digits, or one symbol
_COLUMN = re.compile(r"[^ \t\r\f\v]+")  # CoNLL columns are split on ASCII spaces/tabs only (a token may hold U+00A0)


@dataclass
class Sentences:
    """Sentences of one file as words, with their tags (None when unlabelled) and where each came from.

    `text[i]` is the sentence text and `offsets[i][j]` the character span of word j in it (tokens joined by
    single spaces, or the original text for text JSONL), so entities can be shown on the text. `problems`
    lists the sentences that were left out, one `Problem` each.
    """

    file: str
    format: str  # conll, token_jsonl or entity_jsonl
    tags_key: str | None = None  # the record field tags came from, named in problems (None for CoNLL)
    unit: str = "line"
    tokens: list[list[str]] = field(default_factory=list)
    tags: list[list[str]] | None = field(default_factory=list)
    where: list[int] = field(default_factory=list)  # CoNLL: line of the first token; JSONL: the record's line
    text: list[str] = field(default_factory=list)
    offsets: list[list[tuple[int, int]]] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.tokens)

    def add(self, where: int, tokens: list[str], tags: list[str] | None,
            text: str | None = None, offsets: list[tuple[int, int]] | None = None) -> None:
        if text is None:
            text, offsets, pos = " ".join(tokens), [], 0
            for token in tokens:
                offsets.append((pos, pos + len(token)))
                pos += len(token) + 1
        self.where.append(where)
        self.tokens.append(tokens)
        self.text.append(text)
        self.offsets.append(offsets)
        if self.tags is not None:
            self.tags.append(tags)

    def take(self, indices) -> Sentences:
        """The sentences at these indices, in this order (problems are the file's and stay as they are)."""
        pick = lambda values: [values[i] for i in indices]  # noqa: E731
        return replace(self, tokens=pick(self.tokens), tags=None if self.tags is None else pick(self.tags),
                       where=pick(self.where), text=pick(self.text), offsets=pick(self.offsets),
                       problems=list(self.problems))

    def line_of(self, sentence: int, token: int) -> int:
        """The line of a token: CoNLL has one token per line, JSONL one sentence per line."""
        return self.where[sentence] + token if self.format == "conll" else self.where[sentence]


def _undecodable(file: str, line: int, encoding: str) -> Problem:
    return Problem(file, line, None, "invalid_unicode", f"bytes that are not valid {encoding} on this line; "
                   "re-save the file as UTF-8, or set data.encoding (e.g. latin-1)")


# ------------------------------------------------------------------ CoNLL

def read_conll(path, encoding: str = "utf-8", labelled: bool = True) -> Sentences:
    """`token ... TAG` per line (first column the token, last the tag), a blank line between sentences.

    The 4-column originals (`token POS chunk TAG`) read the same. `-DOCSTART-` lines end a sentence and
    are skipped. Unlabelled (`labelled=False`): the first column of each line is the token.
    """
    path = Path(path)
    text, _, _ = decode_file(path, encoding)
    out = Sentences(str(path), "conll", tags=[] if labelled else None)
    block: list[tuple[int, list[str]]] = []  # (line number, columns) of the sentence being read

    def flush() -> None:
        if not block:
            return
        bad = [n for n, cols in block if any(BAD_BYTE.search(c) for c in cols)]
        short = [n for n, cols in block if len(cols) < 2] if labelled else []
        if bad:
            out.problems.append(_undecodable(out.file, bad[0], encoding))
        elif short:
            more = f" ({len(short) - 1} more such line{'s' * (len(short) > 2)} in this sentence)" if len(short) > 1 else ""
            token = next(cols[0] for n, cols in block if n == short[0])
            out.problems.append(Problem(out.file, short[0], None, "missing_tag",
                                        f"expected 'token TAG' (the tag in the last column), got only '{token}'{more}"))
        else:
            out.add(block[0][0], [cols[0] for _, cols in block], [cols[-1] for _, cols in block] if labelled else None)
        block.clear()

    lines = tagged = 0  # no line with a tag column means an unlabelled file: one error, not one per sentence
    for number, line in enumerate(text.split("\n"), start=1):
        cols = _COLUMN.findall(line)
        if not cols or cols[0] == "-DOCSTART-":
            flush()
        else:
            block.append((number, cols))
            lines += 1
            tagged += len(cols) > 1
    if labelled and lines and not tagged:
        raise DataError(f"{out.file}: no line has a tag: expected 'token TAG' per line (the tag in the last column); "
                        "is this file unlabelled?")
    flush()
    return out


# ------------------------------------------------------------------ JSONL

def _records(path: Path, encoding: str, out: Sentences, keys: list[str | None]):
    """(line number, object) per non-blank line; malformed lines become problems of `out`.

    A key that no record has is a wrong key name, not a mistake of every line: one DataError at the end.
    """
    text, _, _ = decode_file(path, encoding)
    seen: set[str] = set()
    first: list[str] | None = None
    for number, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        if BAD_BYTE.search(line):
            out.problems.append(_undecodable(out.file, number, encoding))
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            out.problems.append(Problem(out.file, number, None, "malformed", f"malformed JSON at column {exc.colno}: {exc.msg}"))
            continue
        if not isinstance(obj, dict):
            out.problems.append(Problem(out.file, number, None, "malformed", f"expected a JSON object, got {type(obj).__name__}"))
            continue
        seen.update(obj)
        first = list(obj) if first is None else first
        yield number, obj
    for key in keys:
        if key and first is not None and key not in seen:
            raise DataError(f"{out.file}: no record has the field '{key}' "
                            f"(the first record has: {', '.join(repr(k) for k in first)})")


def _string_list(value, key: str, nonblank: bool) -> str | None:
    """Why `value` is not a list of strings (non-blank ones when `nonblank`), or None."""
    if not isinstance(value, list):
        return f"'{key}' must be a list of strings, got {type(value).__name__}"
    for j, item in enumerate(value):
        if not isinstance(item, str) or (nonblank and not item.strip()):
            got = repr(item) if isinstance(item, str) else type(item).__name__
            return f"{key}[{j}] must be a {'non-empty ' if nonblank else ''}string, got {got}"
    return None


def read_token_jsonl(path, encoding: str = "utf-8", tokens_key: str = "tokens", tags_key: str | None = "tags") -> Sentences:
    """`{"tokens": [...], "tags": [...]}` per line; tags_key=None reads unlabelled sentences."""
    path = Path(path)
    out = Sentences(str(path), "token_jsonl", tags_key=tags_key, tags=[] if tags_key else None)
    for number, obj in _records(path, encoding, out, [tokens_key, tags_key]):
        column, reason, why = None, None, None
        for key in (tokens_key, tags_key):
            if key and key not in obj:
                column, reason, why = key, "missing_field", f"field '{key}' is missing"
                break
        else:
            tokens, tags = obj[tokens_key], obj.get(tags_key) if tags_key else None
            if (why := _string_list(tokens, tokens_key, nonblank=True)) is not None:
                column, reason = tokens_key, "bad_tokens"
            elif not tokens:
                column, reason, why = tokens_key, "empty_sentence", f"'{tokens_key}' is empty"
            elif tags_key and (why := _string_list(tags, tags_key, nonblank=False)) is not None:
                column, reason = tags_key, "bad_tags"
            elif tags_key and len(tags) != len(tokens):
                column, reason, why = tags_key, "length_mismatch", f"{len(tags)} tags for {len(tokens)} tokens"
        if reason:
            out.problems.append(Problem(out.file, number, column, reason, why))
        else:
            out.add(number, tokens, tags)
    return out


def _entity_tuples(value, key: str) -> tuple[list[tuple[int, int, str]] | None, str | None]:
    """[(start, end, label)] from a list of {"start", "end", "label" (or "type")} objects, or a reason."""
    if not isinstance(value, list):
        return None, f"'{key}' must be a list of objects, got {type(value).__name__}"
    out = []
    for k, ent in enumerate(value):
        label = ent.get("label", ent.get("type")) if isinstance(ent, dict) else None
        if not isinstance(ent, dict):
            return None, f"{key}[{k}] must be an object with start, end and label, got {type(ent).__name__}"
        bad = [n for n in ("start", "end") if not isinstance(ent.get(n), int) or isinstance(ent.get(n), bool)]
        if bad:
            return None, f"{key}[{k}]: '{bad[0]}' must be an integer character offset, got {ent.get(bad[0])!r}"
        if not isinstance(label, str) or not label.strip() or label != label.strip():
            return None, f"{key}[{k}]: 'label' must be a non-empty string without surrounding spaces, got {label!r}"
        out.append((ent["start"], ent["end"], label))
    return out, None


def read_entity_jsonl(path, encoding: str = "utf-8", text_key: str = "text", entities_key: str | None = "entities") -> Sentences:
    """`{"text": "...", "entities": [{"start": 0, "end": 5, "label": "PER"}]}` per line (as annotation tools export).

    Offsets count characters (Python string indices), end exclusive; "type" is accepted for "label". The
    text is split into words with `WORD`; entity edges must fall on word edges. entities_key=None: unlabelled.
    """
    path = Path(path)
    out = Sentences(str(path), "entity_jsonl", tags_key=entities_key, tags=[] if entities_key else None)
    for number, obj in _records(path, encoding, out, [text_key, entities_key]):
        column, reason, why = None, None, None
        text = obj.get(text_key)
        missing = [k for k in (text_key, entities_key) if k and k not in obj]
        words = [m.span() for m in WORD.finditer(text)] if isinstance(text, str) else []
        tags = None
        if missing:
            column, reason, why = missing[0], "missing_field", f"field '{missing[0]}' is missing"
        elif not isinstance(text, str):
            column, reason, why = text_key, "bad_text", f"'{text_key}' must be a string, got {type(text).__name__}"
        elif not words:
            column, reason, why = text_key, "empty_text", f"'{text_key}' has no word"
        elif entities_key:
            ents, why = _entity_tuples(obj[entities_key], entities_key)
            if why is None:
                tags, why = tags_from_entities(words, len(text), ents, entities_key)
            column, reason = (entities_key, "bad_entities") if why else (None, None)
        if reason:
            out.problems.append(Problem(out.file, number, column, reason, why))
        else:
            out.add(number, [text[s:e] for s, e in words], tags, text, words)
    return out


# ------------------------------------------------------------------ format detection

def detect_format(path) -> str:
    """conll for .conll/.txt/.iob/.bio; for .jsonl/.json the first record's keys decide (tokens or text)."""
    path = Path(path)
    ext = path.suffix.lower()
    if ext in CONLL_SUFFIXES:
        return "conll"
    if ext not in JSONL_SUFFIXES:
        raise DataError(f"{path}: cannot tell the NER format from the extension '{ext or '(none)'}'; use "
                        f"{', '.join(CONLL_SUFFIXES)} for CoNLL columns or .jsonl for JSON Lines")
    number, line = _first_line(path)
    if line.lstrip().startswith("["):
        raise DataError(f"{path}: a JSON array; NER records are read as JSON Lines, one object per line")
    try:
        first = json.loads(line)
    except json.JSONDecodeError as exc:
        raise DataError(f"{path}:line {number}: malformed JSON at column {exc.colno}: {exc.msg}") from None
    keys = list(first) if isinstance(first, dict) else []
    if "tokens" in keys:
        return "token_jsonl"
    if "text" in keys:
        return "entity_jsonl"
    raise DataError(f"{path}:line {number}: cannot tell the NER format: the first record has "
                    f"{', '.join(repr(k) for k in keys) or 'no keys'}; expected 'tokens' (a word list with 'tags') "
                    "or 'text' (a text with 'entities' offsets)")


def _first_line(path: Path) -> tuple[int, str]:
    try:
        with path.open("rb") as f:
            for number, raw in enumerate(f, start=1):
                line = raw.decode("utf-8", errors="replace").lstrip("\ufeff")
                if line.strip():
                    return number, line
    except FileNotFoundError:
        raise DataError(f"{path}: file does not exist") from None
    except OSError as exc:
        raise DataError(f"{path}: cannot read file ({exc.strerror})") from None
    raise DataError(f"{path}: the file is empty")


READERS = {"conll": read_conll, "token_jsonl": read_token_jsonl, "entity_jsonl": read_entity_jsonl}


def read_sentences(path, fmt: str = "auto", encoding: str = "utf-8", labelled: bool = True) -> Sentences:
    """Read a file in the named format (auto: `detect_format`) with the default keys."""
    fmt = detect_format(path) if fmt == "auto" else fmt
    if fmt == "conll":
        return read_conll(path, encoding, labelled)
    if fmt == "token_jsonl":
        return read_token_jsonl(path, encoding, tags_key="tags" if labelled else None)
    if fmt == "entity_jsonl":
        return read_entity_jsonl(path, encoding, entities_key="entities" if labelled else None)
    raise DataError(f"unknown NER format '{fmt}'; known: auto, {', '.join(READERS)}")
