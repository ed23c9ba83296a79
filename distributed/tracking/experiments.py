"""MLflow experiments and tracking stores: where runs go (``tracking_uri``: a URI given, else
``MLFLOW_TRACKING_URI``, else ``default_tracking_uri``), the experiment a run lands in
(``ensure_experiment``), and how a person opens them (``ui_hint``).

MLflow 3 refuses the plain file store: the default tracking URI is an ABSOLUTE ``sqlite:///``
file (Tune changes the working directory of trials), with artifacts in ``mlartifacts/`` beside
it; an ``http://`` URI of an ``mlflow server`` (``cluster/local/mlflow.sh``) works as well. The
experiment is marked as model training, and ``ui_hint`` prints the command and the link that
opens the runs table (MLflow 3.17 opens experiments on its GenAI "Traces" page otherwise).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from mlflow import MlflowClient

from reslstm.errors import ConfigError

DB_FILE = "mlflow.db"


def tracking_uri(given: str | None = None, directory=".") -> str:
    """``given``, else ``MLFLOW_TRACKING_URI``, else ``default_tracking_uri(directory)``."""
    return given or os.environ.get("MLFLOW_TRACKING_URI") or default_tracking_uri(directory)


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


def param_value(v: Any) -> str:
    return "" if v is None else str(v)
