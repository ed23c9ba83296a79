"""Clip geometry over frame sequences: padding, clip windows and streaming segments.

A sequence of N frames (RGB (H, W, 3) or flow (H, W, 2)) holds K = (N - s) // r + 1 clips of s
frames starting every r frames (``sampling.num_clips``); a sequence shorter than one clip gives
one clip, padded by repeating its last frame (``pad_frames``). ``clip_view`` cuts the clips of a
frame array without copying; ``iter_segments`` streams any frame sequence into segments of whole
clips with bounded memory, which is how extraction handles videos of any length. Each clip is
seen through one of ``CROPS``: the centre crop, or the 10 crops of eq. (5) (4 corners and the
centre, and their mirrors; cut by ``reslstm.extractors.crops``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator

import numpy as np

CROPS = (1, 10)  # crops per clip: the centre crop, or the 10 crops of eq. (5)


def pad_frames(frames, clip_len: int):
    """Pad ``frames`` (N, ...) with 0 < N < clip_len to (clip_len, ...) by repeating the last
    frame; longer sequences come back unchanged. NumPy arrays or torch tensors (any device).

    The one place that pads: videos shorter than one clip give exactly one, padded clip
    (``sampling.num_clips``), in decoding, in optical flow and in the extractors alike.
    """
    n = len(frames)
    if n == 0:
        raise ValueError("cannot pad an empty frame array")
    if n >= clip_len:
        return frames
    if isinstance(frames, np.ndarray):
        return np.concatenate([frames, np.repeat(frames[-1:], clip_len - n, axis=0)], axis=0)
    import torch

    return torch.cat([frames, frames[-1:].expand(clip_len - n, *frames.shape[1:])])


def clip_view(frames: np.ndarray, clip_len: int, stride: int) -> np.ndarray:
    """Every clip of ``clip_len`` frames starting every ``stride`` frames, as a view.

    frames: (N, H, W, C) with N >= clip_len. Returns (K, clip_len, H, W, C) with
    K = (N - clip_len) // stride + 1, sharing memory with ``frames`` (no copy).
    """
    n = len(frames)
    if n < clip_len:
        raise ValueError(f"{n} frames are fewer than one clip of {clip_len}; pad_frames first")
    windows = np.lib.stride_tricks.sliding_window_view(frames, clip_len, axis=0)  # (N-s+1, H, W, C, s)
    windows = np.moveaxis(windows, -1, 1)  # (N-s+1, s, H, W, C)
    return windows[::stride]


@dataclass
class Segment:
    """A run of whole clips cut from a longer frame sequence.

    ``frames`` (n, H, W, C) holds exactly the frames of clips ``first_clip`` ..
    ``first_clip + num_clips - 1`` (clip k starts at frame k * stride of the whole sequence);
    ``clip_view(frames, clip_len, stride)`` gives them. ``padded``: the sequence was shorter than
    one clip and ``frames`` repeats its last frame up to clip_len. ``total_frames`` (frames in the
    whole sequence) is set on the last segment only.
    """

    first_clip: int
    frames: np.ndarray
    num_clips: int
    is_last: bool
    padded: bool = False
    total_frames: int | None = None


def iter_segments(frames: Iterable[np.ndarray], clip_len: int, stride: int,
                  clips_per_segment: int) -> Iterator[Segment]:
    """Stream frames (RGB (H, W, 3) or flow (H, W, 2)) into segments of at most
    ``clips_per_segment`` (C) clips of ``clip_len`` (s) frames every ``stride`` (r) frames.

    Segment j covers clips [j*C, min((j+1)*C, K)), K = (N - s) // r + 1, and holds frames
    [j*C*r, last_clip*r + s): consecutive segments overlap by s - r frames. Whether a full
    segment is the last is known only once the next clip is complete, so one segment waits for
    up to r more frames: memory is one segment plus s frames. 0 < N < s gives one padded
    segment with one clip; N = 0 raises ValueError.
    """
    for name, v in (("clip_len", clip_len), ("stride", stride), ("clips_per_segment", clips_per_segment)):
        if int(v) != v or v < 1:
            raise ValueError(f"{name} must be a positive integer, got {v!r}")
    seg_len = (clips_per_segment - 1) * stride + clip_len  # frames of a full segment
    hop = clips_per_segment * stride  # start of segment j+1 relative to segment j
    cur = nxt = None  # frames of segment j, and of segment j+1 once it has started
    pos = 0  # frames seen since the start of segment j (skipped gap frames included)
    first_clip = total = 0
    for frame in frames:
        frame = np.asarray(frame)
        if cur is None:
            cur = np.empty((seg_len,) + frame.shape, frame.dtype)
        elif frame.shape != cur.shape[1:]:
            raise ValueError(f"frame {total} has shape {frame.shape}, earlier frames "
                             f"{cur.shape[1:]}: every frame of a sequence must have one shape")
        if pos < seg_len:
            cur[pos] = frame
        if pos >= hop:
            if nxt is None:
                # Frames of segment j+1 already seen (the overlap when j+1 starts at most
                # s frames after j) are still in cur.
                nxt = np.empty_like(cur)
                nxt[:pos - hop] = cur[hop:pos]
            nxt[pos - hop] = frame
        pos += 1
        total += 1
        if pos == hop + clip_len:  # clip (j+1)*C is complete: segment j is not the last
            yield Segment(first_clip, cur, clips_per_segment, is_last=False)
            cur, nxt = nxt, None
            first_clip += clips_per_segment
            pos -= hop
    if total == 0:
        raise ValueError("no frames: an empty sequence has no clips")
    if pos < clip_len:  # only possible for the first segment: the sequence is shorter than a clip
        yield Segment(0, pad_frames(cur[:pos], clip_len), 1, is_last=True, padded=True,
                      total_frames=total)
        return
    k = min(clips_per_segment, (pos - clip_len) // stride + 1)
    yield Segment(first_clip, cur[:(k - 1) * stride + clip_len], k, is_last=True,
                  total_frames=total)
