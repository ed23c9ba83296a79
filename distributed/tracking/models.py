"""The model registry: the best model of a sweep as a registered MLflow model, and back.

``register_model(tracking_uri, run_id, payload, name, alias)`` logs the model of a checkpoint
payload (``reslstm.checkpoint.load_payload``) into run ``run_id`` as an MLflow model, registers
it under ``name`` and points ``alias`` (default "champion") at the new version.
``load_registered("models:/NAME@ALIAS")`` gives it back as (``ActionModel`` in eval mode,
payload): the payload is built as a checkpoint's (``reslstm.checkpoint.build_payload``), so
prediction reads the label names and the feature settings (``features``: extractor, weights id,
clips, crops, flow method, size) from either.

Format: MLflow's pytorch flavour with ``serialization_format="pickle"`` (the default "pt2"
goes through ``torch.export``, which takes tensor inputs only, while ``ActionModel.forward``
takes a dict of streams), and everything else of the payload
(``reslstm.checkpoint.payload_info``: config, label names, feature settings, metrics) in the
model's metadata. Loading needs this package installed, as the pickle names its classes.
Requirements are given, not inferred (MLflow's inference imports the model in a subprocess,
which takes longer than the logging).
"""

from __future__ import annotations

import contextlib
import io
import logging

import mlflow
import torch
from mlflow import MlflowClient

from reslstm import __version__
from reslstm.checkpoint import (PAYLOAD_PARTS, ModelRefError, build_payload, model_from_payload,
                                payload_info)
from reslstm.model import ActionModel

log = logging.getLogger(__name__)
ALIAS = "champion"


def _json_safe(value):
    if isinstance(value, dict):
        return {str(k): _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    return str(value)


def register_model(tracking_uri: str, run_id: str, payload: dict, name: str,
                   alias: str = ALIAS) -> str:
    """Log the payload's model into ``run_id``, register it as ``name`` and set ``alias`` to
    this version; returns the version."""
    model = model_from_payload(payload)
    metadata = _json_safe(payload_info(payload))
    mlflow.set_tracking_uri(tracking_uri)
    # MLflow prints its notes about this (a warning on pickled models, which are the point
    # here, and two lines on the registration) straight to stderr: the line below says it all.
    with mlflow.start_run(run_id=run_id), _quiet_mlflow():
        info = mlflow.pytorch.log_model(
            model, name="model", serialization_format="pickle", registered_model_name=name,
            metadata=metadata, await_registration_for=60,
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}",
                              f"reslstm=={__version__}"])
    version = str(info.registered_model_version)
    MlflowClient(tracking_uri=tracking_uri).set_registered_model_alias(name, alias, version)
    log.info(f"registered model {name} version {version} as {name}@{alias}")
    return version


@contextlib.contextmanager
def _quiet_mlflow():
    logger = logging.getLogger("mlflow")
    level = logger.level
    logger.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stderr(io.StringIO()):
            yield
    finally:
        logger.setLevel(level)


def load_registered(uri: str, tracking_uri: str | None = None) -> tuple[ActionModel, dict]:
    """(model in eval mode, payload) of a registered model, e.g. ``models:/reslstm@champion``
    (``tracking_uri``: default MLflow's, i.e. ``MLFLOW_TRACKING_URI``)."""
    if tracking_uri:
        mlflow.set_tracking_uri(tracking_uri)
    model = mlflow.pytorch.load_model(uri, map_location="cpu")
    if not isinstance(model, ActionModel):
        raise ModelRefError(f"{uri}: not a model of this project (got {type(model).__name__})")
    info = mlflow.models.get_model_info(uri).metadata or {}
    if "label_names" not in info:
        raise ModelRefError(f"{uri}: its metadata holds no label_names (not registered by "
                            "reslstm.distributed.tracking.models?)")
    return model.eval(), build_payload(model, info["label_names"],
                                       **{k: info.get(k) for k in PAYLOAD_PARTS})
