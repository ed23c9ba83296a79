"""``clip_features``: every clip of a frame sequence through an extractor, crops averaged (eq. 5);
``clip_features_many``: the clips of several sequences sharing the forward passes.

The uint8 frames go to the device once. Clips are a strided view of them there (clip k starts
at frame k * stride, K = (n - clip_len) // stride + 1); crops are slices of that view; only one
batch of clips is ever normalised to float, so memory is bounded by ``batch_size`` x crops
model inputs, whatever the video length.
"""

from __future__ import annotations

import contextlib
import warnings

import numpy as np
import torch

from reslstm.video.clips import CROPS, pad_frames

from .base import Extractor
from .crops import center_crop, ten_crop
from .registry import extractor_info


def default_device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def autocast_for(device: torch.device, enabled: bool = True):
    """bf16 autocast on CUDA (fp16 where bf16 is unsupported); nothing (fp32) elsewhere."""
    if not enabled or device.type != "cuda":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.autocast(device_type="cuda", dtype=dtype)


def _check_frames(extractor: Extractor, frames, clip_len: int, stride: int, crops: int, batch_size: int) -> None:
    if crops not in CROPS:
        raise ValueError(f"crops must be one of {CROPS} (centre crop, or the 10 crops of eq. 5), got {crops}")
    if stride < 1 or batch_size < 1:
        raise ValueError(f"stride and batch_size must be >= 1, got stride={stride}, batch_size={batch_size}")
    extractor_info(extractor.name).check_clip_len(clip_len)
    if frames.ndim != 4 or frames.dtype not in (np.uint8, torch.uint8):
        raise ValueError(f"frames must be uint8 (n, H, W, C), got {frames.dtype} {tuple(frames.shape)}")
    n, height, width, channels = frames.shape
    if n == 0:
        raise ValueError("no frames: a video needs at least one frame to give a clip")
    if channels != extractor.in_channels:
        raise ValueError(
            f"{extractor.name} ({extractor.stream}) wants {extractor.in_channels}-channel frames, got {channels}"
        )
    if min(height, width) < extractor.input_size:
        raise ValueError(
            f"frames of {height}x{width} are smaller than {extractor.name}'s {extractor.input_size} crop; "
            f"decode them at short side {extractor.resize_short}"
        )


def clip_features(
    extractor: Extractor,
    frames,
    clip_len: int | None = None,
    stride: int | None = None,
    crops: int = 1,
    batch_size: int = 8,
    device=None,
    amp: bool = True,
) -> np.ndarray:
    """Features of every clip: uint8 frames (n, H, W, C) -> float32 (K, feature_dim).

    frames: RGB (C=3) or quantised flow (C=2), numpy or torch, already decoded at the
    extractor's ``resize_short``. A sequence shorter than one clip is padded by repeating its
    last frame (one clip, as ``sampling.num_clips`` counts it). crops: 1 = centre crop of
    ``input_size``, 10 = the 10 crops of eq. (5), whose features are averaged per clip.
    batch_size: clips per forward pass (each with all its crops). The extractor is moved to
    ``device`` (default: CUDA when present) and run under inference_mode, with bf16 autocast
    on CUDA when ``amp``.
    """
    return clip_features_many(extractor, [frames], clip_len, stride, crops, batch_size, device,
                              amp)[0]


def clip_features_many(
    extractor: Extractor,
    sequences,
    clip_len: int | None = None,
    stride: int | None = None,
    crops: int = 1,
    batch_size: int = 8,
    device=None,
    amp: bool = True,
) -> list[np.ndarray]:
    """``clip_features`` of several frame sequences at once: their clips, in order, share the
    forward passes (batch_size clips each), so many short videos fill a GPU's batches. One
    sequence gives exactly ``clip_features``' passes; several give the same features up to
    the floating-point rounding of a different batch (the sequences may differ in size: every
    clip is cropped to ``input_size`` first)."""
    clip_len = extractor.clip_len if clip_len is None else int(clip_len)
    stride = max(clip_len // 2, 1) if stride is None else int(stride)
    for frames in sequences:
        _check_frames(extractor, frames, clip_len, stride, crops, batch_size)
    device = default_device() if device is None else torch.device(device)
    extractor.to(device).eval()

    with torch.inference_mode():
        clips = [_clips(frames, clip_len, stride, device) for frames in sequences]
        outs = [torch.empty(c.shape[0], extractor.feature_dim, dtype=torch.float32, device=device)
                for c in clips]
        for spans in _batches([c.shape[0] for c in clips], batch_size):
            parts = [_crop_views(clips[i][a:b], extractor.input_size, crops) for i, a, b in spans]
            views = parts[0] if len(parts) == 1 else torch.cat(parts, dim=1)  # (crops, b, s, size, size, C)
            b = views.shape[1]
            inputs = extractor.normalize(views.flatten(0, 1))  # (crops * b, C, s, size, size)
            if crops == 10 and extractor.stream == "flow":
                # A mirrored flow field points the other way in x: negate dx of the 5 mirrors
                # (as TSN and I3D do), or their features would average left and right motion.
                inputs.view(crops, b, *inputs.shape[1:])[5:, :, 0].neg_()
            with autocast_for(device, amp):
                feats = extractor(inputs)  # (crops * b, D)
            feats = feats.float().view(crops, b, -1).mean(dim=0)  # eq. (5)
            done = 0
            for i, a, b_ in spans:
                outs[i][a:b_] = feats[done:done + b_ - a]
                done += b_ - a
        return [out.cpu().numpy() for out in outs]


def _clips(frames, clip_len: int, stride: int, device: torch.device) -> torch.Tensor:
    """The clips of one sequence on ``device``: a (K, s, C, H, W) view of its uint8 frames."""
    if isinstance(frames, np.ndarray):
        with warnings.catch_warnings():
            # Frames that arrive zero-copy from Arrow are read-only; they are only read.
            warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
            frames = torch.from_numpy(np.ascontiguousarray(frames))
    x = frames.to(device)  # (n, H, W, C) uint8, the only host -> device copy
    x = pad_frames(x, clip_len)  # a sequence shorter than one clip: one padded clip
    return x.unfold(0, clip_len, stride).permute(0, 4, 3, 1, 2)  # crop helpers cut (..., H, W)


def _crop_views(chunk: torch.Tensor, size: int, crops: int) -> torch.Tensor:
    """(b, s, C, H, W) clips -> (crops, b, s, size, size, C) uint8 crops."""
    views = center_crop(chunk, size).unsqueeze(0) if crops == 1 else ten_crop(chunk, size)
    return views.permute(0, 1, 2, 4, 5, 3)


def _batches(counts: list[int], batch_size: int):
    """Clip spans [(sequence, start, stop)] of at most ``batch_size`` clips in all, in order:
    one sequence is cut at multiples of batch_size, as a loop over its clips would."""
    spans, room = [], batch_size
    for i, count in enumerate(counts):
        start = 0
        while start < count:
            stop = min(count, start + room)
            spans.append((i, start, stop))
            room -= stop - start
            start = stop
            if room == 0:
                yield spans
                spans, room = [], batch_size
    if spans:
        yield spans
