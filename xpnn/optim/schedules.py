"""Learning-rate schedules: a learning rate as a function of training progress, which ``optimizer.lr`` follows.

A schedule is a curve over (fractional) epochs, evaluated at every update: ``at_step(step,
steps_per_epoch)``, which the optimizer calls with the number of updates made so far, so a
cosine decays and a warmup ramps within an epoch. ``schedule(epoch)`` is the value at the start
of ``epoch`` counting each epoch as one step. Every schedule takes ``warmup_epochs`` (it may be a
fraction): the first ``warmup_epochs * steps_per_epoch`` updates ramp linearly up to the value the
curve has when the warmup ends (see :meth:`Schedule.at_step`).
"""
from __future__ import annotations

import math
from typing import Any, ClassVar, Mapping

from ..validation import check_integer
from .arguments import DECAY, NON_NEGATIVE, from_spec, number

__all__ = ["Schedule", "Constant", "StepDecay", "CosineDecay", "ExponentialDecay", "get_schedule"]


class Schedule:
    """A learning rate as a function of training progress; ``config()`` gives the constructor args.

    Subclasses implement :meth:`curve` (the rate at a fractional epoch, without warmup) and list
    their own arguments in ``config()``; the warmup is the base class's, the same for all.
    """

    name: ClassVar[str] = ""

    def __init__(self, warmup_epochs: float = 0.0) -> None:
        self.warmup_epochs = number(type(self).__name__, "warmup_epochs", warmup_epochs, NON_NEGATIVE)

    def __call__(self, epoch: int) -> float:
        """The rate at the start of ``epoch`` (0-based), each epoch counted as one step."""
        return self.at_step(check_integer(type(self).__name__, "epoch", epoch, 0), 1)

    def at_step(self, step: int, steps_per_epoch: int) -> float:
        """The rate of update ``step`` (0-based, counted from the start of training).

        With ``W = warmup_epochs * steps_per_epoch`` warmup steps, update ``s < W`` uses
        ``curve(warmup_epochs) * (s + 1) / (W + 1)``: a ramp that never starts at zero and reaches
        the curve at the first update after the warmup. Later updates use ``curve(s / steps_per_epoch)``.
        """
        owner = type(self).__name__
        step = check_integer(owner, "step", step, 0)
        steps_per_epoch = check_integer(owner, "steps_per_epoch", steps_per_epoch, 1)
        warmup_steps = self.warmup_epochs * steps_per_epoch
        if step < warmup_steps:
            return self.curve(self.warmup_epochs) * (step + 1) / (warmup_steps + 1)
        return self.curve(step / steps_per_epoch)

    def curve(self, epoch: float) -> float:
        """The rate at a fractional epoch, before any warmup."""
        raise NotImplementedError

    def config(self) -> dict[str, Any]:
        return {"warmup_epochs": self.warmup_epochs}

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.config().items())
        return f"{type(self).__name__}({args})"


class Constant(Schedule):
    """``lr`` throughout: with ``warmup_epochs``, a plain warmup to a constant rate."""

    name = "constant"

    def __init__(self, lr: float, warmup_epochs: float = 0.0) -> None:
        self.lr = number("Constant", "lr", lr, NON_NEGATIVE)
        super().__init__(warmup_epochs)

    def curve(self, epoch: float) -> float:
        return self.lr

    def config(self) -> dict[str, Any]:
        return {"lr": self.lr, **super().config()}


class StepDecay(Schedule):
    """``lr * gamma ** floor(epoch / step_size)``: multiply by ``gamma`` every ``step_size`` epochs."""

    name = "step"

    def __init__(self, lr: float, step_size: int, gamma: float = 0.1, warmup_epochs: float = 0.0) -> None:
        self.lr = number("StepDecay", "lr", lr, NON_NEGATIVE)
        self.step_size = check_integer("StepDecay", "step_size", step_size, 1)
        self.gamma = number("StepDecay", "gamma", gamma, DECAY)
        super().__init__(warmup_epochs)

    def curve(self, epoch: float) -> float:
        return self.lr * self.gamma ** math.floor(epoch / self.step_size)

    def config(self) -> dict[str, Any]:
        return {"lr": self.lr, "step_size": self.step_size, "gamma": self.gamma, **super().config()}


class ExponentialDecay(Schedule):
    """``lr * gamma ** epoch``, continuous within an epoch (Keras' ``ExponentialDecay`` without staircase)."""

    name = "exponential"

    def __init__(self, lr: float, gamma: float, warmup_epochs: float = 0.0) -> None:
        self.lr = number("ExponentialDecay", "lr", lr, NON_NEGATIVE)
        self.gamma = number("ExponentialDecay", "gamma", gamma, DECAY)
        super().__init__(warmup_epochs)

    def curve(self, epoch: float) -> float:
        return self.lr * self.gamma ** epoch

    def config(self) -> dict[str, Any]:
        return {"lr": self.lr, "gamma": self.gamma, **super().config()}


class CosineDecay(Schedule):
    """Cosine annealing from ``lr`` to ``min_lr`` over ``epochs`` (warmup included), after an optional
    linear warmup (see :meth:`Schedule.at_step`).

    At (fractional) epoch ``e`` after the warmup: ``min_lr + (lr - min_lr) * (1 + cos(pi * (e - warmup)
    / (epochs - warmup))) / 2``, which is PyTorch's ``CosineAnnealingLR`` with ``T_max`` the number of
    updates after the warmup, stepped every update; ``min_lr`` from ``epochs`` on rather than climbing
    back up. Per epoch (``schedule(e)``), warmup epoch ``e`` uses ``lr * (e + 1) / (warmup_epochs + 1)``.
    """

    name = "cosine"

    def __init__(self, lr: float, epochs: int, min_lr: float = 0.0, warmup_epochs: float = 0.0) -> None:
        self.lr = number("CosineDecay", "lr", lr, NON_NEGATIVE)
        self.epochs = check_integer("CosineDecay", "epochs", epochs, 1)
        self.min_lr = number("CosineDecay", "min_lr", min_lr, NON_NEGATIVE)
        if self.min_lr > self.lr:
            raise ValueError(f"CosineDecay: min_lr ({min_lr!r}) must not exceed lr ({lr!r})")
        super().__init__(warmup_epochs)
        if self.warmup_epochs >= self.epochs:
            raise ValueError(f"CosineDecay: warmup_epochs ({warmup_epochs!r}) must be less than epochs ({epochs!r})")

    def curve(self, epoch: float) -> float:
        if epoch >= self.epochs:
            return self.min_lr
        progress = max(epoch - self.warmup_epochs, 0.0) / (self.epochs - self.warmup_epochs)
        return self.min_lr + (self.lr - self.min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))

    def config(self) -> dict[str, Any]:
        return {"lr": self.lr, "epochs": self.epochs, "min_lr": self.min_lr, **super().config()}


_SCHEDULES: dict[str, type[Schedule]] = {cls.name: cls for cls in (Constant, StepDecay, CosineDecay, ExponentialDecay)}


def get_schedule(spec: "Schedule | str | Mapping[str, Any]", **kwargs: Any) -> Schedule:
    """A schedule from an instance, a name (``"constant"``, ``"step"``, ``"cosine"``, ``"exponential"``) and
    keyword arguments, or a record ``{"name": ..., **config()}`` as found in an optimizer's config.
    """
    return from_spec("schedule", Schedule, _SCHEDULES, spec, kwargs)
