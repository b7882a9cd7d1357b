"""Resumable checkpoints (accelerate's state + our loop state) and the final model folder."""

from __future__ import annotations

import json
import logging
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

from tunelab.files import replace_folder


@dataclass
class LoopState:
    """Where the loop is. With the saved RNG, optimizer and scheduler this is enough to continue exactly."""

    step: int = 0  # optimizer steps done
    epoch: int = 0
    batch_in_epoch: int = 0  # batches of `epoch` already consumed
    best_metric: float | None = None
    best_step: int | None = None
    evals_without_improvement: int = 0
    stopped_early: bool = False
    history: list = field(default_factory=list)  # validation results, one per evaluation


def checkpoints(root: Path) -> list[Path]:
    """Complete checkpoints, oldest first (a checkpoint is complete once its folder is renamed into place)."""
    if not root.is_dir():
        return []
    found = [p for p in root.glob("step-*") if p.is_dir() and (p / "loop_state.json").is_file()]
    return sorted(found, key=lambda p: int(p.name.split("-")[1]))


def save_checkpoint(accelerator, root: Path, state: LoopState, keep: int, average=None) -> Path:
    """Write into a temp folder, then rename: a kill mid-write leaves no checkpoint that looks whole.
    `average`: the run's WeightAverage, if any, saved beside the rest."""
    final = root / f"step-{state.step}"
    tmp = root / f".tmp-step-{state.step}"
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
    accelerator.wait_for_everyone()
    # tied weights (a causal LM's head and input embeddings) are stored once; accelerate warns of it on every save,
    # and loading ties them again (tests/test_causal_lm.py resumes exactly)
    tied_note = logging.getLogger("accelerate.utils.other")
    level = tied_note.level
    tied_note.setLevel(logging.ERROR)
    try:
        accelerator.save_state(str(tmp), safe_serialization=True)
    finally:
        tied_note.setLevel(level)
    accelerator.wait_for_everyone()  # every process's files (its random state, its shard) in before the rename
    if accelerator.is_main_process:
        if average is not None:
            average.save(tmp)
        (tmp / "loop_state.json").write_text(json.dumps(asdict(state), indent=1))
        shutil.rmtree(final, ignore_errors=True)
        os.replace(tmp, final)
        for old in checkpoints(root)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()
    return final


def load_checkpoint(accelerator, path: Path, average=None) -> LoopState:
    from tunelab.training.sharding import check_resumable

    check_resumable(accelerator, path)
    accelerator.load_state(str(path))
    if average is not None:
        average.load(path)
    return LoopState(**json.loads((path / "loop_state.json").read_text()))


def save_model_folder(model, tokenizer, out: Path, card, state_dict: dict | None = None) -> None:
    """The method's weights (a save_pretrained folder, or adapter + head only) + tokenizer + tunelab.json (`card`,
    a models.card.ModelCard), swapped in atomically. card.saved_bytes records the size of the weights written.
    `state_dict`: the whole model's weights when `model` holds a shard of them (sharding.whole_state)."""
    from tunelab.methods.store import save_weights

    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_weights(model, card.method_name, tmp, state_dict)
    card.saved_bytes = sum(p.stat().st_size for p in tmp.iterdir() if p.suffix == ".safetensors")
    tokenizer.save_pretrained(tmp)
    card.write(tmp)
    replace_folder(tmp, out)
