"""Learning-rate schedules: a learning rate as a function of the epoch, which ``optimizer.lr`` follows."""
from __future__ import annotations

import math
from typing import Any, ClassVar, Mapping

from .arguments import DECAY, NON_NEGATIVE, from_spec, integer, number

__all__ = ["Schedule", "StepDecay", "CosineDecay", "ExponentialDecay", "get_schedule"]


class Schedule:
    """A learning rate as a function of the 0-based epoch; ``config()`` gives the constructor args."""

    name: ClassVar[str] = ""

    def __call__(self, epoch: int) -> float:
        raise NotImplementedError

    def config(self) -> dict[str, Any]:
        raise NotImplementedError

    def _epoch(self, epoch: Any) -> int:
        return integer(type(self).__name__, "epoch", epoch, 0)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"{type(self).__name__}({args})"


class StepDecay(Schedule):
    """``lr * gamma ** (epoch // step_size)``: multiply by ``gamma`` every ``step_size`` epochs."""

    name = "step"

    def __init__(self, lr: float, step_size: int, gamma: float = 0.1) -> None:
        self.lr = number("StepDecay", "lr", lr, NON_NEGATIVE)
        self.step_size = integer("StepDecay", "step_size", step_size, 1)
        self.gamma = number("StepDecay", "gamma", gamma, DECAY)

    def __call__(self, epoch: int) -> float:
        return self.lr * self.gamma ** (self._epoch(epoch) // self.step_size)

    def config(self) -> dict[str, Any]:
        return {"lr": self.lr, "step_size": self.step_size, "gamma": self.gamma}


class ExponentialDecay(Schedule):
    """``lr * gamma ** epoch``."""

    name = "exponential"

    def __init__(self, lr: float, gamma: float) -> None:
        self.lr = number("ExponentialDecay", "lr", lr, NON_NEGATIVE)
        self.gamma = number("ExponentialDecay", "gamma", gamma, DECAY)

    def __call__(self, epoch: int) -> float:
        return self.lr * self.gamma ** self._epoch(epoch)

    def config(self) -> dict[str, Any]:
        return {"lr": self.lr, "gamma": self.gamma}


class CosineDecay(Schedule):
    """Cosine annealing from ``lr`` to ``min_lr`` over ``epochs``, after an optional linear warmup.

    Warmup epoch ``e < warmup_epochs`` uses ``lr * (e + 1) / (warmup_epochs + 1)``, a ramp that
    reaches ``lr`` at the first cosine epoch. Epoch ``e`` after it uses
    ``min_lr + (lr - min_lr) * (1 + cos(pi * (e - warmup) / (epochs - warmup))) / 2`` (PyTorch's
    ``CosineAnnealingLR`` with ``T_max=epochs`` when there is no warmup), and ``min_lr`` from
    ``epochs`` on rather than climbing back up.
    """

    name = "cosine"

    def __init__(self, lr: float, epochs: int, min_lr: float = 0.0, warmup_epochs: int = 0) -> None:
        self.lr = number("CosineDecay", "lr", lr, NON_NEGATIVE)
        self.epochs = integer("CosineDecay", "epochs", epochs, 1)
        self.min_lr = number("CosineDecay", "min_lr", min_lr, NON_NEGATIVE)
        if self.min_lr > self.lr:
            raise ValueError(f"CosineDecay: min_lr ({min_lr!r}) must not exceed lr ({lr!r})")
        self.warmup_epochs = integer("CosineDecay", "warmup_epochs", warmup_epochs, 0)
        if self.warmup_epochs >= self.epochs:
            raise ValueError(f"CosineDecay: warmup_epochs ({warmup_epochs!r}) must be less than epochs ({epochs!r})")

    def __call__(self, epoch: int) -> float:
        epoch = self._epoch(epoch)
        warmup = self.warmup_epochs
        if epoch < warmup:
            return self.lr * (epoch + 1) / (warmup + 1)
        if epoch >= self.epochs:
            return self.min_lr
        progress = (epoch - warmup) / (self.epochs - warmup)
        return self.min_lr + (self.lr - self.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))

    def config(self) -> dict[str, Any]:
        return {"lr": self.lr, "epochs": self.epochs, "min_lr": self.min_lr, "warmup_epochs": self.warmup_epochs}


_SCHEDULES: dict[str, type[Schedule]] = {cls.name: cls for cls in (StepDecay, CosineDecay, ExponentialDecay)}


def get_schedule(spec: "Schedule | str | Mapping[str, Any]", **kwargs: Any) -> Schedule:
    """A schedule from an instance, a name (``"step"``, ``"cosine"``, ``"exponential"``) and
    keyword arguments, or a record ``{"name": ..., **config()}`` as found in an optimizer's config.
    """
    return from_spec("schedule", Schedule, _SCHEDULES, spec, kwargs)
