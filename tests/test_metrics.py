"""Metrics on a hand-made 3-class, 6-sample example with exact expected values."""

import csv

import matplotlib
import numpy as np
import pytest
import torch

from reslstm.metrics import (
    category_accuracy,
    confusion_matrix,
    mean_class_accuracy,
    per_class_accuracy,
    per_class_table,
    plot_confusion,
    topk_accuracy,
)

# 6 samples: class 0 x3 (2 right, 1 taken for class 1), class 1 x2 (1 right, 1 taken for 2),
# class 2 x1 (right).
LABELS = np.array([0, 0, 0, 1, 1, 2])
PRED = np.array([0, 0, 1, 1, 2, 2])
CONF = np.array([[2, 1, 0], [0, 1, 1], [0, 0, 1]])
NAMES = ["jump", "run", "brush_hair"]


def test_confusion_matrix_rows_are_true_classes():
    conf = confusion_matrix(PRED, LABELS, 3)
    assert conf.dtype == np.int64
    np.testing.assert_array_equal(conf, CONF)
    assert conf.sum() == 6
    # also from tensors
    np.testing.assert_array_equal(confusion_matrix(torch.tensor(PRED), torch.tensor(LABELS), 3), CONF)
    with pytest.raises(ValueError, match=r"\[0, 3\)"):
        confusion_matrix([0, 3], [0, 1], 3)


def test_per_class_and_mean_class_accuracy():
    np.testing.assert_allclose(per_class_accuracy(CONF), [2 / 3, 1 / 2, 1.0])
    assert mean_class_accuracy(CONF) == pytest.approx((2 / 3 + 1 / 2 + 1) / 3)  # 13/18
    assert np.trace(CONF) / CONF.sum() == pytest.approx(4 / 6)  # differs from overall accuracy


def test_mean_class_accuracy_skips_absent_classes():
    conf = np.zeros((4, 4), dtype=np.int64)
    conf[:3, :3] = CONF  # class 3 never appears
    acc = per_class_accuracy(conf)
    assert np.isnan(acc[3])
    assert mean_class_accuracy(conf) == pytest.approx(13 / 18)
    with pytest.raises(ValueError, match="no samples"):
        mean_class_accuracy(np.zeros((3, 3)))


def test_topk_accuracy_by_hand():
    scores = np.array([
        [0.5, 0.3, 0.2],  # label 1: rank 1
        [0.1, 0.1, 0.8],  # label 2: rank 0
        [0.2, 0.2, 0.6],  # label 0: one higher, the tie with class 1 loses to class 0 -> rank 1
        [0.3, 0.3, 0.4],  # label 1: one higher, tie with lower-index class 0 -> rank 2
    ])
    labels = np.array([1, 2, 0, 1])
    assert topk_accuracy(scores, labels, 1) == 0.25
    assert topk_accuracy(scores, labels, 2) == 0.75
    assert topk_accuracy(scores, labels, 3) == 1.0
    assert topk_accuracy(scores, labels, 5) == 1.0  # k capped at C = 3
    assert topk_accuracy(torch.tensor(scores), torch.tensor(labels), 2) == 0.75
    with pytest.raises(ValueError):
        topk_accuracy(scores, np.array([1, 2, 0, 3]), 1)
    with pytest.raises(ValueError):
        topk_accuracy(scores, labels, 0)


def test_top1_agrees_with_argmax_confusion_even_with_ties():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 3, size=(200, 5)).astype(float)  # many ties
    labels = rng.integers(0, 5, size=200)
    conf = confusion_matrix(scores.argmax(axis=1), labels, 5)
    assert topk_accuracy(scores, labels, 1) == pytest.approx(np.trace(conf) / 200)


def test_category_accuracy():
    category_of = {"jump": "body", "run": "body", "brush_hair": "face"}
    got = category_accuracy(CONF, NAMES, category_of)
    assert got == {"body": pytest.approx(3 / 5), "face": pytest.approx(1.0)}
    with pytest.raises(KeyError, match="brush_hair"):
        category_accuracy(CONF, NAMES, {"jump": "body", "run": "body"})


def test_per_class_table(tmp_path):
    rows = per_class_table(CONF, NAMES)
    assert rows == [
        {"class": "jump", "support": 3, "correct": 2, "accuracy": pytest.approx(2 / 3)},
        {"class": "run", "support": 2, "correct": 1, "accuracy": 0.5},
        {"class": "brush_hair", "support": 1, "correct": 1, "accuracy": 1.0},
    ]
    with open(tmp_path / "per_class.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    assert (tmp_path / "per_class.csv").read_text().splitlines()[0] == "class,support,correct,accuracy"


def test_plot_confusion_101_classes(tmp_path):
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 101, size=1000)
    pred = np.where(rng.random(1000) < 0.7, labels, rng.integers(0, 101, size=1000))
    conf = confusion_matrix(pred, labels, 101)
    names = [f"ApplyEyeMakeup_{i:03d}" for i in range(101)]
    backend = matplotlib.rcParams["backend"]
    out = plot_confusion(conf, names, tmp_path / "sub" / "confusion.png")
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert width >= 2000 and height >= 2000  # scaled up for 101 names
    assert matplotlib.rcParams["backend"] == backend  # no global backend switch
    with pytest.raises(ValueError, match="class names"):
        plot_confusion(conf, names[:5], tmp_path / "bad.png")


def test_plot_confusion_small(tmp_path):
    out = plot_confusion(CONF, NAMES, tmp_path / "small.png", title="split 1")
    assert out.stat().st_size > 1000
