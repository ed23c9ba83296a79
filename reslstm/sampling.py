"""Clip windows over a video and the temporal sampling sigma(t) of the paper.

A video of l_v frames is cut into clips of s frames starting every r frames (paper: s = 16,
r = 8), which gives K_v = floor((l_v - s) / r) + 1 clips. A video shorter than one clip still
gives one clip (the decoder pads it by repeating its last frame, ``clips.pad_frames``).

From the K_v clip features, T are taken for the Res-LSTM:
x_t^0 = a_{sigma(t)}, sigma(t) = 1 + floor((t - 1) * (K_v - 1) / (T - 1)) for t = 1..T.
Indices here are 0-based: ``temporal_sample`` returns sigma(t) - 1. ``sample_video`` and
``sample_pair`` take the T inputs of one video (both streams at the same clips).
"""

from __future__ import annotations

import numbers

import numpy as np


def _check_int(value, name: str, minimum: int) -> int:
    """``value`` as a Python int, or a ValueError/TypeError saying what is wrong with it."""
    # bool is an Integral too, but True frames is always a bug in the caller.
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {value!r} ({type(value).__name__})")
    value = int(value)
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def num_clips(num_frames: int, clip_len: int = 16, stride: int = 8) -> int:
    """Number of clips K_v = floor((l_v - s) / r) + 1 of a video of ``num_frames`` frames.

    A video with 0 < l_v < s frames gives one (padded) clip. A video with no frames has no
    clip at all, which is an error: the caller decoded nothing and should report the video.
    """
    clip_len = _check_int(clip_len, "clip_len", 1)
    stride = _check_int(stride, "stride", 1)
    if isinstance(num_frames, bool) or not isinstance(num_frames, numbers.Integral):
        raise TypeError(f"num_frames must be an integer, got {num_frames!r}")
    if num_frames <= 0:
        raise ValueError(
            f"a video with {int(num_frames)} frames has no clips; "
            "check that the video decodes (at least one frame is needed)"
        )
    num_frames = int(num_frames)
    if num_frames < clip_len:
        return 1
    return (num_frames - clip_len) // stride + 1


def clip_starts(num_frames: int, clip_len: int = 16, stride: int = 8) -> np.ndarray:
    """0-based first frame of every clip: ``[0, r, 2r, ..., (K_v - 1) r]``, int64 (K_v,).

    Each clip covers frames ``start .. start + s - 1``; the last one ends at or before frame
    l_v - 1, except for a video shorter than s, whose single clip starts at 0 and is padded.
    """
    k = num_clips(num_frames, clip_len, stride)
    return np.arange(k, dtype=np.int64) * int(stride)


def temporal_sample(num_clips: int, T: int) -> np.ndarray:
    """0-based indices sigma(t) - 1 of the T clips fed to the Res-LSTM, int64 (T,).

    sigma(t) - 1 = floor((t - 1) * (K_v - 1) / (T - 1)), t = 1..T: T indices spread evenly
    from the first clip to the last one. When K_v < T clips repeat; when K_v == T it is the
    identity; T = 1 takes the first clip (the formula's 0/0 is defined as 0 here).
    """
    k = _check_int(num_clips, "num_clips (K_v)", 1)
    T = _check_int(T, "T", 1)
    if T == 1:
        return np.zeros(1, dtype=np.int64)
    t = np.arange(T, dtype=np.int64)  # t - 1 for t = 1..T
    # Integer arithmetic: floor division of non-negative ints is exact, unlike float floor.
    return (t * (k - 1)) // (T - 1)


def sample_video(clips: np.ndarray, T: int) -> np.ndarray:
    """(K_v, d_f) clip features -> (T, d_f): rows sigma(1..T) (0-based ``temporal_sample``)."""
    return clips[temporal_sample(len(clips), T)]


def sample_pair(rgb: np.ndarray, flow: np.ndarray, T: int) -> tuple[np.ndarray, np.ndarray]:
    """Both streams of one video -> two (T, d_f) arrays taken at the same clips, after
    truncating the two (K, d_f) sequences to the shorter one."""
    from reslstm.fusion import align_clips

    rgb, flow = align_clips(rgb, flow)
    index = temporal_sample(len(rgb), T)
    return rgb[index], flow[index]
