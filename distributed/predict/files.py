"""A trained model and a few video files, in this process (no Ray): ``load_model`` for every
kind of model reference, and ``predict_files``, behind ``jobs/predict.py VIDEO...``.

The model reference: a run directory of ``jobs/train.py``, a checkpoint directory, a
``model.pt`` file or a URI (``reslstm.checkpoint``), or ``models:/NAME@ALIAS`` from the MLflow
registry (``reslstm.distributed.tracking.models``, imported only for such a reference). Every
way runs the chain of ``reslstm.inference.predictor``: the extraction settings recorded with
the model, its weights checked.

``predict_files`` prints a table (or ``--json``, one object per line) per video, draws the
optional sheet and writes the optional timelines (``--timeline DIR``); videos that cannot be
read are reported with extraction's typed errors and make the job exit 1 after the others are
printed.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from reslstm.checkpoint import load_checkpoint
from reslstm.configs import PredictConfig
from reslstm.errors import ReslstmError
from reslstm.features.export import safe_name
from reslstm.inference.chain import PredictError
from reslstm.inference.predictor import Prediction, Predictor, VideoFailed
from reslstm.model import ActionModel

log = logging.getLogger(__name__)

REGISTRY_PREFIX = "models:/"


class PredictFailures(ReslstmError, RuntimeError):
    """Some of the videos given could not be classified (each one is named)."""

    exit_code = 1


# ---------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------

def load_model(ref: str, mlflow_uri: str | None = None) -> tuple[ActionModel, dict]:
    """(model in eval mode, checkpoint payload) for any model reference (module docstring)."""
    if str(ref).startswith(REGISTRY_PREFIX):
        try:
            from reslstm.distributed.tracking.models import load_registered
        except ImportError as exc:
            raise PredictError(f"{ref}: models:/ references need reslstm.distributed.tracking.models "
                               f"(MLflow model registration), which is missing ({exc})") from None
        try:
            return load_registered(str(ref), tracking_uri=mlflow_uri)
        except Exception as exc:  # noqa: BLE001 - MLflow's errors: unknown name, alias, server
            where = mlflow_uri or os.environ.get("MLFLOW_TRACKING_URI", "(no MLFLOW_TRACKING_URI)")
            first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
            raise PredictError(f"{ref}: cannot load it from the MLflow registry at {where}: "
                               f"{first}") from exc
    return load_checkpoint(ref)


def load_predictor(cfg: PredictConfig) -> Predictor:
    model, payload = load_model(cfg.model, cfg.mlflow_uri)
    return Predictor(model, payload, cfg)


def describe(predictor: Predictor) -> str:
    """One line: the model and the chain it runs."""
    st, streams = predictor.stage, predictor.head.streams
    flow = f", flow {st.flow_method}" if "flow" in streams else ""
    return (f"model {predictor.cfg.model}: {predictor.head.fusion}, {len(predictor.label_names)} "
            f"classes, T={predictor.head.T}; features {st.extractor} "
            f"({', '.join(f'{s}={predictor.stage.weights_ids[s]}' for s in streams)}), clips of "
            f"{st.clip_len} every {st.clip_stride}" + (f" at {st.fps:g} fps" if st.fps else "")
            + f", {st.crops} crop(s){flow}")


# ---------------------------------------------------------------------------------------------
# A few files, in this process
# ---------------------------------------------------------------------------------------------

def predict_files(cfg: PredictConfig) -> list[Prediction]:
    """Classify ``cfg.videos`` in this process; print each; ``PredictFailures`` (exit 1) after
    the others when some could not be read."""
    predictor = load_predictor(cfg)
    if not cfg.as_json:
        log.info(describe(predictor))
    done, failed, names = [], [], set()
    for path in cfg.videos:
        try:
            pred = predictor.predict(path, video_id=str(path), timeline=bool(cfg.timeline))
        except VideoFailed as exc:
            failed.append((path, exc))
            if cfg.as_json:
                log.info(json.dumps({"video_id": str(path), "path": str(path),
                                     "error": exc.failures}), extra={"block": True})
            continue
        done.append(pred)
        text = json.dumps(pred.to_dict(cfg.top_k, probabilities=True)) if cfg.as_json \
            else pred.text(cfg.top_k)
        log.info(text, extra={"block": True})
        if pred.timeline is not None:
            name = timeline_name(path, names)
            files = pred.timeline.write(cfg.timeline, name)
            if not cfg.as_json:
                log.info(f"timeline: {', '.join(str(f) for f in files)}")
    if cfg.sheet and done:
        from reslstm.inference.sheet import draw_sheet

        path = draw_sheet(done, cfg.sheet, top_k=cfg.top_k)
        if not cfg.as_json:
            log.info(f"sheet: {path}")
    if failed:
        lines = [f"{p}: {exc}" for p, exc in failed]
        raise PredictFailures(f"{len(failed)} of {len(cfg.videos)} video(s) could not be "
                              "classified:\n  " + "\n  ".join(lines))
    return done


def timeline_name(path, taken: set) -> str:
    """The file name (without suffix) of a video's timeline: its own name, numbered when two
    videos of one call share it."""
    stem = safe_name(Path(str(path).rstrip("/")).stem or "video")
    name, n = stem, 1
    while name in taken:
        n += 1
        name = f"{stem}-{n}"
    taken.add(name)
    return name
