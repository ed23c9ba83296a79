"""Small feature stores for tests: RGB and flow Parquet parts plus metadata, written with
``reslstm.features`` exactly as the extraction job writes them.

The features carry a learnable, order-dependent signal: each class moves from one prototype
vector to another over the clips of a video, and classes come in pairs that visit the same two
prototypes in opposite orders. The mean over time is therefore (nearly) the same for the two
classes of a pair, so only a model that sees the order separates them.

Frame counts follow the clip arithmetic of the store (s = 16, r = 8): an RGB video of
8 (K + 1) + extra frames has K clips; its flow sequence has one frame fewer, hence K - 1 clips
when extra == 0 and K clips otherwise. Both cases occur, so mid and late fusion meet streams
with different clip counts.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from reslstm import features as fs
from reslstm.fusion import STREAMS
from reslstm.sampling import num_clips

CLIP_LEN, CLIP_STRIDE = 16, 8
SPLIT_SIZES = {"train": 6, "val": 2, "test": 2}  # videos per class and split


@dataclass
class TinyStore:
    """What a test needs to know about the store it asked for."""

    root: Path
    feature_dim: int
    class_names: list[str]
    # {stream: {video_id: (K, d_f) float32}}, as written
    features: dict[str, dict[str, np.ndarray]] = field(default_factory=dict)
    labels: dict[str, int] = field(default_factory=dict)
    splits: dict[str, str] = field(default_factory=dict)

    def ids(self, split: str) -> list[str]:
        return sorted(v for v, s in self.splits.items() if s == split)


def _settings(stream: str, feature_dim: int) -> fs.StreamSettings:
    return fs.StreamSettings(
        extractor="synthetic", weights_id="random-init", feature_dim=feature_dim,
        clip_len=CLIP_LEN, clip_stride=CLIP_STRIDE, crops=1, input_size=112, resize_short=128,
        flow_method="tvl1" if stream == "flow" else None, code_version="test")


def _spans(k: int, clip_len: int, fps: float) -> dict:
    """The clip-span columns the writer records for k clips of a constant-rate video (a flow
    clip reads one RGB frame more)."""
    first = [i * CLIP_STRIDE for i in range(k)]
    last = [f + clip_len - 1 for f in first]
    return {"first_frame": first, "last_frame": last, "start_s": [f / fps for f in first],
            "end_s": [(f + 1) / fps for f in last]}


def _table(rows: list[dict], feature_dim: int) -> pa.Table:
    schema = fs.feature_schema(feature_dim)
    arrays = [fs.features_to_arrow([r["features"] for r in rows], feature_dim) if name == "features"
              else pa.array([r[name] for r in rows], schema.field(name).type)
              for name in schema.names]
    return pa.Table.from_arrays(arrays, schema=schema)


def make_feature_store(root: str | Path, *, num_classes: int = 4, feature_dim: int = 16,
                       split_sizes: dict[str, int] | None = None, noise: float = 0.3,
                       clips: tuple[int, int] = (4, 11), streams: tuple[str, ...] = ("rgb", "flow"),
                       parts: int = 2, seed: int = 0) -> TinyStore:
    """Write a store with ``num_classes`` classes (an even number) under ``root``.

    Each stream is written as ``parts`` part files (so Ray Data reads several blocks).
    """
    if num_classes % 2:
        raise ValueError("num_classes must be even: classes come in order-reversed pairs")
    rng = np.random.default_rng(seed)
    root = Path(root)
    sizes = split_sizes or SPLIT_SIZES
    names = [f"class_{c:02d}" for c in range(num_classes)]
    store = TinyStore(root=root, feature_dim=feature_dim, class_names=names)
    # Two prototypes per class pair and stream; class 2p goes a -> b, class 2p + 1 goes b -> a.
    protos = {s: 2.0 * rng.standard_normal((num_classes, feature_dim)).astype(np.float32)
              for s in STREAMS}
    rows: dict[str, list[dict]] = {s: [] for s in streams}
    for split, per_class in sizes.items():
        for c in range(num_classes):
            for i in range(per_class):
                vid = f"{names[c]}/v_{split}_{i:02d}"
                k = int(rng.integers(clips[0], clips[1] + 1))
                extra = 0 if i % 2 == 0 else int(rng.integers(1, CLIP_STRIDE))
                frames = CLIP_STRIDE * (k + 1) + extra
                store.labels[vid], store.splits[vid] = c, split
                for s in streams:
                    n_frames = frames if s == "rgb" else frames - 1
                    kv = num_clips(n_frames, CLIP_LEN, CLIP_STRIDE)
                    a, b = protos[s][c - c % 2], protos[s][c - c % 2 + 1]
                    if c % 2:
                        a, b = b, a
                    w = np.linspace(0.0, 1.0, kv, dtype=np.float32)[:, None]  # (K, 1)
                    x = (1 - w) * a + w * b + noise * rng.standard_normal((kv, feature_dim))
                    x = x.astype(np.float32)
                    store.features.setdefault(s, {})[vid] = x
                    rows[s].append(dict(video_id=vid, label=c, label_name=names[c], split=split,
                                        stream=s, num_frames=n_frames, fps=25.0, num_clips=kv,
                                        padded=False, warning=None, features=x,
                                        **_spans(kv, CLIP_LEN + (s == "flow"), 25.0)))
    for s in streams:
        order = rng.permutation(len(rows[s]))  # parts hold videos in no particular order
        for chunk in np.array_split(order, parts):
            fs.write_part(root / s, _table([rows[s][j] for j in chunk], feature_dim))
    fs.write_metadata(root, {s: _settings(s, feature_dim) for s in streams})
    return store
