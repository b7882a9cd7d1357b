"""After training: fit the temperature of the kept model on validation and fold it into its head."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from tunelab.models.card import ModelCard
from tunelab.models.inference import iter_outputs
from tunelab.models.load import load_model
from tunelab.tasks.calibration import fit_temperature, fold_temperature
from tunelab.tasks.classification.metrics import calibration
from tunelab.tasks.encoding import Encoded
from tunelab.training.checkpoint import save_model_folder


def calibrate_model_folder(model_dir: Path, validation: Encoded, task, tokenizer, pad_id: int, with_types: bool,
                           batch_size: int, bins: int) -> dict:
    """Reload the saved (best) model, fit T on its fp32 validation logits, fold 1/T into the output layer and
    save the folder again; tunelab.json gets `temperature` and the validation ECE before and after.
    Returns {"temperature", "ece", "ece_uncalibrated"}, or {"temperature": None} when validation has no error
    to calibrate against (the folder is left as it was)."""
    card = ModelCard.read(model_dir)
    model = load_model(model_dir, card)  # fp32, as the model is served and evaluated
    logits = np.zeros((len(validation), task.num_labels), dtype=np.float32)
    for rows, batch_logits in iter_outputs(model, validation, task, batch_size, pad_id, with_types, logits=True):
        logits[rows] = batch_logits
    targets = validation.targets
    if (logits.argmax(axis=1) == targets).all():
        # no mistake to calibrate against: the log-loss keeps falling as T -> 0, which would make every later
        # mistake a confident one
        return {"temperature": None}
    temperature = fit_temperature(logits, targets)
    before, after = (_ece(logits / t, targets, bins) for t in (1.0, temperature))
    card.validation.update(ece=after, ece_uncalibrated=before)
    _fold_and_save(model, model_dir, tokenizer, card, temperature)
    return {"temperature": temperature, "ece": after, "ece_uncalibrated": before}


def apply_temperature(model_dir: Path, temperature: float, tokenizer) -> None:
    """Fold a temperature fitted elsewhere into a saved model (a search's best config retrained on train +
    validation has no held-out data of its own: it takes the temperature of the trial it repeats)."""
    card = ModelCard.read(model_dir)
    _fold_and_save(load_model(model_dir, card), model_dir, tokenizer, card, temperature)


def _fold_and_save(model, model_dir: Path, tokenizer, card: ModelCard, temperature: float) -> None:
    fold_temperature(model, len(card.labels), temperature)
    card.temperature = temperature
    save_model_folder(model, tokenizer, model_dir, card)


def _ece(logits: np.ndarray, targets: np.ndarray, bins: int) -> float:
    z = logits - logits.max(axis=1, keepdims=True)
    probs = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
    return calibration(probs.max(axis=1), probs.argmax(axis=1) == targets, bins)[0]
