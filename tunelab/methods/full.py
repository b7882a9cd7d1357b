"""all weights train (classic fine-tuning)."""

LEARNING_RATE = 1e-4  # measured: benchmarks/classification.py (SST-2, FPB, Banking77)
SAVES = "model"


def apply(model, settings, head):
    return model
