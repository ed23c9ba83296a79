"""From an ``ExtractConfig`` to what the stages run and what the store records, without building
a model.

``resolve_settings(cfg)`` reads the extractor's static metadata (``extractor_info``) and the
identity of its weights (``weights_identity``: a file's sha256, a torchvision weights name, or
random-init; RAFT's likewise; for TV-L1, which implementation), checks the options against
them, and returns the ``StageConfig`` every stage gets plus the ``StreamSettings`` of each
stream. The feature actors build the models once, where they run, and check that they load
the weights recorded here.
"""

from __future__ import annotations

from reslstm import __version__
from reslstm.configs import ExtractConfig
from reslstm.errors import ReslstmError
from reslstm.features import StreamSettings
from reslstm.flow.methods import raft_weights_id, tvl1_torch_id

from .stages import StageConfig


class ExtractError(ReslstmError, RuntimeError):
    """Bad options or a failed extraction; the message says what to do. ``exit_code``: the
    job's exit status."""

    exit_code = 2


class TooManyFailures(ExtractError):
    """More of a run's (video, stream) pairs failed than ``--max-failed`` allows; ``summary``:
    the run's ``ExtractSummary`` (what it wrote is written)."""

    exit_code = 1

    def __init__(self, summary, message: str):
        super().__init__(message)
        self.summary = summary


def _weights_arg(cfg: ExtractConfig, stream: str):
    w = cfg.weights if stream == "rgb" else cfg.flow_weights
    if w is None and cfg.extractor != "tiny3d":
        flag = "--weights" if stream == "rgb" else "--flow-weights"
        raise ExtractError(
            f"{flag} is required for extractor {cfg.extractor!r} ({stream} stream): a checkpoint "
            f"file, a torchvision weights name such as KINETICS400_V1, or 'none' for random "
            f"initialisation (features recorded as random-init, for testing only)")
    return None if (w is None or str(w).lower() == "none") else w


def _flow_method(cfg: ExtractConfig) -> tuple[str, dict]:
    """The flow method the store records (RAFT: with its size and weights; tvl1-torch: with
    its parameters when they are not OpenCV's, ``flow.tvl1_torch_id``) and the options
    ``flow.make_flow`` gets."""
    if cfg.flow == "tvl1-torch" and "flow" in cfg.streams:
        # Its own name, not "tvl1": the store refuses to mix it with OpenCV's flow (see flow.py)
        return tvl1_torch_id(), {}
    if cfg.flow != "raft" or "flow" not in cfg.streams:
        return cfg.flow, {}
    weights = None if str(cfg.raft_weights).lower() == "none" else cfg.raft_weights
    try:
        # Other RAFT weights give other flow, hence other features: the store records which.
        weights_id = raft_weights_id(cfg.raft_size, weights)
    except ValueError as exc:
        raise ExtractError(f"--flow raft: {exc}") from exc
    options = {"size": cfg.raft_size, "weights": weights, "allow_cpu": cfg.allow_cpu_raft}
    return f"raft-{cfg.raft_size}:{weights_id}", options


def resolve_settings(cfg: ExtractConfig) -> tuple[StageConfig, dict[str, StreamSettings]]:
    """(stage config, {stream: settings}) for ``cfg``; ``ExtractError`` for bad options."""
    from reslstm.extractors import WeightsError, extractor_info, weights_identity

    try:
        info = extractor_info(cfg.extractor)
    except ValueError as exc:
        raise ExtractError(f"--extractor: {exc}") from None
    flow_method, flow_options = _flow_method(cfg)
    clip_len = cfg.clip_len or info.clip_len
    try:
        info.check_clip_len(clip_len)
    except ValueError:
        raise ExtractError(f"--clip-len {clip_len} is outside what {cfg.extractor} accepts "
                           f"({info.min_clip_len}..{info.max_clip_len})") from None
    resize = cfg.size or info.resize_short
    if resize < info.input_size:
        raise ExtractError(f"--size {resize} is smaller than {cfg.extractor}'s "
                           f"{info.input_size}-pixel input")
    weights, ids, settings = {}, {}, {}
    for stream in cfg.streams:
        weights[stream] = _weights_arg(cfg, stream)
        try:
            ids[stream], flow_pretrained = weights_identity(cfg.extractor, stream, weights[stream])
        except WeightsError as exc:
            flag = "--weights" if stream == "rgb" else "--flow-weights"
            raise ExtractError(f"{flag}: {exc}") from None
        settings[stream] = StreamSettings(
            extractor=cfg.extractor, weights_id=ids[stream], feature_dim=info.feature_dim,
            clip_len=clip_len, clip_stride=cfg.clip_stride, crops=cfg.crops,
            input_size=info.input_size, resize_short=resize,
            flow_method=flow_method if stream == "flow" else None,
            flow_pretrained=flow_pretrained if stream == "flow" else True,
            code_version=__version__, extractor_options=dict(cfg.extractor_options),
            fps=None if cfg.fps is None else float(cfg.fps))
    stage = StageConfig(
        clip_len=clip_len, clip_stride=cfg.clip_stride, clips_per_segment=cfg.clips_per_segment,
        resize_short={s: resize for s in cfg.streams}, flow_method=cfg.flow,
        flow_options=flow_options, min_frame_ratio=cfg.min_frame_ratio, extractor=cfg.extractor,
        weights=weights, weights_ids=ids, extractor_options=dict(cfg.extractor_options),
        crops=cfg.crops, batch_size=cfg.batch_size, fps=cfg.fps)
    return stage, settings
