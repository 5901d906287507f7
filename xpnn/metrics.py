"""Classification metrics on the host (vectorized NumPy): confusion matrix, precision, recall.

Model outputs come back from :func:`xpnn.train.predict` as NumPy arrays, so these run after
inference, not inside a training step.
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from . import backend
from .files import write_png

__all__ = ["probabilities", "confusion_matrix", "accuracy", "precision_recall", "classification_report",
           "format_confusion_matrix", "plot_confusion_matrix"]


def probabilities(outputs: Any) -> np.ndarray:
    """Class probabilities ``(N, classes)`` from logits: softmax, or for one logit per sample the
    sigmoid as the probability of class 1 (``[1 - p, p]``)."""
    z = np.asarray(backend.to_numpy(outputs), dtype=np.float64)
    if z.ndim == 1 or z.shape[1] == 1:
        p = 0.5 * (1.0 + np.tanh(0.5 * z.reshape(-1)))
        return np.stack([1.0 - p, p], axis=1)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def _labels(values: Any, name: str) -> np.ndarray:
    a = np.asarray(backend.to_numpy(values)).reshape(-1)
    if a.size and (not np.issubdtype(a.dtype, np.integer) or a.min() < 0):
        raise ValueError(f"{name} must be non-negative integer class labels, got dtype {a.dtype}"
                         f"{'' if not np.issubdtype(a.dtype, np.integer) else f' with minimum {a.min()}'}")
    return a.astype(np.int64)


def confusion_matrix(y_true: Any, y_pred: Any, num_classes: int | None = None) -> np.ndarray:
    """``cm[i, j]`` = number of samples of true class ``i`` predicted as class ``j`` (int64)."""
    t, p = _labels(y_true, "y_true"), _labels(y_pred, "y_pred")
    if t.shape != p.shape:
        raise ValueError(f"y_true and y_pred have different lengths: {t.size} and {p.size}")
    n = int(max(t.max(initial=-1), p.max(initial=-1)) + 1) if num_classes is None else int(num_classes)
    if t.size and max(t.max(), p.max()) >= n:
        raise ValueError(f"labels must be below num_classes={n}, got up to {max(t.max(), p.max())}")
    return np.bincount(t * n + p, minlength=n * n).reshape(n, n)


def accuracy(cm: np.ndarray) -> float:
    """Fraction of samples on the diagonal of a confusion matrix (nan if it is empty)."""
    total = cm.sum()
    return float(np.trace(cm) / total) if total else float("nan")


def precision_recall(cm: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per-class ``(precision, recall, support)``; a class never predicted (or never present)
    gets precision (recall) 0, as scikit-learn's ``zero_division=0``."""
    cm = np.asarray(cm, dtype=np.float64)
    tp = np.diag(cm)
    predicted, support = cm.sum(axis=0), cm.sum(axis=1)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    return precision, recall, support.astype(np.int64)


def _names(classes: Sequence[str] | None, n: int) -> list[str]:
    return [str(c) for c in classes] if classes is not None else [str(i) for i in range(n)]


def classification_report(cm: np.ndarray, classes: Sequence[str] | None = None) -> str:
    """A text table of precision, recall and support per class, with the accuracy below."""
    precision, recall, support = precision_recall(cm)
    names = _names(classes, len(cm))
    width = max(len("accuracy"), *(len(n) for n in names))
    lines = [f"{'class':<{width}}  precision  recall  support"]
    rows = zip(names, precision, recall, support)
    lines += [f"{name:<{width}}  {p:9.3f}  {r:6.3f}  {n:7d}" for name, p, r, n in rows]
    lines.append(f"{'accuracy':<{width}}  {accuracy(cm):9.4f}  {'':6}  {int(support.sum()):7d}")
    return "\n".join(lines)


def format_confusion_matrix(cm: np.ndarray, classes: Sequence[str] | None = None) -> str:
    """The matrix as aligned text: rows are true classes, columns predicted classes (by index)."""
    names = _names(classes, len(cm))
    width = max(len(str(int(cm.max(initial=0)))), len(str(len(cm) - 1)), 3)
    label = max(len(n) for n in names) + 5
    head = " " * label + " ".join(f"{j:>{width}}" for j in range(len(cm)))
    rows = [f"{f'{i} {name}':<{label}}" + " ".join(f"{v:>{width}d}" for v in row)
            for i, (name, row) in enumerate(zip(names, cm))]
    return "\n".join(["rows: true class, columns: predicted class", head, *rows])


def plot_confusion_matrix(cm: np.ndarray, path: str, classes: Sequence[str] | None = None,
                          title: str = "confusion matrix") -> None:
    """Save the matrix as a PNG heat map, rows normalized to recall, with the counts written in."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = _names(classes, len(cm))
    support = cm.sum(axis=1, keepdims=True)
    share = np.divide(cm, support, out=np.zeros(cm.shape), where=support > 0)
    side = max(4.0, 0.6 * len(cm) + 2.0)
    fig, ax = plt.subplots(figsize=(side + 1.0, side), dpi=100)
    image = ax.imshow(share, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04, label="fraction of the true class")
    ticks = np.arange(len(cm))
    ax.set_xticks(ticks, names, rotation=45, ha="right")
    ax.set_yticks(ticks, names)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    ax.set_title(title)
    if len(cm) <= 30:
        rows, cols = np.indices(cm.shape)
        for i, j, v, s in zip(rows.ravel(), cols.ravel(), cm.ravel(), share.ravel()):
            ax.text(j, i, str(v), ha="center", va="center", fontsize=8, color="white" if s > 0.5 else "black")
    fig.tight_layout()
    write_png(fig, path)
