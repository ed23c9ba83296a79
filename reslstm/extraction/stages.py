"""The stages of feature extraction, as plain Python callables (Ray Data runs them on a cluster;
``driver.run_local`` and prediction run them in one process).

    decode_segments (CPU task)   work item -> RGB frame segments, or a failure row
    flow_stage      (CPU task)   flow segments: RGB frames -> quantised optical flow (CPU methods)
    FeatureStage    (actor)      frames -> clip features (the 3D CNN, crops averaged); computes
                                 the flow itself for device methods (RAFT, tvl1-torch), on its
                                 GPU, where the flow stays for the extractor

Work travels as one-row segment tables (``extraction.segments``). A segment of the flow stream is
cut with clips of ``clip_len + 1`` RGB frames, because flow frame i is the motion between RGB
frames i and i + 1: its K clips are exactly the flow clips. The flow itself is one step for
every method (``flow.flow_clip_frames``), run where the method runs. Any error about one video
becomes a failure row naming the stage; nothing raises out of a stage for a bad file, so one
bad file never takes a block (and the other videos in it) down with it. What does raise is
systemic (``segments.is_systemic``): a feature actor that cannot build its model or load its
weights, a GPU out of memory or in a bad state; the job then stops with the cause.
"""

from __future__ import annotations

import dataclasses
import sys
import time
from typing import Iterator

import numpy as np
import pyarrow as pa

from reslstm.features.schema import SPAN_COLUMNS

from .segments import SEGMENT_SCHEMA, encode, failure_row, frames_of, is_systemic, segment_row


@dataclasses.dataclass(frozen=True)
class StageConfig:
    """What every stage needs to know; plain data so Ray can ship it to any node."""

    clip_len: int
    clip_stride: int
    clips_per_segment: int
    resize_short: dict             # stream -> short side frames are decoded at
    flow_method: str               # tvl1 | farneback | dis | tvl1-torch | raft
    min_frame_ratio: float | None  # decoded / declared frames below this: a failure
    extractor: str
    weights: dict                  # stream -> weights argument of create_extractor
    weights_ids: dict              # stream -> the weights id the store records for them
    extractor_options: dict
    crops: int
    batch_size: int
    flow_options: dict = dataclasses.field(default_factory=dict)  # flow.make_flow options
    device: str | None = None      # None: CUDA when the worker has a GPU, else CPU
    # Object storage the manifest (or the store) is on: video URIs of its scheme without
    # options are read with its filesystem (endpoint, credentials), here and on every node.
    videos: object = None          # storage.Location | None
    task_threads: int | None = None   # torch/OpenCV threads in the CPU tasks (None: as is)
    actor_threads: int | None = None  # torch threads of a CPU feature actor (None: as is)
    fps: float | None = None       # frames resampled to this rate (None: every decoded frame)

    @property
    def flow_on_device(self) -> bool:
        """Whether the flow is computed by the feature actor rather than the CPU flow stage."""
        from reslstm.flow.methods import runs_on_device

        return runs_on_device(self.flow_method)

    def segment_clip_len(self, stream: str) -> int:
        """RGB frames per clip a stream's segments are cut with (flow needs one more)."""
        return self.clip_len + 1 if stream == "flow" else self.clip_len


def limit_threads(n: int | None) -> None:
    """Use ``n`` threads in torch and OpenCV in this process: a Ray worker that reserved n CPUs
    should not spread over every core of the node (None: leave the libraries' defaults)."""
    if not n:
        return
    import cv2

    cv2.setNumThreads(n)
    if "torch" in sys.modules:
        sys.modules["torch"].set_num_threads(n)


def _real_frames(row: dict, frames: np.ndarray) -> int:
    """Frames of a segment that were decoded (a padded segment repeats its last one)."""
    return row["total_frames"] if row["padded"] else len(frames)


# ---------------------------------------------------------------------------------------------
# Stage 1: decode (CPU task)
# ---------------------------------------------------------------------------------------------

def decode_segments(batch: pa.Table, cfg: StageConfig) -> Iterator[pa.Table]:
    """Work items (manifest rows with a ``stream`` column) -> one table per frame segment, or
    a failure row."""
    from reslstm import storage
    from reslstm.video.clips import iter_segments
    from reslstm.video.decoding import VideoReader
    from reslstm.video.timing import clip_spans

    limit_threads(cfg.task_threads)
    for item in batch.to_pylist():
        stream = item["stream"]
        try:
            path = storage.resolve(item["path"], like=cfg.videos) if cfg.videos else item["path"]
            reader = VideoReader(path, short_side=cfg.resize_short[stream],
                                 min_frame_ratio=cfg.min_frame_ratio, fps=cfg.fps)
            clip_len = cfg.segment_clip_len(stream)
            segments = iter_segments(reader, clip_len, cfg.clip_stride, cfg.clips_per_segment)
            started = time.perf_counter()
            for index, seg in enumerate(segments):
                spans = clip_spans(reader.clock, seg.first_clip, seg.num_clips, clip_len,
                                   cfg.clip_stride, seg.padded)
                yield segment_row(item, seg_index=index, first_clip=seg.first_clip,
                                  num_clips=seg.num_clips, is_last=seg.is_last,
                                  total_frames=seg.total_frames if seg.is_last else -1,
                                  padded=seg.padded, fps=float(cfg.fps or reader.info.fps or 0.0),
                                  warning=_warning(reader, cfg.fps) if seg.is_last else None,
                                  decode_s=time.perf_counter() - started,
                                  **dict(zip(SPAN_COLUMNS, spans)), **encode(seg.frames))
                started = time.perf_counter()
        except Exception as exc:  # noqa: BLE001 - every error becomes a failure row
            yield failure_row(item, "decode", exc)


def _warning(reader, fps: float | None) -> str | None:
    """What the last segment's row says about a finished video: fewer frames decoded than the
    container declares, or a rate above the video's own (frames repeated)."""
    notes = []
    if reader.declared_frames and reader.decoded_frames < reader.declared_frames:
        notes.append(f"decoded {reader.decoded_frames} of {reader.declared_frames} frames the "
                     "container declares")
    if fps and reader.clock.upsampled():
        notes.append(f"--fps {fps:g} is above the video's own rate "
                     f"({reader.info.fps:.3g} fps): frames repeat")
    return "; ".join(notes) or None


# ---------------------------------------------------------------------------------------------
# Stage 2: optical flow on the CPU (task); RGB segments, device flow and failures pass through
# ---------------------------------------------------------------------------------------------

def flow_stage(batch: pa.Table, cfg: StageConfig) -> pa.Table:
    from reslstm.flow.methods import flow_clip_frames, make_flow

    limit_threads(cfg.task_threads)
    out = []
    for row in batch.to_pylist():
        if row["kind"] == "segment" and row["stream"] == "flow" and not cfg.flow_on_device:
            try:
                started = time.perf_counter()
                rgb = frames_of(row)
                flow = flow_clip_frames(rgb, _real_frames(row, rgb), cfg.clip_len,
                                        make_flow(cfg.flow_method, **cfg.flow_options))
                row.update(encode(flow), flow_s=time.perf_counter() - started)
            except Exception as exc:  # noqa: BLE001
                if is_systemic(exc):
                    raise
                out.append(failure_row(row, "flow", exc))
                continue
        out.append(pa.Table.from_pylist([row], schema=SEGMENT_SCHEMA))
    return pa.concat_tables(out) if out else SEGMENT_SCHEMA.empty_table()


# ---------------------------------------------------------------------------------------------
# Stage 3: features (actor: the models are loaded once)
# ---------------------------------------------------------------------------------------------

class FeatureStage:
    """Loads one extractor per stream (and the flow model of a device flow method) once, then
    turns frame segments into clip features: (num_clips, d_f) float32, crops averaged (eq. 5).

    Raises (a systemic error, not a failure row) when a model cannot be built or its weights
    are not the ones the store records for the stream.
    """

    def __init__(self, cfg: StageConfig, streams: tuple[str, ...]):
        import torch

        from reslstm.extractors import create_extractor
        from reslstm.flow.methods import make_flow

        self.cfg = cfg
        self.device = torch.device(cfg.device or ("cuda" if torch.cuda.is_available() else "cpu"))
        if self.device.type == "cpu":
            limit_threads(cfg.actor_threads)
        self.extractors = {}
        for s in streams:
            ext = create_extractor(cfg.extractor, s, cfg.weights.get(s), **cfg.extractor_options)
            if ext.weights_id != cfg.weights_ids.get(s, ext.weights_id):
                raise RuntimeError(f"{cfg.extractor} ({s}) loaded weights {ext.weights_id}, but "
                                   f"the store records {cfg.weights_ids[s]} for them; the weights "
                                   "file changed during the job")
            self.extractors[s] = ext.to(self.device).eval()
        self.flow = None
        if "flow" in streams and cfg.flow_on_device:
            self.flow = make_flow(cfg.flow_method, device=self.device, **cfg.flow_options)

    def frames(self, row: dict):
        """A segment's frames as its extractor reads them (the flow of a device method is
        computed here, on the device)."""
        from reslstm.flow.methods import flow_clip_frames

        frames = frames_of(row)
        if row["stream"] == "flow" and self.flow is not None:
            started = time.perf_counter()
            frames = flow_clip_frames(frames, _real_frames(row, frames), self.cfg.clip_len,
                                      self.flow)
            row["flow_s"] = time.perf_counter() - started
        return frames

    def features(self, row: dict) -> np.ndarray:
        from reslstm.extractors import clip_features

        feats = clip_features(self.extractors[row["stream"]], self.frames(row), self.cfg.clip_len,
                              self.cfg.clip_stride, self.cfg.crops, self.cfg.batch_size, self.device)
        return self._checked(row, feats)

    @staticmethod
    def _checked(row: dict, feats: np.ndarray) -> np.ndarray:
        if len(feats) != row["num_clips"]:
            raise RuntimeError(f"segment {row['seg_index']} gave {len(feats)} clip features, "
                               f"expected {row['num_clips']}")
        return feats

    def __call__(self, batch: pa.Table) -> pa.Table:
        return pa.Table.from_pylist(self.rows(batch.to_pylist()), schema=SEGMENT_SCHEMA)

    def rows(self, rows: list[dict], pack: bool = False) -> list[dict]:
        """Segment rows -> feature rows; failure rows pass through, a video's error becomes its
        failure row. ``pack``: the clips of all segments of a stream share the forward passes
        (``extractors.clip_features_many``: fuller batches on a GPU, features equal to one
        segment at a time up to float rounding); a segment the packed pass cannot take is
        then extracted alone, so its error stays its own."""
        packed = self._packed(rows) if pack else {}
        out = []
        for i, row in enumerate(rows):
            if row["kind"] == "segment":
                try:
                    if i in packed:
                        feats, seconds = packed[i], row["features_s"]
                    else:
                        started = time.perf_counter()
                        feats = self.features(row)
                        # A device flow computed here is the flow stage's time, not the CNN's.
                        seconds = time.perf_counter() - started - (
                            row["flow_s"] if self.flow is not None and row["stream"] == "flow"
                            else 0.0)
                    row.update(encode(np.asarray(feats, dtype=np.float32)), features_s=seconds)
                except Exception as exc:  # noqa: BLE001
                    if is_systemic(exc):
                        raise  # every video would fail: stop the job (see the docstring)
                    row = failure_row(row, "features", exc).to_pylist()[0]
            out.append(row)
        return out

    def _packed(self, rows: list[dict]) -> dict[int, np.ndarray]:
        from reslstm.extractors.runner import clip_features_many

        out: dict[int, np.ndarray] = {}
        for stream, extractor in self.extractors.items():
            index = [i for i, r in enumerate(rows) if r["kind"] == "segment" and r["stream"] == stream]
            if len(index) < 2:
                continue
            try:
                frames = [self.frames(rows[i]) for i in index]
                started = time.perf_counter()
                feats = clip_features_many(extractor, frames, self.cfg.clip_len,
                                           self.cfg.clip_stride, self.cfg.crops,
                                           self.cfg.batch_size, self.device)
                out.update({i: self._checked(rows[i], f) for i, f in zip(index, feats)})
                share = (time.perf_counter() - started) / sum(len(f) for f in feats)
                for i, f in zip(index, feats):  # the shared passes, split by clips
                    rows[i]["features_s"] = share * len(f)
            except Exception as exc:  # noqa: BLE001 - one at a time then names the segment
                if is_systemic(exc):
                    raise
        return out
