"""Check each loaded row: text present, label present and allowed, ids unique. Labels are normalised here."""

from __future__ import annotations

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


def _as_text(value) -> str | None:
    if value is None or isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value == value:  # not NaN
        return str(value)
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
        text = _as_text(cols.text[i])
        if "missing_field" not in reasons:
            if text is None and cols.text[i] is not None:
                prob(wanted.text, "bad_text", f"text must be a string, got {type(cols.text[i]).__name__}")
            elif not text or not text.strip():
                prob(wanted.text, "empty_text", "text is empty" if not text else "text is only whitespace")
        text_pair = _as_text(cols.text_pair[i]) if pair else None
        if pair and not (text_pair and text_pair.strip()) and "missing_field" not in reasons:
            prob(wanted.text_pair, "empty_text", "second text of the pair is empty")
        label = None
        if check_label is not None and not any(p.reason == "missing_field" for p in found):
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
