"""trained virtual tokens prepended to the input embeddings (prompt tuning), via peft."""

from pydantic import Field

from tunelab.methods.with_peft import task_type, wrap
from tunelab.settings import Section

LEARNING_RATE = 3e-2  # measured: benchmarks/methods.py --sweep
SAVES = "peft"


class Settings(Section):
    virtual_tokens: int = Field(20, ge=1, description="Number of trained prompt vectors.")


def apply(model, settings: Settings, head):
    from peft import PromptTuningConfig

    return wrap(model, PromptTuningConfig(task_type=task_type(model), num_virtual_tokens=settings.virtual_tokens,
                                          modules_to_save=head))
