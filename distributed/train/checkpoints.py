"""Checkpoints of training runs: how one is written from a worker, and which ones a run kept.

A checkpoint is a directory (local or on the run's storage, e.g. ``s3://``) with ``model.pt``
(the payload of ``reslstm.checkpoint.build_payload``: ``model_state``, ``optimizer_state``,
``model_config``, ``label_names``, ``features`` (how the features of each stream were made: the
store's settings, extractor, weights id, clips, crops, flow method, size), ``store``,
``train_config``, ``epoch``, ``metrics``) and ``history.json`` (the metrics of every epoch so
far). Rank 0 writes one per epoch through ``ray.train.report``; Ray keeps the best by ``METRIC``
and, always, the latest. PCA buffers are part of the model's state_dict, hence of every
checkpoint. ``reslstm.checkpoint.load_payload`` / ``load_checkpoint`` read one back, a
``ray.train.Checkpoint`` as well as a directory, file or URI.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import ray.train
import torch

from reslstm.checkpoint import CHECKPOINT_FILE

HISTORY_FILE = "history.json"
METRIC = "val_top1"


def report(epoch: int, metrics: dict, history: list[dict], payload) -> None:
    """Report an epoch from this worker: every rank reports its metrics; rank 0 alone writes
    the checkpoint (``payload()`` builds the model.pt payload only there)."""
    if ray.train.get_context().get_world_rank() != 0:
        ray.train.report(metrics, checkpoint=None)
        return
    with tempfile.TemporaryDirectory() as tmp:
        torch.save(payload(), os.path.join(tmp, CHECKPOINT_FILE))
        Path(tmp, HISTORY_FILE).write_text(json.dumps(history, indent=1))
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp),
                         checkpoint_dir_name=f"epoch_{epoch:04d}")


def best_checkpoint(result) -> tuple[ray.train.Checkpoint, dict]:
    """(checkpoint, metrics) with the highest val_top1 among those Ray kept (on a tie the
    later epoch, which is the one Ray's checkpoint manager keeps)."""
    kept = [(c, m) for c, m in (result.best_checkpoints or []) if METRIC in m]
    if not kept:
        raise RuntimeError(f"{result.path}: the run reported no checkpoint with {METRIC}")
    return max(kept, key=lambda cm: (cm[1][METRIC], cm[1].get("epoch", 0)))


def history(checkpoint: ray.train.Checkpoint) -> list[dict]:
    """The metrics of every epoch up to ``checkpoint`` (its history.json)."""
    with checkpoint.as_directory() as d:
        f = Path(d) / HISTORY_FILE
        return json.loads(f.read_text()) if f.is_file() else []
