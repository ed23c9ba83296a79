"""A picture of predictions in the manner of the paper's Fig. 4: per video a few frames and the
top-k classes of each head as bars (``draw_sheet``). Matplotlib, no display needed."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from reslstm.fusion import FUSED
from reslstm.inference.predictor import Prediction

FRAME_SIDE = 128  # short side frames are shown at


def sample_frames(path: str, count: int, num_frames: int) -> list[np.ndarray]:
    """``count`` frames spread evenly over the video (RGB uint8), decoded in one pass."""
    from reslstm.video.decoding import VideoReader

    want = set(np.linspace(0, max(num_frames - 1, 0), count).round().astype(int).tolist())
    frames = []
    for i, frame in enumerate(VideoReader(path, short_side=FRAME_SIDE)):
        if i in want:
            frames.append(frame)
        if len(frames) == len(want):
            break
    return frames


def draw_sheet(predictions: Sequence[Prediction], out, frames: int = 4, top_k: int = 5) -> Path:
    """One row per video: ``frames`` frames, then one bar chart per head (top-k classes, the
    most probable on top). Writes ``out`` (PNG) and returns its path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    heads = max(len(p.probs) for p in predictions)
    cols = frames + heads
    fig, axes = plt.subplots(len(predictions), cols, squeeze=False,
                             figsize=(1.9 * frames + 3.2 * heads, 2.2 * len(predictions)),
                             gridspec_kw={"width_ratios": [1] * frames + [1.8] * heads})
    for row, pred in zip(axes, predictions):
        shown = sample_frames(pred.path, frames, pred.num_frames)
        for j in range(frames):
            ax = row[j]
            ax.axis("off")
            if j < len(shown):
                ax.imshow(shown[j])
        row[0].set_title(Path(pred.path).name, loc="left", fontsize=8)
        for j, head in enumerate(pred.probs):
            ax = row[frames + j]
            top = pred.top(head, top_k)[::-1]  # barh draws bottom up
            ax.barh(range(len(top)), [p for _, _, p in top], color="tab:blue" if head == FUSED
                    else "tab:gray")
            ax.set_yticks(range(len(top)), [name for _, name, _ in top], fontsize=7)
            ax.set_xlim(0, 1)
            ax.tick_params(axis="x", labelsize=7)
            ax.set_title(f"{head} ({pred.fusion})" if head == FUSED else head, fontsize=8)
        for j in range(frames + len(pred.probs), cols):
            row[j].axis("off")
    fig.tight_layout()
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
