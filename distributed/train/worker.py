"""The per-worker training loop that Ray Train runs on every worker (``train_loop``).

Each worker builds the model from the run's spec (with the PCA buffers the driver fitted),
wraps it in DDP (gloo on CPUs, NCCL on GPUs) and, every epoch, trains on its shard of the
training split, evaluates its share of val (each video on one rank; ``evaluate_split`` combines
the ranks' results, so the metrics are those of the whole split, equal on every rank) and
reports; rank 0 writes the checkpoint
(``checkpoints.report``) and logs the epoch line. ``jobs/train.py`` and every Tune trial run
this same loop (``trainer.build_trainer``).

Restarts: when Ray Train restarts the worker group (a worker or node lost, up to
``--max-failures`` times) or a run is rerun under the same ``--name``, the loop continues from
the run's latest checkpoint: weights (PCA buffers included), optimizer state, the epoch
counter and the history, so every epoch appears once. Random draws follow from (seed, epoch,
rank), so a redone epoch draws what it drew before.
"""

from __future__ import annotations

import itertools
import json
import logging
import os
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

import numpy as np
import ray
import ray.train
import ray.train.torch
import torch

from reslstm.checkpoint import build_payload, load_payload
from reslstm.configs import TrainConfig
from reslstm.distributed.runtime import quiet_ray_logs
from reslstm.distributed.train.checkpoints import HISTORY_FILE, report
from reslstm.model import ModelConfig, build_model
from reslstm.metrics import score
from reslstm.training import EvalResult, default_optimizer, evaluate, train_one_epoch, unwrap

log = logging.getLogger(__name__)


@dataclass
class RunSpec:
    """What the driver derived from the store, passed to every worker with the config."""

    model_config: dict
    label_names: list[str]
    pca_state: Any = None  # ObjectRef of {buffer name: np.ndarray}, or None
    # How the features were made, per stream (the store's StreamSettings as dicts) and where:
    # a checkpoint carries them, so a prediction runs exactly the chain it was trained on.
    features: dict = field(default_factory=dict)
    store: str = ""
    log_epochs: bool = True  # rank 0 logs a line per epoch (a sweep logs per trial instead)


def torch_batches(it, batch_size: int, streams: Sequence[str], shuffle_seed: int | None = None
                  ) -> Iterator[dict[str, torch.Tensor]]:
    """Batches {stream: (B, T, d_f) float32, "label": (B,) int64} from a Ray data iterator or
    dataset; ``shuffle_seed`` shuffles locally (training)."""
    kwargs = {}
    if shuffle_seed is not None:
        kwargs = {"local_shuffle_buffer_size": max(4 * batch_size, 256),
                  "local_shuffle_seed": shuffle_seed}
    for b in it.iter_batches(batch_size=batch_size, batch_format="numpy", **kwargs):
        out = {s: torch.tensor(b[s], dtype=torch.float32) for s in streams}
        out["label"] = torch.from_numpy(b["label"].astype(np.int64))
        yield out


class ShardCache:
    """A worker's dataset shard: streamed from Ray Data on the first epoch and, when
    ``enabled``, kept in memory as tensors for the later ones.

    Each pass over a Ray Data shard starts a new streaming execution (about half a second even
    for a few hundred videos), which dominates an epoch of a small Res-LSTM. The shard holds
    T x d_f floats per video and stream (25 x 1024 x 4 B = 100 kB), so UCF-101's training
    split is ~1 GB per stream over all workers; ``cache_data=False`` streams every epoch.
    """

    def __init__(self, it, streams: Sequence[str], enabled: bool = True):
        self.it, self.streams, self.enabled = it, tuple(streams), enabled
        self.tensors: dict[str, torch.Tensor] | None = None

    def batches(self, batch_size: int, shuffle_seed: int | None = None
                ) -> Iterator[dict[str, torch.Tensor]]:
        if self.tensors is None:
            parts: dict[str, list[torch.Tensor]] = {k: [] for k in (*self.streams, "label")}
            for batch in torch_batches(self.it, batch_size, self.streams, shuffle_seed):
                if self.enabled:
                    for k, v in batch.items():
                        parts[k].append(v)
                yield batch
            if self.enabled:  # only a complete pass becomes the cache
                self.tensors = {k: torch.cat(v) if v else torch.empty(0) for k, v in parts.items()}
            return
        n = len(self.tensors["label"])
        order = (torch.randperm(n, generator=torch.Generator().manual_seed(shuffle_seed))
                 if shuffle_seed is not None else torch.arange(n))
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            yield {k: v[idx] for k, v in self.tensors.items()}


def epoch_metrics(result, train_loss: float, heads: Sequence[str]) -> dict:
    """The metrics reported every epoch (same names in every run and trial)."""
    m = {"train_loss": train_loss, "val_loss": result.loss, "val_top1": result.top1,
         "val_top5": result.top5, "val_mean_class_acc": result.mean_class_acc}
    if len(heads) == 2:  # late fusion: each stream's own accuracy too
        m.update({f"val_top1_{h}": result.head_top1[h] for h in heads})
    return m


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _mean_over_ranks(value: float, device) -> float:
    if not _distributed():
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    torch.distributed.all_reduce(t)
    return float(t.item()) / torch.distributed.get_world_size()


def weights_spread(model: torch.nn.Module, device) -> float:
    """Largest difference between the workers' weights, through a fingerprint of each
    parameter (its sum and sum of squares in float64): 0.0 while DDP keeps them equal."""
    fp = torch.stack([torch.stack([p.double().sum(), p.double().pow(2).sum()])
                      for p in model.parameters()]).flatten().to(device)  # (2 * n_params,)
    if not _distributed():
        return 0.0
    hi, lo = fp.clone(), fp.clone()
    torch.distributed.all_reduce(hi, op=torch.distributed.ReduceOp.MAX)
    torch.distributed.all_reduce(lo, op=torch.distributed.ReduceOp.MIN)
    return float((hi - lo).abs().max().item())


def evaluate_split(model: torch.nn.Module, batches, device, streams: Sequence[str]) -> EvalResult:
    """``training.evaluate`` over this rank's share of val (``trainer.ShardedVal``: every video
    on exactly one rank), combined over the ranks: the loss, accuracies and probabilities of the
    whole split, the same numbers on every rank as one process evaluating all of it."""
    batches = iter(batches)
    first = next(batches, None)
    local = (None if first is None else
             evaluate(model, itertools.chain([first], batches), device, streams))
    if not _distributed():
        if local is None:
            raise ValueError("evaluate got no batches (is the evaluation split empty?)")
        return local
    parts = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(parts, None if local is None else (
        local.loss * len(local.labels), local.probs, local.labels,
        {h: round(a * len(local.labels)) for h, a in local.head_top1.items()}))
    parts = [p for p in parts if p is not None]
    if not parts:
        raise ValueError("evaluate got no batches (is the evaluation split empty?)")
    probs = np.concatenate([p[1] for p in parts])
    labels = np.concatenate([p[2] for p in parts])
    n = len(labels)
    return EvalResult(loss=sum(p[0] for p in parts) / n, probs=probs, labels=labels,
                      head_top1={h: sum(p[3][h] for p in parts) / n for h in parts[0][3]},
                      **score(probs, labels))


def _resume() -> tuple[dict | None, list[dict]]:
    """(payload, history) of the run's latest checkpoint when this worker group restarts
    (a lost worker or node, or a rerun under the same ``--name``), else (None, [])."""
    ckpt = ray.train.get_checkpoint()
    if ckpt is None:
        return None, []
    with ckpt.as_directory() as d:
        payload = load_payload(d)
        history_file = os.path.join(d, HISTORY_FILE)
        history = json.loads(open(history_file).read()) if os.path.exists(history_file) else []
    return payload, history


def train_loop(config: dict) -> None:
    """Per-worker loop: build the model (with the driver's PCA buffers), DDP, RMSProp; each
    epoch trains on this worker's shard, evaluates its share of val and reports."""
    from reslstm.cli import setup_console

    cfg: TrainConfig = config["train_config"]
    spec: RunSpec = config["run"]
    setup_console()  # this worker's console: the epoch lines of rank 0
    quiet_ray_logs()
    torch.manual_seed(cfg.seed)  # same initial weights on every rank
    mcfg = ModelConfig.from_dict(spec.model_config)
    model = build_model(mcfg)
    resumed, history = _resume()
    if resumed is not None:  # everything, PCA buffers included
        model.load_state_dict(resumed["model_state"])
    elif spec.pca_state is not None:
        state = ray.get(spec.pca_state)
        loaded = model.load_state_dict({k: torch.tensor(v) for k, v in state.items()},
                                       strict=False)
        if loaded.unexpected_keys:
            raise RuntimeError(f"PCA buffers {loaded.unexpected_keys} do not fit the model")
    device = ray.train.torch.get_device()
    model = ray.train.torch.prepare_model(model)
    inner = unwrap(model)
    optimizer = default_optimizer(model.parameters(), lr=cfg.lr)
    if resumed is not None and resumed.get("optimizer_state"):
        optimizer.load_state_dict(resumed["optimizer_state"])
    streams, heads = mcfg.streams, mcfg.heads
    train_data = ShardCache(ray.train.get_dataset_shard("train"), mcfg.streams, cfg.cache_data)
    val_data = ShardCache(ray.train.get_dataset_shard("val"), mcfg.streams, cfg.cache_data)
    rank = ray.train.get_context().get_world_rank()
    first = 1 if resumed is None else int(resumed["epoch"]) + 1
    history = [h for h in history if h["epoch"] < first]  # each epoch once
    # How often this run continued from a checkpoint so far (a lost worker or node, a rerun
    # under the same --name): a metric of every epoch, so history, Tune and MLflow show it.
    restarts = 0 if resumed is None else int(resumed["metrics"].get("restarts", 0)) + 1
    if resumed is not None and rank == 0:
        log.info(f"resumed from epoch {first - 1} (of {cfg.epochs})")
    if first > cfg.epochs and history:
        # Nothing left to train (a finished run started again, e.g. a sweep's trial restored
        # before Tune recorded its end): report the last epoch again, so whoever waits for a
        # result (Tune, ASHA) gets one. Its checkpoint is already the run's.
        ray.train.report(history[-1], checkpoint=None)
    for epoch in range(first, cfg.epochs + 1):
        # Every random draw of an epoch (shuffling, dropout) follows from (seed, epoch, rank),
        # so an epoch redone after a restart draws what it drew the first time.
        seed = cfg.seed * 100_003 + epoch * 1_009 + rank
        torch.manual_seed(seed)
        loss = train_one_epoch(model, train_data.batches(cfg.batch_size, seed),
                               optimizer, device, streams)
        loss = _mean_over_ranks(loss, device)
        # The unwrapped model: evaluation must not run DDP collectives.
        result = evaluate_split(inner, val_data.batches(cfg.batch_size), device, streams)
        metrics = {"epoch": epoch, **epoch_metrics(result, loss, heads),
                   "weights_spread": weights_spread(inner, device), "restarts": restarts}
        history.append(metrics)
        if rank == 0 and spec.log_epochs:
            log.info(f"epoch {epoch}: " + "  ".join(
                f"{k} {v:.4f}" for k, v in metrics.items()
                if k not in ("epoch", "weights_spread") and isinstance(v, float)))
        report(epoch, metrics, history, lambda: build_payload(
            inner, spec.label_names, optimizer.state_dict(), features=spec.features,
            store=spec.store, train_config=cfg.to_dict(), epoch=epoch, metrics=metrics))
