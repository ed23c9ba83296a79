"""Predictions of a trained model on the built (Ray) datasets of a store's splits.

``predict(model, datasets, label_names, out_dir)`` runs the model over each split's dataset in
this process and writes ``out_dir/<split>.parquet`` (``reslstm.reports.predictions.PREDICTION_SCHEMA``):
head ``fused`` = ``model.probabilities`` (the only head of single-stream and mid models; the late
fusion of the two softmaxes otherwise), plus ``rgb`` and ``flow`` (each network's softmax) for
late fusion. Reading and scoring those tables needs no Ray: ``reslstm.reports.predictions``.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import ray.data
import torch

from reslstm import storage
from reslstm.features import write_part
from reslstm.fusion import FUSED
from reslstm.metrics import score
from reslstm.model import ActionModel
from reslstm.reports.predictions import prediction_table


@torch.no_grad()
def predict(model: ActionModel, datasets: dict[str, "ray.data.Dataset"],
            label_names: Sequence[str], out_dir, batch_size: int = 64
            ) -> tuple[dict[str, str], dict[str, dict[str, dict[str, float]]]]:
    """Write ``out_dir/<split>.parquet`` (a path, URI or ``storage.Location``) for each dataset
    and score it; returns ({split: path or URI without options}, {split: {head: {top1, top5, mean_class_acc}}})."""
    model.eval()
    paths, scores = {}, {}
    for split, ds in datasets.items():
        ids, labels, per_head = [], [], {}
        for b in ds.iter_batches(batch_size=batch_size, batch_format="numpy"):
            inputs = {s: torch.tensor(b[s], dtype=torch.float32) for s in model.streams}
            logits = model(inputs)
            out = {FUSED: model.probabilities(logits)}
            if model.late is not None:
                out.update({h: torch.softmax(logits[h], dim=-1) for h in model.heads})
            for head, p in out.items():
                per_head.setdefault(head, []).append(p.float().numpy())
            ids += list(b["video_id"])
            labels.append(b["label"].astype(np.int64))
        y = np.concatenate(labels)
        probs = {h: np.concatenate(ps) for h, ps in per_head.items()}
        table = prediction_table(ids, y, label_names, split, probs)
        write_part(out_dir, table, name=f"{split}.parquet")
        paths[split] = storage.resolve(out_dir).join(f"{split}.parquet").uri
        scores[split] = {h: score(p, y, len(label_names)) for h, p in probs.items()}
    return paths, scores
