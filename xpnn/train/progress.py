"""The callbacks ``fit`` puts in front of the user's: the progress bar, validation, the epoch's
statistics (time, rate, learning rate), the History's recording and the one-line-per-epoch log.
They see the loop only through the :class:`~.callbacks.Callback` hooks, as the user's callbacks
do, and every callback after them sees the epoch's full logs, already in the History."""
from __future__ import annotations

import math
import sys
import time
from typing import Any, Callable

from ..errors import TrainingDivergedError
from .callbacks import Callback
from .history import History
from .monitor import DIVERGED_ADVICE

__all__ = ["Validation", "EpochStatistics", "ProgressBar", "HistoryRecorder", "EpochLine"]


def format_logs(logs: dict[str, float]) -> str:
    return "  ".join(f"{k} {v:.4f}" for k, v in logs.items())


class Validation(Callback):
    """At the end of each epoch: the loss and metrics on ``data`` (checked once, before training)
    as ``val_*`` logs, through ``evaluate(model, x, y)``; a NaN/inf validation loss stops training.
    With ``verbose=1`` it writes its line below the epoch's progress bar."""

    def __init__(self, data: tuple[Any, Any], evaluate: Callable[..., dict[str, float]], epochs: int,
                 verbose: int) -> None:
        self.data, self.evaluate, self.epochs, self.verbose = data, evaluate, epochs, verbose

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        val_logs = {f"val_{k}": v for k, v in self.evaluate(self.model, *self.data).items()}
        logs.update(val_logs)
        if not math.isfinite(val_logs["val_loss"]):
            raise TrainingDivergedError(
                f"the validation loss became {val_logs['val_loss']} at the end of epoch {epoch + 1}; training "
                f"stopped. {DIVERGED_ADVICE}")
        if self.verbose == 1:
            from tqdm.auto import tqdm
            tqdm.write(f"epoch {epoch + 1}/{self.epochs} validation: {format_logs(val_logs)}", file=sys.stderr)


class EpochStatistics(Callback):
    """Logs ``seconds`` (the epoch's steps, from its first step to its last sync), ``samples_per_second``,
    ``lr`` (the rate of the epoch's first update) and, under a schedule, ``lr_last`` (of its last)."""

    def __init__(self, optimizer: Any, samples: int) -> None:
        self.optimizer, self.samples = optimizer, samples
        self.started = self.synced = 0.0
        self.first_lr: Any = None

    def on_epoch_begin(self, epoch: int) -> None:
        self.first_lr = getattr(self.optimizer, "lr", None)
        self.started = self.synced = time.perf_counter()

    def on_sync(self, epoch: int, seen: int, logs: dict[str, float]) -> None:
        self.synced = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        seconds = self.synced - self.started
        logs["seconds"] = seconds
        logs["samples_per_second"] = self.samples / seconds if seconds > 0 else math.inf
        if self.first_lr is not None:
            logs["lr"] = float(self.first_lr)
        if getattr(self.optimizer, "schedule", None) is not None and self.optimizer.last_lr is not None:
            logs["lr_last"] = float(self.optimizer.last_lr)


class ProgressBar(Callback):
    """``verbose=1``: a tqdm bar per epoch (samples, rate, running loss and accuracy), refreshed at
    each sync and closed when the epoch's steps end, before validation, so its rate is the training rate."""

    def __init__(self, samples: int, epochs: int) -> None:
        self.samples, self.epochs = samples, epochs
        self.bar: Any = None

    def on_epoch_begin(self, epoch: int) -> None:
        from tqdm.auto import tqdm
        self.bar = tqdm(total=self.samples, desc=f"epoch {epoch + 1}/{self.epochs}", unit=" samples",
                        unit_scale=True, leave=True, dynamic_ncols=True)

    def on_sync(self, epoch: int, seen: int, logs: dict[str, float]) -> None:
        self.bar.update(seen - self.bar.n)
        self.bar.set_postfix_str(format_logs(logs), refresh=False)

    def on_steps_end(self, epoch: int, seen: int, logs: dict[str, float]) -> None:
        self.bar.set_postfix_str(format_logs(logs), refresh=False)
        self.bar.update(seen - self.bar.n)
        self.bar.close()


class HistoryRecorder(Callback):
    """Appends each epoch's logs to ``history`` (the model's; a callback of its own, so the History
    the model keeps holds no reference back to the model)."""

    def __init__(self, history: History) -> None:
        self.history = history

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        self.history.append(epoch + 1, logs)


class EpochLine(Callback):
    """``verbose=2``: one line per epoch on stdout with all its logs."""

    def __init__(self, epochs: int) -> None:
        self.epochs = epochs

    def on_epoch_end(self, epoch: int, logs: dict[str, float]) -> None:
        print(f"epoch {epoch + 1}/{self.epochs}: {format_logs(logs)}", flush=True)
