"""A trained model as a checkpoint payload, without Ray: built, read back, made a model again.

A payload is the dict a training run saves as ``model.pt`` (``distributed.train.checkpoints``):
``model_state``, ``model_config``, ``label_names``, ``features`` ({stream: the feature store's
``StreamSettings`` as a dict}: how the features the model learned from were extracted),
``store``, ``train_config``, ``epoch`` and ``metrics`` (and, in a training checkpoint,
``optimizer_state``). Every payload is made, read and turned into a model here, once:

- ``build_payload(model, label_names, ...)`` makes one from its parts (the training worker's
  checkpoints, the model registry's models);
- ``load_payload(ref)`` reads and checks one from a run directory written by ``jobs/train.py``
  (its ``summary.json`` names the best checkpoint), a checkpoint directory holding
  ``model.pt``, a ``model.pt`` file (e.g. a sweep's ``OUT/best/model.pt``), each a local path
  or a filesystem URI (``s3://...``, read with ``reslstm.storage``), or a Ray Train
  ``Checkpoint``;
- ``model_from_payload(payload)`` rebuilds the model (eval mode); ``load_checkpoint(ref)`` is
  both steps.

``payload_info(payload)`` is a payload without its tensors. Registered models
(``models:/NAME@ALIAS``) live in MLflow and are read by ``reslstm.distributed.tracking.models``.
"""

from __future__ import annotations

import io
import json
import logging

import torch

from reslstm import storage
from reslstm.errors import ReslstmError
from reslstm.model import ActionModel, build_model

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "model.pt"
SUMMARY_FILE = "summary.json"
PAYLOAD_KEYS = ("model_state", "model_config", "label_names")  # what every payload holds
# What a payload may hold besides, in the order it is saved (``build_payload``).
PAYLOAD_PARTS = ("features", "store", "train_config", "epoch", "metrics")


class ModelRefError(ReslstmError, ValueError):
    """A model reference that names no readable checkpoint; the message says what to pass."""

    exit_code = 2


def _checkpoint_file(ref: str) -> storage.Location:
    """The model.pt a reference names (see the module docstring)."""
    loc = storage.resolve(ref)
    if loc.is_file():
        return loc
    if not loc.is_dir():
        raise ModelRefError(f"{ref}: no such file or directory (pass a run directory, a checkpoint "
                            f"directory, a {CHECKPOINT_FILE} file or models:/NAME@ALIAS)")
    if loc.join(CHECKPOINT_FILE).is_file():
        return loc.join(CHECKPOINT_FILE)
    if loc.join(SUMMARY_FILE).is_file():
        try:
            summary = json.loads(loc.join(SUMMARY_FILE).read_text())
        except ValueError as exc:
            raise ModelRefError(f"{loc.join(SUMMARY_FILE)}: not JSON ({exc})") from None
        best = summary.get("best_checkpoint")
        if not best:
            raise ModelRefError(f"{loc.join(SUMMARY_FILE)} names no best_checkpoint")
        # On object storage the summary names s3://bucket/key: read it with the run
        # directory's filesystem (its endpoint and credentials).
        target = storage.resolve(best, like=None if loc.local else loc)
        if not target.join(CHECKPOINT_FILE).is_file():
            raise ModelRefError(f"{ref}: its summary names the best checkpoint {best}, which holds "
                                f"no {CHECKPOINT_FILE} (moved or deleted?)")
        return target.join(CHECKPOINT_FILE)
    raise ModelRefError(f"{ref}: a directory without {CHECKPOINT_FILE} or {SUMMARY_FILE}; pass a "
                        f"run directory of jobs/train.py, a checkpoint directory or a "
                        f"{CHECKPOINT_FILE} file")


def build_payload(model: ActionModel, label_names, optimizer_state: dict | None = None,
                  **parts) -> dict:
    """The payload of ``model`` (module docstring): its weights (on the CPU, PCA buffers
    included) and config, ``label_names``, and the ``PAYLOAD_PARTS`` given as keywords (one
    given as None is left out); ``optimizer_state`` only in a training checkpoint, from which a
    restarted worker resumes."""
    unknown = sorted(set(parts) - set(PAYLOAD_PARTS))
    if unknown:
        raise TypeError(f"build_payload: no payload part {unknown}; the parts: "
                        f"{', '.join(PAYLOAD_PARTS)}")
    payload = {"model_state": {k: v.detach().cpu() for k, v in model.state_dict().items()}}
    if optimizer_state is not None:
        payload["optimizer_state"] = optimizer_state
    payload["model_config"] = model.config.to_dict()
    payload["label_names"] = list(label_names)
    payload.update((k, parts[k]) for k in PAYLOAD_PARTS if parts.get(k) is not None)
    return payload


def payload_info(payload: dict) -> dict:
    """The payload without its tensors (weights, optimizer state): the model's config, label
    names and the ``PAYLOAD_PARTS`` it holds, e.g. a registered model's metadata."""
    return {k: payload[k] for k in (*PAYLOAD_KEYS, *PAYLOAD_PARTS)
            if k in payload and k != "model_state"}


def load_payload(ref, map_location="cpu") -> dict:
    """The payload of the checkpoint ``ref`` names (module docstring), checked. A Ray Train
    ``Checkpoint`` (anything with ``as_directory()``; this package never imports Ray) is
    fetched into a local directory first."""
    if hasattr(ref, "as_directory"):
        with ref.as_directory() as directory:  # downloads a checkpoint on object storage
            return load_payload(directory, map_location)
    file = _checkpoint_file(str(ref))
    data = file.read_bytes()
    try:
        # Plain tensors, dicts, lists and numbers only: a checkpoint cannot run code on load.
        payload = torch.load(io.BytesIO(data), map_location=map_location, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - a zip, pickle or unsafe-global error alike
        raise ModelRefError(f"{file}: not a checkpoint payload torch can read ({exc})") from None
    missing = [k for k in PAYLOAD_KEYS if not isinstance(payload, dict) or k not in payload]
    if missing:
        raise ModelRefError(f"{file}: not a reslstm checkpoint payload (lacks {missing})")
    log.debug(f"read {file} ({len(data) / 2 ** 20:.1f} MiB)")
    return payload


def model_from_payload(payload: dict) -> ActionModel:
    """The payload's model, weights loaded, in eval mode."""
    model = build_model(payload["model_config"])
    model.load_state_dict(payload["model_state"])
    return model.eval()


def load_checkpoint(ref, map_location="cpu") -> tuple[ActionModel, dict]:
    """(model in eval mode, payload) of the checkpoint ``ref`` names."""
    payload = load_payload(ref, map_location)
    return model_from_payload(payload), payload
