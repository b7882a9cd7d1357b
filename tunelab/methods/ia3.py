"""learned rescaling vectors of keys, values and feed-forward activations (IA3), via peft."""

from pydantic import Field

from tunelab.methods.with_peft import task_type, wrap
from tunelab.settings import Section

LEARNING_RATE = 3e-2  # measured: benchmarks/methods.py --sweep
SAVES = "peft"
MERGEABLE = True


class Settings(Section):
    target_modules: list[str] | None = Field(
        None, description="Modules to rescale; none: peft's choice for the architecture (BERT: key, value, output.dense).")
    feedforward_modules: list[str] | None = Field(
        None, description="Which of target_modules are feed-forward (their input is rescaled); none: peft's choice.")


def apply(model, settings: Settings, head):
    from peft import IA3Config

    return wrap(model, IA3Config(task_type=task_type(model), target_modules=settings.target_modules,
                                 feedforward_modules=settings.feedforward_modules, modules_to_save=head))
