"""Apply a method to a task model, save what it trained, and load it back.

'model' methods write a plain save_pretrained folder; 'peft' ones peft's adapter folder
(adapter_config.json + adapter_model.safetensors, head included), which transformers and peft load over
the base; 'state' ones (prefix, adapter) only their trained tensors in method_weights.safetensors.
The base model is named in tunelab.json (`base_model`), so a PEFT run saves megabytes, not the base.
"""

from __future__ import annotations

from pathlib import Path

import torch

from tunelab.errors import TunelabError
from tunelab.methods import METHODS
from tunelab.methods.parts import head_modules

STATE_FILE = "method_weights.safetensors"


def apply_method(model, method_config):
    """The task model prepared for `method_config.name`: frozen parts frozen, added modules added."""
    name = method_config.name
    if name not in METHODS:
        raise TunelabError(f"method.name: unknown method '{name}'; known: {', '.join(METHODS)}")
    settings = getattr(method_config, name, None)
    return METHODS[name].apply(model, settings, head_modules(model))


def trained_state(model) -> dict[str, torch.Tensor]:
    """The tensors a 'state' method trained (its own modules, the head, any unfrozen norms)."""
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    return {n: t.detach().cpu().contiguous() for n, t in model.state_dict().items() if n in names}


def save_weights(model, method: str, out: Path) -> None:
    """Write the weights of `model` (trained with `method`) into the folder `out`."""
    kind = METHODS[method].SAVES
    if kind == "state":
        from safetensors.torch import save_file

        save_file(trained_state(model), str(out / STATE_FILE))
        model.config.save_pretrained(out)  # labels and architecture, for readers of the folder
    else:  # a transformers or peft model: both save safetensors
        model.save_pretrained(out, safe_serialization=True)


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
    from tunelab.models.source import quiet_transformers, resolve_model
    from tunelab.tasks import make_task

    quiet_transformers()
    task = make_task(meta["task"], meta["labels"], meta["multi_label"], meta["pair"])
    revision = meta.get("base_revision")
    return task.build_model(resolve_model(meta["base_model"], revision), None, revision,
                            meta.get("trust_remote_code", False), meta.get("attention"))
