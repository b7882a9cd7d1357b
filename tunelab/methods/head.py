"""linear probe: only the task head trains."""

from tunelab.methods.parts import train_only

LEARNING_RATE = 1e-1  # measured: benchmarks/methods.py --sweep
SAVES = "model"


def apply(model, settings, head):
    train_only(model, [getattr(model, name) for name in head])
    return model
