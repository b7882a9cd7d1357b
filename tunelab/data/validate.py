"""Check each loaded row: text present, label present and allowed, ids unique. Labels are normalised here."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from tunelab.data.load import Columns, Problem, Wanted


@dataclass
class Rows:
    """Rows that passed validation: plain columns, plus where each came from."""

    file: str
    unit: str
    where: list[int] = field(default_factory=list)
    text: list[str] = field(default_factory=list)
    text_pair: list[str] | None = None
    label: list = field(default_factory=list)  # str, or sorted list[str] for multi-label
    ids: list[str] | None = None

    def __len__(self) -> int:
        return len(self.text)

    def take(self, keep: list[int]) -> Rows:
        pick = lambda col: None if col is None else [col[i] for i in keep]  # noqa: E731
        return Rows(self.file, self.unit, pick(self.where), pick(self.text), pick(self.text_pair),
                    pick(self.label), pick(self.ids))

    @staticmethod
    def concat(parts: list[Rows]) -> Rows:
        first = parts[0]
        out = Rows(first.file, first.unit, [], [], [] if first.text_pair is not None else None, [],
                   [] if first.ids is not None else None)
        for p in parts:
            out.where += p.where
            out.text += p.text
            out.label += p.label
            if out.text_pair is not None:
                out.text_pair += p.text_pair
            if out.ids is not None:
                out.ids += p.ids
        return out


def label_text(value) -> str:
    """One label as a clean string: 1.0 -> '1', ' pos ' -> 'pos'."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return str(value).strip()


def _kind(value) -> str:
    """What a JSON value is, in JSON's words: a number, a list, an object, true/false."""
    if isinstance(value, bool):
        return "true/false"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, (list, tuple)):
        return "a list"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


# A lone surrogate is not a character: JSON can spell one ("\ud800" without its pair), and surrogateescape keeps
# an undecodable byte as one. The tokenizer and Parquet both refuse it, so the row is reported here.
_SURROGATE = re.compile("[\ud800-\udfff]")


def lone_surrogate(value) -> str | None:
    """'U+D800 at character 5' for the first lone surrogate in a string (or list of strings), else None."""
    for text in value if isinstance(value, (list, tuple)) else (value,):
        found = _SURROGATE.search(text) if isinstance(text, str) else None
        if found:
            return f"U+{ord(found.group()):04X} at character {found.start() + 1}"
    return None


class LabelCheck:
    """Turns raw label cells into canonical labels, matching a configured set case-insensitively."""

    def __init__(self, allowed: list[str] | None, multi_label: bool, separator: str):
        self.allowed = allowed
        self.multi_label, self.separator = multi_label, separator
        self.by_fold = {a.casefold(): a for a in allowed} if allowed else None
        self._seen: dict = {}  # raw cell -> result: a label column repeats a few values many times

    def __call__(self, raw) -> tuple[object, str | None, str | None]:
        """Returns (label, problem reason, problem message)."""
        key = (type(raw), tuple(raw) if isinstance(raw, list) else raw)
        try:
            found = self._seen.get(key)
        except TypeError:  # unhashable cell (a dict, a nested list): no caching
            return self._check(raw)
        if found is None:
            found = self._seen[key] = self._check(raw)
        if isinstance(found[0], list):
            return list(found[0]), found[1], found[2]
        return found

    def _check(self, raw):
        if raw is None or (isinstance(raw, float) and raw != raw) or (isinstance(raw, str) and not raw.strip()):
            return None, "missing_label", "label is missing"
        if self.multi_label:
            parts = raw if isinstance(raw, (list, tuple)) else str(raw).split(self.separator)
            labels = sorted({label_text(p) for p in parts if label_text(p)})
            if not labels:
                return None, "missing_label", "label list is empty"
            canon = []
            for lab in labels:
                c, reason, msg = self._canonical(lab)
                if reason:
                    return None, reason, msg
                canon.append(c)
            return sorted(set(canon)), None, None
        if isinstance(raw, (list, tuple, dict)):
            return None, "bad_label", f"expected one label, got {type(raw).__name__} (for several labels per row set data.multi_label: true)"
        return self._canonical(label_text(raw))

    def _canonical(self, label: str):
        if self.by_fold is None:
            return label, None, None
        found = self.by_fold.get(label.casefold())
        if found is None:
            shown = ", ".join(self.allowed[:20]) + (" ..." if len(self.allowed) > 20 else "")
            return None, "unknown_label", f"unknown label '{label}' (allowed: {shown})"
        return found, None, None


def validate(cols: Columns, wanted: Wanted, check_label: LabelCheck | None) -> tuple[Rows, list[Problem]]:
    """Keep the rows with no problem; return every problem found (row problems and unreadable lines)."""
    pair, with_ids = wanted.text_pair is not None, wanted.id is not None
    problems = list(cols.file_problems)
    rows = Rows(cols.file, cols.unit, text_pair=[] if pair else None, ids=[] if with_ids else None)
    seen_ids: dict[str, int] = {}
    for i in range(len(cols)):
        where = cols.where[i]
        found = list(cols.row_problems.get(i, ()))
        reasons = {p.reason for p in found}
        prob = lambda col, reason, msg: found.append(Problem(cols.file, where, col, reason, msg, cols.unit))  # noqa: E731
        if "invalid_unicode" not in reasons:
            for column, value in ((wanted.text, cols.text[i]), (wanted.text_pair, cols.text_pair[i]),
                                  (wanted.label, cols.label[i]), (wanted.id, cols.ids[i])):
                at = lone_surrogate(value) if column else None
                if at:
                    prob(column, "invalid_unicode", f"not valid Unicode: a lone surrogate {at} "
                         "(a \\u escape without its pair?)")
        text = cols.text[i]
        if "missing_field" not in reasons:
            if text is not None and not isinstance(text, str):
                prob(wanted.text, "bad_text", f"text must be a string, got {_kind(text)}")
            elif not text or not text.strip():
                prob(wanted.text, "empty_text", "text is empty" if not text else "text is only whitespace")
        text_pair = cols.text_pair[i] if pair else None
        if pair and "missing_field" not in reasons:
            if text_pair is not None and not isinstance(text_pair, str):
                prob(wanted.text_pair, "bad_text", f"second text of the pair must be a string, got {_kind(text_pair)}")
            elif not (text_pair and text_pair.strip()):
                prob(wanted.text_pair, "empty_text", "second text of the pair is empty")
        label = None
        unreadable = {p.column for p in found if p.reason == "invalid_unicode"}  # None: somewhere in the row
        if check_label is not None and not any(p.reason == "missing_field" for p in found) and not (
                unreadable & {None, wanted.label}):
            label, reason, msg = check_label(cols.label[i])
            if reason:
                prob(wanted.label, reason, msg)
        row_id = None
        if with_ids and cols.ids[i] is not None:
            row_id = label_text(cols.ids[i])
            if row_id in seen_ids:
                prob(wanted.id, "duplicate_id", f"id '{row_id}' already used at {cols.unit} {seen_ids[row_id]}")
            else:
                seen_ids[row_id] = where
        if found:
            problems.extend(found)
            continue
        rows.where.append(where)
        rows.text.append(text)
        rows.label.append(label)
        if pair:
            rows.text_pair.append(text_pair)
        if with_ids:
            rows.ids.append(row_id)
    return rows, problems
