"""A trained model back from its folder: the base rebuilt and the method's saved weights put on it."""

from __future__ import annotations

from pathlib import Path

from tunelab.errors import TunelabError
from tunelab.methods import METHODS
from tunelab.methods.store import STATE_FILE, apply_method, trained_state


def load_model(model_dir: Path, meta: dict):
    """A trained model back from its folder, in eval mode: the base from `meta['base_model']` for PEFT runs."""
    from tunelab.config import MethodConfig

    method = meta.get("method", {"name": "full"})
    kind = METHODS[method["name"]].SAVES
    if kind == "model":
        from transformers import AutoModelForSequenceClassification

        return AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    base = build_base(meta)
    if kind == "peft":
        from peft import PeftModel

        return PeftModel.from_pretrained(base, model_dir).eval()
    from safetensors.torch import load_file

    model = apply_method(base, MethodConfig.model_validate(method))
    saved = load_file(str(model_dir / STATE_FILE))
    missing, unexpected = set(trained_state(model)) - set(saved), set(saved) - set(model.state_dict())
    if missing or unexpected:
        raise TunelabError(f"{model_dir / STATE_FILE} does not fit method '{method['name']}' on {meta['base_model']}: "
                           f"missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]}")
    model.load_state_dict(saved, strict=False)
    return model.eval()


def build_base(meta: dict):
    """The pretrained base with a fresh head for the run's labels (the saved weights then replace it)."""
    from tunelab.hub import quiet_transformers, resolve_model
    from tunelab.tasks import make_task

    quiet_transformers()
    task = make_task(meta["task"], meta["labels"], meta["multi_label"], meta["pair"])
    revision = meta.get("base_revision")
    return task.build_model(resolve_model(meta["base_model"], revision), None, revision,
                            meta.get("trust_remote_code", False), meta.get("attention"))
