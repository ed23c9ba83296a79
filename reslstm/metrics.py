"""Classification metrics: top-k accuracy, confusion matrix, mean class accuracy, per-class and
per-category accuracy, a per-class table for CSV and a confusion-matrix PNG.

Conventions: the confusion matrix has rows = true class, columns = predicted class. Ties in
the scores are broken towards the lower class index, as ``argmax`` does, so top-1 accuracy
always equals trace(confusion) / N for the argmax predictions.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import numpy as np


def _to_numpy(x) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor, without importing torch here
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def topk_hits(scores, labels, k: int = 1) -> int:
    """How many samples have their true class among the k best scores (k capped at C).

    scores: (N, C) probabilities or logits; labels: (N,) ints in [0, C).
    """
    s, y = _to_numpy(scores), _to_numpy(labels).astype(np.int64, copy=False)
    if s.ndim != 2 or y.shape != (s.shape[0],):
        raise ValueError(f"topk_accuracy needs scores (N, C) and labels (N,), got {s.shape}, {y.shape}")
    n, c = s.shape
    if n == 0:
        raise ValueError("topk_accuracy got no samples")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if y.min() < 0 or y.max() >= c:
        raise ValueError(f"labels must lie in [0, {c}), got range [{y.min()}, {y.max()}]")
    if not np.isfinite(s).all():
        raise ValueError("topk_accuracy got non-finite scores (NaN or inf)")
    k = min(int(k), c)
    true = s[np.arange(n), y][:, None]  # (N, 1)
    cols = np.arange(c)[None, :]
    # Rank of the true class: classes scoring higher, plus lower-index classes scoring equal.
    rank = (s > true).sum(axis=1) + ((s == true) & (cols < y[:, None])).sum(axis=1)
    return int((rank < k).sum())


def topk_accuracy(scores, labels, k: int = 1) -> float:
    """Fraction of samples whose true class is among the k best scores (``topk_hits`` / N)."""
    return topk_hits(scores, labels, k) / len(_to_numpy(labels))


def confusion_matrix(pred, labels, num_classes: int) -> np.ndarray:
    """(C, C) int64 counts, rows = true class, columns = predicted class."""
    p = _to_numpy(pred).astype(np.int64, copy=False).ravel()
    y = _to_numpy(labels).astype(np.int64, copy=False).ravel()
    if p.shape != y.shape:
        raise ValueError(f"pred and labels differ in length: {p.shape[0]} vs {y.shape[0]}")
    for name, v in (("pred", p), ("labels", y)):
        if v.size and (v.min() < 0 or v.max() >= num_classes):
            raise ValueError(f"{name} must lie in [0, {num_classes}), got range [{v.min()}, {v.max()}]")
    counts = np.bincount(y * num_classes + p, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes).astype(np.int64)


def _check_conf(conf) -> np.ndarray:
    conf = np.asarray(conf)
    if conf.ndim != 2 or conf.shape[0] != conf.shape[1]:
        raise ValueError(f"a confusion matrix must be square (C, C), got shape {conf.shape}")
    return conf


def per_class_accuracy(conf) -> np.ndarray:
    """(C,) recall of each class: conf[c, c] / sum(conf[c]); NaN for classes with no samples."""
    conf = _check_conf(conf)
    support = conf.sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(support > 0, np.diag(conf) / support, np.nan)


def mean_class_accuracy(conf) -> float:
    """Mean of the per-class accuracies over the classes that appear (support > 0)."""
    acc = per_class_accuracy(conf)
    if np.isnan(acc).all():
        raise ValueError("mean_class_accuracy: the confusion matrix holds no samples")
    return float(np.nanmean(acc))


class RunningScore:
    """``score`` over batches: ``add(probs, labels)`` as they come, ``result()`` at the end
    equals ``score`` of all of them at once (the same floats), holding only the (C, C)
    confusion counts and the top-1/top-5 hits, never the scores."""

    def __init__(self, num_classes: int):
        self.num_classes = int(num_classes)
        self.conf = np.zeros((self.num_classes, self.num_classes), np.int64)
        self.hits = {1: 0, 5: 0}
        self.n = 0

    def add(self, probs, labels) -> "RunningScore":
        p, y = _to_numpy(probs), _to_numpy(labels)
        for k in self.hits:
            self.hits[k] += topk_hits(p, y, k)
        self.conf += confusion_matrix(p.argmax(axis=1), y, self.num_classes)
        self.n += len(y)
        return self

    def result(self) -> dict[str, float]:
        if self.n == 0:
            raise ValueError("score got no samples")
        return {"top1": self.hits[1] / self.n, "top5": self.hits[5] / self.n,
                "mean_class_acc": mean_class_accuracy(self.conf)}


def score(probs, labels, num_classes: int | None = None) -> dict[str, float]:
    """top1, top5 and mean class accuracy of scores (N, C) against labels (N,): the numbers
    every epoch, prediction table and report shows."""
    p = _to_numpy(probs)
    return RunningScore(num_classes or p.shape[1]).add(p, labels).result()


def category_accuracy(conf, class_names: Sequence[str],
                      category_of: Mapping[str, str]) -> dict[str, float]:
    """Accuracy over the samples of each coarse category: sum of correct / sum of support over
    its classes. Categories without samples are left out; classes missing from ``category_of``
    are an error (naming them)."""
    conf = _check_conf(conf)
    if len(class_names) != conf.shape[0]:
        raise ValueError(f"{len(class_names)} class names for a {conf.shape[0]}-class confusion matrix")
    missing = [n for n in class_names if n not in category_of]
    if missing:
        raise KeyError(f"classes without a category: {missing[:10]}{' ...' if len(missing) > 10 else ''}")
    correct: dict[str, int] = {}
    support: dict[str, int] = {}
    for i, name in enumerate(class_names):
        cat = category_of[name]
        correct[cat] = correct.get(cat, 0) + int(conf[i, i])
        support[cat] = support.get(cat, 0) + int(conf[i].sum())
    return {cat: correct[cat] / support[cat] for cat in correct if support[cat] > 0}


def per_class_table(conf, class_names: Sequence[str]) -> list[dict]:
    """One row per class: {"class", "support", "correct", "accuracy"} (accuracy NaN without
    samples), ready for ``csv.DictWriter`` or ``pandas.DataFrame``."""
    conf = _check_conf(conf)
    if len(class_names) != conf.shape[0]:
        raise ValueError(f"{len(class_names)} class names for a {conf.shape[0]}-class confusion matrix")
    acc = per_class_accuracy(conf)
    return [
        {"class": name, "support": int(conf[i].sum()), "correct": int(conf[i, i]),
         "accuracy": float(acc[i])}
        for i, name in enumerate(class_names)
    ]


def plot_confusion(conf, class_names: Sequence[str], path, title: str | None = None) -> Path:
    """Write the row-normalised confusion matrix as a PNG with class names on both axes, to
    ``path`` (a file path, or a binary file object).

    Figure and font sizes scale with the class count so that 101 names stay readable. Draws on
    an Agg canvas of its own (no pyplot), so no global matplotlib state is touched.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    conf = _check_conf(conf)
    c = conf.shape[0]
    if len(class_names) != c:
        raise ValueError(f"{len(class_names)} class names for a {c}-class confusion matrix")
    support = conf.sum(axis=1, keepdims=True)
    norm = np.divide(conf, support, out=np.zeros(conf.shape, dtype=float), where=support > 0)

    side = max(6.0, 0.2 * c + 3.0)  # inches: ~0.2 in per class row
    # Tick labels fill at most ~40 % of a row (0.2 in = 14.4 pt): 5.5 pt at 101 classes.
    font = float(np.clip(560.0 / max(c, 1), 5.0, 10.0))
    fig = Figure(figsize=(side + 1.5, side), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    ticks = np.arange(c)
    ax.set_xticks(ticks)
    ax.set_yticks(ticks)
    ax.set_xticklabels(class_names, rotation=90, fontsize=font)
    ax.set_yticklabels(class_names, fontsize=font)
    big = max(10.0, side * 0.6)  # axis labels and title grow with the figure
    ax.set_xlabel("predicted class", fontsize=big)
    ax.set_ylabel("true class", fontsize=big)
    ax.set_title(title or "confusion matrix (rows normalised)", fontsize=big * 1.2)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02, label="fraction of the true class")
    fig.tight_layout()
    if hasattr(path, "write"):  # a binary file (e.g. storage.Location.open_output for S3)
        fig.savefig(path, format="png")
        return path
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, format="png")
    return path
