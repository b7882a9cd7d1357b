"""What the peft-backed methods (lora, ia3, prompt) share: the task type and the wrapping."""

from __future__ import annotations

import warnings

# peft 0.21 still calls transformers' deprecated is_gradient_checkpointing: not the user's concern
warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
# its generate() for prompt tuning warns on every call that it builds positions itself (packing refuses prompt)
warnings.filterwarnings("ignore", message="Position ids are not supported for parameter efficient tuning")

_TASK_TYPES = {"ForSequenceClassification": "SEQ_CLS", "ForTokenClassification": "TOKEN_CLS",
               "ForCausalLM": "CAUSAL_LM", "ForQuestionAnswering": "QUESTION_ANS"}


def task_type(model) -> str:
    """peft's task type from the transformers head class (BertForSequenceClassification -> SEQ_CLS)."""
    name = type(model).__name__
    for suffix, kind in _TASK_TYPES.items():
        if name.endswith(suffix):
            return kind
    from tunelab.errors import TunelabError

    raise TunelabError(f"{name}: no peft task type for this model class")


def wrap(model, peft_config):
    """The model with the method's modules added; the task head always trains and is saved with the adapter
    (`modules_to_save`), or a reloaded classifier would come back random."""
    from peft import get_peft_model

    return get_peft_model(model, peft_config)

