"""The FAQ and the customer questions that ask for its entries: read, checked, split.

The FAQ file has one row per entry (id, question, answer); a later row with an id already seen is another answer
to the same entry, counted and not used (the first answer is the one given). The questions file pairs customer
phrasings with the entry that answers them. Questions are split per entry (data/split.py, stratified by entry, the
same text never in two splits): every entry with at least three questions has training phrasings and unseen test
phrasings, and validation ones where its share rounds to one or more (at 10%, from six questions up).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tunelab.data.load import SettingNames, Wanted, load_file
from tunelab.data.validate import LabelCheck, validate
from tunelab.errors import DataError

MAX_SHOWN = 10


@dataclass
class Faq:
    ids: list[str]  # entry ids, in file order
    questions: list[str]
    answers: list[str]
    extra_answers: int = 0  # rows whose id came earlier: further answers, not used

    def __len__(self) -> int:
        return len(self.ids)


@dataclass
class Questions:
    """Customer questions by split: (text, entry id) pairs."""

    train: list[tuple[str, str]] = field(default_factory=list)
    validation: list[tuple[str, str]] = field(default_factory=list)
    test: list[tuple[str, str]] = field(default_factory=list)
    train_only_entries: int = 0  # entries with too few questions to hold some out


def fail(path, problems) -> None:
    shown = "\n".join(f"  {p}" for p in problems[:MAX_SHOWN])
    more = f"\n  ... and {len(problems) - MAX_SHOWN} more" if len(problems) > MAX_SHOWN else ""
    raise DataError(f"{path}: {len(problems)} bad row(s); fix them:\n{shown}{more}")


def read_faq(path: Path, id_column: str, question_column: str, answer_column: str) -> Faq:
    """The FAQ entries of `path` (CSV, JSONL, JSON or Parquet); a bad row is named with its line and column."""
    names = SettingNames(columns="columns.faq_id / columns.question / columns.answer in the app's config", encoding=None, format=None)
    wanted = Wanted(question_column, id_column, answer_column)
    rows, problems = validate(load_file(path, wanted, names=names), wanted, LabelCheck(None, False, "|"))
    if problems:
        fail(path, problems)
    faq, seen = Faq([], [], []), set()
    for entry, question, answer in zip(rows.label, rows.text, rows.text_pair):
        if entry in seen:
            faq.extra_answers += 1
            continue
        seen.add(entry)
        faq.ids.append(entry)
        faq.questions.append(question.strip())
        faq.answers.append(answer.strip())
    if len(faq) < 2:
        raise DataError(f"{path}: {len(faq)} FAQ entr{'y' if len(faq) == 1 else 'ies'}; the assistant needs at least 2 "
                        "to choose between")
    return faq


def read_questions(path: Path, faq: Faq, text_column: str, faq_column: str, fractions: dict[str, float],
                   seed: int) -> Questions:
    """Customer questions of `path`, each naming the FAQ entry that answers it, split per entry."""
    from tunelab.data.clean import clean_text
    from tunelab.data.split import stratified_split

    names = SettingNames(columns="columns.text / columns.entry in the app's config", encoding=None, format=None)
    wanted = Wanted(text_column, faq_column)
    rows, problems = validate(load_file(path, wanted, names=names), wanted, LabelCheck(faq.ids, False, "|"))
    for p in problems:
        if p.reason == "unknown_label":  # say it in the app's terms
            p.message = p.message.replace("unknown label", "no FAQ entry has the id").replace("(allowed:", "(the FAQ's ids:")
    if problems:
        fail(path, problems)
    texts = [clean_text(t) for t in rows.text]
    counts: dict[str, int] = {}
    for entry in rows.label:
        counts[entry] = counts.get(entry, 0) + 1
    held = [i for i, entry in enumerate(rows.label) if counts[entry] >= 3]
    parts = stratified_split([texts[i].casefold() for i in held], [rows.label[i] for i in held], fractions, seed)
    out = Questions(train_only_entries=sum(1 for n in counts.values() if n < 3))
    for name, members in parts.items():
        getattr(out, name).extend((texts[held[j]], rows.label[held[j]]) for j in members)
    out.train.extend((texts[i], rows.label[i]) for i, entry in enumerate(rows.label) if counts[entry] < 3)
    held_out = {t.casefold() for t, _ in out.validation + out.test}  # the same text under another entry: not trained on
    out.train = [(t, e) for t, e in out.train if t.casefold() not in held_out]
    return out
