"""Ray Tune sweeps over hidden size, depth, T and fusion, with ASHA and MLflow.

Python API (``reslstm.distributed.tune.sweep``):

- ``sweep(scfg: configs.SweepConfig, address=None) -> SweepResult``: runs the sweep,
  evaluates the best trial once on test, logs everything to MLflow and logs the trials table.
- ``SweepResult`` (``sweep_results``): the trials (``TrialRow``), the best one and its test
  metrics, predictions, report files, MLflow ids, the registered model.

Searched: hidden, depth, T, fusion, residual (comma lists) and, with ``--seeds N``, every
configuration once per seed. ``--scheduler none`` trains every trial to the end (fair
comparisons, as the paper presets need); ``--test-all`` evaluates every trial on test.

Data (``shelf``): before any trial starts, the sweep's driver builds and materializes the train
and val datasets of every (streams, T) the sweep needs, once, and fits the PCA basis once per
stream and seed (every trial takes its top h rows). A ``DataShelf`` actor holds them; a trial
takes its own from it, and ``ReleaseData`` lets a (streams, T) go as soon as no pending trial
reads it. Ray Data inside concurrent trials competes for CPUs that trial drivers and workers
hold, and on a small cluster a trial's read can wait forever; a trial only iterates data that
is already materialized. After the sweep, val and test of an evaluated checkpoint are read
again from the store. Each trial is a function trainable that builds its ``TorchTrainer``
through ``trainer.prepare`` / ``trainer.build_trainer`` (the same ``worker.train_loop`` as
``jobs/train.py``), with ``TuneReportCallback`` forwarding every epoch's metrics to Tune. A
late-fusion trial trains both streams and reports the fused ``val_top1``. ASHA (on the
reported ``epoch``) stops weak trials; Ray Train frees their workers (its placement-group
cleaner, through the dashboard's state API: see ``runtime.init_ray``). ``TrialProgress`` is
the console: a line per trial event.

CPU accounting: a trial's driver holds ``TRIAL_CPUS`` (1) CPU while its workers train; each
worker gets ``min(1, (CPUs - 1) / workers)`` CPUs unless ``--cpus-per-worker`` says otherwise,
so a trial needs ``1 + workers * cpus_per_worker`` CPUs and by default
``max_concurrent_trials = max(1, floor(CPUs / that))`` (and at most GPUs // workers trials on
GPUs). On 2 cores with 2 workers: 1 + 2 x 0.5 = 2 CPUs, one trial at a time.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import time
import uuid
from collections import Counter
from pathlib import Path

from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback
from ray.tune.schedulers import ASHAScheduler

from reslstm.configs import SEARCHED, SweepConfig, TrainConfig
from reslstm.distributed.runtime import (cluster_cpus, cluster_gpus, cpus_per_worker, init_ray,
                                         wants_gpu)
from reslstm.distributed.tracking import experiments, lineage
from reslstm.distributed.tracking import runs as tracking
from reslstm.distributed.tracking.models import ALIAS, register_model
from reslstm.distributed.train.checkpoints import METRIC
from reslstm.distributed.train.data import RunData
from reslstm.distributed.train.trainer import (build_trainer, prepare, run_storage,
                                               storage_filesystem, storage_location)
from reslstm.distributed.tune.results import (SweepResult, checkpoint_at, curves,
                                              evaluate_checkpoint, rows_of)
from reslstm.distributed.tune.shelf import (ReleaseData, build_shelf, close_shelf, data_key,
                                            evaluation_data, shelved)
from reslstm.errors import RunFailed
from reslstm.reports.sweep_tables import write_sweep_report
from reslstm.storage import Location

log = logging.getLogger(__name__)

TRIAL_CPUS = 1.0


def param_space(scfg: SweepConfig) -> dict:
    """The searched values (and, with ``seeds`` > 1, the seeds: every configuration once per
    seed, whatever the search)."""
    pick = tune.grid_search if scfg.search == "grid" else tune.choice
    space = {k: pick(list(getattr(scfg, k))) for k in SEARCHED}
    if scfg.seeds > 1:
        space["seed"] = tune.grid_search(seeds_of(scfg))
    return space


def seeds_of(scfg: SweepConfig) -> list[int]:
    """The seeds the sweep's trials train with."""
    return [scfg.base.seed + i for i in range(max(1, scfg.seeds))]


def trial_config(base: TrainConfig, params: dict) -> TrainConfig:
    """The TrainConfig of one trial: the base with the searched values (and seed)."""
    return dataclasses.replace(base, **{k: params[k] for k in (*SEARCHED, "seed") if k in params})


def plan_concurrency(cpus: float, gpus: int, workers: int, cpw: float, use_gpu: bool,
                     requested: int | None = None) -> int:
    """Trials that fit at once: each needs TRIAL_CPUS + workers * cpw CPUs (and workers GPUs)."""
    if requested:
        return int(requested)
    fit = math.floor((cpus + 1e-9) / (TRIAL_CPUS + workers * cpw))
    if use_gpu:
        fit = min(fit, gpus // workers)
    return max(1, fit)


def trial_counts(scfg: SweepConfig) -> tuple[int, Counter | None]:
    """The number of trials the sweep creates and, for a grid search, the data key of each
    (with multiplicity; ``shelf.pending_keys``)."""
    seeds = len(seeds_of(scfg)) if scfg.seeds > 1 else 1
    if scfg.search != "grid":
        return scfg.num_samples * seeds, None
    rest = math.prod(len(getattr(scfg, k)) for k in SEARCHED if k not in ("fusion", "T"))
    keys = Counter()
    for fusion in scfg.fusion:
        for T in scfg.T:
            keys[data_key(fusion, T)] += scfg.num_samples * rest * seeds
    return sum(keys.values()), keys


def run_trial(config: dict, base: TrainConfig, sweep_name: str, where: Location) -> None:
    """One Tune trial: the shared builder and train_loop, reporting through Tune. Its datasets
    were built by the sweep's driver and come from its shelf; its checkpoints go to the sweep's
    storage (``where``)."""
    cfg = trial_config(base, config)
    trial_id = tune.get_context().get_trial_id()
    run_data = shelved(sweep_name, data_key(cfg.fusion, cfg.T))
    spec = prepare(cfg, run_data)
    spec.log_epochs = False  # TrialProgress logs the sweep's progress
    trainer = build_trainer(cfg, run_data, spec, name=f"{sweep_name}-{trial_id}", where=where,
                            callbacks=[TuneReportCallback()])
    trainer.fit()


class TrialProgress(tune.Callback):
    """The sweep's console: a line when a trial starts, one every ``every_s`` seconds while it
    trains, and one when it ends (finished, stopped early by ASHA, or failed)."""

    def __init__(self, epochs: int, every_s: float = 10.0):
        self.epochs, self.every_s = epochs, every_s
        self.last: dict[str, float] = {}
        self.best: dict[str, tuple[float, int]] = {}
        self.epoch: dict[str, int] = {}

    @staticmethod
    def _label(trial) -> str:
        return tracking.trial_label(trial.config)

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        self.last[trial.trial_id] = time.monotonic()
        log.info(f"trial {trial.trial_id} started: {self._label(trial)}")

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        tid, epoch = trial.trial_id, int(result.get("epoch", 0))
        self.epoch[tid] = epoch
        score = float(result.get(METRIC, float("nan")))
        if tid not in self.best or score >= self.best[tid][0]:
            self.best[tid] = (score, epoch)
        if time.monotonic() - self.last.get(tid, 0.0) >= self.every_s:
            self.last[tid] = time.monotonic()
            log.info(f"trial {tid}: epoch {epoch}/{self.epochs}, val top-1 {score:.3f}")

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        tid, epochs = trial.trial_id, self.epoch.get(trial.trial_id, 0)
        best, at = self.best.get(tid, (float("nan"), 0))
        how = "finished" if epochs >= self.epochs else "stopped early by ASHA"
        log.info(f"trial {tid} {how} after {epochs} epoch(s): best val top-1 {best:.3f} "
                 f"(epoch {at})")

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        log.warning(f"trial {trial.trial_id} ({self._label(trial)}) failed; its error: "
                    f"{getattr(trial, 'error_file', None) or 'see the Tune results folder'}")


def _trainable(base: TrainConfig, name: str, where: Location):
    return tune.with_resources(
        tune.with_parameters(run_trial, base=base, sweep_name=name, where=where),
        {"CPU": TRIAL_CPUS})


@dataclasses.dataclass
class _Sweep:
    """What the parts of one sweep share: its settings, where it lives and its MLflow runs."""

    scfg: SweepConfig
    base: TrainConfig
    out: Path
    name: str
    storage: Location        # of the Tune experiment and every trial's checkpoints
    sweep_dir: Location      # the Tune experiment
    concurrent: int
    uri: str
    experiment: str
    params: dict             # the base's settings, logged with every run
    exp_id: str = ""
    parent: str = ""
    shelf: object = None     # the DataShelf actor of its datasets (``shelf``)


def _plan(scfg: SweepConfig, address: str | None) -> _Sweep:
    """Connect to Ray and size the sweep: CPUs per worker, trials at once, names, storage."""
    out = Path(scfg.base.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    log.info(f"ray: {init_ray(address)}")
    cpus, gpus = cluster_cpus(), cluster_gpus()
    use_gpu = wants_gpu(scfg.base.use_gpu, gpus)
    cpw = scfg.base.cpus_per_worker or cpus_per_worker(cpus, scfg.base.workers, reserved=TRIAL_CPUS)
    base = dataclasses.replace(scfg.base, out=str(out), cpus_per_worker=cpw)
    name = scfg.name or f"sweep-{time.strftime('%Y%m%d-%H%M%S')}-{uuid.uuid4().hex[:6]}"
    storage = storage_location(base)
    return _Sweep(scfg=scfg, base=base, out=out, name=name, storage=storage,
                  sweep_dir=storage.join(name),
                  concurrent=plan_concurrency(cpus, gpus, base.workers, cpw, use_gpu,
                                              scfg.max_concurrent),
                  uri=scfg.mlflow_uri or experiments.default_tracking_uri("."),
                  experiment=scfg.experiment or experiments.default_experiment_name(),
                  params={k: v for k, v in base.to_dict().items() if k not in SEARCHED})


def _start_parent_run(sw: _Sweep) -> None:
    scfg = sw.scfg
    searched = {k: ",".join(map(str, getattr(scfg, k))) for k in SEARCHED}
    sw.exp_id, sw.parent = tracking.start_sweep_run(
        sw.uri, sw.experiment, sw.name,
        {**sw.params, **searched, "seeds": scfg.seeds, "scheduler": scfg.scheduler,
         "search": scfg.search, "num_samples": scfg.num_samples,
         "grace_period": scfg.grace_period}, sw.base.features)


def _build_data(sw: _Sweep) -> dict[str, RunData]:
    """Every (streams, T)'s datasets, built once and shelved (``shelf.build_shelf``)."""
    pca = ((seeds_of(sw.scfg), sw.base.pca_max_vectors) if sw.base.input_proj == "pca"
           else None)
    sw.shelf, data = build_shelf(sw.name, sw.base.features, sw.scfg.fusion, sw.scfg.T, pca)
    return data


def _tuner(sw: _Sweep, resuming: bool) -> tune.Tuner:
    base, scfg = sw.base, sw.scfg
    trainable = _trainable(base, sw.name, sw.storage)
    if resuming:
        # Tune brings back its run config (scheduler, callbacks with their state) from the
        # sweep's folder; the trainable is given again (its data: this driver's shelf).
        # Unfinished trials continue from their Train checkpoints.
        return tune.Tuner.restore(sw.sweep_dir.path, trainable=trainable, resume_unfinished=True,
                                  resume_errored=scfg.retry_errored, restart_errored=False,
                                  **storage_filesystem(sw.sweep_dir))
    # ASHA judges trials by the epoch they report (after a restore too). Its max_t is one past
    # the last epoch, so a trial that trains all its epochs ends by itself instead of being
    # stopped (killed) by Tune at max_t.
    scheduler = (ASHAScheduler(time_attr="epoch", max_t=base.epochs + 1,
                               grace_period=min(scfg.grace_period, base.epochs))
                 if scfg.scheduler == "asha" else None)
    return tune.Tuner(
        trainable, param_space=param_space(scfg),
        tune_config=tune.TuneConfig(metric=METRIC, mode="max", num_samples=scfg.num_samples,
                                    scheduler=scheduler, max_concurrent_trials=sw.concurrent,
                                    reuse_actors=False),
        run_config=tune.RunConfig(
            name=sw.name, verbose=0, **run_storage(sw.storage),
            callbacks=[tracking.MLflowTrialCallback(sw.uri, sw.exp_id, sw.parent, sw.name,
                                                    sw.params, base.epochs,
                                                    lineage.feature_tags(base.features),
                                                    lineage.feature_input(base.features)),
                       TrialProgress(base.epochs),
                       ReleaseData(sw.name, *trial_counts(scfg))]))


def _test(sw: _Sweep, rows: list, best, data: dict[str, RunData]) -> tuple:
    """Evaluate the best trial (every finished one with ``--test-all``) on test; log each to
    its trial's MLflow run. Returns the best's (payload, prediction paths, files, scores)."""
    kept = None
    for row in rows if sw.scfg.test_all else [best]:
        is_best = row is best
        test, paths, files, scores, payload = evaluate_checkpoint(
            checkpoint_at(row.checkpoint, sw.storage),
            evaluation_data(sw.base.features, data[data_key(row.fusion, row.T)]),
            sw.out / ("best" if is_best else f"trials/{row.trial_id}"))
        row.test = test
        if is_best:
            kept = (payload, paths, files, scores)
        if row.mlflow_run_id:
            tracking.log_evaluation(sw.uri, row.mlflow_run_id, test, files if is_best else {},
                                    tags={"best_trial": str(is_best).lower(),
                                          "ray.checkpoint_path": row.checkpoint})
    return kept


def _report(sw: _Sweep, rows: list, best, grid) -> None:
    """The sweep's report files, its parent run's results and the registered model."""
    report = write_sweep_report([r.as_dict() for r in rows], curves(grid), sw.out / "report",
                                f"sweep {sw.name}", best=None)
    best_params = {f"best_{k}": getattr(best, k) for k in (*SEARCHED, "seed")}
    tracking.log_evaluation(sw.uri, sw.parent, {**best.test, "best_val_top1": best.val_top1},
                            report, params=best_params,
                            tags={"best_trial": best.trial_id,
                                  "best_run_id": best.mlflow_run_id or ""})


def _summary(result: SweepResult, version) -> None:
    log.info(result.table(), extra={"block": True})
    log.info("best: " + ", ".join(f"{k} {100 * v:.2f}%" for k, v in result.test_metrics.items()))
    log.info(f"best checkpoint: {result.best_checkpoint}")
    if result.registered:
        log.info(f"best model: {result.registered} (version {version})")
    log.info(f"predictions: {', '.join(result.predictions.values())}")
    log.info(experiments.ui_hint(result.mlflow_uri, result.experiment_id))


def sweep(scfg: SweepConfig, address: str | None = None) -> SweepResult:
    """Run the sweep, or resume it when ``scfg.name`` names one that the storage holds (see the
    module docstring)."""
    sw = _plan(scfg, address)
    resuming = tune.Tuner.can_restore(sw.sweep_dir.path, **storage_filesystem(sw.sweep_dir))
    _start_parent_run(sw)
    log.info(f"{'resuming' if resuming else 'starting'} sweep {sw.name}: {sw.base.workers} "
             f"worker(s) x {sw.base.cpus_per_worker} CPU per trial + {TRIAL_CPUS} for its "
             f"driver; up to {sw.concurrent} trial(s) at once; MLflow {sw.uri} experiment "
             f"{sw.experiment!r}")
    data = _build_data(sw)
    try:
        grid = _tuner(sw, resuming).fit()
    except BaseException:
        tracking.end_run(sw.uri, sw.parent, tracking.KILLED)
        raise
    finally:
        close_shelf(sw.shelf)
    tracking.end_unfinished(sw.uri, sw.exp_id, sw.name)
    rows = rows_of(grid, sw.base.epochs, tracking.trial_runs(sw.uri, sw.exp_id, sw.name), sw.base)
    done = [r for r in rows if r.checkpoint and r.val_top1 == r.val_top1]
    if not done:
        tracking.end_run(sw.uri, sw.parent, tracking.FAILED)
        raise RunFailed(f"no trial of sweep {sw.name} reported a checkpoint; see the trials' "
                        f"errors under {sw.sweep_dir.uri}")
    best = max(done, key=lambda r: r.val_top1)
    payload, paths, files, scores = _test(sw, done, best, data)
    result = SweepResult(
        trials=rows, best_config=trial_config(base=sw.base, params={
            k: getattr(best, k) for k in (*SEARCHED, "seed")}),
        best_trial_id=best.trial_id, best_checkpoint=best.checkpoint,
        best_val_top1=best.val_top1, test_metrics=best.test, predictions=paths,
        report_files=files, mlflow_uri=sw.uri, experiment=sw.experiment,
        experiment_id=sw.exp_id, best_run_id=best.mlflow_run_id,
        storage_path=sw.sweep_dir.uri, scores=scores, parent_run_id=sw.parent, name=sw.name)
    _report(sw, rows, best, grid)
    version = None
    if scfg.register_model and best.mlflow_run_id:
        version = register_model(sw.uri, best.mlflow_run_id, payload, scfg.register_model)
        result.registered = f"models:/{scfg.register_model}@{ALIAS}"
    tracking.end_run(sw.uri, sw.parent)
    _summary(result, version)
    return result
