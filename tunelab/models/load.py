"""A trained model back from its folder: the base rebuilt and the method's saved weights put on it."""

from __future__ import annotations

from pathlib import Path

from tunelab.errors import TunelabError
from tunelab.methods import METHODS
from tunelab.methods.store import STATE_FILE, apply_method, trained_state
from tunelab.models.card import ModelCard
from tunelab.tasks import task_of


def load_model(model_dir: Path, card: ModelCard | None = None):
    """A trained model back from its folder, in eval mode: the base from `card.base_model` for PEFT runs."""
    from tunelab.config import MethodConfig

    model_dir = Path(model_dir)
    card = card or ModelCard.read(model_dir)
    kind = METHODS[card.method_name].SAVES
    if kind == "model":
        import transformers

        return getattr(transformers, task_of(card).auto_class).from_pretrained(model_dir).eval()
    base = build_base(card)
    if kind == "peft":
        from peft import PeftModel

        return PeftModel.from_pretrained(base, model_dir).eval()
    from safetensors.torch import load_file

    model = apply_method(base, MethodConfig.model_validate(card.method))
    saved = load_file(str(model_dir / STATE_FILE))
    missing, unexpected = set(trained_state(model)) - set(saved), set(saved) - set(model.state_dict())
    if missing or unexpected:
        raise TunelabError(f"{model_dir / STATE_FILE} does not fit method '{card.method_name}' on {card.base_model}: "
                           f"missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]}")
    model.load_state_dict(saved, strict=False)
    return model.eval()


def build_base(card: ModelCard):
    """The pretrained base with a fresh head for the run's labels (the saved weights then replace it)."""
    from tunelab.hub import quiet_transformers, resolve_model

    quiet_transformers()
    return task_of(card).build_model(resolve_model(card.base_model, card.base_revision), None, card.base_revision,
                                     card.trust_remote_code, card.attention, card.layers)
