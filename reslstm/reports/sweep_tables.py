"""The report of a sweep: its trials as a table (CSV and Markdown) and their validation curves
(a PNG), for the sweep's parent run in MLflow and the sweep's output folder.

``write_sweep_report(rows, curves, out_dir, best=None)``: ``rows`` are dicts with the same keys
(one per trial), ``curves`` maps a trial to its (epoch, val top-1) points. Pure NumPy and
matplotlib; no Ray, no MLflow.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Mapping, Sequence


def markdown_table(rows: Sequence[Mapping], columns: Sequence[str] | None = None) -> str:
    """A GitHub-style Markdown table of ``rows`` (floats with 4 decimals)."""
    columns = list(columns or (rows[0].keys() if rows else []))

    def cell(v) -> str:
        return f"{v:.4f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(cell(r.get(c, "")) for c in columns) + " |" for r in rows]
    return "\n".join(lines) + "\n"


def plot_curves(curves: Mapping[str, Sequence[tuple[int, float]]], path, title: str,
                best: str | None = None, ylabel: str = "val top-1") -> Path:
    """One line per trial (label -> [(epoch, value)]); the best trial drawn thicker."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7.5, 4.5), dpi=120)
    for label, points in sorted(curves.items()):
        if not points:
            continue
        xs, ys = zip(*sorted(points))
        ax.plot(xs, ys, marker="o" if len(xs) < 12 else None, markersize=3,
                linewidth=2.5 if label == best else 1.2, label=label + (" (best)" if label == best else ""))
    ax.set_xlabel("epoch")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if len(curves) <= 12:
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def write_sweep_report(rows: Sequence[Mapping], curves: Mapping[str, Sequence[tuple[int, float]]],
                       out_dir, title: str, best: str | None = None) -> dict[str, str]:
    """trials.csv, trials.md and val_curves.png in ``out_dir``; returns {name: path}."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    files = {"trials_csv": out / "trials.csv", "trials_md": out / "trials.md"}
    # every key of every row (trials of different fusions report different heads), in order
    columns = list(dict.fromkeys(k for r in rows for k in r)) or ["trial"]
    with open(files["trials_csv"], "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns, restval="")
        writer.writeheader()
        writer.writerows(rows)
    files["trials_md"].write_text(f"# {title}\n\n" + markdown_table(rows, columns))
    files["val_curves"] = plot_curves(curves, out / "val_curves.png", title, best)
    return {k: str(v) for k, v in files.items()}
