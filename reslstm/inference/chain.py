"""From a checkpoint back to the extraction its model was trained on.

A checkpoint payload (``reslstm.checkpoint``) records, per stream, the feature store's
``StreamSettings`` (extractor, weights id, clip length and stride, crops, decoding size, flow
method). ``chain_settings`` turns them back into the ``StageConfig`` of extraction, and refuses
weights other than the recorded ones: a weights file is accepted only when its sha256 is the
recorded one; a torchvision weights name or random initialisation is taken from the record
itself, as are RAFT's size and weights and TV-L1's parameters.
"""

from __future__ import annotations

import dataclasses
from typing import Iterable

from reslstm.configs import PredictConfig
from reslstm.errors import ReslstmError
from reslstm.extraction.stages import StageConfig
from reslstm.features import StreamSettings
from reslstm.model import ModelConfig

SHARED_SETTINGS = ("extractor", "clip_len", "clip_stride", "crops", "extractor_options", "fps")
_FLAGS = {"rgb": "--weights", "flow": "--flow-weights"}


class PredictError(ReslstmError, ValueError):
    """A model, its weights or options that cannot predict; the message says what to do."""

    exit_code = 2



def model_streams(payload: dict) -> tuple[str, ...]:
    """The streams a payload's model reads, without building it."""
    return ModelConfig.from_dict(payload["model_config"]).streams


def model_T(payload: dict) -> int:
    """T, the clips per video the model was trained on."""
    T = (payload.get("train_config") or {}).get("T")
    if not T:
        raise PredictError("the checkpoint records no T (clips per video) in its train_config")
    return int(T)


def stream_settings(payload: dict, streams: Iterable[str]) -> dict[str, StreamSettings]:
    """{stream: StreamSettings} a checkpoint recorded for the streams its model reads."""
    recorded = payload.get("features") or {}
    missing = [s for s in streams if s not in recorded]
    if missing:
        raise PredictError(f"the checkpoint records no extraction settings for stream(s) "
                           f"{missing} (it predates them); retrain it to predict new videos")
    known = {f.name for f in dataclasses.fields(StreamSettings)}
    return {s: StreamSettings(**{k: v for k, v in dict(recorded[s]).items() if k in known})
            for s in streams}


def _weights_arg(stream: str, s: StreamSettings, given: str | None):
    """The weights argument of ``create_extractor`` that reproduces ``s.weights_id``."""
    from reslstm.extractors import WeightsError, weights_identity
    from reslstm.extractors.base import INFLATED_SUFFIX, RANDOM_INIT

    recorded, flag = s.weights_id, _FLAGS[stream]
    if given is None:
        base = recorded.removesuffix(INFLATED_SUFFIX)
        if recorded == RANDOM_INIT:
            return None
        if base.startswith("torchvision:"):
            return base.rsplit(".", 1)[-1]
        raise PredictError(f"the model's {stream} features were extracted by {s.extractor} with "
                           f"the weights file of sha256 {recorded}; pass that file with {flag}")
    arg = None if str(given).lower() == "none" else given
    try:
        actual, _ = weights_identity(s.extractor, stream, arg)
    except WeightsError as exc:
        raise PredictError(f"{flag}: {exc}") from None
    if actual != recorded:
        raise PredictError(f"{flag} {given}: these weights are {actual}, but the model's {stream} "
                           f"features were extracted with {recorded}; other weights give other "
                           f"features, so the model's answers would mean nothing. Pass the "
                           f"weights the features were extracted with")
    return arg


def _flow_method(method: str, given: str | None, allow_cpu: bool) -> tuple[str, dict]:
    """(flow method, make_flow options) that reproduce a recorded flow method: RAFT is recorded
    as ``raft-<size>:<weights id>`` and its weights are checked like the extractor's;
    "tvl1-torch" as ``tvl1-torch[:<parameters that differ from OpenCV's>]``."""
    if method.startswith("tvl1-torch"):
        from reslstm.flow.tvl1 import params_from_id

        extra = method.partition(":")[2]
        return "tvl1-torch", ({"params": params_from_id(extra)} if extra else {})
    if not method.startswith("raft"):
        return method, {}
    from reslstm.flow.methods import raft_weights_id

    head, _, recorded = method.partition(":")
    size = head.partition("-")[2] or "large"
    if given is None:
        if recorded == "random-init":
            arg = None
        elif recorded.startswith("torchvision:"):
            arg = recorded.rsplit(".", 1)[-1]
        else:
            raise PredictError(f"the model's flow was computed by RAFT ({size}) with the weights "
                               f"file of sha256 {recorded}; pass that file with --raft-weights")
    else:
        arg = None if str(given).lower() == "none" else given
    try:
        actual = raft_weights_id(size, arg)
    except ValueError as exc:
        raise PredictError(f"--raft-weights: {exc}") from None
    if actual != recorded:
        raise PredictError(f"--raft-weights {given}: these RAFT weights are {actual}, but the "
                           f"model's flow was computed with {recorded}; pass those weights")
    return "raft", {"size": size, "weights": arg, "allow_cpu": allow_cpu}


def chain_settings(payload: dict, cfg: PredictConfig
                   ) -> tuple[StageConfig, dict[str, StreamSettings]]:
    """The stage config that extracts features exactly as the model's were (module docstring),
    and the recorded settings per stream; ``PredictError`` for weights that differ."""
    from reslstm.extractors import extractor_info

    streams = model_streams(payload)
    settings = stream_settings(payload, streams)
    first = settings[streams[0]]
    for s in streams[1:]:
        differ = [k for k in SHARED_SETTINGS if getattr(settings[s], k) != getattr(first, k)]
        if differ:
            raise PredictError(f"the model's rgb and flow features differ in {differ}; "
                               "prediction runs both streams with one extractor and clip grid")
    try:
        extractor_info(first.extractor)
    except ValueError as exc:
        raise PredictError(f"the model's features come from {exc}") from None
    given = {"rgb": cfg.weights, "flow": cfg.flow_weights}
    weights = {s: _weights_arg(s, settings[s], given[s]) for s in streams}
    flow, flow_options = ("tvl1", {})
    if "flow" in settings:
        flow, flow_options = _flow_method(settings["flow"].flow_method or "tvl1",
                                          cfg.raft_weights, cfg.allow_cpu_raft)
    stage = StageConfig(
        clip_len=first.clip_len, clip_stride=first.clip_stride,
        clips_per_segment=cfg.clips_per_segment,
        resize_short={s: settings[s].resize_short for s in streams}, flow_method=flow,
        flow_options=flow_options, min_frame_ratio=cfg.min_frame_ratio,
        extractor=first.extractor, weights=weights,
        weights_ids={s: settings[s].weights_id for s in streams},
        extractor_options=dict(first.extractor_options), crops=first.crops,
        batch_size=cfg.batch_size, device=cfg.device, fps=first.fps)
    return stage, settings
