"""The crops an extractor sees: the centre crop and the 10 crops of eq. (5).

Crops are slices of arrays or tensors whose last two dimensions are (H, W): the 4 corners and
the centre, and their horizontal mirrors. ``runner.clip_features`` cuts them on the device.
"""

from __future__ import annotations

import numpy as np


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
