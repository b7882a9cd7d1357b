"""Temperature scaling: probabilities that mean what they say.

A fine-tuned classifier's softmax is over-confident (its expected calibration error on held-out data was 0.13
on a sentiment set no default was tuned on). One scalar T, fitted on validation by minimising the negative
log-likelihood of softmax(logits / T) (Guo et al., 2017), fixes most of it and never changes a predicted label.
T is folded into the head's output layer (weights and bias divided by T), so the saved folder itself gives
calibrated scores: plain transformers, the server, ONNX and merged exports need nothing extra.
"""

from __future__ import annotations

import numpy as np
import torch

TEMPERATURE_RANGE = (0.05, 20.0)  # the search's bounds; a fit at either end says the validation set is odd


def fit_temperature(logits: np.ndarray, targets: np.ndarray) -> float:
    """The T > 0 that minimises the mean negative log-likelihood of softmax(logits / T) on (logits, targets)."""
    from scipy.optimize import minimize_scalar

    z = np.asarray(logits, dtype=np.float64)
    rows = np.arange(len(z))

    def nll(log_t: float) -> float:
        s = z / np.exp(log_t)
        s = s - s.max(axis=1, keepdims=True)
        return float(np.mean(np.log(np.exp(s).sum(axis=1)) - s[rows, targets]))

    low, high = np.log(TEMPERATURE_RANGE[0]), np.log(TEMPERATURE_RANGE[1])
    found = minimize_scalar(nll, bounds=(low, high), method="bounded", options={"xatol": 1e-4})
    return float(np.exp(found.x))


def uncalibrated(probs: np.ndarray, temperature: float) -> np.ndarray:
    """The probabilities before temperature scaling: softmax(T * log p) = softmax(logits)."""
    if temperature == 1.0:
        return probs
    z = np.log(np.clip(probs.astype(np.float64), 1e-45, None)) * temperature
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def output_layer(model: torch.nn.Module, num_labels: int) -> torch.nn.Linear:
    """The linear layer that produces the logits: the last nn.Linear with num_labels outputs (BERT's classifier,
    GPT-2's score, RoBERTa's classifier.out_proj), the trained copy inside peft's modules_to_save wrapper."""
    found = [module for name, module in model.named_modules()
             if isinstance(module, torch.nn.Linear) and module.out_features == num_labels
             and "original_module" not in name.split(".")]
    if not found:
        from tunelab.errors import TunelabError

        raise TunelabError(f"{type(model).__name__}: no output layer with {num_labels} outputs to calibrate; "
                           "set task.calibrate: false")
    return found[-1]


@torch.no_grad()
def fold_temperature(model: torch.nn.Module, num_labels: int, temperature: float) -> None:
    """Divide the output layer's weight and bias by T: the model's logits become logits / T."""
    layer = output_layer(model, num_labels)
    layer.weight.div_(temperature)
    if layer.bias is not None:
        layer.bias.div_(temperature)
