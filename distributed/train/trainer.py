"""Ray Train: one training run of any stream or fusion, from a feature store to checkpoints and
predictions.

Python API (``reslstm.distributed.train.trainer``):

- ``fit(cfg, address=None) -> TrainResult``: connect to Ray (``runtime.init_ray``), build the
  datasets (``data.load_data``), fit PCA (``prepare``), train with a ``TorchTrainer``, then
  predict val and test with the best checkpoint into ``RUN_DIR/predictions/{val,test}.parquet``
  and write ``RUN_DIR/summary.json``.
- ``prepare(cfg, data) -> RunSpec`` and ``build_trainer(cfg, data, spec, name, where,
  callbacks=())``: the two steps ``fit`` and each Tune trial (``distributed.tune.sweep``) share;
  the per-worker loop is ``worker.train_loop``.

Storage: a run resolves where Ray Train keeps its checkpoints once (``storage_location``: a
local path or an object-storage URI with its filesystem) and passes that ``storage.Location`` on
(``run_storage``, ``has_run``, ``checkpoint_uri``, ``build_trainer``).

Data: train and val are built and materialized in the driver (``data.load_data``). The train
split is sharded across workers (``streaming_split(equal=True)``: every worker gets the same
number of rows, at most ``workers - 1`` rows are skipped per epoch); val is split so that each
video is on exactly one worker (``ShardedVal``), and the ranks' results are combined into the
whole split's metrics. Test is never seen during training and is read only when predicted:
val and test are predicted after training by a Ray Data pass (``evaluation.predict``). PCA is
fitted on a bounded sample of training clip vectors (``RunData.pca_basis``) and reaches the
workers through the object store.

CPUs: the driver holds none; each worker gets ``min(1, CPUs / workers)`` CPUs (2 workers on 2
cores: 1 each), which is safe because the datasets are materialized before the workers start.
Multi-node runs need a shared ``storage_path`` (``s3://...`` or an NFS path on every node).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
import uuid
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np
import ray
import ray.train
import ray.train.torch

from reslstm import features as fs
from reslstm import storage
from reslstm.checkpoint import load_payload
from reslstm.configs import TrainConfig
from reslstm.distributed.runtime import (cluster_cpus, cluster_gpus, cpus_per_worker, init_ray,
                                         wants_gpu)
from reslstm.distributed.train import checkpoints
from reslstm.distributed.train.data import RunData, load_data
from reslstm.distributed.train.evaluation import predict
from reslstm.distributed.train.worker import RunSpec, train_loop
from reslstm.fusion import streams_of
from reslstm.model import ActionModel, InputProjection, ModelConfig, build_model

log = logging.getLogger(__name__)
RUN_SNAPSHOT = "checkpoint_manager_snapshot.json"  # Ray Train's record of a run's checkpoints


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


def scaling_config(cfg: TrainConfig) -> ray.train.ScalingConfig:
    """``cfg.workers`` workers with ``cfg.cpus_per_worker`` CPUs (default: min(1, CPUs /
    workers)) and one GPU each when ``--use-gpu`` says so (NCCL; Gloo on CPU)."""
    gpu = wants_gpu(cfg.use_gpu, cluster_gpus())
    cpu = cfg.cpus_per_worker or cpus_per_worker(cluster_cpus(), cfg.workers)
    res = {"CPU": cpu, **({"GPU": 1} if gpu else {})}
    return ray.train.ScalingConfig(num_workers=cfg.workers, use_gpu=gpu, resources_per_worker=res)


def _pca_buffers(model: ActionModel) -> dict[str, np.ndarray]:
    """The fitted PCA buffers of ``model`` as {state_dict key: array} ({} without PCA)."""
    out = {}
    for name, mod in model.named_modules():
        if isinstance(mod, InputProjection) and mod.kind == "pca":
            for b in ("mean", "components", "fitted"):
                out[f"{name}.{b}"] = getattr(mod, b).detach().cpu().numpy()
    return out


def model_config(cfg: TrainConfig, input_dim: int, num_classes: int) -> ModelConfig:
    return ModelConfig(input_dim=input_dim, num_classes=num_classes, hidden_size=cfg.hidden,
                       num_layers=cfg.depth, residual=cfg.residual, input_proj=cfg.input_proj,
                       dropout=cfg.dropout, arch=cfg.arch, fusion=cfg.fusion)


def prepare(cfg: TrainConfig, data: RunData) -> RunSpec:
    """Check the model builds (e.g. PCA to more dims than d_f fails here) and, when it uses
    PCA and there is a train split, fit PCA on training clips. (Without train, e.g. to predict
    with a checkpoint, no PCA is fitted: the checkpoint carries its buffers.)"""
    index = data.index
    mcfg = model_config(cfg, index.feature_dim, index.num_classes)
    model = build_model(mcfg)
    pca_ref = None
    projections = {s: p for s, p in model.input_projections().items() if p.kind == "pca"}
    if projections and "train" in data.datasets:
        for stream, proj in projections.items():
            proj.set_pca(data.pca_basis(stream, cfg.seed, cfg.pca_max_vectors))
            log.info(f"PCA {stream}: {index.feature_dim} -> {cfg.hidden} dims")
        pca_ref = ray.put(_pca_buffers(model))
    settings = fs.FeatureStore(cfg.features).read_metadata()
    return RunSpec(model_config=mcfg.to_dict(), label_names=index.label_names, pca_state=pca_ref,
                   features={s: dataclasses.asdict(settings[s]) for s in index.streams
                             if s in settings},
                   store=str(fs.FeatureStore(cfg.features)))


def run_name(cfg: TrainConfig) -> str:
    """``--name``, or a new unique name (Ray Train resumes a run whose name and storage it
    finds again, so only a name given on purpose may repeat)."""
    return cfg.name or f"{cfg.fusion}-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"


def storage_location(cfg: TrainConfig) -> storage.Location:
    """Where the run's checkpoints go (``--storage-path``, by default ``OUT/ray_results``): a
    local directory, or a prefix on object storage with its filesystem (endpoint and
    credentials). Resolved once per run (or sweep) and passed on."""
    return storage.resolve(cfg.resolved_storage())


def storage_filesystem(where: storage.Location) -> dict:
    """The ``storage_filesystem`` argument Ray Train and Tune take beside a path on object
    storage (its endpoint and credentials); none for a local path."""
    return {} if where.local else {"storage_filesystem": where.filesystem}


def run_storage(where: storage.Location) -> dict:
    """``RunConfig`` arguments (Ray Train's and Tune's) for a storage location."""
    return {"storage_path": where.path, **storage_filesystem(where)}


def checkpoint_uri(where: storage.Location, ckpt: ray.train.Checkpoint) -> str:
    """Where a checkpoint of a run stored at ``where`` is, as printed and recorded: a local
    path, or ``scheme://bucket/key`` on object storage (no endpoint or credentials: a reader
    resolves it with the run directory's filesystem, ``storage.resolve(uri, like=...)``)."""
    if where.local:
        return ckpt.path
    return f"{where.uri.split('://', 1)[0]}://{ckpt.path.lstrip('/')}"


def has_run(where: storage.Location, name: str) -> bool:
    """Whether the storage holds a run of this name that Ray Train will continue."""
    return where.join(name, RUN_SNAPSHOT).exists()


class ShardedVal(ray.train.DataConfig):
    """Train: equal shards (DDP needs the same number of steps on every rank). Val: split too,
    but every video goes to exactly one rank (``equal=False``; ``worker.evaluate_split``
    combines the ranks' results), so no worker holds or evaluates all of it."""

    def __init__(self):
        super().__init__(datasets_to_split=["train"])

    def configure(self, datasets, world_size, worker_handles, worker_node_ids, **kwargs):
        rest = {k: v for k, v in datasets.items() if k != "val"}
        out = super().configure(rest, world_size, worker_handles, worker_node_ids, **kwargs)
        if "val" in datasets:
            ds = datasets["val"]
            ds = ds.copy(ds)
            if ds.name is None:
                ds.set_name("val")
            ds.context.execution_options = self._resolve_execution_options("val")
            hints = worker_node_ids if self._enable_shard_locality else None
            for i, it in enumerate(ds.streaming_split(world_size, equal=False,
                                                      locality_hints=hints)):
                out[i]["val"] = it
        return out


def build_trainer(cfg: TrainConfig, data: RunData, spec: RunSpec, name: str,
                  where: storage.Location, callbacks: Sequence = ()
                  ) -> ray.train.torch.TorchTrainer:
    """The TorchTrainer of a run whose checkpoints go to ``where`` (``storage_location``);
    ``fit`` and every Tune trial build it here (the driver's environment for Ray Train is set
    once, by ``runtime.init_ray``)."""
    run_config = ray.train.RunConfig(
        name=name,
        # Ray Train's INFO lines (resources requested, worker group started, each report):
        # the epoch lines say what a person needs.
        logging_config=ray.train.LoggingConfig(log_level="WARNING"),
        # A lost worker or node restarts the worker group, which continues from the latest
        # checkpoint (worker.train_loop).
        failure_config=ray.train.FailureConfig(max_failures=cfg.max_failures),
        **run_storage(where),
        checkpoint_config=ray.train.CheckpointConfig(
            num_to_keep=1, checkpoint_score_attribute=checkpoints.METRIC, checkpoint_score_order="max"),
        callbacks=list(callbacks),
    )
    return ray.train.torch.TorchTrainer(
        train_loop,
        train_loop_config={"train_config": cfg, "run": spec},
        scaling_config=scaling_config(cfg),
        run_config=run_config,
        datasets={s: data.datasets[s] for s in ("train", "val")},
        dataset_config=ShardedVal(),
    )


def fit(cfg: TrainConfig, address: str | None = None) -> TrainResult:
    """Train one run end to end (see the module docstring) and log a summary."""
    run_dir = storage.resolve(cfg.out)  # a local directory or a prefix on object storage
    run_dir.mkdir()
    log.info(f"ray: {init_ray(address)}")
    data = load_data(cfg.features, streams_of(cfg.fusion), cfg.T)
    spec = prepare(cfg, data)
    counts = {s: data.index.count(s) for s in data.datasets}
    log.info(f"data: {storage.display(cfg.features)} streams {list(data.index.streams)} T={cfg.T} "
             f"d_f={data.index.feature_dim} classes={data.index.num_classes} videos {counts}")
    name, where = run_name(cfg), storage_location(cfg)
    trainer = build_trainer(cfg, data, spec, name, where)
    how = "continuing" if has_run(where, name) else "training"
    log.info(f"{how} {name}: {cfg.fusion} h={cfg.hidden} L={cfg.depth} {cfg.arch} "
             f"{cfg.workers} worker(s), storage {where}")
    result = trainer.fit()
    ckpt, best = checkpoints.best_checkpoint(result)
    history = checkpoints.history(result.checkpoint or ckpt)
    paths, scores = predict(load_payload(ckpt), data.only(("val", "test")).datasets,
                            spec.label_names, run_dir.join("predictions"))
    out = TrainResult(run_dir=run_dir.uri, ray_run_path=str(result.path),
                      best_checkpoint=checkpoint_uri(where, ckpt), best_epoch=int(best.get("epoch", 0)),
                      best_metrics={k: float(v) for k, v in best.items()
                                    if isinstance(v, (int, float))},
                      history=history, predictions=paths, scores=scores, train_config=cfg,
                      label_names=list(spec.label_names))
    write_summary(out, run_dir)
    log.info(summary_text(out), extra={"block": True})
    return out


def write_summary(res: TrainResult, run_dir=None) -> storage.Location:
    """``summary.json`` in the run directory (``run_dir``: its ``storage.Location``, which
    keeps an object store's endpoint and credentials; default ``res.run_dir``)."""
    doc = {k: v for k, v in dataclasses.asdict(res).items() if k != "history"}
    doc["train_config"] = res.train_config.to_dict()  # no credentials in a recorded URI
    loc = storage.resolve(run_dir or res.run_dir).join("summary.json")
    loc.write_text(json.dumps(doc, indent=2, default=str) + "\n")
    return loc


def summary_text(res: TrainResult) -> str:
    lines = [f"best val top-1 {100 * res.best_metrics.get(checkpoints.METRIC, float('nan')):.2f}% "
             f"at epoch {res.best_epoch}",
             f"best checkpoint: {res.best_checkpoint}"]
    for split, heads in res.scores.items():
        for head, s in heads.items():
            lines.append(f"{split:<5} {head:<6} top-1 {100 * s['top1']:.2f}%  "
                         f"top-5 {100 * s['top5']:.2f}%  mean class {100 * s['mean_class_acc']:.2f}%")
    lines += [f"predictions: {p}" for p in res.predictions.values()]
    lines.append(f"summary: {storage.join(res.run_dir, 'summary.json')}")
    return "\n".join(lines)
