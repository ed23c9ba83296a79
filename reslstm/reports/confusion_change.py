"""What changed between two classifiers' confusion matrices of the same videos (e.g. our model
and its fusion with another model; the paper's Fig. 6): per-class accuracy change, how many
classes improved, and two figures. Pure NumPy + matplotlib (an Agg canvas, no pyplot).

- ``class_change(before, after, class_names) -> list[dict]``: one row per class with
  ``class``, ``support``, ``before_correct``, ``after_correct``, ``before_accuracy``,
  ``after_accuracy`` and ``change`` (after - before; NaN without videos), most improved first,
  classes without videos last. Ready for ``csv.DictWriter``.
- ``change_counts(rows) -> {"improved", "unchanged", "worse"}`` over the classes with videos.
- ``plot_confusion_change(before, after, class_names, f, title)``: the row-normalised
  difference after - before on a diverging scale centred at 0, sized like
  ``metrics.plot_confusion`` so that 101 class names stay readable.
- ``plot_class_change(rows, f, title)``: the per-class change as sorted horizontal bars.

Confusion matrices follow ``metrics``: rows = true class, columns = predicted class.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from reslstm import metrics


def class_change(before, after, class_names: Sequence[str]) -> list[dict]:
    """Per-class accuracy before and after, most improved first (see the module docstring)."""
    before, after = np.asarray(before), np.asarray(after)
    if before.shape != after.shape or len(class_names) != before.shape[0]:
        raise ValueError(f"confusion matrices {before.shape} and {after.shape} for "
                         f"{len(class_names)} class names")
    if not np.array_equal(before.sum(axis=1), after.sum(axis=1)):
        raise ValueError("the two confusion matrices are not of the same videos (the class "
                         "supports differ)")
    acc_b, acc_a = metrics.per_class_accuracy(before), metrics.per_class_accuracy(after)
    rows = [{"class": n, "support": int(before[i].sum()), "before_correct": int(before[i, i]),
             "after_correct": int(after[i, i]), "before_accuracy": float(acc_b[i]),
             "after_accuracy": float(acc_a[i]), "change": float(acc_a[i] - acc_b[i])}
            for i, n in enumerate(class_names)]
    return sorted(rows, key=lambda r: (np.isnan(r["change"]), -np.nan_to_num(r["change"])))


def change_counts(rows: Sequence[dict]) -> dict[str, int]:
    """Classes with videos whose accuracy went up, stayed, went down (on counts: exact)."""
    d = [r["after_correct"] - r["before_correct"] for r in rows if r["support"]]
    return {"improved": sum(x > 0 for x in d), "unchanged": sum(x == 0 for x in d),
            "worse": sum(x < 0 for x in d)}


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=120)
    FigureCanvasAgg(fig)  # a canvas of its own: no pyplot, no global state
    return fig, fig.add_subplot(1, 1, 1)


def _rows_normalised(conf) -> np.ndarray:
    conf = np.asarray(conf, float)
    support = conf.sum(axis=1, keepdims=True)
    return np.divide(conf, support, out=np.zeros(conf.shape), where=support > 0)


def plot_confusion_change(before, after, class_names: Sequence[str], f, title: str = "") -> None:
    """PNG to binary file ``f``: row-normalised ``after - before`` (blue: more videos in the
    cell, on the diagonal more right; red: fewer). Cells carry their values up to 20 classes."""
    diff, c = _rows_normalised(after) - _rows_normalised(before), len(class_names)
    lim = max(float(np.abs(diff).max()), 0.05)  # symmetric: white is exactly 0
    side = max(6.0, 0.2 * c + 3.0)  # as metrics.plot_confusion: ~0.2 in per class
    font = float(np.clip(560.0 / max(c, 1), 5.0, 10.0))
    fig, ax = _figure(side + 1.5, side)
    im = ax.imshow(diff, cmap="RdBu", vmin=-lim, vmax=lim, interpolation="nearest")
    ax.set_xticks(np.arange(c), class_names, rotation=90, fontsize=font)
    ax.set_yticks(np.arange(c), class_names, fontsize=font)
    if c <= 20:
        for (i, j), v in np.ndenumerate(diff):
            if abs(v) > 1e-9:
                ax.text(j, i, f"{v:+.2f}", ha="center", va="center", fontsize=font * 0.9,
                        color="white" if abs(v) > 0.6 * lim else "black")
    big = max(10.0, side * 0.6)
    ax.set_xlabel("predicted class", fontsize=big)
    ax.set_ylabel("true class", fontsize=big)
    ax.set_title(title or "confusion change (rows normalised)", fontsize=big * 1.1)
    bar = fig.colorbar(im, ax=ax, fraction=0.046, pad=0.02)
    bar.set_label("change in the fraction of the true class (diagonal > 0: more right)",
                  fontsize=max(10.0, side * 0.4))
    fig.tight_layout()
    fig.savefig(f, format="png")


def plot_class_change(rows: Sequence[dict], f, title: str = "") -> None:
    """PNG to binary file ``f``: per-class accuracy change in points as horizontal bars in the
    order of ``rows`` (``class_change``: most improved on top); green up, red down, a grey dot
    for unchanged; classes without videos are left out."""
    rows = [r for r in rows if r["support"]]
    c = max(len(rows), 1)
    fig, ax = _figure(9.0, max(3.5, 0.17 * c + 1.8))
    delta = np.array([100 * r["change"] for r in rows])
    y = np.arange(len(rows))
    ax.barh(y, delta, height=0.75,
            color=["#2e8b57" if d > 0 else "#c0392b" if d < 0 else "#999999" for d in delta])
    ax.scatter(np.zeros((delta == 0).sum()), y[delta == 0], s=8, color="#999999", zorder=3)
    ax.set_yticks(y, [r["class"] for r in rows], fontsize=float(np.clip(560.0 / c, 6.0, 10.0)))
    ax.set_ylim(len(rows) - 0.5, -0.5)  # the first row on top
    lo, hi = min(delta.min(initial=0), 0), max(delta.max(initial=0), 0)
    pad = max(0.05 * (hi - lo), 1.0)
    ax.set_xlim(lo - pad, hi + pad)  # room for the grey dots at 0
    ax.axvline(0, color="black", linewidth=0.8)
    ax.grid(axis="x", alpha=0.3)
    ax.set_xlabel("per-class accuracy change (percentage points)")
    ax.set_title(title or "per-class accuracy change", fontsize=10)
    fig.tight_layout()
    fig.savefig(f, format="png")
