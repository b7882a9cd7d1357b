"""The finance app's config (finance.yaml): one section per part, paths relative to the file itself."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field

from tunelab.config import FolderName

from tunelab.settings import Section


class AlertConfig(Section):
    """Two CUSUMs per company over its texts in arrival order (docs/apps/finance.md): the share of negative texts
    against the company's own baseline share, and the rate of negative texts against its baseline rate; an alert
    fires when either passes `threshold` with at least `min_negative` negative texts in the run."""

    shift: float = Field(0.3, gt=0, lt=1, description="The rise in a company's share of negative texts to detect "
                         "(p1 = baseline + shift). Smaller: earlier alerts on milder surges, more false alerts.")
    rate_factor: float | None = Field(4.0, gt=1, description="The rise in a company's rate of negative texts (per "
                                      "hour, against its baseline) to detect; null: the share alone.")
    threshold: float = Field(8.0, gt=0, description="CUSUM decision limit (log-likelihood ratio). Higher: fewer false "
                             "alerts, later detection (measured in benchmarks/finance.py).")
    min_negative: int = Field(4, ge=1, description="Fewest negative texts about the company in the run that fires: "
                              "a thinly covered company does not alert on one or two items.")
    baseline_texts: int = Field(100, ge=5, description="Half-life, in the company's texts, of its baseline share of "
                                "negative texts (an exponentially weighted mean).")
    prior_texts: int = Field(20, ge=0, description="Weight, in texts, of the all-company negative share in a company's "
                             "baseline: a new company starts from the market's share, not from zero.")
    cooldown_hours: float = Field(24.0, ge=0, description="After an alert, the same company does not alert again for "
                                  "this long (text timestamps): one episode, one alert.")
    webhook_url: str | None = Field(None, pattern=r"^https?://\S+$",
                                    description="POST each alert as JSON here (the monitor's webhook format).")


class FinanceConfig(Section):
    """`tunelab app finance`: a sentiment model, a watchlist, alert settings and a database."""

    app: Literal["finance"] = Field("finance", description="Which application this config is for.")
    name: FolderName = Field("finance", description="Folder under runs_dir for the app's database and report.")
    runs_dir: Path = Field(Path("runs"), description="Where the app folder goes (relative to this file).")
    sentiment: Path = Field(description="The tunelab run config (YAML) of the sentiment model: a classification task "
                            "whose labels include `negative_label` (relative to this file).")
    sentiment_layers: int | None = Field(None, ge=1, description="Score with a model of this many layers, trained by "
                                         "`build` after the sentiment run and distilled from it (train.distill): "
                                         "fewer layers, more texts per second (the shipped example: 4 of MiniLM's "
                                         "6, 1.36x, accuracy within a point). null: the sentiment run scores.")
    ner: Path | None = Field(None, description="Optional tunelab run config of a token-classification model: its "
                             "`ner_label` entities are linked to the watchlist by name, besides the watchlist's own "
                             "matching.")
    ner_label: str = Field("ORG", description="The NER entity type that names companies.")
    watchlist: Path = Field(description="CSV with columns name, aliases ('|'-separated), ticker, sector (relative to "
                            "this file). A text is attributed to every company it names.")
    negative_label: str = Field("negative", description="The sentiment label counted as negative.")
    positive_label: str = Field("positive", description="The sentiment label counted as positive (score = "
                                "p(positive) - p(negative)).")
    backend: Literal["onnx-int8", "onnx-fp32", "torch"] = Field(
        "onnx-int8", description="What scores texts: the ONNX int8 export (the build writes it), fp32 ONNX, or the "
        "torch model.")
    database: str | None = Field(None, description="SQLAlchemy URL (SQLite or PostgreSQL); default: "
                                 "sqlite:///<runs_dir>/<name>/finance.db.")
    retention_days: float = Field(365.0, gt=0, description="Texts older than this (by timestamp) are deleted, with "
                                  "their mentions; alerts stay.")
    max_chars_per_text: int = Field(20000, ge=1, description="A longer text is rejected (with its reason).")
    max_items_per_request: int = Field(1000, ge=1, description="Most items in one POST /v1/finance/ingest.")
    alerts: AlertConfig = Field(default_factory=AlertConfig, description="Negative-surge detection.")
    source: Path | None = Field(None, exclude=True, description="The file this config was read from (set by the loader).")

    @property
    def app_dir(self) -> Path:
        return self.runs_dir / self.name

    def database_url(self) -> str:
        return self.database or f"sqlite:///{self.app_dir / 'finance.db'}"


def load_finance_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> FinanceConfig:
    """Read finance.yaml (paths in it relative to the file's folder)."""
    from tunelab.apps.config import read_app_config

    return read_app_config(path, overrides, FinanceConfig, paths=("runs_dir", "sentiment", "ner", "watchlist"),
                           files=("sentiment", "watchlist", "ner"))
