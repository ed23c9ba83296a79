"""One video -> decode -> flow -> features -> model -> class probabilities, in one process.

A checkpoint payload (``reslstm.checkpoint``) records how the features its model learned from
were extracted: per stream the feature store's ``StreamSettings`` (extractor, weights id, clip
length and stride, crops, decoding size, flow method). ``chain_settings``
(``reslstm.inference.chain``) turns them back into the ``StageConfig`` of extraction, and refuses
weights other than the recorded ones: a weights
file is accepted only when its sha256 is the recorded one, a torchvision weights name or
random initialisation is taken from the record itself. The video then runs through exactly the
stages of extraction (``extraction.stages``: decode, flow, features), its segments are joined
in order (``segments.SegmentJoiner``, as the store writer does), T clips are sampled as in
training (``sampling``) and the model scores them.

- ``Predictor(model, payload, cfg)``: loads the extractors once; ``predict(path)`` ->
  ``Prediction``; a video that cannot be read raises ``VideoFailed`` with the typed errors of
  extraction (``VideoDecodeError:truncated`` ...).
- ``ModelHead(model, payload)``: joined features (``reslstm.inference.assembly``) ->
  probabilities per head, shared with batch
  prediction on Ray (``reslstm.distributed.predict.batch``), so both give the same numbers.
- ``Prediction``: the probabilities of each head, top-k, a JSON form and a text table;
  ``prediction_rows`` turns predictions into rows of ``BATCH_SCHEMA`` (one row per video: the
  top-k classes and the full softmax of each head), the table batch prediction writes.

Heads: ``fused`` (the model's output: its one softmax, or the late fusion of its two) and, for
late fusion, ``rgb`` and ``flow`` (each stream's own softmax), as in ``reslstm.reports.predictions``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
from typing import Callable, Iterable

import numpy as np
import pyarrow as pa
import torch

from reslstm.configs import PredictConfig
from reslstm.errors import ReslstmError
from reslstm.extraction.segments import JoinedVideo
from reslstm.extraction.stages import FeatureStage, decode_segments, flow_stage
from reslstm.fusion import FUSED, STREAMS, is_late
from reslstm.inference.assembly import join_video
from reslstm.inference.chain import chain_settings, model_T
from reslstm.model import ActionModel
from reslstm.inference.timeline import Timeline
from reslstm.sampling import sample_pair, sample_video, temporal_sample

log = logging.getLogger(__name__)

HEADS = (*STREAMS, FUSED)  # the order heads are listed in
Features = Callable[[list[dict]], list[dict]]  # segment rows -> feature rows


class Cancelled(ReslstmError, TimeoutError):
    """A prediction stopped between two segments (a request past its time limit)."""


class VideoFailed(ReslstmError, RuntimeError):
    """A video that could not be classified; ``failures`` are rows of the failures table
    (video_id, stream, path, stage, error_type, message), as extraction records them."""

    exit_code = 1

    def __init__(self, failures: list[dict]):
        self.failures = failures
        first = failures[0]
        super().__init__(f"{first['error_type']} ({first['stage']}): {first['message']}")

    @property
    def error_type(self) -> str:
        return self.failures[0]["error_type"]


# ---------------------------------------------------------------------------------------------
# Joined features -> probabilities
# ---------------------------------------------------------------------------------------------

class ModelHead:
    """A payload's model over joined clip features: T clips sampled at sigma(t) as in training
    (both streams at the same clips), then the probabilities of every head."""

    def __init__(self, model: ActionModel, payload: dict):
        self.model = model.eval()
        self.label_names = list(payload["label_names"])
        self.streams = model.streams
        self.fusion = model.config.fusion
        self.T = model_T(payload)

    @property
    def heads(self) -> tuple[str, ...]:
        return tuple(h for h in HEADS if h == FUSED or is_late(self.fusion) and h in self.streams)

    def inputs(self, features: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """{stream: (K_v, d_f)} -> {stream: (T, d_f)}: the clips at sigma(t), both streams at
        the same clips."""
        if len(self.streams) == 2:
            return dict(zip(STREAMS, sample_pair(*(features[s] for s in STREAMS), self.T)))
        (s,) = self.streams
        return {s: sample_video(features[s], self.T)}

    @torch.no_grad()
    def probabilities(self, features: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """{stream: (K_v, d_f)} -> {head: (C,) float32}."""
        inputs = {s: torch.tensor(np.asarray(v, np.float32))[None]  # (1, T, d_f)
                  for s, v in self.inputs(features).items()}
        logits = self.model(inputs)
        out = {FUSED: self.model.probabilities(logits)}
        if self.model.late is not None:
            out.update({h: torch.softmax(logits[h], dim=-1) for h in self.model.heads})
        return {h: out[h][0].float().numpy() for h in self.heads}

    @torch.no_grad()
    def timeline(self, video_id: str, path: str, joined: dict[str, JoinedVideo]) -> Timeline:
        """The running prediction after each of the T steps, with the seconds each covers
        (``reslstm.inference.timeline``)."""
        joined = {s: joined[s] for s in self.streams}
        inputs = {s: torch.tensor(np.asarray(v, np.float32))[None]
                  for s, v in self.inputs({s: j.features for s, j in joined.items()}).items()}
        logits = self.model.step_logits(inputs)                 # {head: (1, T, C)}
        probs = {FUSED: self.model.probabilities(logits)}
        if self.model.late is not None:
            probs.update({h: torch.softmax(logits[h], dim=-1) for h in self.model.heads})
        clips = temporal_sample(min(len(j.features) for j in joined.values()), self.T)
        spans = [j.spans for j in joined.values()]
        if any(sp is None for sp in spans):
            raise ReslstmError(f"{path}: its clips carry no times; a timeline needs them")
        return Timeline(video_id=video_id, path=path, fusion=self.fusion,
                        label_names=self.label_names, clips=clips,
                        start_s=np.min([sp["start_s"][clips] for sp in spans], axis=0),
                        end_s=np.max([sp["end_s"][clips] for sp in spans], axis=0),
                        probs={h: probs[h][0].float().numpy() for h in self.heads})

    def prediction(self, video_id: str, path: str, joined: dict[str, JoinedVideo]) -> "Prediction":
        return self.predictions([(video_id, path, joined)])[0]

    def predictions(self, videos: list[tuple[str, str, dict[str, JoinedVideo]]]) -> list["Prediction"]:
        """[(video_id, path, {stream: joined features})] -> their predictions. The model runs
        once per video: one pass over a batch of videos differs from these numbers in the last
        bit (the matrix products are blocked by batch size), for a step that costs about a
        millisecond per video next to its 3D CNN's hundreds."""
        out = []
        for vid, path, joined in videos:
            joined = {s: joined[s] for s in self.streams}  # in the model's order
            probs = self.probabilities({s: j.features for s, j in joined.items()})
            out.append(self._prediction(vid, path, joined, probs))
        return out

    def _prediction(self, video_id: str, path: str, joined: dict[str, JoinedVideo],
                    probs: dict[str, np.ndarray]) -> "Prediction":
        last = next(iter(joined.values())).last
        notes = []
        for s, j in joined.items():
            if j.last["padded"]:
                notes.append(f"{s}: shorter than one clip ({j.num_frames} frames): padded by "
                             "repeating its last frame")
            if j.last.get("warning"):
                notes.append(f"{s}: {j.last['warning']}")
        return Prediction(video_id=video_id, path=path, fusion=self.fusion,
                          label_names=self.label_names, probs=probs,
                          num_frames=int(last["total_frames"]), fps=float(last["fps"] or 0.0),
                          num_clips={s: len(j.features) for s, j in joined.items()},
                          padded=any(j.last["padded"] for j in joined.values()), notes=notes)


# ---------------------------------------------------------------------------------------------
# A prediction
# ---------------------------------------------------------------------------------------------

@dataclasses.dataclass
class Prediction:
    """The probabilities of one video per head (``HEADS`` order), and what its decoding said."""

    video_id: str
    path: str
    fusion: str
    label_names: list[str]
    probs: dict[str, np.ndarray]   # head -> (C,) float32
    num_frames: int                # RGB frames decoded
    fps: float
    num_clips: dict[str, int]
    padded: bool
    notes: list[str]
    timeline: Timeline | None = None   # the running prediction per step, when asked for

    def top(self, head: str = FUSED, k: int = 5) -> list[tuple[int, str, float]]:
        """(class index, name, probability) of the k most probable classes, best first."""
        p = self.probs[head]
        order = np.argsort(-p, kind="stable")[:k]
        return [(int(i), self.label_names[i], float(p[i])) for i in order]

    def to_dict(self, top_k: int = 5, probabilities: bool = False) -> dict:
        """The JSON form (README "Predicting new videos")."""
        doc = {"video_id": self.video_id, "path": self.path, "fusion": self.fusion,
               "num_frames": self.num_frames, "fps": self.fps, "num_clips": self.num_clips,
               "padded": self.padded, "notes": self.notes,
               "top": {h: [{"index": i, "label": name, "probability": p}
                           for i, name, p in self.top(h, top_k)] for h in self.probs}}
        if probabilities:
            doc["probabilities"] = {h: [float(x) for x in p] for h, p in self.probs.items()}
            doc["labels"] = list(self.label_names)
        return doc

    def text(self, top_k: int = 5) -> str:
        """A table a person reads: one column per head, the top-k classes down."""
        clips = ", ".join(f"{s} {k}" for s, k in self.num_clips.items())
        lines = [f"{self.path}: {self.num_frames} frames at {self.fps:.1f} fps, clips {clips}"]
        heads = list(self.probs)
        cells = {h: [f"{name} {p:.4f}" for _, name, p in self.top(h, top_k)] for h in heads}
        titles = {h: f"{h} ({self.fusion})" if h == FUSED else h for h in heads}
        width = {h: max(len(titles[h]), *(len(c) for c in cells[h])) for h in heads}
        lines.append("  #  " + "  ".join(titles[h].ljust(width[h]) for h in heads).rstrip())
        for r in range(min(top_k, len(self.label_names))):
            lines.append(f"  {r + 1:<2} " + "  ".join(cells[h][r].ljust(width[h])
                                                      for h in heads).rstrip())
        lines += [f"  note: {n}" for n in self.notes]
        return "\n".join(lines)


# One row per video: the top-k and the full softmax of each head (null where the model has no
# such head); the class names the softmax indexes are in the schema's metadata (``labels``).
BATCH_SCHEMA = pa.schema(
    [("video_id", pa.string()), ("path", pa.string()), ("fusion", pa.string()),
     ("num_frames", pa.int32()), ("fps", pa.float32()), ("padded", pa.bool_()),
     ("notes", pa.string())]
    + [field for h in HEADS for field in (
        (f"{h}_top_labels", pa.list_(pa.string())), (f"{h}_top_probs", pa.list_(pa.float32())),
        (f"{h}_probs", pa.list_(pa.float32())))])


def prediction_rows(preds: Iterable[Prediction], top_k: int = 5) -> pa.Table:
    """Rows of ``BATCH_SCHEMA``, one per prediction."""
    rows, labels = [], None
    for p in preds:
        labels = p.label_names
        row = {"video_id": p.video_id, "path": p.path, "fusion": p.fusion,
               "num_frames": p.num_frames, "fps": p.fps, "padded": p.padded,
               "notes": "; ".join(p.notes) or None}
        for h in p.probs:
            top = p.top(h, top_k)
            row[f"{h}_top_labels"] = [name for _, name, _ in top]
            row[f"{h}_top_probs"] = [prob for _, _, prob in top]
            row[f"{h}_probs"] = p.probs[h]
        rows.append(row)
    table = pa.Table.from_pylist(rows, schema=BATCH_SCHEMA)
    return table.replace_schema_metadata({"labels": json.dumps(labels)} if labels else None)


# ---------------------------------------------------------------------------------------------
# The whole chain in this process
# ---------------------------------------------------------------------------------------------

class Predictor:
    """A model with its extraction chain, loaded once (module docstring). Not thread-safe:
    one prediction at a time."""

    def __init__(self, model: ActionModel, payload: dict, cfg: PredictConfig):
        self.cfg = cfg
        self.head = ModelHead(model, payload)
        self.stage, self.settings = chain_settings(payload, cfg)
        self.features = FeatureStage(self.stage, self.head.streams)

    @property
    def label_names(self) -> list[str]:
        return self.head.label_names

    def segment_rows(self, path: str, video_id: str, features: Features | None = None,
                     cancel: threading.Event | None = None) -> Iterable[dict]:
        """The feature segment rows of every stream of one video (extraction's stages).
        ``features``: segment rows -> feature rows (default: this predictor's extractors, one
        segment at a time); ``cancel``: set, the next segment raises ``Cancelled``."""
        features = features or self.features.rows
        for stream in self.head.streams:
            item = {"video_id": video_id, "stream": stream, "path": str(path)}
            # Each stage turns an error about the video into a failure row (extraction's
            # typed errors); only systemic errors (the machine, not the video) raise.
            for seg in decode_segments(pa.Table.from_pylist([item]), self.stage):
                if cancel is not None and cancel.is_set():
                    raise Cancelled(f"{path}: stopped after its time limit")
                yield from features(flow_stage(seg, self.stage).to_pylist())

    def joined(self, path, video_id: str | None = None, features: Features | None = None,
               cancel: threading.Event | None = None) -> dict[str, JoinedVideo]:
        """The joined clip features of every stream of one video; ``VideoFailed`` when it
        cannot be read (``segment_rows`` for the options)."""
        path = str(path)
        joined, failures = join_video(self.segment_rows(path, video_id or path, features, cancel),
                                      self.head.streams, self.settings)
        if failures:
            raise VideoFailed(failures)
        return joined

    def predict(self, path, video_id: str | None = None, timeline: bool = False) -> Prediction:
        """Classify one video (a local path or URI); ``VideoFailed`` when it cannot be read.
        ``timeline``: also the running prediction per step (``Prediction.timeline``)."""
        path = str(path)
        joined = self.joined(path, video_id)
        pred = self.head.prediction(video_id or path, path, joined)
        if timeline:
            pred.timeline = self.head.timeline(video_id or path, path, joined)
        return pred
