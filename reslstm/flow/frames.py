"""The frames every flow method between consecutive frames takes, checked in one place.

``rgb_frames(frames, method)``: uint8 RGB frames (N, H, W, 3), a NumPy array or a tensor, as a
tensor on their device (an array without a copy), refused with the method's name unless there
is at least one pair. RAFT (``methods.RaftFlow``) and TV-L1 in PyTorch (``tvl1.TorchTVL1``)
start with it.
"""

from __future__ import annotations

import warnings

import numpy as np


def rgb_frames(frames, method: str):
    """uint8 RGB frames (N, H, W, 3) with N >= 2, an array or a tensor -> the tensor (N, H, W, 3).

    ``method`` names the flow in the error for fewer than 2 frames (e.g. "RAFT", "TV-L1")."""
    import torch

    if isinstance(frames, np.ndarray):
        with warnings.catch_warnings():
            # Frames that arrive zero-copy from Arrow are read-only; they are only read.
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            frames = torch.from_numpy(np.ascontiguousarray(frames))
    if not isinstance(frames, torch.Tensor):
        raise TypeError(f"frames must be a tensor or NumPy array, got {type(frames).__name__}")
    if frames.dtype != torch.uint8 or frames.ndim != 4 or frames.shape[-1] != 3:
        raise ValueError(f"expected uint8 RGB frames (N, H, W, 3), got {frames.dtype} "
                         f"{tuple(frames.shape)}")
    if len(frames) < 2:
        raise ValueError(f"{method} flow needs at least 2 frames (one pair), got {len(frames)}")
    return frames
