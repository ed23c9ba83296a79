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

MLflow 3 refuses the plain file store: the default tracking URI is an ABSOLUTE ``sqlite:///``
file (Tune changes the working directory of trials), with artifacts in ``mlartifacts/`` beside
it; an ``http://`` URI of an ``mlflow server`` (``cluster/local/mlflow.sh``) works as well. The
experiment is marked as model training, and ``ui_hint`` prints the command and the link that
opens the runs table (MLflow 3.17 opens experiments on its GenAI "Traces" page otherwise).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
import time
from pathlib import Path
from typing import Any, Mapping

from mlflow import MlflowClient
from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, RunStatus, RunTag
from ray import tune

from reslstm import features as fs
from reslstm.errors import ConfigError

EPOCH_METRICS = ("train_loss", "val_loss", "val_top1", "val_top5", "val_mean_class_acc",
                 "val_top1_rgb", "val_top1_flow")
DB_FILE = "mlflow.db"
PARENT = "mlflow.parentRunId"
SWEEP_TAG = "reslstm.sweep"
KIND_TAG = "reslstm.kind"  # "sweep" (the parent) or "trial"
FINISHED, FAILED, KILLED = (RunStatus.to_string(s) for s in
                            (RunStatus.FINISHED, RunStatus.FAILED, RunStatus.KILLED))


def default_tracking_uri(directory=".") -> str:
    """``sqlite:///<absolute directory>/mlflow.db``."""
    return f"sqlite:///{(Path(directory).resolve() / DB_FILE).as_posix()}"


def default_experiment_name(prefix: str = "reslstm-sweep") -> str:
    return f"{prefix}-{time.strftime('%Y%m%d-%H%M%S')}"


def _artifact_root(tracking_uri: str, experiment: str) -> str | None:
    """Beside the sqlite file for a local store; the server decides otherwise."""
    if tracking_uri.startswith("sqlite:///"):
        db = Path(tracking_uri[len("sqlite:///"):])
        return (db.parent / "mlartifacts" / experiment).as_uri()
    return None


def ensure_experiment(client: MlflowClient, name: str) -> str:
    """Id of the experiment ``name``, created if needed (a deleted one is an error), marked as
    model training so the UI shows its runs."""
    exp = client.get_experiment_by_name(name)
    if exp is None:
        exp_id = client.create_experiment(name, artifact_location=_artifact_root(
            client.tracking_uri, name))
    elif exp.lifecycle_stage != "active":
        raise ConfigError(f"MLflow experiment {name!r} is deleted; restore it or pick another "
                         "--experiment")
    else:
        exp_id = exp.experiment_id
    client.set_experiment_tag(exp_id, "mlflow.experimentKind", "custom_model_development")
    return exp_id


def ui_hint(tracking_uri: str, experiment_id: str | None, port: int = 5000) -> str:
    """The command that starts the MLflow UI on this store, and the link to the runs table."""
    runs = (f"http://127.0.0.1:{port}/#/experiments/{experiment_id}/runs"
            "?workflowType=machine_learning") if experiment_id else f"http://127.0.0.1:{port}"
    if tracking_uri.startswith(("http://", "https://")):
        base = tracking_uri.rstrip("/")
        return f"the runs: {base}/#/experiments/{experiment_id}/runs?workflowType=machine_learning"
    return (f"compare the runs: mlflow ui --backend-store-uri {tracking_uri} --port {port}\n"
            f"  then open {runs}")


def _param_value(v: Any) -> str:
    return "" if v is None else str(v)


def trial_label(params: Mapping[str, Any]) -> str:
    """A readable run name: ``late-product h512 L2 T25``."""
    return (f"{params.get('fusion')} h{params.get('hidden')} L{params.get('depth')} "
            f"T{params.get('T')}")


# ---------------------------------------------------------------------------------------------
# Source and input of a run
# ---------------------------------------------------------------------------------------------

def source_tags(entry_point: str | None = None) -> dict[str, str]:
    """Where a run comes from: the entry point and, when it lies in a git checkout, the
    commit."""
    entry = entry_point or (os.path.abspath(sys.argv[0]) if sys.argv and sys.argv[0] else "python")
    tags = {"mlflow.source.name": str(entry), "mlflow.source.type": "LOCAL"}
    try:
        from mlflow.utils.git_utils import get_git_commit

        commit = get_git_commit(str(Path(entry).parent)) if os.path.exists(entry) else None
    except Exception:  # no git, or not a checkout
        commit = None
    if commit:
        tags["mlflow.source.git.commit"] = commit
    return tags


def feature_tags(store: str) -> dict[str, str]:
    """The feature store a run reads and how each stream was made, as tags (columns in the
    runs table: two runs on different features are never compared by accident)."""
    settings = fs.FeatureStore(store).read_metadata()
    tags = {"features.store": str(fs.FeatureStore(store))}
    for stream, s in sorted(settings.items()):
        for key in ("extractor", "weights_id", "flow_method", "crops", "clip_len", "clip_stride"):
            value = getattr(s, key)
            if value is not None:
                tags[f"features.{stream}.{key}"] = str(value)
    return tags


def feature_input(store: str) -> DatasetInput:
    """The feature store as an MLflow dataset input (digest: its recorded settings)."""
    fstore = fs.FeatureStore(store)
    settings = {s: vars(v) for s, v in sorted(fstore.read_metadata().items())}
    profile = json.dumps(settings, sort_keys=True, default=str)
    digest = hashlib.sha256(profile.encode()).hexdigest()[:8]
    source_type = "local" if fstore.root.local else fstore.root.uri.split("://", 1)[0]
    dataset = Dataset(name=f"features:{fstore.root.name}", digest=digest, source_type=source_type,
                      source=json.dumps({"uri": str(fstore)}), profile=profile)
    return DatasetInput(dataset, tags=[InputTag("mlflow.data.context", "training")])


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
    client.log_batch(run.info.run_id, params=[Param(k, _param_value(v))
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
                     params=[Param(k, _param_value(v)) for k, v in (params or {}).items()])
    for name, path in dict(files).items():
        client.log_artifact(run_id, path, artifact_path="checkpoint" if name == "model" else None)


# ---------------------------------------------------------------------------------------------
# One run per trial
# ---------------------------------------------------------------------------------------------

class MLflowTrialCallback(tune.Callback):
    """Tune callback: a nested MLflow run per trial (see the module docstring).

    ``base_params`` are the sweep's fixed settings; the trial's own ``config`` (the searched
    values) overrides them. ``epochs`` tells a trial stopped early from one that ran out.
    ``run_ids`` maps trial ids to MLflow run ids once trials have started.
    """

    def __init__(self, tracking_uri: str, experiment_id: str, parent_run_id: str, sweep: str,
                 base_params: Mapping[str, Any], epochs: int, tags: Mapping[str, str] | None = None):
        self.tracking_uri, self.experiment_id = tracking_uri, experiment_id
        self.parent_run_id, self.sweep = parent_run_id, sweep
        self.base_params, self.epochs = dict(base_params), int(epochs)
        self.tags = dict(tags or {})
        self.run_ids: dict[str, str] = {}
        self.last_epoch: dict[str, int] = {}
        self.best: dict[str, tuple[float, int, str | None]] = {}  # val_top1, epoch, ckpt
        self._client: MlflowClient | None = None

    # The client holds a connection: it is made again after unpickling (a restored sweep).
    def __getstate__(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if k != "_client"}

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state, _client=None)

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
            return
        params = {**self.base_params, **trial.config}
        run = self.client.create_run(
            self.experiment_id, run_name=trial_label(params),
            tags={**self.tags, PARENT: self.parent_run_id, SWEEP_TAG: self.sweep,
                  KIND_TAG: "trial", "ray.trial_id": trial.trial_id, "ray.trial_name": str(trial)})
        self.run_ids[trial.trial_id] = run.info.run_id
        self.client.log_batch(run.info.run_id, params=[
            Param(k, _param_value(v)) for k, v in sorted(params.items())])

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
        self.client.set_tag(run_id, "stopped_early", str(self.stopped_early(trial.trial_id)).lower())
        self.client.set_terminated(run_id, FINISHED)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        run_id = self.run_ids.get(trial.trial_id)
        if run_id is None:
            return
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
