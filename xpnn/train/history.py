"""History: the per-epoch metrics of a run, and its JSON, CSV and PNG forms (written by rank 0 only)."""
from __future__ import annotations

import math
from typing import Any

from .. import distributed
from ..files import atomic_write, write_json, write_png

__all__ = ["History"]


class History:
    """Per-epoch metrics: ``history.history["loss"]``, ``["val_accuracy"]``, ... and ``epochs``."""

    def __init__(self) -> None:
        self.history: dict[str, list[float]] = {}
        self.epochs: list[int] = []

    def append(self, epoch: int, logs: dict[str, float]) -> None:
        self.epochs.append(epoch)
        for key, value in logs.items():
            self.history.setdefault(key, [math.nan] * (len(self.epochs) - 1)).append(float(value))
        for key, values in self.history.items():
            if len(values) < len(self.epochs):
                values.append(math.nan)

    def __getitem__(self, key: str) -> list[float]:
        return self.history[key]

    def __len__(self) -> int:
        return len(self.epochs)

    def to_dict(self) -> dict[str, Any]:
        return {"epoch": list(self.epochs), **self.history}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "History":
        """The inverse of :meth:`to_dict` (``null`` read back as NaN); ValueError if ``data`` is not
        one list per metric, each as long as the list of epochs."""
        epochs = data.get("epoch", [])
        if not isinstance(epochs, list) or any(
                not isinstance(values, list) or len(values) != len(epochs)
                or not all(v is None or isinstance(v, (int, float)) for v in values) for values in data.values()):
            raise ValueError("a history must hold one list of numbers per metric, each as long as its list of epochs")
        history = cls()
        history.epochs = [int(e) for e in data.get("epoch", [])]
        history.history = {k: [math.nan if v is None else float(v) for v in vals]
                           for k, vals in data.items() if k != "epoch"}
        return history

    def to_json(self, path: str) -> None:
        """Write the history as strict JSON (a NaN becomes ``null``), atomically."""
        if not distributed.is_main():
            return
        write_json(path, self.to_dict())

    def to_csv(self, path: str) -> None:
        """Write one row per epoch, atomically."""
        if not distributed.is_main():
            return
        keys = list(self.history)
        with atomic_write(path, "w") as f:
            f.write(",".join(["epoch", *keys]) + "\n")
            for row, epoch in enumerate(self.epochs):
                f.write(",".join([str(epoch)] + [repr(self.history[k][row]) for k in keys]) + "\n")

    def plot(self, path: str, metric: str = "loss", title: str | None = None) -> None:
        """Save a PNG of ``metric`` and ``val_<metric>`` per epoch (train vs validation)."""
        if not distributed.is_main():
            return
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import MaxNLocator

        fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
        for key, label in ((metric, "train"), (f"val_{metric}", "validation")):
            if key in self.history:
                ax.plot(self.epochs, self.history[key], marker="o", label=label)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_ylabel(metric)
        ax.set_title(title or metric)
        ax.grid(alpha=0.3)
        ax.legend()
        fig.tight_layout()
        write_png(fig, path)
