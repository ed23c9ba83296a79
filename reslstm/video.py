"""Video decoding with PyAV, clip views and crops.

Decoding (``iter_frames``, ``read_frames``, ``probe``) streams uint8 RGB frames resized in the
same swscale pass as the colour conversion. Clip views cut the clips of ``sampling.clip_starts``
out of a frame array without copying; the crop helpers cut the centre crop and the 10 crops of
eq. (5) (4 corners + centre, and their horizontal mirrors) as slices of arrays or tensors whose
last two dimensions are (H, W).
"""

from __future__ import annotations

import numpy as np


# ---------------------------------------------------------------------------------------------
# Clip views
# ---------------------------------------------------------------------------------------------

def pad_frames(frames: np.ndarray, clip_len: int) -> np.ndarray:
    """Pad ``frames`` (N, ...) with N < clip_len to (clip_len, ...) by repeating the last frame.

    Used for videos shorter than one clip (they give exactly one, padded clip). Copies.
    """
    n = len(frames)
    if n == 0:
        raise ValueError("cannot pad an empty frame array")
    if n >= clip_len:
        return frames
    pad = np.repeat(frames[-1:], clip_len - n, axis=0)
    return np.concatenate([frames, pad], axis=0)


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


# ---------------------------------------------------------------------------------------------
# Crops: arrays or tensors laid out (..., H, W)
# ---------------------------------------------------------------------------------------------

def crop_corners(height: int, width: int, size: int) -> list[tuple[int, int]]:
    """Top-left (y, x) of the 5 crops in the order top-left, top-right, bottom-left,
    bottom-right, centre (the centre rounded as torchvision does)."""
    if size > height or size > width:
        raise ValueError(f"crop size {size} is larger than the frame ({height}x{width})")
    cy = int(round((height - size) / 2.0))
    cx = int(round((width - size) / 2.0))
    return [(0, 0), (0, width - size), (height - size, 0), (height - size, width - size), (cy, cx)]


def _flip_w(x):
    # numpy: a negative-stride view; torch: flip copies (torch has no negative strides).
    return x[..., ::-1] if isinstance(x, np.ndarray) else x.flip(-1)


def center_crop(x, size: int):
    """The centre ``size`` x ``size`` crop of ``x`` (..., H, W): a view for arrays and tensors."""
    y, x0 = crop_corners(x.shape[-2], x.shape[-1], size)[4]
    return x[..., y:y + size, x0:x0 + size]


def ten_crop(x, size: int):
    """The 10 crops of eq. (5) stacked on a new leading axis: (10, ..., size, size).

    Order: top-left, top-right, bottom-left, bottom-right, centre, then the same five
    mirrored horizontally. Works on numpy arrays and torch tensors (on any device).
    """
    crops = [x[..., y:y + size, x0:x0 + size] for y, x0 in crop_corners(x.shape[-2], x.shape[-1], size)]
    crops += [_flip_w(c) for c in crops]
    if isinstance(x, np.ndarray):
        return np.stack(crops)
    import torch

    return torch.stack(crops)
