"""An exponential moving average of the trained weights, evaluated and saved in their place (`train.ema_steps`;
off by default: level with the last weights on held-out data at the end of the benchmark runs, BENCHMARKS.md).

Mid-schedule, at a high learning rate, the weights carry the noise of the last few batches; their average over
the last few hundred steps (Polyak averaging, as timm's ModelEmaV3 and TensorFlow's ExponentialMovingAverage keep
it) lies nearer the middle of the valley the steps bounce around in, and scores higher there. The average starts
at zero and is divided by the total weight of its updates (Adam's bias correction), so the pretrained starting
point does not linger in it.
The training itself never sees the average: `applied()` swaps it in for an evaluation or a save and puts the
trained weights back.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

import torch

from tunelab.errors import TunelabError

FILE = "weight_average.safetensors"  # in a checkpoint folder: safetensors, not a pickle


class WeightAverage:
    def __init__(self, parameters, decay: float, every: int = 1):
        self.parameters = list(parameters)
        self.decay, self.every = decay, every
        self.average = [torch.zeros_like(p, dtype=torch.float32) for p in self.parameters]
        self.weight = 0.0  # sum of the update weights so far: 1 - decay ** (steps averaged)

    def update(self, step: int) -> None:
        """After optimizer step `step`. Every `every` steps, with the decay of `every` steps: the same average of
        the weights the updates see, at 1/every of the cost (one pass over the weights)."""
        if step % self.every:
            return
        kept = self.decay ** self.every
        with torch.no_grad():
            torch._foreach_lerp_(self.average, [p.detach().float() for p in self.parameters], 1 - kept)
        self.weight = 1 - (1 - self.weight) * kept

    @contextmanager
    def applied(self):
        """The averaged weights in the model for the duration, then the trained ones back, bit for bit."""
        if self.weight == 0:  # nothing averaged yet: the weights are their own average
            yield
            return
        trained = [p.detach().clone() for p in self.parameters]
        with torch.no_grad():
            for p, a in zip(self.parameters, self.average):
                p.copy_(a / self.weight)
        try:
            yield
        finally:
            with torch.no_grad():
                torch._foreach_copy_(self.parameters, trained)

    def save(self, folder: Path) -> None:
        from safetensors.torch import save_file

        tensors = {f"average.{i}": a for i, a in enumerate(self.average)}
        save_file({**tensors, "weight": torch.tensor(self.weight, dtype=torch.float64)}, str(folder / FILE))

    def load(self, folder: Path) -> None:
        from safetensors.torch import load_file

        path = folder / FILE
        if not path.is_file():
            raise TunelabError(f"{folder}: this checkpoint holds no weight average ({FILE}) though train.ema_steps "
                               "is set; resume from another checkpoint, or start again with --overwrite")
        tensors = load_file(str(path))
        for i, a in enumerate(self.average):
            a.copy_(tensors[f"average.{i}"])
        self.weight = float(tensors["weight"])
