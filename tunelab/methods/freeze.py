"""embeddings and the bottom layers frozen; the top layers and the head train."""

from pydantic import Field

from tunelab.errors import ConfigError
from tunelab.methods.parts import embedding_parameters, transformer_layers
from tunelab.settings import Section

LEARNING_RATE = 3e-4  # measured: benchmarks/methods.py --sweep
SAVES = "model"


class Settings(Section):
    layers: int | None = Field(None, ge=0, description="How many bottom layers to freeze; none: all but the top two.")


def apply(model, settings: Settings, head):
    layers = transformer_layers(model)
    k = max(len(layers) - 2, 0) if settings.layers is None else settings.layers
    if k > len(layers):
        raise ConfigError(f"method.freeze.layers: {k}, but the model has only {len(layers)} layers")
    frozen = embedding_parameters(model) | {id(p) for layer in layers[:k] for p in layer.parameters()}
    for p in model.parameters():
        p.requires_grad_(id(p) not in frozen)
    return model
