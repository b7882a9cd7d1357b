"""The data stage of token classification: sentences of tagged words from CoNLL or JSONL files.

read (ner/formats.py) -> check the tag scheme and convert to IOB2 (ner/schemes.py) -> clean the words ->
duplicates out of train -> sentences that leak between splits out -> split (stratified by each sentence's most
frequent entity type) -> report. Evaluation files keep their duplicates: a repeated sentence of an official
test set is a real case to score.
"""

from __future__ import annotations

import unicodedata
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from tunelab.config import Config
from tunelab.data.load import Problem
from tunelab.data.pipeline import MAX_SHOWN, PRECEDENCE, SPLITS, Built, format_problems, write_split
from tunelab.data.report import length_stats, removed_counts, removed_markdown
from tunelab.data.split import remove_leaks, stratified_split
from tunelab.errors import DataError
from tunelab.tasks.ner.formats import Sentences, read_conll, read_entity_jsonl, read_token_jsonl, detect_format
from tunelab.tasks.ner.schemes import entity_types, iob2_labels, validate_sentences
from tunelab.tasks.ner.spans import entities

FORMATS = ("conll", "token_jsonl", "entity_jsonl")


def read(path: Path, config: Config, scheme: str) -> tuple[Sentences, list[Problem], str]:
    """A file's valid sentences (tags in IOB2), the problems of the others, and the scheme it was read in."""
    cfg = config.data
    fmt = cfg.format if cfg.format in FORMATS else detect_format(path)
    if fmt == "conll":
        sentences = read_conll(path, cfg.encoding)
    elif fmt == "token_jsonl":
        sentences = read_token_jsonl(path, cfg.encoding, cfg.tokens_column, cfg.tags_column)
    else:
        sentences = read_entity_jsonl(path, cfg.encoding, cfg.text_column, cfg.entities_column)
    if not len(sentences) and not sentences.problems:
        raise DataError(f"{path}: no sentence in the file; it must hold at least one")
    checked = validate_sentences(sentences, scheme)
    kept = sentences.take(checked.kept)
    kept.tags = checked.tags
    return kept, sentences.problems + checked.problems, checked.scheme


def build_data(config: Config, tokenizer, say, quiet: bool) -> Built:
    cfg = config.data
    given = {s: Path(getattr(cfg, s)) for s in SPLITS if getattr(cfg, s) is not None}
    loaded: dict[str, Sentences] = {}
    bad: list[Problem] = []
    scheme = cfg.tag_scheme
    read_counts = {}
    for split in ("train", *[s for s in given if s != "train"]):  # train first: its scheme is the others'
        say(f"data: reading {split} from {given[split]}")
        loaded[split], problems, found = read(given[split], config, scheme)
        read_counts[split] = len(loaded[split]) + len(problems)
        if split == "train":
            scheme = found
        bad += problems
    types = list(cfg.labels) if cfg.labels else sorted(entity_types(loaded["train"].tags))
    for split, sentences in loaded.items():
        unknown = [(i, kind) for i, tags in enumerate(sentences.tags) for _, _, kind, _ in entities(tags) if kind not in types]
        if unknown:
            drop = sorted({i for i, _ in unknown})
            bad += [Problem(sentences.file, sentences.where[i], None, "unknown_label",
                            f"entity type '{next(k for j, k in unknown if j == i)}' is not one of {', '.join(types)}",
                            sentences.unit) for i in drop]
            loaded[split] = sentences.take([i for i in range(len(sentences)) if i not in set(drop)])
    if bad and cfg.on_bad_rows == "error":
        raise DataError(format_problems(bad, "the data has bad sentences",
                                        "Fix these sentences, or set data.on_bad_rows: drop to leave them out "
                                        "(each is then listed in the data report)."))
    removed = list(bad)
    for split in loaded:
        loaded[split] = _clean(loaded[split], cfg)
    conflicts: list[dict] = []
    if cfg.deduplicate:
        loaded["train"], dups, conflicts = _deduplicate(loaded["train"], cfg)
        removed += dups
    owner: dict = {}  # words of a sentence -> the split that keeps it
    for split in PRECEDENCE:  # the given evaluation sets stay whole; train gives way
        if split in loaded:
            loaded[split], leaked = remove_leaks(loaded[split], [tuple(t) for t in loaded[split].tokens], owner,
                                                 split, "sentence")
            removed += leaked
            owner.update((tuple(t), split) for t in loaded[split].tokens)
    for split, sentences in loaded.items():
        if not len(sentences):
            raise DataError(format_problems([p for p in removed if p.file == sentences.file],
                                            f"{sentences.file}: no sentence of the {split} split is left",
                                            "Fix these sentences, or give another file."))
    to_make = {s: getattr(cfg, f"{s}_fraction") for s in ("validation", "test") if s not in loaded}
    if to_make:
        train = loaded["train"]
        fractions = {"train": 1.0 - sum(to_make.values()), **to_make}
        parts = stratified_split([tuple(t) for t in train.tokens], [_main_type(t) for t in train.tags], fractions, cfg.seed)
        for split, idx in parts.items():
            loaded[split] = train.take(idx)
    splits = {s: loaded[s] for s in SPLITS if s in loaded}
    report = _report(config, splits, removed, conflicts, types, scheme, tokenizer, given, read_counts)
    columns = {s: {"tokens": v.tokens, "tags": v.tags, "text": v.text, "offsets": [[list(o) for o in offs] for offs in v.offsets],
                   f"source_{v.unit}": v.where} for s, v in splits.items()}
    return Built(columns, iob2_labels(types), report, _markdown(report), task_options={"scheme": scheme})


def prepare_file(path, config: Config, labels: list[str], out: Path) -> Path:
    """One more tagged file (e.g. to evaluate on), read, checked and cleaned as the data stage does; written to out."""
    types = [t[2:] for t in labels if t.startswith("B-")]
    sentences, bad, _ = read(Path(path), config, config.data.tag_scheme)
    wrong = [Problem(sentences.file, sentences.where[i], None, "unknown_label",
                     f"entity type '{kind}' is not one the model knows ({', '.join(types)})", sentences.unit)
             for i, tags in enumerate(sentences.tags) for _, _, kind, _ in entities(tags) if kind not in types]
    bad += wrong
    if bad and config.data.on_bad_rows == "error":
        raise DataError(format_problems(bad, f"{path} has bad sentences", "Fix these sentences, or set data.on_bad_rows: drop."))
    drop = {p.where for p in wrong}
    sentences = _clean(sentences.take([i for i, w in enumerate(sentences.where) if w not in drop]), config.data)
    if not len(sentences):
        raise DataError(f"{path}: no usable sentence; nothing to evaluate")
    out.parent.mkdir(parents=True, exist_ok=True)
    write_split({"tokens": sentences.tokens, "tags": sentences.tags, "text": sentences.text,
                 "offsets": [[list(o) for o in offs] for offs in sentences.offsets]}, out, "parquet")
    return out


def _clean(sentences: Sentences, cfg) -> Sentences:
    """Each word in the configured Unicode form (and lower case if asked). Words are not split or joined, so the
    tags and the offsets into the text stay right."""
    form, lower = cfg.unicode_normalization, cfg.lowercase
    if form == "none" and not lower:
        return sentences

    def clean(word: str) -> str:
        word = unicodedata.normalize(form, word) if form != "none" else word
        return word.lower() if lower else word
    sentences.tokens = [[clean(w) for w in words] for words in sentences.tokens]
    return sentences


def _deduplicate(sentences: Sentences, cfg) -> tuple[Sentences, list[Problem], list[dict]]:
    """Exact repeats (same words, same tags) leave train, the first kept. The same words with other tags are a
    conflict: data.conflicting_duplicates drops every copy, keeps the first, or stops."""
    variants: dict = {}
    for words, tags in zip(sentences.tokens, sentences.tags):
        variants.setdefault(tuple(words), set()).add(tuple(tags))
    conflicting = {words for words, tags in variants.items() if len(tags) > 1}
    conflicts = [{"text": " ".join(words)} for words in conflicting]
    if conflicts and cfg.conflicting_duplicates == "error":
        raise DataError(f"{len(conflicts)} sentence(s) of {sentences.file} occur with different tags:\n"
                        + "\n".join(f"  {c['text'][:80]!r}" for c in conflicts[:MAX_SHOWN])
                        + "\nFix the tags, or set data.conflicting_duplicates: drop or keep_first")
    first: dict = {}
    keep, removed = [], []
    for i, words in enumerate(sentences.tokens):
        key, at = tuple(words), sentences.where[i]
        if key in conflicting and cfg.conflicting_duplicates == "drop":
            removed.append(Problem(sentences.file, at, None, "conflicting_duplicate",
                                   "the same words occur with other tags in this file", sentences.unit))
        elif key in first:
            removed.append(Problem(sentences.file, at, None, "duplicate",
                                   f"repeats the sentence at {sentences.unit} {sentences.where[first[key]]}", sentences.unit))
        else:
            first[key] = i
            keep.append(i)
    return sentences.take(keep), removed, conflicts


def _main_type(tags: list[str]) -> str:
    """A sentence's stratum for splitting: its most frequent entity type, or O."""
    kinds = Counter(kind for _, _, kind, _ in entities(tags))
    return kinds.most_common(1)[0][0] if kinds else "O"


def _report(config, splits: dict, removed: list, conflicts: list, types: list[str], scheme: str, tokenizer,
            given: dict, read_counts: dict) -> dict:
    from tunelab import __version__
    from tunelab.tasks.ner.align import encode_words

    max_length = config.model.max_length
    per_split, warnings = {}, []
    for split, sentences in splits.items():
        counts = Counter(kind for tags in sentences.tags for _, _, kind, _ in entities(tags))
        windows = encode_words(tokenizer, sentences.tokens, None, max_length)
        per_sentence = np.bincount([w.sentence for w in windows], minlength=len(sentences))
        lengths = np.array([len(w.input_ids) for w in windows], dtype=np.int64)
        per_split[split] = {
            "source": str(given[split]) if split in given else f"split from {config.data.train} (seed {config.data.seed})",
            "sentences_read": read_counts.get(split, 0), "sentences": len(sentences),
            "words": sum(len(t) for t in sentences.tokens),
            "entities": {kind: counts.get(kind, 0) for kind in types},
            "split_into_windows": int((per_sentence > 1).sum()),
            "tokens": length_stats(lengths, max_length),
        }
        missing = [kind for kind in types if not counts.get(kind)]
        if missing and split != "train":
            warnings.append(f"{split} split has no entity of type: {', '.join(missing)}")
        if per_split[split]["split_into_windows"]:
            warnings.append(f"{per_split[split]['split_into_windows']} {split} sentence(s) are longer than "
                            f"model.max_length ({max_length} tokens): each is read in overlapping windows")
    reasons = removed_counts(removed)
    return {
        "name": config.name, "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "tunelab_version": __version__, "task": "token_classification", "tokenizer": config.model.name,
        "tag_scheme": scheme, "entity_types": types, "splits": per_split,
        "rows_written": sum(v["sentences"] for v in per_split.values()), "rows_removed": len(removed),
        "removed": dict(sorted(reasons.items())), "removed_rows": [p.to_dict() for p in removed],
        "conflicting_duplicates": conflicts[:MAX_SHOWN], "warnings": warnings,
    }


def _markdown(report: dict) -> str:
    lines = [f"# Data report: {report['name']}", "", f"Prepared {report['created']} by tunelab {report['tunelab_version']}: "
             f"token classification, tags read as {report['tag_scheme']}, entity types {', '.join(report['entity_types'])}.", "",
             "| split | source | sentences | words | windows over max_length | " + " | ".join(report["entity_types"]) + " |",
             "| --- | --- | ---: | ---: | ---: |" + " ---: |" * len(report["entity_types"])]
    for split, info in report["splits"].items():
        lines.append(f"| {split} | {info['source']} | {info['sentences']} | {info['words']} | {info['split_into_windows']} | "
                     + " | ".join(str(info["entities"][k]) for k in report["entity_types"]) + " |")
    lines += ["", f"Sentences written: {report['rows_written']}; removed: {report['rows_removed']}.", ""]
    lines += removed_markdown(report, "sentences")
    if report["warnings"]:
        lines += ["## Warnings", ""] + [f"- {w}" for w in report["warnings"]]
    return "\n".join(lines) + "\n"
