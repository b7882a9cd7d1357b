"""The evaluation report: report.json for machines; report.html (self-contained) and PNGs for people."""

from __future__ import annotations

import html
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

from tunelab.files import write_text_atomic  # noqa: E402
from tunelab.html_report import figure, table  # noqa: E402
from tunelab.tasks.base import SUMMARY_KEYS  # noqa: E402


def plot_confusion(matrix: list[list[int]], labels: list[str], path: Path) -> None:
    n = len(labels)
    size = min(4 + 0.35 * n, 22)
    fig, ax = plt.subplots(figsize=(size, size * 0.85))
    im = ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(n), labels, rotation=90 if n > 6 else 0, fontsize=8 if n > 20 else 10)
    ax.set_yticks(range(n), labels, fontsize=8 if n > 20 else 10)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if n <= 20:
        peak = max(max(r) for r in matrix) or 1
        for i, row in enumerate(matrix):
            for j, v in enumerate(row):
                ax.text(j, i, v, ha="center", va="center", color="white" if v > peak / 2 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046)
    ax.set_title("Confusion matrix")
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def plot_reliability(bins: list[dict], ece: float, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(5, 5))
    ax.plot([0, 1], [0, 1], "--", color="grey", label="perfect calibration")
    if bins:
        centers = [(b["low"] + b["high"]) / 2 for b in bins]
        ax.bar(centers, [b["accuracy"] for b in bins], width=[b["high"] - b["low"] for b in bins],
               edgecolor="black", alpha=0.7, label="accuracy in bin")
        ax.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], "o-", color="darkred", label="mean confidence")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.set_xlabel("confidence")
    ax.set_ylabel("accuracy")
    ax.set_title(f"Reliability (ECE {ece:.3f})")
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def plot_curves(metrics_log: Path, path: Path) -> bool:
    """Training loss and validation metrics against steps, from metrics.jsonl."""
    if not metrics_log.is_file():
        return False
    records = [json.loads(line) for line in metrics_log.read_text().splitlines() if line.strip()]
    train = [r for r in records if "loss" in r]
    val = [r for r in records if r.get("split") == "validation"]
    if not train:
        return False
    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    a.plot([r["step"] for r in train], [r["loss"] for r in train])
    a.set_xlabel("step")
    a.set_ylabel("training loss")
    a.set_title("Training loss")
    for key in ("accuracy", "macro_f1", "micro_f1"):
        if val and key in val[0]:
            b.plot([r["step"] for r in val], [r[key] for r in val], "o-", label=key)
    b.set_xlabel("step")
    b.set_title("Validation")
    if b.get_legend_handles_labels()[0]:
        b.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return True


def plot_label_f1(per_label: dict, path: Path) -> None:
    labels = list(per_label)
    fig, ax = plt.subplots(figsize=(max(5, 0.4 * len(labels)), 4))
    ax.bar(labels, [per_label[lab]["f1"] for lab in labels])
    ax.set_ylim(0, 1)
    ax.set_ylabel("F1")
    ax.set_title("F1 per label")
    plt.setp(ax.get_xticklabels(), rotation=90 if len(labels) > 6 else 0)
    fig.tight_layout()
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)


def _spans(spans: list) -> str:
    return "; ".join(f"{s.get('text', '')} ({s.get('label')})" for s in spans) or "none"


def write_report(out: Path, split: str, metrics: dict, labels: list[str], metrics_log: Path, card) -> None:
    out.mkdir(parents=True, exist_ok=True)
    report = {"split": split, "model": card.run, "base_model": card.base_model, **metrics}
    write_text_atomic(out / "report.json", json.dumps(report, indent=1))

    figures = []
    headline = [[k, metrics[k]] for k in SUMMARY_KEYS if k in metrics]
    sections = [f"<h2>Summary</h2>{table(['metric', 'value'], headline)}"]
    if "per_class" in metrics:
        rows = [[lab, m["precision"], m["recall"], m["f1"], m["support"]] for lab, m in metrics["per_class"].items()]
        sections.append(f"<h2>Per class</h2>{table(['label', 'precision', 'recall', 'F1', 'support'], rows)}")
        plot_confusion(metrics["confusion_matrix"], labels, out / "confusion_matrix.png")
        figures.append((out / "confusion_matrix.png", "Confusion matrix (rows: true label, columns: predicted)"))
        plot_reliability(metrics["reliability"], metrics["ece"], out / "reliability.png")
        figures.append((out / "reliability.png", "Reliability diagram"))
    if "per_type" in metrics:  # token classification: entities by type
        rows = [[kind, m["precision"], m["recall"], m["f1"], m["support"]] for kind, m in metrics["per_type"].items()]
        sections.append(f"<h2>Entities by type</h2>{table(['type', 'precision', 'recall', 'F1', 'support'], rows)}")
        plot_confusion(metrics["confusion_matrix"], metrics["confusion_labels"], out / "confusion_matrix.png")
        figures.append((out / "confusion_matrix.png", "Entity types, matched by exact span (rows: true, columns: "
                                                      "predicted; O: missed or spurious)"))
    if metrics.get("errors"):
        items = "".join(f"<li>{html.escape(' '.join(e.get('tokens') or []))}<br>true: {html.escape(_spans(e['gold']))}"
                        f"<br>predicted: {html.escape(_spans(e['predicted']))}</li>" for e in metrics["errors"])
        sections.append(f"<h2>Examples of errors</h2><ol>{items}</ol>")
    if "per_label" in metrics:
        rows = [[lab, m["f1"], m["support"]] for lab, m in metrics["per_label"].items()]
        sections.append(f"<h2>Per label</h2>{table(['label', 'F1', 'support'], rows)}")
        plot_label_f1(metrics["per_label"], out / "label_f1.png")
        figures.append((out / "label_f1.png", "F1 per label"))
    if plot_curves(metrics_log, out / "curves.png"):
        figures.append((out / "curves.png", "Training curves"))
    sections.append("<h2>Figures</h2>" + "".join(figure(p, alt) for p, alt in figures))
    page = f"""<!doctype html><html><head><meta charset="utf-8"><title>tunelab evaluation: {html.escape(str(card.run))} on {html.escape(split)}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em}}
table{{border-collapse:collapse;margin:1em 0}}td,th{{border:1px solid #ccc;padding:4px 10px;text-align:right}}
td:first-child,th:first-child{{text-align:left}}img{{max-width:100%}}figure{{margin:1.5em 0}}</style></head><body>
<h1>Evaluation of {html.escape(str(card.run))} on {html.escape(split)}</h1>
<p>Base model: {html.escape(str(card.base_model))}; labels: {len(labels)}.</p>
{''.join(sections)}</body></html>"""
    write_text_atomic(out / "report.html", page)
