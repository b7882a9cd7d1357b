"""The data stage of causal LM fine-tuning: conversations from JSONL/JSON/Parquet (`messages`) or prompt/response
rows (CSV/TSV/JSONL/JSON/Parquet), checked with the line of each problem, cleaned, deduplicated, split, reported.

read (data/load.py's loaders) -> conversations checked (roles, an answer last, nothing empty) -> Unicode form ->
exact repeats out of train -> a prompt in an evaluation split leaves train -> random split -> token lengths
through the chat template (too long: an error naming the line, or counted and cut, data.too_long) -> report.
A prepared split holds one column, `messages`: each conversation as JSON.
"""

from __future__ import annotations

import json
import unicodedata
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from tunelab.config import Config
from tunelab.data.load import SettingNames, Wanted, detect_format, load_file
from tunelab.data.load import Problem
from tunelab.data.pipeline import PRECEDENCE, SPLITS, Built, format_problems, write_split
from tunelab.data.report import length_stats, removed_counts, removed_markdown
from tunelab.data.split import remove_leaks, stratified_split
from tunelab.errors import DataError, TunelabError
from tunelab.tasks.causal_lm.chat import ROLES, encode_conversation, load_template, with_system

NAMES = SettingNames(columns="data.messages_column (conversations) or data.prompt_column / data.response_column")


@dataclass
class Conversations:
    """One file's conversations and where each came from."""

    file: str
    unit: str  # line, item or row
    messages: list[list[dict]] = field(default_factory=list)
    where: list[int] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.messages)

    def take(self, keep) -> Conversations:
        return Conversations(self.file, self.unit, [self.messages[i] for i in keep], [self.where[i] for i in keep])


def _has_messages(path: Path, fmt: str, column: str, encoding: str) -> bool:
    """Whether the file holds conversations (its first record has the messages key) or prompt/response rows."""
    if fmt in ("csv", "tsv"):
        return False
    if fmt == "parquet":
        import pyarrow.parquet as pq

        try:
            return column in pq.read_schema(path).names
        except Exception:  # noqa: BLE001 -- load_file reports an unreadable file properly
            return False
    try:
        with open(path, encoding=encoding, errors="replace") as f:
            head = f.read(1 << 20)
    except OSError:
        return False
    if fmt == "json":
        return f'"{column}"' in head
    for line in head.splitlines():
        if line.strip():
            try:
                first = json.loads(line)
            except ValueError:
                return f'"{column}"' in line
            return isinstance(first, dict) and column in first
    return False


def read(path: Path, config: Config) -> tuple[Conversations, list[Problem]]:
    """A file's valid conversations and the problems of the others."""
    cfg = config.data
    path = Path(path)
    fmt = detect_format(path, cfg.format if cfg.format in ("csv", "tsv", "jsonl", "json", "parquet") else "auto", NAMES)
    if _has_messages(path, fmt, cfg.messages_column, cfg.encoding):
        cols = load_file(path, Wanted(cfg.messages_column, None), fmt, cfg.encoding, NAMES)
        raw = [(m,) for m in cols.text]
    else:
        cols = load_file(path, Wanted(cfg.prompt_column, cfg.response_column, cfg.system_column), fmt, cfg.encoding, NAMES)
        raw = list(zip(cols.text, cols.label, cols.text_pair))
    found = Conversations(cols.file, cols.unit)
    problems = list(cols.file_problems)
    for i, values in enumerate(raw):
        if i in cols.row_problems:
            problems += cols.row_problems[i]
            continue
        where = cols.where[i]
        messages, message = (_conversation(values[0], cfg.messages_column) if len(values) == 1
                             else _from_prompt(*values, cfg))
        if message:
            problems.append(Problem(cols.file, where, message[0], message[1], message[2], cols.unit))
        else:
            found.messages.append(messages)
            found.where.append(where)
    if not len(found) and not problems:
        raise DataError(f"{path}: no conversation in the file; it must hold at least one")
    return found, problems


def _from_prompt(prompt, response, system, cfg) -> tuple[list[dict] | None, tuple | None]:
    for value, column in ((prompt, cfg.prompt_column), (response, cfg.response_column)):
        if not isinstance(value, str) or not value.strip():
            kind = "empty_answer" if column == cfg.response_column else "empty_text"
            return None, (column, kind, "is empty" if not isinstance(value, str) or not value.strip() else "")
    messages = [{"role": "user", "content": prompt}, {"role": "assistant", "content": response}]
    if isinstance(system, str) and system.strip():
        messages.insert(0, {"role": "system", "content": system})
    return messages, None


def _conversation(value, column: str) -> tuple[list[dict] | None, tuple | None]:
    """A conversation as given, checked: (messages, None) or (None, (column, reason, message))."""
    if isinstance(value, str):  # CSV-like stores may keep it as JSON text
        try:
            value = json.loads(value)
        except ValueError:
            return None, (column, "malformed", "is not a list of messages (nor JSON text of one)")
    if not isinstance(value, list) or not value:
        return None, (column, "malformed", "must be a non-empty list of {role, content} messages")
    messages = []
    for k, m in enumerate(value, start=1):
        if not isinstance(m, dict) or "role" not in m or "content" not in m:
            return None, (column, "malformed", f"message {k} must be an object with 'role' and 'content'")
        role, content = m["role"], m["content"]
        if role not in ROLES:
            return None, (column, "unknown_role", f"message {k} has the role {role!r}; roles are {', '.join(ROLES)}")
        if not isinstance(content, str):
            return None, (column, "malformed", f"message {k}: 'content' must be text, not {type(content).__name__}")
        if role == "system" and k != 1:
            return None, (column, "malformed", f"message {k}: a system message may only come first")
        if role == "assistant" and not content.strip():
            return None, (column, "empty_answer", f"message {k}: the assistant's answer is empty")
        messages.append({"role": role, "content": content})
    turns = [m["role"] for m in messages if m["role"] != "system"]
    if not turns or turns[0] != "user":  # chat templates expect it; some raise, some render it unlike its prefix
        return None, (column, "malformed", "the conversation must open with a user message (after an optional system one)")
    if messages[-1]["role"] != "assistant":
        return None, (column, "no_answer", "the conversation must end with the assistant's answer "
                      f"(it ends with a {messages[-1]['role']} message)")
    return messages, None


def _clean(found: Conversations, form: str) -> Conversations:
    """Each message in the configured Unicode form. Whitespace is kept: line breaks and indentation are content
    (lists, code) that the model learns to write."""
    if form != "none":
        found.messages = [[{**m, "content": unicodedata.normalize(form, m["content"])} for m in conv]
                          for conv in found.messages]
    return found


def _key(messages: list[dict]) -> str:
    return json.dumps(messages, ensure_ascii=False, sort_keys=True)


def _prompt_key(messages: list[dict]) -> str:
    """What the model is asked: the conversation before its last answer."""
    return _key(messages[:-1])


def _deduplicate(found: Conversations) -> tuple[Conversations, list[Problem]]:
    first: dict = {}
    keep, removed = [], []
    for i, messages in enumerate(found.messages):
        key = _key(messages)
        if key in first:
            removed.append(Problem(found.file, found.where[i], None, "duplicate",
                                   f"repeats the conversation at {found.unit} {found.where[first[key]]}", found.unit))
        else:
            first[key] = i
            keep.append(i)
    return found.take(keep), removed


def _lengths(found: Conversations, tokenizer, config: Config) -> np.ndarray:
    """Tokens per conversation through the chat template; a conversation the template refuses (a Jinja error,
    turns it does not render one by one) is an error naming its line."""
    from jinja2 import TemplateError

    template, system = load_template(config.task.chat_template), config.task.system_prompt
    out = []
    for messages, where in zip(found.messages, found.where):
        try:
            out.append(encode_conversation(tokenizer, with_system(messages, system), template, None)[2])
        except (TemplateError, TunelabError) as exc:
            raise DataError(f"{found.file}:{found.unit} {where}: the chat template cannot render this conversation: "
                            f"{exc}") from None
    return np.array(out, dtype=np.int64)


def _too_long(found: Conversations, lengths: np.ndarray, max_length: int) -> list[Problem]:
    return [Problem(found.file, found.where[i], None, "too_long",
                    f"{int(n)} tokens through the chat template, over model.max_length ({max_length})", found.unit)
            for i, n in enumerate(lengths) if n > max_length]


def build_data(config: Config, tokenizer, say, quiet: bool) -> Built:
    cfg = config.data
    given = {s: Path(getattr(cfg, s)) for s in SPLITS if getattr(cfg, s) is not None}
    loaded: dict[str, Conversations] = {}
    bad: list[Problem] = []
    read_counts = {}
    for split in ("train", *[s for s in given if s != "train"]):
        say(f"data: reading {split} from {given[split]}")
        loaded[split], problems = read(given[split], config)
        read_counts[split] = len(loaded[split]) + len(problems)
        bad += problems
    if bad and cfg.on_bad_rows == "error":
        raise DataError(format_problems(bad, "the data has bad conversations",
                                        "Fix these rows, or set data.on_bad_rows: drop to leave them out "
                                        "(each is then listed in the data report)."))
    removed = list(bad)
    for split in loaded:
        loaded[split] = _clean(loaded[split], cfg.unicode_normalization)
    if cfg.deduplicate:
        loaded["train"], dups = _deduplicate(loaded["train"])
        removed += dups
    owner: dict = {}
    for split in PRECEDENCE:  # the given evaluation sets stay whole; train gives way
        if split in loaded:
            loaded[split], leaked = remove_leaks(loaded[split], [_prompt_key(m) for m in loaded[split].messages],
                                                 owner, split, "prompt")
            removed += leaked
            owner.update((_prompt_key(m), split) for m in loaded[split].messages)
    to_make = {s: getattr(cfg, f"{s}_fraction") for s in ("validation", "test") if s not in loaded}
    if to_make:
        train = loaded["train"]
        fractions = {"train": 1.0 - sum(to_make.values()), **to_make}
        # one prompt's conversations stay in one split (as for given splits: no prompt in two)
        strata = [m[-1]["content"] for m in train.messages] if config.task.label_answers else [0] * len(train)
        parts = stratified_split([_prompt_key(m) for m in train.messages], strata, fractions, cfg.seed)
        for split, idx in parts.items():
            loaded[split] = train.take(idx)
    splits = {s: loaded[s] for s in SPLITS if s in loaded}
    lengths = {s: _lengths(v, tokenizer, config) for s, v in splits.items()}
    too_long = [p for s, v in splits.items() for p in _too_long(v, lengths[s], config.model.max_length)]
    if too_long and cfg.too_long == "error":
        raise DataError(format_problems(too_long, f"{len(too_long)} conversation(s) are longer than model.max_length",
                                        "Raise model.max_length, shorten them, or set data.too_long: truncate "
                                        "(the part past max_length is then not learned)."))
    for split, found in splits.items():
        if not len(found):
            raise DataError(f"{found.file}: no conversation of the {split} split is left (see the problems above)")
    report = _report(config, splits, lengths, removed, given, read_counts)
    columns = {s: {"messages": [json.dumps(m, ensure_ascii=False) for m in v.messages], f"source_{v.unit}": v.where}
               for s, v in splits.items()}
    labels = sorted({m[-1]["content"] for m in splits["train"].messages}) if config.task.label_answers else []
    return Built(columns, labels, report, _markdown(report))


def prepare_file(path, config: Config, labels: list[str], out: Path) -> Path:
    """One more file of conversations (e.g. to evaluate on), read, checked and cleaned as the data stage does."""
    found, bad = read(Path(path), config)
    if bad and config.data.on_bad_rows == "error":
        raise DataError(format_problems(bad, f"{path} has bad conversations", "Fix these rows, or set data.on_bad_rows: drop."))
    found = _clean(found, config.data.unicode_normalization)
    if not len(found):
        raise DataError(f"{path}: no usable conversation; nothing to evaluate")
    out.parent.mkdir(parents=True, exist_ok=True)
    write_split({"messages": [json.dumps(m, ensure_ascii=False) for m in found.messages]}, out, "parquet")
    return out


def _report(config: Config, splits: dict, lengths: dict, removed: list, given: dict, read_counts: dict) -> dict:
    from tunelab import __version__

    max_length = config.model.max_length
    per_split, warnings = {}, []
    for split, found in splits.items():
        n = lengths[split]
        per_split[split] = {
            "source": str(given[split]) if split in given else f"split from {config.data.train} (seed {config.data.seed})",
            "rows_read": read_counts.get(split, 0), "conversations": len(found),
            "turns": int(sum(len(m) for m in found.messages)),
            "answers": int(sum(1 for conv in found.messages for m in conv if m["role"] == "assistant")),
            "over_max_length": int((n > max_length).sum()), "tokens": length_stats(n, max_length),
        }
        if per_split[split]["over_max_length"]:
            warnings.append(f"{per_split[split]['over_max_length']} {split} conversation(s) are longer than "
                            f"model.max_length ({max_length} tokens): cut there, the rest is not learned")
    reasons = removed_counts(removed)
    return {
        "name": config.name, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "tunelab_version": __version__, "task": "causal_lm", "tokenizer": config.model.name, "splits": per_split,
        "rows_written": sum(v["conversations"] for v in per_split.values()), "rows_removed": len(removed),
        "removed": dict(sorted(reasons.items())), "removed_rows": [p.to_dict() for p in removed], "warnings": warnings,
    }


def _markdown(report: dict) -> str:
    lines = [f"# Data report: {report['name']}", "", f"Prepared {report['created']} by tunelab {report['tunelab_version']}: "
             "causal LM, conversations through the chat template.", "",
             "| split | source | conversations | answers | tokens (mean / max) | over max_length |",
             "| --- | --- | ---: | ---: | ---: | ---: |"]
    for split, info in report["splits"].items():
        tokens = info["tokens"]
        lines.append(f"| {split} | {info['source']} | {info['conversations']} | {info['answers']} | "
                     f"{tokens.get('mean', 0):.0f} / {tokens.get('max', 0)} | {info['over_max_length']} |")
    lines += ["", f"Conversations written: {report['rows_written']}; removed: {report['rows_removed']}.", ""]
    lines += removed_markdown(report, "conversations")
    if report["warnings"]:
        lines += ["## Warnings", ""] + [f"- {w}" for w in report["warnings"]]
    return "\n".join(lines) + "\n"
