"""tunelab.json: what a model folder is (task, labels, base, method, calibration, provenance), read and written
in one place.

Every folder tunelab writes -- a run's model/, a merged or ONNX export -- carries one. Folders written before
the card had a version (version 1: the same keys, untyped) load unchanged; keys this version does not know are
kept and written back, so a folder round-trips through an older or newer tunelab without losing anything.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path

from tunelab.errors import TunelabError

CARD_FILE = "tunelab.json"
CARD_VERSION = 2


@dataclass
class ModelCard:
    task: str  # the task's registry name (tasks/__init__.py)
    labels: list[str]  # class names; for token classification the IOB2 tags
    max_length: int  # tokens per input the model was trained with
    base_model: str  # 'default', a hub id, or an absolute folder: what a PEFT/state folder loads under itself
    method: dict = field(default_factory=lambda: {"name": "full"})  # name + that method's settings
    multi_label: bool = False
    pair: bool = False
    threshold: float = 0.5  # multi-label decision threshold
    temperature: float | None = None  # folded into the head's output layer (tasks/calibration.py); for reading
    task_options: dict = field(default_factory=dict)  # what the task needs to read its inputs back (tag scheme, ...)
    base_revision: str | None = None
    trust_remote_code: bool = False
    attention: str | None = None
    layers: int | None = None  # the base's first N layers only (model.layers)
    clean: dict = field(default_factory=dict)  # the text cleaning of the data stage, applied again at prediction
    parameters: dict = field(default_factory=dict)  # trainable / total counts
    saved_bytes: int = 0
    run: str | None = None
    best_step: int | None = None
    validation: dict = field(default_factory=dict)  # the kept model's validation metrics
    exported_from: str | None = None  # an export folder: the run it came from
    merged_from: dict | None = None  # a merged folder: {run, method}
    distilled_from: str | None = None  # train.distill: the teacher's model folder
    onnx: dict | None = None  # an ONNX folder: {opset, quantize, inputs, ...}
    extra: dict = field(default_factory=dict)  # keys this version does not know, kept as they were
    version: int = CARD_VERSION

    @property
    def method_name(self) -> str:
        return self.method.get("name", "full")

    @classmethod
    def from_dict(cls, raw: dict, where: str = "tunelab.json") -> ModelCard:
        known = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        missing = [k for k in ("task", "labels", "max_length") if k not in raw]
        if missing:
            raise TunelabError(f"{where}: not a tunelab model description (no {', '.join(missing)})")
        values = {k: v for k, v in raw.items() if k in known}
        values.setdefault("base_model", "default")
        values["version"] = CARD_VERSION
        return cls(**values, extra={k: v for k, v in raw.items() if k not in known})

    @classmethod
    def read(cls, folder: str | Path) -> ModelCard:
        path = Path(folder) / CARD_FILE
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise TunelabError(f"{folder}: no {CARD_FILE}, so not a model folder tunelab wrote") from None
        except (OSError, ValueError) as exc:
            raise TunelabError(f"{path} cannot be read ({exc}); the folder is damaged") from None
        return cls.from_dict(raw, str(path))

    def to_dict(self) -> dict:
        out = {k: v for k, v in dataclasses.asdict(self).items() if k != "extra"}
        return {**self.extra, **{k: v for k, v in out.items() if v is not None}}

    def write(self, folder: str | Path) -> None:
        (Path(folder) / CARD_FILE).write_text(json.dumps(self.to_dict(), indent=1), encoding="utf-8")

    def replace(self, **changes) -> ModelCard:
        return dataclasses.replace(self, **changes)
