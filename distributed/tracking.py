"""MLflow tracking of sweeps: one experiment per sweep, one MLflow run per Tune trial.

All logging happens in the Tune driver (``MLflowTrialCallback``, a ``ray.tune.Callback``):
one process per run, through ``MlflowClient`` (no global "active run", so concurrent trials
cannot log into each other's runs). Each run gets

- params: every ``TrainConfig`` field of the trial as its own key (hidden, depth, T, fusion,
  input_proj, lr, batch_size, epochs, residual, arch, features, ...);
- metrics per epoch with ``step = epoch``, under the same names in every trial
  (``EPOCH_METRICS``; late-fusion trials add ``val_top1_rgb`` and ``val_top1_flow``);
- tags: ``ray.trial_id``, ``ray.checkpoint_path`` (the trial's best checkpoint so far),
  ``stopped_early`` (ASHA stopped it before the last epoch);
- status FINISHED when the trial ends, also when ASHA stops it early; FAILED only on errors.

``log_evaluation`` adds the test metrics and files (confusion PNG, per-class CSV, model) of
the best trial to its run after the sweep.

MLflow 3 refuses the plain file store: the default tracking URI is an ABSOLUTE
``sqlite:///`` file (Tune changes the working directory of trials, so a relative one would
point elsewhere), with artifacts in ``mlartifacts/`` beside it. An ``http://`` URI of an
``mlflow server`` works as well.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Mapping

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunStatus, RunTag
from ray import tune

EPOCH_METRICS = ("train_loss", "val_loss", "val_top1", "val_top5", "val_mean_class_acc",
                 "val_top1_rgb", "val_top1_flow")
DB_FILE = "mlflow.db"


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
    """Id of the experiment ``name``, created if needed (a deleted one is an error)."""
    exp = client.get_experiment_by_name(name)
    if exp is None:
        return client.create_experiment(name, artifact_location=_artifact_root(
            client.tracking_uri, name))
    if exp.lifecycle_stage != "active":
        raise ValueError(f"MLflow experiment {name!r} is deleted; restore it or pick another "
                         "--experiment")
    return exp.experiment_id


def _param_value(v: Any) -> str:
    return "" if v is None else str(v)


class MLflowTrialCallback(tune.Callback):
    """Tune callback: opens an MLflow run when a trial starts, logs its epochs, ends it.

    ``base_params`` are the sweep's fixed settings; the trial's own ``config`` (the searched
    values) overrides them. ``epochs`` tells a trial stopped early from one that ran out.
    ``run_ids`` maps trial ids to MLflow run ids once trials have started.
    """

    def __init__(self, tracking_uri: str, experiment: str, base_params: Mapping[str, Any],
                 epochs: int, tags: Mapping[str, str] | None = None):
        self.tracking_uri, self.experiment = tracking_uri, experiment
        self.base_params, self.epochs = dict(base_params), int(epochs)
        self.tags = dict(tags or {})
        self.run_ids: dict[str, str] = {}
        self.last_epoch: dict[str, int] = {}
        self.best: dict[str, tuple[float, int, str | None]] = {}  # val_top1, epoch, ckpt
        self.experiment_id: str | None = None
        self._client: MlflowClient | None = None

    @property
    def client(self) -> MlflowClient:
        if self._client is None:
            self._client = MlflowClient(tracking_uri=self.tracking_uri)
            self.experiment_id = ensure_experiment(self._client, self.experiment)
        return self._client

    def setup(self, **info) -> None:
        _ = self.client  # create the experiment before the first trial starts

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        if trial.trial_id in self.run_ids:  # a restarted trial keeps its run
            return
        params = {**self.base_params, **trial.config}
        run = self.client.create_run(
            self.experiment_id, run_name=trial_label(params),
            tags={**self.tags, "ray.trial_id": trial.trial_id, "ray.trial_name": str(trial)})
        self.run_ids[trial.trial_id] = run.info.run_id
        self.client.log_batch(run.info.run_id, params=[
            Param(k, _param_value(v)) for k, v in sorted(params.items())])

    def on_trial_result(self, iteration, trials, trial, result, **info) -> None:
        run_id = self.run_ids.get(trial.trial_id)
        epoch = result.get("epoch")
        if run_id is None or epoch is None:
            return
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
        self.client.set_terminated(run_id, RunStatus.to_string(RunStatus.FINISHED))

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        run_id = self.run_ids.get(trial.trial_id)
        if run_id is None:
            return
        error = getattr(trial, "error_file", None)
        if error:
            self.client.set_tag(run_id, "ray.error_file", str(error))
        self.client.set_terminated(run_id, RunStatus.to_string(RunStatus.FAILED))


def trial_label(params: Mapping[str, Any]) -> str:
    """A readable run name: ``late-product h512 L2 T25``."""
    return (f"{params.get('fusion')} h{params.get('hidden')} L{params.get('depth')} "
            f"T{params.get('T')}")


def log_evaluation(tracking_uri: str, run_id: str, metrics: Mapping[str, float],
                   files: Mapping[str, str] = (), tags: Mapping[str, str] | None = None) -> None:
    """Add final metrics (no step), files (artifacts; the model under ``model/``) and tags
    to an existing run, finished or not."""
    client = MlflowClient(tracking_uri=tracking_uri)
    now = int(time.time() * 1000)
    client.log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()],
                     tags=[RunTag(k, str(v)) for k, v in (tags or {}).items()])
    for name, path in dict(files).items():
        client.log_artifact(run_id, path, artifact_path="model" if name == "model" else None)
