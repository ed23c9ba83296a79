"""uint8 RGB -> uint8 grey exactly as ``cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)``, on any
device, so frames travel to the GPU once, as uint8 RGB, and become the grey levels OpenCV's
TV-L1 would see there.
"""

from __future__ import annotations

import numpy as np
import torch

# cv2.cvtColor(RGB2GRAY) on uint8: fixed point with 15 fractional bits, rounded (OpenCV's
# R2Y/G2Y/B2Y = round(0.299, 0.587, 0.114 * 2^15)); checked equal on all 2^24 RGB values.
_GREY_COEFFS = (9798, 19235, 3735)
_GREY_SHIFT = 15


def rgb_to_grey(frames: torch.Tensor) -> torch.Tensor:
    """uint8 RGB (..., H, W, 3) (tensor or array) -> uint8 grey (..., H, W), equal to
    cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY) bit for bit, on the frames' device."""
    if not isinstance(frames, torch.Tensor):
        frames = torch.from_numpy(np.ascontiguousarray(frames))
    if frames.dtype != torch.uint8 or frames.ndim < 3 or frames.shape[-1] != 3:
        raise ValueError(f"expected uint8 RGB frames (..., H, W, 3), got {frames.dtype} "
                         f"{tuple(frames.shape)}")
    x = frames.to(torch.int32)
    r, g, b = x.unbind(-1)
    cr, cg, cb = _GREY_COEFFS
    grey = (r * cr + g * cg + b * cb + (1 << (_GREY_SHIFT - 1))) >> _GREY_SHIFT
    return grey.to(torch.uint8)
