"""The figures of the paper presets, in the paper's form (matplotlib, written as PNG).

- ``plot_preset(preset, cells, path)``: accuracy (mean +- std over seeds) against the swept
  value: a line for h (Fig. 3a) and T (Table 1), lines with and without residual connections
  against depth, one panel per PCA dimension (Fig. 3b-c), bars with error bars for the fusion
  strategies (Table 2).
- ``plot_grouped_confusion(conf, class_names, category_of, path)``: the confusion matrix with
  classes ordered by coarse category and lines between the groups (Fig. 5).
- ``plot_categories(accuracy, path)``: accuracy per category (Tables 3-4).
- ``plot_examples(examples, path)``: a frame of each example video beside its top-5 bars, the
  ground truth marked, the title green when the top-1 is right and red when wrong (Fig. 4).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Mapping, Sequence

import numpy as np

from reslstm.paper.presets import Preset
from reslstm.paper.report import Cell


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig, path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    _plt().close(fig)
    return path


def _errorbar(ax, cells: Sequence[Cell], x: str, label: str | None = None) -> None:
    cells = sorted(cells, key=lambda c: c.config[x])
    xs = [c.config[x] for c in cells]
    ys = [100 * c.mean for c in cells]
    es = [0.0 if math.isnan(c.std) else 100 * c.std for c in cells]
    ax.errorbar(xs, ys, yerr=es, marker="o", capsize=4, label=label)


def plot_preset(preset: Preset, cells: Sequence[Cell], path, title: str) -> Path:
    plt = _plt()
    if preset.kind == "bars":
        fig, ax = plt.subplots(figsize=(7, 4.2))
        names = [c.config[preset.x] for c in cells]
        means = [100 * c.mean for c in cells]
        errs = [0.0 if math.isnan(c.std) else 100 * c.std for c in cells]
        bars = ax.bar(range(len(cells)), means, yerr=errs, capsize=5,
                      color=["tab:orange" if n.startswith("late") else "tab:blue" for n in names])
        ax.set_xticks(range(len(cells)), names, rotation=15)
        for bar, m in zip(bars, means):
            ax.text(bar.get_x() + bar.get_width() / 2, m / 2, f"{m:.1f}", ha="center",
                    color="white", fontsize=9)
        ax.set_ylabel("test top-1 (%)")
        ax.set_title(title)
        return _save(fig, path)
    panels = sorted({c.config[preset.panels] for c in cells}) if preset.panels else [None]
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels) + 0.6, 4), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        here = [c for c in cells if panel is None or c.config[preset.panels] == panel]
        if preset.lines:
            for value in sorted({c.config[preset.lines] for c in here}, reverse=True):
                label = {True: "residual", False: "plain (no residual)"}.get(value, str(value))
                _errorbar(ax, [c for c in here if c.config[preset.lines] == value], preset.x, label)
            ax.legend(fontsize=8)
        else:
            _errorbar(ax, here, preset.x)
        if preset.x == "hidden":
            ax.set_xscale("log", base=2)
        xs = sorted({c.config[preset.x] for c in here})
        ax.set_xticks(xs, [str(v) for v in xs])
        ax.set_xlabel({"hidden": "hidden size h", "depth": "layers L", "T": "clips T"}.get(
            preset.x, preset.x))
        ax.set_ylabel("test top-1 (%)")
        ax.grid(alpha=0.3)
        ax.set_title(title if panel is None else f"{title}: d_m = h = {panel}", fontsize=10)
    return _save(fig, path)


def plot_grouped_confusion(conf: np.ndarray, class_names: Sequence[str],
                           category_of: Mapping[str, str], path, title: str) -> Path:
    """Rows normalised; classes sorted by category (then name), lines between categories."""
    plt = _plt()
    order = sorted(range(len(class_names)),
                   key=lambda i: (category_of.get(class_names[i], "~other"), class_names[i]))
    m = conf[np.ix_(order, order)].astype(float)
    m = np.divide(m, m.sum(axis=1, keepdims=True), out=np.zeros_like(m), where=m.sum(axis=1, keepdims=True) > 0)
    cats = [category_of.get(class_names[i], "other") for i in order]
    n = len(order)
    size = min(22.0, 4 + 0.16 * n)
    fig, ax = plt.subplots(figsize=(size + 2, size))
    im = ax.imshow(m, cmap="Blues", vmin=0, vmax=1)
    bounds = [i for i in range(1, n) if cats[i] != cats[i - 1]]
    for b in bounds:
        ax.axhline(b - 0.5, color="tab:red", linewidth=1)
        ax.axvline(b - 0.5, color="tab:red", linewidth=1)
    fontsize = 8 if n <= 30 else max(3, int(220 / n))
    names = [class_names[i] for i in order]
    ax.set_xticks(range(n), names, rotation=90, fontsize=fontsize)
    ax.set_yticks(range(n), names, fontsize=fontsize)
    starts = [0] + bounds
    ends = bounds + [n]
    for s, e in zip(starts, ends):  # the category's name beside its block
        ax.text(n + 0.5, (s + e - 1) / 2, cats[s], va="center", fontsize=max(fontsize, 7))
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, fraction=0.03, pad=0.18)
    return _save(fig, path)


def plot_categories(accuracy: Mapping[str, float], path, title: str) -> Path:
    plt = _plt()
    names = sorted(accuracy)
    fig, ax = plt.subplots(figsize=(7, 0.5 * len(names) + 1.5))
    ax.barh(range(len(names)), [100 * accuracy[n] for n in names], color="tab:blue")
    ax.set_yticks(range(len(names)), names)
    ax.set_xlim(0, 100)
    ax.set_xlabel("test top-1 (%)")
    ax.set_title(title)
    return _save(fig, path)


def plot_examples(examples: Sequence[Mapping], path, title: str) -> Path:
    """``examples``: dicts with ``frame`` (H, W, 3 uint8 or None), ``truth`` (class name),
    ``top`` ([(name, probability)], best first) and ``video_id``."""
    plt = _plt()
    fig, axes = plt.subplots(len(examples), 2, figsize=(8, 1.9 * len(examples) + 0.6),
                             squeeze=False, gridspec_kw={"width_ratios": [1, 1.6]})
    for (img_ax, bar_ax), ex in zip(axes, examples):
        img_ax.axis("off")
        if ex.get("frame") is not None:
            img_ax.imshow(ex["frame"])
        names = [n for n, _ in ex["top"]][::-1]
        probs = [p for _, p in ex["top"]][::-1]
        right = ex["top"][0][0] == ex["truth"]
        colours = ["tab:green" if n == ex["truth"] else "tab:gray" for n in names]
        bar_ax.barh(range(len(names)), probs, color=colours)
        bar_ax.set_yticks(range(len(names)), [f"{n}  (truth)" if n == ex["truth"] else n
                                              for n in names], fontsize=8)
        bar_ax.set_xlim(0, 1)
        bar_ax.tick_params(axis="x", labelsize=7)
        img_ax.set_title(f"{ex['video_id']}\ntruth: {ex['truth']}", fontsize=8,
                         color="tab:green" if right else "tab:red", loc="left")
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)
