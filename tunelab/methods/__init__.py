"""Fine-tuning methods: which weights train and what is added to the model.

A method is one file here exposing `apply(model, settings, head) -> model`, its measured default
`LEARNING_RATE`, how its result is saved (`SAVES`: 'model' = a whole save_pretrained folder, 'peft' =
peft's adapter folder, 'state' = only the trained tensors), optionally `Settings` (its config section,
`method.<name>`) and `MERGEABLE`. Add a method: one file and one line in METHODS.
"""

from tunelab.methods import adapter, freeze, full, head, ia3, lora, prefix, prompt

METHODS = {"full": full, "freeze": freeze, "head": head, "lora": lora, "ia3": ia3, "prefix": prefix,
           "prompt": prompt, "adapter": adapter}

__all__ = ["METHODS"]
