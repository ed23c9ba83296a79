"""The running prediction of one video: the class probabilities after each of the T steps.

The Res-LSTM reads the T sampled clips sigma(1..T) in order; the softmax of its output at step
t, W_y^T m_t^L (``ActionModel.step_logits``), is what it would answer had the video ended with
clip sigma(t). Step T is the prediction itself. Each step covers the seconds of its clip
(``start_s`` .. ``end_s`` from the clip spans extraction records: presentation timestamps,
exact for variable frame rates); with two streams, the union of the two streams' clips (a flow
clip reads one RGB frame more). The temporal-pooling baseline gives the running mean of its
inputs instead. For late fusion there are three heads per step (fused, rgb, flow), as for the
prediction.

``Timeline`` is written by ``jobs/predict.py --timeline DIR`` as ``<name>.timeline.csv`` (one
line per step and head: step, clip, start_s, end_s, head, the top class and its probability,
then one column per class), ``<name>.timeline.json`` (the same, nested) and
``<name>.timeline.png`` (the probability of the final top classes against time).
"""

from __future__ import annotations

import csv
import dataclasses
import json
from pathlib import Path

import numpy as np

from reslstm.fusion import FUSED

TOP_PLOTTED = 5  # classes drawn in the PNG: the most probable at the last step


@dataclasses.dataclass
class Timeline:
    """Probabilities per step and head for one video (module docstring)."""

    video_id: str
    path: str
    fusion: str
    label_names: list[str]
    clips: np.ndarray              # (T,) 0-based clip index sigma(t) - 1 of each step
    start_s: np.ndarray            # (T,) seconds each step's clip starts
    end_s: np.ndarray              # (T,) and ends
    probs: dict[str, np.ndarray]   # head -> (T, C) float32

    @property
    def steps(self) -> int:
        return len(self.clips)

    def rows(self) -> list[dict]:
        """One dict per (step, head), steps in order: the CSV's lines."""
        out = []
        for t in range(self.steps):
            for head, p in self.probs.items():
                best = int(np.argmax(p[t]))
                out.append({"step": t + 1, "clip": int(self.clips[t]),
                            "start_s": float(self.start_s[t]), "end_s": float(self.end_s[t]),
                            "head": head, "top_label": self.label_names[best],
                            "top_probability": float(p[t, best]),
                            **{name: float(x) for name, x in zip(self.label_names, p[t])}})
        return out

    def to_dict(self) -> dict:
        return {"video_id": self.video_id, "path": self.path, "fusion": self.fusion,
                "labels": list(self.label_names),
                "steps": [{"step": t + 1, "clip": int(self.clips[t]),
                           "start_s": float(self.start_s[t]), "end_s": float(self.end_s[t]),
                           "probabilities": {h: [float(x) for x in p[t]]
                                             for h, p in self.probs.items()}}
                          for t in range(self.steps)]}

    def write(self, directory, name: str) -> list[Path]:
        """``<name>.timeline.csv``, ``.json`` and ``.png`` in ``directory`` (created)."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        rows = self.rows()
        csv_path = directory / f"{name}.timeline.csv"
        with open(csv_path, "w", newline="") as fh:
            writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
            writer.writeheader()
            writer.writerows(rows)
        json_path = directory / f"{name}.timeline.json"
        json_path.write_text(json.dumps(self.to_dict(), indent=1) + "\n")
        return [csv_path, json_path, self.plot(directory / f"{name}.timeline.png")]

    def plot(self, out) -> Path:
        """The fused head's probability of the final top classes against time: each step is
        drawn at the end of its clip (the moment its answer is known), over its clip's span."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        p = self.probs[FUSED]
        top = np.argsort(-p[-1], kind="stable")[:TOP_PLOTTED]
        fig, ax = plt.subplots(figsize=(8, 4), dpi=100)
        for c in top:
            ax.plot(self.end_s, p[:, c], marker="o", label=self.label_names[c])
        for t in range(self.steps):  # each step's clip as a faint band under the curves
            ax.axvspan(self.start_s[t], self.end_s[t], color="0.5", alpha=0.04, lw=0)
        ax.set_xlabel("time in the video (s): end of the step's clip")
        ax.set_ylabel(f"probability ({FUSED}, {self.fusion})")
        ax.set_ylim(0, 1)
        ax.set_title(f"{Path(self.path).name}: the running prediction over {self.steps} steps",
                     fontsize=10)
        ax.legend(fontsize=8, loc="upper left")
        fig.tight_layout()
        fig.savefig(out)
        plt.close(fig)
        return Path(out)
