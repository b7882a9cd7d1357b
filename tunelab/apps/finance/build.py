"""`tunelab app finance init DIR` and `build CONFIG`: a config for the user's own files; the models trained,
exported and evaluated, with one report.

build is safe to run again: a finished training is reused (an interrupted one resumes), an export that is
there is kept; `retrain` starts the trainings over.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from tunelab.errors import TunelabError

EXAMPLE_WATCHLIST = """name,aliases,ticker,sector
Nokia,Nokia Oyj|Nokia Corporation,NOKIA,Technology
Stora Enso,Stora Enso Oyj,STERV,Materials
"""


@dataclass
class BuildResult:
    app_dir: Path
    report: dict = field(default_factory=dict)  # also in app_dir/report.json


def init(folder: str | Path, data: str | Path | None = None, watchlist: str | Path | None = None,
         labels: tuple[str, ...] = ("negative", "neutral", "positive")) -> Path:
    """Write folder/finance.yaml, folder/sentiment.yaml (a classification run over `data`: a CSV with text and
    label columns; texts are scored by a 4-layer model distilled from it, as in the shipped example) and, unless
    given, a watchlist to edit. Refuses to overwrite an existing config."""
    import yaml

    from tunelab.apps.config import new_config

    folder = Path(folder)
    target = new_config(folder, "finance.yaml", {"--data": data, "--watchlist": watchlist})
    folder.mkdir(parents=True, exist_ok=True)
    train_file = str(Path(data).resolve()) if data else "${TUNELAB_DATA:-../shared/data}/financial_phrasebank/sentences_50agree/all.csv"
    sentiment = {"name": f"{folder.resolve().name}-sentiment", "runs_dir": str((folder / "runs").resolve()),
                 "data": {"train": train_file, "labels": list(labels), "validation_fraction": 0.1,
                          "test_fraction": 0.1, "seed": 42},
                 "model": {"name": "default", "max_length": 128}}
    (folder / "sentiment.yaml").write_text(
        "# The sentiment model: a tunelab classification run (every key: tunelab config schema).\n"
        + yaml.safe_dump(sentiment, sort_keys=False), encoding="utf-8")
    if watchlist is None:
        (folder / "watchlist.csv").write_text(EXAMPLE_WATCHLIST, encoding="utf-8")
    config = {"app": "finance", "name": "finance", "runs_dir": "runs", "sentiment": "sentiment.yaml",
              "sentiment_layers": 4, "watchlist": str(Path(watchlist).resolve()) if watchlist else "watchlist.csv",
              "alerts": {"shift": 0.3, "rate_factor": 4.0, "threshold": 8.0, "min_negative": 4}}
    target.write_text("# tunelab app finance: every key and its meaning in docs/apps/finance.md\n"
                      + yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return target


SENTIMENT, NER = "finance-sentiment", "finance-ner"  # the names the app's models are served under
MODELS = (SENTIMENT, NER)


def served_models(config) -> dict[str, Path]:
    """The app's models by their served names: what `tunelab serve --app` and `tunelab app finance ingest` load."""
    models = {SENTIMENT: model_folder(config, "sentiment")}
    if config.ner is not None:
        models[NER] = model_folder(config, "ner")
    return models


def model_folder(config, part: str) -> Path:
    """The folder the app scores with: the run's ONNX export (int8 or fp32) or its torch model."""
    from tunelab.apps.runs import model_folder as folder

    return folder(scoring_run(config, part), config.backend, f"tunelab app finance build {config.source}")


def scoring_run(config, part: str):
    """The run config whose model scores `part`: the sentiment run's shallower student with sentiment_layers."""
    from tunelab.apps.runs import student_config

    if part == "sentiment" and config.sentiment_layers is not None:
        return student_config(config.sentiment, config.sentiment_layers)
    return getattr(config, part)


def build(config, retrain: bool = False, quiet: bool = False) -> BuildResult:
    """Train (or reuse) the sentiment model and the optional NER model, export them, evaluate them on their test
    splits; write app_dir/report.json and report.md."""
    from tunelab.apps.finance.watchlist import read_watchlist
    from tunelab.apps.runs import build_run, depth_of, run_config

    watchlist = read_watchlist(config.watchlist)  # a bad watchlist fails before an hour of training
    report: dict = {"watchlist_companies": len(watchlist.companies)}
    command = f"tunelab app finance build {config.source}"
    if config.sentiment_layers is not None:  # the teacher first: the student learns from its trained model
        sentiment = run_config(config.sentiment)
        depth = depth_of(sentiment)  # a student as deep as its teacher gains nothing: said before any training
        if depth is not None and config.sentiment_layers >= depth:
            raise TunelabError(f"{config.source}: sentiment_layers is {config.sentiment_layers}, but the sentiment model "
                               f"has {depth} layers; give fewer (or null to score with the sentiment run itself)")
        teacher = build_run(sentiment, "sentiment teacher", "classification", "torch", retrain, quiet, command)
        teacher.pop("labels")
        report["sentiment_teacher"] = teacher
    for part in ("sentiment", "ner") if config.ner else ("sentiment",):
        expected = "classification" if part == "sentiment" else "token_classification"
        entry = build_run(scoring_run(config, part), part, expected, config.backend, retrain, quiet, command)
        labels = entry.pop("labels")
        if part == "sentiment":
            missing = {config.negative_label, config.positive_label} - set(labels)
            if missing:
                raise TunelabError(f"{config.sentiment}: the sentiment model's labels are {', '.join(labels)}; the app "
                                   f"needs {', '.join(sorted(missing))} (negative_label, positive_label in "
                                   f"{config.source})")
        elif config.ner_label not in {tag.split("-", 1)[-1] for tag in labels}:  # IOB2 tags: B-ORG, I-ORG
            raise TunelabError(f"{config.ner}: the NER model's tags are {', '.join(labels)}, none of them "
                               f"{config.ner_label} (ner_label in {config.source})")
        report[part] = entry
    app_dir = config.app_dir
    app_dir.mkdir(parents=True, exist_ok=True)
    (app_dir / "report.json").write_text(json.dumps(report, indent=2, default=str), encoding="utf-8")
    (app_dir / "report.md").write_text(_markdown(report), encoding="utf-8")
    return BuildResult(app_dir, report)


def _markdown(report: dict) -> str:
    lines = ["# Finance app build", "", f"Watchlist: {report['watchlist_companies']} companies.", ""]
    for part in ("sentiment", "sentiment_teacher", "ner"):
        if part in report:
            entry = report[part]
            figures = ", ".join(f"{k} {v:.4f}" for k, v in entry["test"].items() if isinstance(v, float))
            lines += [f"## {part.replace('_', ' ')}", "", f"- run: `{entry['run']}` ({entry['steps']} steps)",
                      f"- test split: {figures}"]
            if "export" in entry:
                lines.append(f"- scored by: `{entry['export']}`")
            lines.append("")
    return "\n".join(lines)
