"""xpnn.metrics: confusion matrix, precision/recall, probabilities, text and PNG output."""
from __future__ import annotations

import math

import numpy as np
import pytest
from PIL import Image

from xpnn import metrics


def _loop_confusion(t, p, n):
    cm = np.zeros((n, n), dtype=np.int64)
    for a, b in zip(t, p):
        cm[a, b] += 1
    return cm


def test_confusion_matrix_matches_a_loop():
    rng = np.random.default_rng(0)
    t, p = rng.integers(0, 7, 500), rng.integers(0, 7, 500)
    cm = metrics.confusion_matrix(t, p, 7)
    np.testing.assert_array_equal(cm, _loop_confusion(t, p, 7))
    assert cm.dtype == np.int64 and cm.sum() == 500
    assert metrics.accuracy(cm) == pytest.approx(np.mean(t == p))


def test_confusion_matrix_infers_size_and_checks_labels():
    assert metrics.confusion_matrix([0, 2], [2, 2]).shape == (3, 3)
    with pytest.raises(ValueError, match="below num_classes=2"):
        metrics.confusion_matrix([0, 2], [0, 1], 2)
    with pytest.raises(ValueError, match="different lengths"):
        metrics.confusion_matrix([0, 1], [0])
    with pytest.raises(ValueError, match="integer class labels"):
        metrics.confusion_matrix([0.5], [0])


def test_precision_recall_by_hand_and_zero_division():
    # true 0: 3 samples (2 right, 1 as class 1); true 1: 1 sample (as 0); class 2 never seen nor predicted
    cm = metrics.confusion_matrix([0, 0, 0, 1], [0, 0, 1, 0], 3)
    precision, recall, support = metrics.precision_recall(cm)
    np.testing.assert_allclose(precision, [2 / 3, 0.0, 0.0])
    np.testing.assert_allclose(recall, [2 / 3, 0.0, 0.0])
    np.testing.assert_array_equal(support, [3, 1, 0])
    assert math.isnan(metrics.accuracy(np.zeros((2, 2), dtype=np.int64)))


def test_probabilities_softmax_and_sigmoid():
    logits = np.array([[1000.0, 0.0, -1000.0], [0.0, 0.0, 0.0]], dtype=np.float32)
    p = metrics.probabilities(logits)
    np.testing.assert_allclose(p.sum(axis=1), 1.0)
    np.testing.assert_allclose(p[1], 1 / 3)
    assert p[0, 0] == 1.0
    binary = metrics.probabilities(np.array([[0.0], [800.0], [-800.0]]))
    np.testing.assert_allclose(binary, [[0.5, 0.5], [0.0, 1.0], [1.0, 0.0]])


def test_text_report_and_matrix():
    cm = metrics.confusion_matrix([0, 1, 1], [0, 1, 0], 2)
    report = metrics.classification_report(cm, ["cat", "dog"])
    assert report.splitlines()[1].split() == ["cat", "0.500", "1.000", "1"]
    assert report.splitlines()[-1].split() == ["accuracy", "0.6667", "3"]
    text = metrics.format_confusion_matrix(cm, ["cat", "dog"])
    assert text.splitlines()[2].split() == ["0", "cat", "1", "0"]
    assert text.splitlines()[3].split() == ["1", "dog", "1", "1"]


def test_plot_confusion_matrix_writes_png(tmp_path):
    cm = metrics.confusion_matrix([0, 1, 2, 2], [0, 2, 2, 2], 3)
    path = tmp_path / "cm.png"
    metrics.plot_confusion_matrix(cm, str(path), ["a", "b", "c"])
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size[0] > 100
