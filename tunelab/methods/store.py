"""Apply a method to a task model, and save what it trained (models/load.py loads it back).

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


def trained_state(model, state_dict: dict | None = None) -> dict[str, torch.Tensor]:
    """The tensors a 'state' method trained (its own modules, the head, any unfrozen norms)."""
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    state = model.state_dict() if state_dict is None else state_dict
    return {n: t.detach().cpu().contiguous() for n, t in state.items() if n in names}


def save_weights(model, method: str, out: Path, state_dict: dict | None = None) -> None:
    """Write the weights of `model` (trained with `method`) into the folder `out`. `state_dict`: the whole model's
    weights, where the model itself holds only its shard of them (train.fsdp)."""
    kind = METHODS[method].SAVES
    if kind == "state":
        from safetensors.torch import save_file

        save_file(trained_state(model, state_dict), str(out / STATE_FILE))
        model.config.save_pretrained(out)  # labels and architecture, for readers of the folder
    else:  # a transformers or peft model: both save safetensors
        model.save_pretrained(out, safe_serialization=True, **({"state_dict": state_dict} if state_dict else {}))
