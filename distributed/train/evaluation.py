"""Predictions of a trained model on the built (Ray) datasets of a store's splits.

``predict(payload, datasets, label_names, out_dir)`` runs the checkpoint's model over every
split in one Ray Data pass (``_heads``: tasks on the cluster's CPUs, or one GPU each, each
worker process building the model once), and writes ``out_dir/<split>.parquet``
(``reslstm.reports.predictions.PREDICTION_SCHEMA``): head ``fused`` = ``model.probabilities``
(the only head of single-stream and mid models; the late fusion of the two softmaxes
otherwise), plus ``rgb`` and ``flow`` (each network's softmax) for late fusion. The driver
receives C probabilities per video and head, never the inputs, and holds at most a row group
of them per split (``reports.predictions.GROUP_BYTES``): it writes each split's rows as they
come (``PredictionWriter``) and scores them on the way (``metrics.RunningScore``: confusion
counts and top-k hits). Reading and scoring those tables
needs no Ray: ``reslstm.reports.predictions``.
"""

from __future__ import annotations

import contextlib
from typing import Sequence

import numpy as np
import ray
import ray.data

from reslstm import storage
from reslstm.distributed.runtime import cluster_gpus
from reslstm.fusion import FUSED
from reslstm.metrics import RunningScore
from reslstm.reports.predictions import PredictionWriter


_MODELS: dict = {}  # in a Ray worker process: {payload ref: (model, device)}, the latest one


def _heads(batch: dict[str, np.ndarray], payload_ref: list, use_gpu: bool
           ) -> dict[str, np.ndarray]:
    """Ray Data task: a batch of model inputs -> {split, video_id, label, p_<head> (B, C)}. The
    model is built once per worker process (Ray reuses them), not per batch. A task, not an
    actor pool: no actor restarts to configure, no constructor arguments held for them."""
    import torch

    from reslstm.checkpoint import model_from_payload

    key = payload_ref[0].hex()
    if key not in _MODELS:
        _MODELS.clear()
        device = torch.device("cuda" if use_gpu else "cpu")
        _MODELS[key] = (model_from_payload(ray.get(payload_ref[0])).to(device), device)
    model, device = _MODELS[key]
    with torch.no_grad():
        inputs = {s: torch.as_tensor(batch[s], dtype=torch.float32, device=device)
                  for s in model.streams}
        logits = model(inputs)
        out = {FUSED: model.probabilities(logits)}
        if model.late is not None:
            out.update({h: torch.softmax(logits[h], dim=-1) for h in model.heads})
    return {"split": batch["split"], "video_id": batch["video_id"], "label": batch["label"],
            **{f"p_{h}": p.float().cpu().numpy() for h, p in out.items()}}


def _tag(split: str):
    def tag(batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {**batch, "split": np.full(len(batch["label"]), split, dtype=object)}
    return tag


def predict(payload: dict, datasets: dict[str, "ray.data.Dataset"], label_names: Sequence[str],
            out_dir, batch_size: int = 64
            ) -> tuple[dict[str, str], dict[str, dict[str, dict[str, float]]]]:
    """Write ``out_dir/<split>.parquet`` (a path, URI or ``storage.Location``) for each dataset
    and score it; returns ({split: path or URI without options}, {split: {head: {top1, top5,
    mean_class_acc}}})."""
    splits = list(datasets)
    tagged = [datasets[s].map_batches(_tag(s), batch_format="numpy") for s in splits]
    both = tagged[0].union(*tagged[1:]) if len(tagged) > 1 else tagged[0]
    gpus = cluster_gpus()
    heads = both.map_batches(_heads, fn_kwargs={"payload_ref": [ray.put(payload)],
                                                "use_gpu": bool(gpus)},
                             batch_size=batch_size, batch_format="numpy",
                             num_gpus=1 if gpus else 0)
    out = storage.resolve(out_dir)
    scores = {s: {} for s in splits}  # {split: {head: RunningScore}}
    with contextlib.ExitStack() as stack:
        writers = {s: stack.enter_context(
            PredictionWriter(out.join(f"{s}.parquet"), label_names, s)) for s in splits}
        for b in heads.iter_batches(batch_size=None, batch_format="numpy"):
            for s in splits:
                keep = b["split"] == s
                if not keep.any():
                    continue
                labels = b["label"][keep].astype(np.int64)
                probs = {k[2:]: v[keep] for k, v in b.items() if k.startswith("p_")}
                writers[s].add(b["video_id"][keep], labels, probs)
                for h, p in probs.items():
                    scores[s].setdefault(h, RunningScore(len(label_names))).add(p, labels)
        empty = [s for s in splits if writers[s].videos == 0]
        if empty:  # nothing is written: the block ends with the error
            raise RuntimeError(f"the {empty[0]} split came back without predictions")
    paths = {s: out.join(f"{s}.parquet").uri for s in splits}
    return paths, {s: {h: r.result() for h, r in scores[s].items()} for s in splits}
