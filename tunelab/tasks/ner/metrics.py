"""Entity-level scores of predicted tags: seqeval in strict IOB2 mode, plus what helps to read them.

An entity counts as found only when its type and both boundaries are right (seqeval strict mode, the
CoNLL-2003 convention). The type confusion matrix matches gold and predicted spans by exact boundaries:
rows are gold types, columns predicted types; a gold entity with no predicted span at its boundaries counts
in column "O" (missed), a predicted span with no gold entity at its boundaries in row "O" (spurious). So a
boundary error counts once as missed and once as spurious, and the diagonal holds seqeval's true positives.
"""

from __future__ import annotations

from typing import Sequence

from tunelab.tasks.ner.schemes import canonical, to_iob2
from tunelab.tasks.ner.spans import entities


def ner_metrics(true_tag_seqs: Sequence[Sequence[str]], pred_tag_seqs: Sequence[Sequence[str]], scheme: str = "IOB2",
                tokens: Sequence[Sequence[str]] | None = None, max_errors: int = 20) -> dict:
    """Scores of predicted tag sequences against gold ones (both in `scheme`, converted to IOB2).

    `errors` lists up to max_errors sentences whose predicted entities differ from the gold ones, with their
    words when `tokens` is given.
    """
    from seqeval.metrics import classification_report
    from seqeval.scheme import IOB2

    if len(true_tag_seqs) != len(pred_tag_seqs):
        raise ValueError(f"{len(true_tag_seqs)} gold sentences but {len(pred_tag_seqs)} predicted")
    scheme = canonical(scheme)
    gold = [to_iob2(t, scheme) for t in true_tag_seqs]
    pred = [to_iob2(t, scheme) for t in pred_tag_seqs]
    for i, (g, p) in enumerate(zip(gold, pred)):
        if len(g) != len(p):
            raise ValueError(f"sentence {i}: {len(g)} gold tags but {len(p)} predicted")
    gold_spans = [entities(g) for g in gold]
    pred_spans = [entities(p) for p in pred]
    zero = {"precision": 0.0, "recall": 0.0, "f1-score": 0.0}
    report = {"micro avg": zero, "macro avg": zero}  # no entity at all: seqeval would average an empty list
    if any(gold_spans) or any(pred_spans):
        report = classification_report(gold, pred, mode="strict", scheme=IOB2, output_dict=True, zero_division=0)
    micro = report.pop("micro avg")
    macro = report.pop("macro avg")
    report.pop("weighted avg", None)
    words = sum(len(g) for g in gold)
    matrix, labels = _type_confusion(gold_spans, pred_spans)
    return {
        "examples": len(gold),
        "entity_precision": float(micro["precision"]),
        "entity_recall": float(micro["recall"]),
        "entity_f1": float(micro["f1-score"]),
        "macro_f1": float(macro["f1-score"]),
        "token_accuracy": sum(a == b for g, p in zip(gold, pred) for a, b in zip(g, p)) / words if words else 0.0,
        "per_type": {kind: {"precision": float(r["precision"]), "recall": float(r["recall"]),
                            "f1": float(r["f1-score"]), "support": int(r["support"])} for kind, r in sorted(report.items())},
        "confusion_matrix": matrix,
        "confusion_labels": labels,
        "errors": _errors(gold_spans, pred_spans, tokens, max_errors),
    }


def _type_confusion(gold_spans, pred_spans) -> tuple[list[list[int]], list[str]]:
    """Counts[gold type][predicted type] over spans matched by exact boundaries; "O" for no match."""
    labels = sorted({s[2] for spans in gold_spans + pred_spans for s in spans}) + ["O"]
    index = {label: k for k, label in enumerate(labels)}
    matrix = [[0] * len(labels) for _ in labels]
    for gold, pred in zip(gold_spans, pred_spans):
        predicted = {(s, e): kind for s, e, kind, _ in pred}
        golden = {(s, e): kind for s, e, kind, _ in gold}
        for (s, e), kind in golden.items():
            matrix[index[kind]][index[predicted.get((s, e), "O")]] += 1
        for (s, e), kind in predicted.items():
            if (s, e) not in golden:
                matrix[index["O"]][index[kind]] += 1
    return matrix, labels


def _errors(gold_spans, pred_spans, tokens, limit: int) -> list[dict]:
    def shown(spans, words):
        return [{"start": s, "end": e, "label": kind, **({"text": " ".join(words[s:e])} if words is not None else {})}
                for s, e, kind, _ in spans]

    out = []
    for i, (gold, pred) in enumerate(zip(gold_spans, pred_spans)):
        if len(out) >= limit:
            break
        if gold != pred:
            words = list(tokens[i]) if tokens is not None else None
            out.append({"sentence": i, "tokens": words, "gold": shown(gold, words), "predicted": shown(pred, words)})
    return out
