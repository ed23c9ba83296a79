"""A trained model read back without Ray: the checkpoint payload and the model it holds.

A payload is the dict a training run saves as ``model.pt`` (``distributed.train.checkpoints``):
``model_state``, ``model_config``, ``label_names``, ``features`` ({stream: the feature store's
``StreamSettings`` as a dict}: how the features the model learned from were extracted),
``store``, ``train_config``, ``epoch`` and ``metrics``.

``load_payload(ref)`` reads one from

- a run directory written by ``jobs/train.py`` (its ``summary.json`` names the best checkpoint),
- a checkpoint directory holding ``model.pt``,
- a ``model.pt`` file (e.g. a sweep's ``OUT/best/model.pt``),

each a local path or a filesystem URI (``s3://...``, read with ``reslstm.storage``).
``load_checkpoint(ref)`` also rebuilds the model (eval mode). Registered models
(``models:/NAME@ALIAS``) live in MLflow and are read by ``reslstm.distributed.tracking.models``.
"""

from __future__ import annotations

import io
import json
import logging

import torch

from reslstm import storage
from reslstm.model import ActionModel, build_model

log = logging.getLogger(__name__)

CHECKPOINT_FILE = "model.pt"
SUMMARY_FILE = "summary.json"
PAYLOAD_KEYS = ("model_state", "model_config", "label_names")


class ModelRefError(ValueError):
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
        summary = json.loads(loc.join(SUMMARY_FILE).read_text())
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


def load_payload(ref, map_location="cpu") -> dict:
    """The payload of the checkpoint ``ref`` names (module docstring)."""
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
