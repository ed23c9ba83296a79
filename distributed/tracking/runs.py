"""MLflow tracking of sweeps: one experiment, one parent run per sweep, one nested run per trial.

All logging happens in the Tune driver, one process per run, through ``MlflowClient`` (no
global "active run", so concurrent trials cannot log into each other's runs):

- ``start_sweep_run`` opens (or, when a sweep is resumed, finds) the sweep's parent run: its
  settings as params, its source (entry point, git commit) and its input (the feature store and
  the settings of each stream) as tags and a dataset input.
- ``MLflowTrialCallback`` (a ``ray.tune.Callback``) opens a run per trial under the parent
  (``mlflow.parentRunId``), logs every epoch with ``step = epoch`` under the same names in
  every trial (``EPOCH_METRICS``), and ends it FINISHED (also when ASHA stops it) or FAILED.
  Its state (trial -> run) survives a restored sweep (``get_state`` / ``set_state``), and a
  trial it does not know yet is first looked up in MLflow by its tags: a resumed trial keeps
  its run, never a second one.
- ``log_evaluation`` adds files, metrics and tags to a run after the fact.

Why not ``ray.air.integrations.mlflow.MLflowLoggerCallback``: it logs ``step =
training_iteration`` (which restarts after a restored trial), ends runs of trials stopped early
as they are and knows no parent run; the project needs the epoch as the step, FINISHED for
ASHA's stops and one run per trial across restores.

Where runs go and how they are opened: ``experiments``; what each run records about its data
and its machine (the feature store as a dataset input, system metrics): ``lineage``.
"""

from __future__ import annotations

import time
from typing import Any, Mapping

from mlflow import MlflowClient
from mlflow.entities import DatasetInput, Metric, Param, RunStatus, RunTag
from ray import tune


from .experiments import (ensure_experiment,
                          param_value)
from .lineage import SystemMetrics, feature_input, feature_tags, source_tags

EPOCH_METRICS = ("train_loss", "val_loss", "val_top1", "val_top5", "val_mean_class_acc",
                 "val_top1_rgb", "val_top1_flow")
DB_FILE = "mlflow.db"
PARENT = "mlflow.parentRunId"
SWEEP_TAG = "reslstm.sweep"
KIND_TAG = "reslstm.kind"  # "sweep" (the parent) or "trial"
FINISHED, FAILED, KILLED = (RunStatus.to_string(s) for s in
                            (RunStatus.FINISHED, RunStatus.FAILED, RunStatus.KILLED))


def trial_label(params: Mapping[str, Any]) -> str:
    """A readable run name: ``late-product h512 L2 T25``."""
    return (f"{params.get('fusion')} h{params.get('hidden')} L{params.get('depth')} "
            f"T{params.get('T')}")


def start_sweep_run(tracking_uri: str, experiment: str, sweep: str, params: Mapping[str, Any],
                    store: str) -> tuple[str, str]:
    """(experiment id, parent run id) of sweep ``sweep``: the run it had if it is being
    resumed (found by its tags, set RUNNING again), else a new one with its params, source
    and input."""
    client = MlflowClient(tracking_uri=tracking_uri)
    exp_id = ensure_experiment(client, experiment)
    found = client.search_runs([exp_id], filter_string=(
        f"tags.`{SWEEP_TAG}` = '{sweep}' and tags.`{KIND_TAG}` = 'sweep'"))
    if found:
        run_id = found[0].info.run_id
        client.update_run(run_id, status="RUNNING")
        return exp_id, run_id
    run = client.create_run(exp_id, run_name=sweep, tags={
        SWEEP_TAG: sweep, KIND_TAG: "sweep", **source_tags(), **feature_tags(store)})
    client.log_batch(run.info.run_id, params=[Param(k, param_value(v))
                                              for k, v in sorted(params.items())])
    client.log_inputs(run.info.run_id, datasets=[feature_input(store)])
    return exp_id, run.info.run_id


def end_run(tracking_uri: str, run_id: str, status: str = FINISHED) -> None:
    MlflowClient(tracking_uri=tracking_uri).set_terminated(run_id, status)


def log_evaluation(tracking_uri: str, run_id: str, metrics: Mapping[str, float],
                   files: Mapping[str, str] = (), tags: Mapping[str, str] | None = None,
                   params: Mapping[str, Any] | None = None) -> None:
    """Add final metrics (no step), files (artifacts; the checkpoint payload, named "model",
    under ``checkpoint/``: ``model/`` is the registered MLflow model's), tags and params to an
    existing run, finished or not."""
    client = MlflowClient(tracking_uri=tracking_uri)
    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()],
                     tags=[RunTag(k, str(v)) for k, v in (tags or {}).items()],
                     params=[Param(k, param_value(v)) for k, v in (params or {}).items()])
    for name, path in dict(files).items():
        client.log_artifact(run_id, path, artifact_path="checkpoint" if name == "model" else None)


# ---------------------------------------------------------------------------------------------
# One run per trial
# ---------------------------------------------------------------------------------------------

class MLflowTrialCallback(tune.Callback):
    """Tune callback: a nested MLflow run per trial (see the module docstring).

    ``base_params`` are the sweep's fixed settings; the trial's own ``config`` (the searched
    values) overrides them. ``tags`` go on every trial run, and ``dataset`` is its input (the
    feature store: ``lineage.feature_tags`` / ``feature_input``, made once by the driver, so
    the callback holds no credentials). ``epochs`` tells a trial stopped early from one that
    ran out.
    ``run_ids`` maps trial ids to MLflow run ids once trials have started.
    """

    def __init__(self, tracking_uri: str, experiment_id: str, parent_run_id: str, sweep: str,
                 base_params: Mapping[str, Any], epochs: int, tags: Mapping[str, str] | None = None,
                 dataset: DatasetInput | None = None):
        self.tracking_uri, self.experiment_id = tracking_uri, experiment_id
        self.parent_run_id, self.sweep = parent_run_id, sweep
        self.base_params, self.epochs = dict(base_params), int(epochs)
        self.tags = dict(tags or {})
        self.run_ids: dict[str, str] = {}
        self.last_epoch: dict[str, int] = {}
        self.best: dict[str, tuple[float, int, str | None]] = {}  # val_top1, epoch, ckpt
        self.dataset = dataset  # the input of every trial run (``lineage.feature_input``)
        self._client: MlflowClient | None = None
        self._system: dict[str, SystemMetrics] = {}

    # The client holds a connection and the monitors threads: made again after unpickling (a
    # restored sweep).
    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k not in ("_client", "_system")}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _client=None, _system={})

    def get_state(self) -> dict:
        return {"run_ids": dict(self.run_ids), "last_epoch": dict(self.last_epoch),
                "best": dict(self.best)}

    def set_state(self, state: dict) -> None:
        self.run_ids.update(state.get("run_ids", {}))
        self.last_epoch.update(state.get("last_epoch", {}))
        self.best.update(state.get("best", {}))

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            self._client = MlflowClient(tracking_uri=self.tracking_uri)
        return self._client

    def _existing_run(self, trial_id: str) -> str | None:
        found = self.client.search_runs([self.experiment_id], filter_string=(
            f"tags.`{SWEEP_TAG}` = '{self.sweep}' and tags.`ray.trial_id` = '{trial_id}'"))
        return found[0].info.run_id if found else None

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        run_id = self.run_ids.get(trial.trial_id) or self._existing_run(trial.trial_id)
        if run_id is not None:  # a restarted or restored trial keeps its run
            self.run_ids[trial.trial_id] = run_id
            logged = [m.step for m in self.client.get_metric_history(run_id, "val_top1")]
            self.last_epoch[trial.trial_id] = max(logged, default=0)
            self.client.update_run(run_id, status="RUNNING")
            self._watch(trial.trial_id, run_id)
            return
        params = {**self.base_params, **trial.config}
        run = self.client.create_run(
            self.experiment_id, run_name=trial_label(params),
            tags={**self.tags, PARENT: self.parent_run_id, SWEEP_TAG: self.sweep,
                  KIND_TAG: "trial", "ray.trial_id": trial.trial_id, "ray.trial_name": str(trial)})
        self.run_ids[trial.trial_id] = run.info.run_id
        self.client.log_batch(run.info.run_id, params=[
            Param(k, param_value(v)) for k, v in sorted(params.items())])
        if self.dataset is not None:
            self.client.log_inputs(run.info.run_id, datasets=[self.dataset])
        self._watch(trial.trial_id, run.info.run_id)

    def _watch(self, trial_id: str, run_id: str) -> None:
        self._unwatch(trial_id)
        self._system[trial_id] = SystemMetrics(run_id, self.tracking_uri).start()

    def _unwatch(self, trial_id: str) -> None:
        monitor = self._system.pop(trial_id, None)
        if monitor is not None:
            monitor.stop()

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        run_id = self.run_ids.get(trial.trial_id)
        epoch = result.get("epoch")
        if run_id is None or epoch is None:
            return
        if int(epoch) <= self.last_epoch.get(trial.trial_id, 0):
            return  # an epoch redone after a restart: the run has it already, once
        now = int(time.time() * 1000)
        metrics = [Metric(k, float(result[k]), now, int(epoch)) for k in EPOCH_METRICS
                   if isinstance(result.get(k), (int, float))]
        tags = []
        self.last_epoch[trial.trial_id] = int(epoch)
        score = float(result.get("val_top1", float("-inf")))
        best = self.best.get(trial.trial_id)
        if best is None or score >= best[0]:  # ties: the later epoch, as Ray keeps it
            ckpt = result.get("checkpoint_path")
            self.best[trial.trial_id] = (score, int(epoch), ckpt)
            if ckpt:
                tags.append(RunTag("ray.checkpoint_path", str(ckpt)))
        self.client.log_batch(run_id, metrics=metrics, tags=tags)

    def stopped_early(self, trial_id: str) -> bool:
        return self.last_epoch.get(trial_id, 0) < self.epochs

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        run_id = self.run_ids.get(trial.trial_id)
        if run_id is None:
            return
        self._unwatch(trial.trial_id)
        self.client.set_tag(run_id, "stopped_early", str(self.stopped_early(trial.trial_id)).lower())
        self.client.set_terminated(run_id, FINISHED)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        run_id = self.run_ids.get(trial.trial_id)
        if run_id is None:
            return
        self._unwatch(trial.trial_id)
        error = getattr(trial, "error_file", None)
        if error:
            self.client.set_tag(run_id, "ray.error_file", str(error))
        self.client.set_terminated(run_id, FAILED)



def trial_runs(tracking_uri: str, experiment_id: str, sweep: str) -> dict[str, str]:
    """{trial id: run id} of a sweep's trial runs."""
    client = MlflowClient(tracking_uri=tracking_uri)
    return {r.data.tags["ray.trial_id"]: r.info.run_id for r in client.search_runs(
        [experiment_id], filter_string=f"tags.`{SWEEP_TAG}` = '{sweep}' and tags.`{KIND_TAG}` = 'trial'")}


def end_unfinished(tracking_uri: str, experiment_id: str, sweep: str,
                   status: str = KILLED) -> list[str]:
    """End a sweep's trial runs still RUNNING once Tune is done with the sweep (trials it never
    finished: the sweep was stopped); returns their run ids."""
    client = MlflowClient(tracking_uri=tracking_uri)
    ended = []
    for run in client.search_runs([experiment_id], filter_string=(
            f"tags.`{SWEEP_TAG}` = '{sweep}' and tags.`{KIND_TAG}` = 'trial' "
            "and attributes.status = 'RUNNING'")):
        client.set_terminated(run.info.run_id, status)
        ended.append(run.info.run_id)
    return ended
