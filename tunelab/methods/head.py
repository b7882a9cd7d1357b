"""linear probe: only the task head trains."""

from tunelab.methods.parts import train_only

LEARNING_RATE = 1e-1  # measured: benchmarks/methods.py --sweep
SAVES = "model"


def apply(model, settings, head):
    if not head:
        from tunelab.errors import ConfigError

        raise ConfigError(f"method 'head' trains a new task head, and {type(model).__name__} has none (a causal LM's "
                          "head is pretrained); use lora, ia3, prompt, adapter, freeze or full")
    train_only(model, [getattr(model, name) for name in head])
    return model
