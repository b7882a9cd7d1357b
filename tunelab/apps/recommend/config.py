"""The recommender app's config (recommend.yaml): interactions, items and tags files, the split, the baselines, the
text tower; paths relative to the file itself."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field, model_validator

from tunelab.apps.config import EncoderTraining
from tunelab.config import FolderName, TuneConfig
from tunelab.settings import Section


class RecommendColumns(Section):
    """Column (or JSON field) names of the three files."""

    user: str = Field("user_id", description="Interactions and tags: the user's id.")
    item: str = Field("item_id", description="Interactions and tags: the item's id.")
    timestamp: str = Field("timestamp", description="Interactions and tags: Unix seconds or an ISO 8601 date.")
    rating: str = Field("rating", description="Interactions: the rating (read only with min_rating).")
    tag: str = Field("tag", description="Tags: the tag.")
    item_id: str = Field("item_id", description="Items: the item's id.")
    item_text: list[str] = Field(["title"], min_length=1, description="Items: the text columns the item tower reads, "
                                 "in order (the first as it is, the others as 'name: value').")
    list_separator: str = Field("|", description="Inside an item text column, what separates a list (genres).")


class TowerConfig(EncoderTraining):
    """The item tower: a sentence encoder fine-tuned on consecutive interactions (towers.py)."""

    epochs: int = Field(1, ge=0, description="Passes over the pairs; 0: the base encoder as it is.")
    batch_size: int = Field(64, ge=2, description="Pairs per step (in-batch negatives).")
    max_length: int = Field(48, ge=8, description="Tokens kept of an item's text.")
    max_pairs: int = Field(20_000, ge=1, description="Consecutive-interaction pairs trained on, drawn at random.")
    recent: list[int] = Field([1, 3, 5, 20, 50], min_length=1, description="User tower: how many of the last items are "
                              "averaged (the best on validation is kept).")
    decay: list[float] = Field([0.8, 0.95, 1.0], min_length=1, description="User tower: weight per step back in "
                               "time (the best on validation is kept).")


class SequenceConfig(Section):
    """The sequence user tower (sequence.py): a small causal transformer over the user's last items, trained on the
    training histories; it replaces the mean of recent items as the hybrid's text side when it scores better on
    validation. The defaults are the better of the two settings measured on MovieLens (BENCHMARKS.md)."""

    epochs: int = Field(60, ge=0, description="Most passes over the training histories (early-stopped on validation "
                        "NDCG@10); 0: no sequence tower.")
    patience: int = Field(6, ge=1, description="Epochs without a validation gain before training stops.")
    dim: int = Field(128, ge=8, description="Width of the item vectors and the transformer.")
    layers: int = Field(2, ge=1, description="Transformer layers.")
    heads: int = Field(2, ge=1, description="Attention heads (dim must divide by it).")
    max_len: int = Field(50, ge=2, description="Last items of a history read.")
    dropout: float = Field(0.3, ge=0, lt=1, description="Dropout in the transformer and on its input.")
    id_dropout: float = Field(0.2, ge=0, lt=1, description="Share of item id embeddings dropped per step, so that the "
                              "text projection alone places items (the path of items with no interactions).")
    learning_rate: float = Field(2e-3, gt=0, description="AdamW's learning rate.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW's weight decay.")
    batch_size: int = Field(128, ge=1, description="Training windows per step.")

    @model_validator(mode="after")
    def _heads_divide_dim(self):
        if self.dim % self.heads:
            raise ValueError(f"dim {self.dim} does not divide into {self.heads} heads")
        return self


class RecommendConfig(Section):
    """`tunelab app recommend`: items recommended from a user's history and the items' text."""

    app: Literal["recommend"] = Field("recommend", description="Which application this config is for.")
    name: FolderName = Field("recommend", description="Folder under runs_dir for the app's models and report.")
    runs_dir: Path = Field(Path("runs"), description="Where the app folder goes (relative to this file).")
    interactions: Path = Field(description="Who took what, when: user, item, timestamp (and rating).")
    items: Path = Field(description="The catalogue: an id and the text columns of every item, with or without "
                        "interactions.")
    tags: Path | None = Field(None, description="Optional: users' tags on items (user, item, tag, timestamp); each "
                              "item's most frequent training tags join its text.")
    columns: RecommendColumns = Field(default_factory=RecommendColumns, description="Column names of the files.")
    min_rating: float | None = Field(None, description="Interactions rated below this are not positives and are "
                                     "left out (none: every interaction counts).")
    tags_per_item: int = Field(5, ge=0, description="Most frequent tags added to an item's text.")
    seed: int = Field(42, description="Pair sampling, training and factorisation seeds.")
    tower: TowerConfig = Field(default_factory=TowerConfig, description="The text model.")
    sequence: SequenceConfig = Field(default_factory=SequenceConfig, description="The sequence user tower.")
    baselines: list[Literal["popularity", "item_knn", "als", "bpr"]] = Field(
        ["popularity", "item_knn", "als", "bpr"], description="Collaborative baselines fitted, tuned on validation "
        "and reported; item-kNN joins the hybrid.")
    hybrid_weights: list[float] = Field([0.0, 0.2, 0.4, 0.5, 0.6, 0.8, 1.0], min_length=1,
                                        description="Weights of the text side tried for the hybrid with item-kNN "
                                        "(validation NDCG@10); the text side is the sequence tower or the mean of "
                                        "recent items, whichever scores better on validation.")
    backend: Literal["onnx-int8", "onnx-fp32", "torch"] = Field(
        "onnx-int8", description="What runs the item tower (the build measures with it, the server embeds new items "
        "with it): ONNX int8 (the build exports it), fp32 ONNX, or torch.")
    database: str | None = Field(None, description="SQLAlchemy URL where items added through the API are kept; "
                                 "default: sqlite:///<runs_dir>/<name>/recommend.db.")
    tune: TuneConfig | None = Field(None, description="A search over this config's keys with `tunelab tune` (e.g. "
                                    "sequence.dim: [64, 128]): each trial a build in <runs_dir>/<name>/trial-<n>/, "
                                    "scored by the served model's validation NDCG@10; none: no search.")
    source: Path | None = Field(None, exclude=True, description="The file this config was read from (set by the loader).")

    @property
    def app_dir(self) -> Path:
        return self.runs_dir / self.name

    def database_url(self) -> str:
        return self.database or f"sqlite:///{self.app_dir / 'recommend.db'}"


def load_recommend_config(path: str | Path, overrides: list[str] | tuple[str, ...] = ()) -> RecommendConfig:
    """Read recommend.yaml (paths in it relative to the file's folder)."""
    from tunelab.apps.config import read_app_config

    files = ("interactions", "items", "tags")
    return read_app_config(path, overrides, RecommendConfig, paths=("runs_dir", *files), files=files)
