"""The entry points: ``tvl1_flow`` on batches of grey pairs, and ``TorchTVL1`` on a sequence
of uint8 RGB frames (what extraction calls, through ``reslstm.flow.methods.make_flow("tvl1-torch")``).

Both check their inputs, run under ``torch.inference_mode`` on the inputs' (or the given)
device and share one cached ``solver.Solver`` per parameter set.
"""

from __future__ import annotations

import numpy as np
import torch

from reslstm.errors import DeviceUnavailable
from reslstm.flow.frames import rgb_frames

from .grey import rgb_to_grey
from .params import MIN_SIDE, TVL1Params, is_int, pyramid_sizes
from .resize import build_pyramid
from .solver import get_solver


def _as_grey_batch(x, name: str) -> torch.Tensor:
    if isinstance(x, np.ndarray):
        x = torch.from_numpy(np.ascontiguousarray(x))
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a tensor or NumPy array, got {type(x).__name__}")
    if x.ndim != 3:
        raise ValueError(f"{name} must be grey frames (B, H, W), got shape {tuple(x.shape)}")
    if x.dtype != torch.uint8 and not x.is_floating_point():
        raise ValueError(f"{name} must be uint8 or float grey levels (0..255), got {x.dtype}")
    return x


def _check_sync_every(sync_every) -> None:
    if sync_every is not None and (not is_int(sync_every) or sync_every < 1):
        raise ValueError(f"sync_every must be an integer >= 1, got {sync_every!r}")


def tvl1_flow(prev, nxt, params: TVL1Params = TVL1Params(), *, compile: bool = False,
              sync_every: int | None = None) -> torch.Tensor:
    """TV-L1 flow from ``prev`` to ``nxt``, like cv2.optflow.DualTVL1OpticalFlow_create(...)
    .calc(prev, nxt, None) for each pair (a fresh OpenCV object per frame size).

    prev, nxt: grey (B, H, W) tensors (or arrays), uint8 or float grey levels in 0..255 (unlike
    OpenCV, float input is not multiplied by 255), H, W >= 3; a single pair may be given as
    (H, W). Runs on the device of ``prev``. Returns float32 (B, H, W, 2) (or (H, W, 2)) pixels,
    channels (dx, dy). Each pair stops on its own error. ``compile``: torch.compile the
    per-iteration step and the median (same numerics; the first calls pay the compilation).
    ``sync_every``: iterations between the host's looks at the stop mask (default 1 on CPU,
    5 on CUDA; the flow does not depend on it, only the work wasted on stopped pairs does).
    """
    if not isinstance(params, TVL1Params):
        raise TypeError(f"params must be a TVL1Params, got {type(params).__name__}")
    single = getattr(prev, "ndim", None) == 2
    if single:
        prev, nxt = prev[None], nxt[None]
    prev = _as_grey_batch(prev, "prev")
    nxt = _as_grey_batch(nxt, "nxt")
    if prev.shape != nxt.shape:
        raise ValueError(f"prev and nxt differ in shape: {tuple(prev.shape)} vs {tuple(nxt.shape)}")
    b, h, w = prev.shape
    if h < MIN_SIDE or w < MIN_SIDE:
        raise ValueError(f"frames must be at least {MIN_SIDE}x{MIN_SIDE} pixels, got {h}x{w}")
    _check_sync_every(sync_every)
    nxt = nxt.to(prev.device)
    if b == 0:
        return torch.zeros((0, h, w, 2), dtype=torch.float32, device=prev.device)
    i0, i1 = prev.float(), nxt.float()
    if prev.is_floating_point() and not (bool(torch.isfinite(i0).all())
                                         and bool(torch.isfinite(i1).all())):
        raise ValueError("prev / nxt contain NaN or infinite values")
    solver = get_solver(params, compile, sync_every)
    sizes = pyramid_sizes(h, w, params)
    with torch.inference_mode():
        flow = solver.flow(build_pyramid(i0, sizes, params.scale_step),
                           build_pyramid(i1, sizes, params.scale_step))
    return flow[0] if single else flow


class TorchTVL1:
    """OpenCV-equivalent TV-L1 between consecutive uint8 RGB frames, batched on a device.

    params: TVL1Params (OpenCV's defaults). device: None (CUDA if available, else CPU), or a
    torch device. batch_size: pairs per batch; device memory holds one batch, about 40 MB per
    224x224 pair at the peak (the warp's double-precision temporaries; measured on the CPU), so
    ~10 GB for 256 pairs. compile: torch.compile the per-iteration step and the median (the
    first calls pay the compilation; the flow is the same). sync_every: see ``tvl1_flow``.
    On a CPU, many small tensor operations make one process per core with
    torch.set_num_threads(1) the efficient layout (as for OpenCV's TV-L1).

    Call with uint8 RGB frames (N, H, W, 3) (array or tensor; N >= 2) -> float32 NumPy
    (N - 1, H, W, 2) pixels, channels (dx, dy) as ``reslstm.flow.methods.compute_flow``; ``flow_tensor``
    returns the same as a float32 tensor on the device. Frames go to the device as uint8, each
    frame once (one batch of frames at a time; frames already there are not copied), and
    are converted to grey there exactly as cv2.cvtColor(RGB2GRAY); each frame's pyramid is
    built once, the last one of a batch carried over to the next. For the I3D range or uint8
    storage apply ``reslstm.flow.methods.to_i3d_range`` / ``quantize_flow`` to the result
    (``quantize_flow`` also takes the tensor, on its device).
    """

    def __init__(self, params: TVL1Params = TVL1Params(), device=None, batch_size: int = 32,
                 compile: bool = False, sync_every: int | None = None):
        if not isinstance(params, TVL1Params):
            raise TypeError(f"params must be a TVL1Params, got {type(params).__name__}")
        if not is_int(batch_size) or batch_size < 1:
            raise ValueError(f"batch_size must be an integer >= 1, got {batch_size!r}")
        _check_sync_every(sync_every)
        if device is None:
            device = "cuda" if torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        if self.device.type == "cuda" and not torch.cuda.is_available():
            raise DeviceUnavailable(f"TorchTVL1 was asked to run on {self.device} but CUDA is not "
                                    "available; pass device='cpu' (slow) or run on a GPU node")
        self.params = params
        self.batch_size = int(batch_size)
        self.compile = bool(compile)
        self.sync_every = sync_every
        self._solver = get_solver(params, self.compile, sync_every)

    def _check(self, frames) -> torch.Tensor:
        frames = rgb_frames(frames, "TV-L1")
        h, w = frames.shape[1:3]
        if h < MIN_SIDE or w < MIN_SIDE:
            raise ValueError(f"frames must be at least {MIN_SIDE}x{MIN_SIDE} pixels, got {h}x{w}")
        return frames

    def flow_tensor(self, frames) -> torch.Tensor:
        """uint8 RGB (N, H, W, 3) -> float32 (N - 1, H, W, 2) tensor on the device."""
        frames = self._check(frames)
        n, h, w = frames.shape[:3]
        step = self.params.scale_step
        sizes = pyramid_sizes(h, w, self.params)
        out = torch.empty((n - 1, h, w, 2), dtype=torch.float32, device=self.device)
        carry = None  # the pyramid of the previous batch's last frame, (1, h_s, w_s) per level
        with torch.inference_mode():
            for i in range(0, n - 1, self.batch_size):
                j = min(i + self.batch_size, n - 1)
                first = i if carry is None else i + 1  # frame i is on the device already
                chunk = frames[first:j + 1].to(self.device, non_blocking=True)  # (k, H, W, 3)
                pyr = build_pyramid(rgb_to_grey(chunk).float(), sizes, step)
                if carry is not None:
                    pyr = [torch.cat([c, lv]) for c, lv in zip(carry, pyr)]  # frames i..j
                out[i:j] = self._solver.flow([lv[:-1] for lv in pyr], [lv[1:] for lv in pyr])
                carry = [lv[-1:] for lv in pyr]
        return out

    def __call__(self, frames) -> np.ndarray:
        """uint8 RGB (N, H, W, 3) -> float32 NumPy (N - 1, H, W, 2) pixels."""
        return self.flow_tensor(frames).cpu().numpy()
