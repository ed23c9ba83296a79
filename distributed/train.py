"""Ray Train: one training loop for every stream and fusion, its trainer, and predictions.

Python API (``reslstm.distributed.train``):

- ``TrainConfig``: every setting of a run (the ``jobs/train.py`` options); a dataclass.
- ``fit(cfg, address=None) -> TrainResult``: connect to Ray (``runtime.init_ray``), build
  the datasets, fit PCA, train with a ``TorchTrainer``, then predict val and test with the
  best checkpoint into ``RUN_DIR/predictions/{val,test}.parquet`` and write
  ``RUN_DIR/summary.json``.
- ``prepare(cfg) -> Prepared`` and ``build_trainer(cfg, prepared, name, callbacks=())``:
  the two steps ``fit`` and the Tune trial (``distributed.tune``) share.
- ``train_loop(config)``: the per-worker loop (``config = {"train_config": TrainConfig,
  "run": RunSpec}``); Tune reuses it through ``build_trainer``.
- ``load_checkpoint(path) -> (ActionModel, payload)``: reload a checkpoint (then
  ``evaluate.predict`` writes its prediction tables).

Data: datasets are built and materialized in the driver (``distributed.data``). The train split
is sharded across workers (``streaming_split(equal=True)``: every worker gets the same number of
rows, at most ``workers - 1`` rows are skipped per epoch); val is NOT split: every worker
evaluates all of it, so the metrics are identical on every rank and no gather is needed. Test
is never seen during training; predictions run in the driver after ``fit``.

Checkpoints: rank 0 writes ``model.pt`` (state_dict, model config, label names, train config,
epoch and metrics) and ``history.json`` (metrics of every epoch so far) for every epoch; Ray
keeps the best by ``val_top1`` (and, always, the latest). PCA is fitted in the driver on a
bounded sample of training clip vectors and reaches the workers through the object store; its
buffers are part of the model's state_dict, hence of every checkpoint.

CPUs: the driver holds none; each worker gets ``min(1, CPUs / workers)`` CPUs (2 workers on 2
cores: 1 each), which is safe because the datasets are materialized before the workers start.
Multi-node runs need a shared ``storage_path`` (``s3://...`` or an NFS path on every node).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import ray
import ray.train
import ray.train.torch
import torch

from reslstm import features as fs
from reslstm.model import ActionModel, InputProjection, ModelConfig, build_model
from reslstm.training import default_optimizer, evaluate, train_one_epoch, unwrap
from reslstm.distributed import data as rdata
from reslstm.distributed.evaluate import predict, score
from reslstm.distributed.runtime import cluster_cpus, cluster_gpus, init_ray

CHECKPOINT_FILE = "model.pt"
HISTORY_FILE = "history.json"
METRIC = "val_top1"
PLACEMENT_GROUP_KEY = "train_placement_group"


@dataclass
class TrainConfig:
    """One training run. ``fusion`` is the stream or fusion (``--stream``): rgb, flow, mid-sum,
    mid-product, late-product, late-sum or late-weighted."""

    features: str
    out: str = "runs/train"
    fusion: str = "rgb"
    hidden: int = 1024
    depth: int = 2
    T: int = 25
    input_proj: str = "pca"
    residual: bool = True
    dropout: float = 0.0
    arch: str = "reslstm"
    epochs: int = 20
    batch_size: int = 32
    lr: float = 1e-3
    seed: int = 0
    workers: int = 2
    use_gpu: str = "auto"  # auto | yes | no
    storage_path: str | None = None  # default: RUN_DIR/ray_results (absolute)
    pca_max_vectors: int = 50_000
    cpus_per_worker: float | None = None  # default: min(1, cluster CPUs / workers)
    cache_data: bool = True  # workers keep their shard in memory after the first epoch

    def model_config(self, input_dim: int, num_classes: int) -> ModelConfig:
        return ModelConfig(input_dim=input_dim, num_classes=num_classes, hidden_size=self.hidden,
                           num_layers=self.depth, residual=self.residual,
                           input_proj=self.input_proj, dropout=self.dropout, arch=self.arch,
                           fusion=self.fusion)

    def resolved_storage(self) -> str:
        """Where Ray Train keeps checkpoints: an absolute local path or a URI."""
        if self.storage_path:
            sp = self.storage_path
            return sp if "://" in sp else str(Path(sp).expanduser().resolve())
        return str((Path(self.out) / "ray_results").resolve())

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)


@dataclass
class RunSpec:
    """What the driver derived from the store, passed to every worker with the config."""

    model_config: dict
    label_names: list[str]
    pca_state: Any = None  # ObjectRef of {buffer name: np.ndarray}, or None
    # Rank 0 adds PLACEMENT_GROUP_KEY (its worker placement group id) to every report, so a
    # Tune driver can release the group of a trial it stopped (see distributed.tune).
    report_placement_group: bool = False


@dataclass
class Prepared:
    """The driver's side of a run: datasets per split and the worker spec."""

    index: rdata.StoreIndex
    datasets: dict[str, "ray.data.Dataset"]
    spec: RunSpec


@dataclass
class TrainResult:
    """What ``fit`` returns (also written to RUN_DIR/summary.json, without history)."""

    run_dir: str
    ray_run_path: str
    best_checkpoint: str
    best_epoch: int
    best_metrics: dict[str, float]
    history: list[dict[str, float]]
    predictions: dict[str, str]
    scores: dict[str, dict[str, dict[str, float]]]  # split -> head -> top1/top5/mean_class_acc
    train_config: TrainConfig
    label_names: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# Resources
# ---------------------------------------------------------------------------------------------

def wants_gpu(use_gpu: str, gpus_available: int) -> bool:
    """``--use-gpu auto|yes|no`` against the cluster's GPUs; yes without GPUs is an error."""
    if use_gpu not in ("auto", "yes", "no"):
        raise ValueError(f"--use-gpu must be auto, yes or no, got {use_gpu!r}")
    if use_gpu == "yes" and gpus_available < 1:
        raise ValueError("--use-gpu yes, but the cluster has no GPU; use --use-gpu auto or no")
    return use_gpu == "yes" or (use_gpu == "auto" and gpus_available > 0)


def cpus_per_worker(cpus: float, workers: int, reserved: float = 0.0) -> float:
    """CPUs per training worker: at most 1, and what is left after ``reserved`` (e.g. a Tune
    trial's own CPU) shared by the workers, rounded down to 0.01 (Ray's granularity)."""
    if workers < 1:
        raise ValueError(f"workers must be >= 1, got {workers}")
    share = np.floor(100 * (cpus - reserved) / workers) / 100
    if share < 0.01:
        raise ValueError(f"{cpus} CPUs leave nothing for {workers} workers after {reserved} "
                         "reserved; use fewer workers or a bigger cluster")
    return float(min(1.0, share))


def scaling_config(cfg: TrainConfig) -> ray.train.ScalingConfig:
    """``cfg.workers`` workers with ``cfg.cpus_per_worker`` CPUs (default: min(1, CPUs /
    workers)) and one GPU each when ``--use-gpu`` says so (NCCL; Gloo on CPU)."""
    gpu = wants_gpu(cfg.use_gpu, cluster_gpus())
    cpu = cfg.cpus_per_worker or cpus_per_worker(cluster_cpus(), cfg.workers)
    res = {"CPU": cpu, **({"GPU": 1} if gpu else {})}
    return ray.train.ScalingConfig(num_workers=cfg.workers, use_gpu=gpu, resources_per_worker=res)


# ---------------------------------------------------------------------------------------------
# Driver side: datasets, PCA, trainer
# ---------------------------------------------------------------------------------------------

def _pca_buffers(model: ActionModel) -> dict[str, np.ndarray]:
    """The fitted PCA buffers of ``model`` as {state_dict key: array} ({} without PCA)."""
    out = {}
    for name, mod in model.named_modules():
        if isinstance(mod, InputProjection) and mod.kind == "pca":
            for b in ("mean", "components", "fitted"):
                out[f"{name}.{b}"] = getattr(mod, b).detach().cpu().numpy()
    return out


@dataclass
class StreamData:
    """Built datasets of one (streams, T): what several runs (Tune trials) can share."""

    index: rdata.StoreIndex
    datasets: dict[str, "ray.data.Dataset"]


def streams_of(fusion: str) -> tuple[str, ...]:
    """The streams a fusion reads (validates the name)."""
    return ModelConfig(input_dim=1, num_classes=1, fusion=fusion).streams


def load_data(store, streams: Sequence[str], T: int,
              splits: Sequence[str] = ("train", "val", "test"), log=print) -> StreamData:
    """Index the store and build the materialized datasets of ``splits`` (driver side)."""
    index = rdata.read_index(store, streams)
    for stream, ids in index.missing.items():
        log(f"warning: {len(ids)} video(s) lack {stream} features and are left out "
            f"(e.g. {ids[:3]}); see the store's failures table")
    for split in ("train", "val"):
        if split in splits and not index.count(split):
            raise fs.StoreError(f"{store}: no {split} videos for streams {list(index.streams)}")
    return StreamData(index, rdata.build_datasets(store, index.streams, T, splits, index))


def prepare(cfg: TrainConfig, splits: Sequence[str] = ("train", "val", "test"),
            log=print, data: StreamData | None = None) -> Prepared:
    """Build the datasets (or take ``data`` built already for this fusion's streams and T),
    check the model builds and, when the model uses PCA and there is a train split, fit PCA
    on training clips. (Without train, e.g. to predict with a checkpoint, no PCA is fitted:
    the checkpoint carries its buffers.)"""
    if data is None:
        data = load_data(cfg.features, streams_of(cfg.fusion), cfg.T, splits, log)
    index = data.index
    mcfg = cfg.model_config(index.feature_dim, index.num_classes)
    model = build_model(mcfg)  # fails early, e.g. on PCA to more dims than d_f
    pca_ref = None
    projections = {s: p for s, p in model.input_projections().items() if p.kind == "pca"}
    if projections and "train" in data.datasets:
        for stream, proj in projections.items():
            x = rdata.pca_sample(data.datasets["train"], stream, cfg.pca_max_vectors, cfg.seed)
            proj.fit_pca(x)
            log(f"PCA {stream}: {x.shape[1]} -> {cfg.hidden} dims fitted on {len(x)} "
                "training clip vectors")
        pca_ref = ray.put(_pca_buffers(model))
    spec = RunSpec(model_config=mcfg.to_dict(), label_names=index.label_names, pca_state=pca_ref)
    return Prepared(index=index, datasets=dict(data.datasets), spec=spec)


def run_name(cfg: TrainConfig) -> str:
    """A new Ray Train run name (a reused name would silently resume that run)."""
    return f"{cfg.fusion}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"


# Ray Train's controller drains each worker's one-slot report queue once per health check
# (default every 2 s), so ray.train.report blocks up to 2 s: with a small Res-LSTM that is most
# of an epoch. The controller reads this from the driver's environment; a user's value wins.
REPORT_POLL_S = "0.2"


def build_trainer(cfg: TrainConfig, prepared: Prepared, name: str,
                  callbacks: Sequence = ()) -> ray.train.torch.TorchTrainer:
    """The TorchTrainer of a run; ``fit`` and every Tune trial build it here."""
    os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", REPORT_POLL_S)
    # Ray Train's print patch sends a worker's print both to its log and to stdout, so every
    # epoch line reached the driver twice.
    os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
    run_config = ray.train.RunConfig(
        name=name,
        storage_path=cfg.resolved_storage(),
        checkpoint_config=ray.train.CheckpointConfig(
            num_to_keep=1, checkpoint_score_attribute=METRIC, checkpoint_score_order="max"),
        callbacks=list(callbacks),
    )
    return ray.train.torch.TorchTrainer(
        train_loop,
        train_loop_config={"train_config": cfg, "run": prepared.spec},
        scaling_config=scaling_config(cfg),
        run_config=run_config,
        datasets={s: prepared.datasets[s] for s in ("train", "val")},
        dataset_config=ray.train.DataConfig(datasets_to_split=["train"]),
    )


# ---------------------------------------------------------------------------------------------
# Worker side: the training loop
# ---------------------------------------------------------------------------------------------

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


def epoch_metrics(result, train_loss: float, num_classes: int, heads: Sequence[str]) -> dict:
    """The metrics reported every epoch (same names in every run and trial)."""
    m = {"train_loss": train_loss, "val_loss": result.loss}
    m.update({f"val_{k}": v for k, v in score(result.probs, result.labels, num_classes).items()})
    if len(heads) == 2:  # late fusion: each stream's own accuracy too
        m.update({f"val_top1_{h}": result.head_top1[h] for h in heads})
    return m


def _report(epoch: int, metrics: dict, history: list[dict], payload) -> None:
    """Every rank reports; rank 0 alone writes the checkpoint and prints the epoch line."""
    ctx = ray.train.get_context()
    if ctx.get_world_rank() != 0:
        ray.train.report(metrics, checkpoint=None)
        return
    line = "  ".join(f"{k} {v:.4f}" for k, v in metrics.items()
                     if k != "epoch" and isinstance(v, float))
    print(f"epoch {epoch}: {line}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        torch.save(payload(), os.path.join(tmp, CHECKPOINT_FILE))
        Path(tmp, HISTORY_FILE).write_text(json.dumps(history, indent=1))
        ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp),
                         checkpoint_dir_name=f"epoch_{epoch:04d}")


def _mean_over_ranks(value: float, device) -> float:
    if not torch.distributed.is_available() or not torch.distributed.is_initialized():
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    torch.distributed.all_reduce(t)
    return float(t.item()) / torch.distributed.get_world_size()


def _quiet_report_logs() -> None:
    """Ray Train logs two INFO lines per report ("Reporting training result ...", "Checkpoint
    successfully created ..."); the epoch line says the same in one. The first comes from a
    logger named after its file, hence the lookup. Ray Data, iterating the val split in each
    worker, says once that its progress bars are off and that each pass finished: lines that
    reached the driver after a run's (or the demo's) final report."""
    logging.getLogger("ray.train").setLevel(logging.WARNING)
    logging.getLogger("ray.data._internal.progress").setLevel(logging.ERROR)
    logging.getLogger("ray.data._internal.execution.streaming_executor").setLevel(logging.WARNING)
    try:
        from ray.train.v2._internal.execution import context as train_context
    except ImportError:  # another Ray version: its logs stay
        return
    logging.getLogger(train_context.__file__).setLevel(logging.WARNING)


def train_loop(config: dict) -> None:
    """Per-worker loop: build the model (with the driver's PCA buffers), DDP, RMSProp; each
    epoch trains on this worker's shard, evaluates all of val and reports."""
    cfg: TrainConfig = config["train_config"]
    spec: RunSpec = config["run"]
    _quiet_report_logs()
    torch.manual_seed(cfg.seed)  # same initial weights on every rank
    mcfg = ModelConfig.from_dict(spec.model_config)
    model = build_model(mcfg)
    if spec.pca_state is not None:
        state = ray.get(spec.pca_state)
        loaded = model.load_state_dict({k: torch.tensor(v) for k, v in state.items()},
                                       strict=False)
        if loaded.unexpected_keys:
            raise RuntimeError(f"PCA buffers {loaded.unexpected_keys} do not fit the model")
    device = ray.train.torch.get_device()
    model = ray.train.torch.prepare_model(model)
    inner = unwrap(model)
    optimizer = default_optimizer(model.parameters(), lr=cfg.lr)
    streams, heads = mcfg.streams, mcfg.heads
    train_data = ShardCache(ray.train.get_dataset_shard("train"), mcfg.streams, cfg.cache_data)
    val_data = ShardCache(ray.train.get_dataset_shard("val"), mcfg.streams, cfg.cache_data)
    rank = ray.train.get_context().get_world_rank()
    history: list[dict] = []
    for epoch in range(1, cfg.epochs + 1):
        seed = cfg.seed * 100_003 + epoch * 1_009 + rank
        loss = train_one_epoch(model, train_data.batches(cfg.batch_size, seed),
                               optimizer, device, streams)
        loss = _mean_over_ranks(loss, device)
        # The unwrapped model: evaluation must not run DDP collectives.
        result = evaluate(inner, val_data.batches(cfg.batch_size), device, streams)
        metrics = {"epoch": epoch, **epoch_metrics(result, loss, mcfg.num_classes, heads)}
        history.append(metrics)
        if spec.report_placement_group and rank == 0:
            pg = ray.util.get_current_placement_group()
            metrics = {**metrics, PLACEMENT_GROUP_KEY: pg.id.hex() if pg else ""}
        _report(epoch, metrics, history, lambda: {
            "model_state": {k: v.detach().cpu() for k, v in inner.state_dict().items()},
            "model_config": mcfg.to_dict(), "label_names": list(spec.label_names),
            "train_config": cfg.to_dict(), "epoch": epoch, "metrics": metrics})


# ---------------------------------------------------------------------------------------------
# After training: checkpoints and predictions
# ---------------------------------------------------------------------------------------------

def _load_payload(path, map_location) -> dict:
    if isinstance(path, ray.train.Checkpoint) or "://" in str(path):
        ckpt = path if isinstance(path, ray.train.Checkpoint) else ray.train.Checkpoint(str(path))
        with ckpt.as_directory() as d:  # downloads a remote checkpoint
            return _load_payload(Path(d), map_location)
    file = Path(path)
    file = file / CHECKPOINT_FILE if file.is_dir() else file
    if not file.is_file():
        raise FileNotFoundError(f"{file}: no such checkpoint file (expected a checkpoint "
                                f"directory holding {CHECKPOINT_FILE}, or the file itself)")
    return torch.load(file, map_location=map_location, weights_only=False)


def load_checkpoint(path, map_location="cpu") -> tuple[ActionModel, dict]:
    """Rebuild the model saved in a checkpoint (directory, model.pt, URI or Checkpoint);
    returns (model in eval mode, the saved payload)."""
    payload = _load_payload(path, map_location)
    model = build_model(payload["model_config"])
    model.load_state_dict(payload["model_state"])
    model.eval()
    return model, payload


def best_checkpoint(result) -> tuple[ray.train.Checkpoint, dict]:
    """(checkpoint, metrics) with the highest val_top1 among those Ray kept (on a tie the
    later epoch, which is the one Ray's checkpoint manager keeps)."""
    kept = [(c, m) for c, m in (result.best_checkpoints or []) if METRIC in m]
    if not kept:
        raise RuntimeError(f"{result.path}: the run reported no checkpoint with {METRIC}")
    return max(kept, key=lambda cm: (cm[1][METRIC], cm[1].get("epoch", 0)))


# ---------------------------------------------------------------------------------------------
# The job
# ---------------------------------------------------------------------------------------------

def fit(cfg: TrainConfig, address: str | None = None, log=print) -> TrainResult:
    """Train one run end to end (see the module docstring) and print a summary."""
    run_dir = Path(cfg.out).resolve()
    run_dir.mkdir(parents=True, exist_ok=True)
    log(f"ray: {init_ray(address)}")
    prepared = prepare(cfg, log=log)
    counts = {s: d.count() for s, d in prepared.datasets.items()}
    log(f"data: {cfg.features} streams {list(prepared.index.streams)} T={cfg.T} "
        f"d_f={prepared.index.feature_dim} classes={prepared.index.num_classes} videos {counts}")
    name = run_name(cfg)
    trainer = build_trainer(cfg, prepared, name)
    log(f"training {name}: {cfg.fusion} h={cfg.hidden} L={cfg.depth} {cfg.arch} "
        f"{cfg.workers} worker(s), storage {cfg.resolved_storage()}")
    result = trainer.fit()
    ckpt, best = best_checkpoint(result)
    history = _history(result.checkpoint or ckpt)
    model, _ = load_checkpoint(ckpt)
    splits = {s: d for s, d in prepared.datasets.items() if s in ("val", "test")}
    paths, scores = predict(model, splits, prepared.spec.label_names, run_dir / "predictions")
    out = TrainResult(run_dir=str(run_dir), ray_run_path=str(result.path),
                      best_checkpoint=str(ckpt.path), best_epoch=int(best.get("epoch", 0)),
                      best_metrics={k: float(v) for k, v in best.items()
                                    if isinstance(v, (int, float))},
                      history=history, predictions=paths, scores=scores, train_config=cfg,
                      label_names=list(prepared.spec.label_names))
    write_summary(out)
    log(summary_text(out))
    return out


def _history(checkpoint: ray.train.Checkpoint) -> list[dict]:
    with checkpoint.as_directory() as d:
        f = Path(d) / HISTORY_FILE
        return json.loads(f.read_text()) if f.is_file() else []


def write_summary(res: TrainResult) -> Path:
    doc = {k: v for k, v in dataclasses.asdict(res).items() if k != "history"}
    path = Path(res.run_dir) / "summary.json"
    path.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    return path


def summary_text(res: TrainResult) -> str:
    lines = [f"best val top-1 {100 * res.best_metrics.get(METRIC, float('nan')):.2f}% "
             f"at epoch {res.best_epoch}",
             f"best checkpoint: {res.best_checkpoint}"]
    for split, heads in res.scores.items():
        for head, s in heads.items():
            lines.append(f"{split:<5} {head:<6} top-1 {100 * s['top1']:.2f}%  "
                         f"top-5 {100 * s['top5']:.2f}%  mean class {100 * s['mean_class_acc']:.2f}%")
    lines += [f"predictions: {p}" for p in res.predictions.values()]
    lines.append(f"summary: {Path(res.run_dir) / 'summary.json'}")
    return "\n".join(lines)
