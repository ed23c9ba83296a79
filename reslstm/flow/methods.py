"""Optical flow between consecutive frames, and the I3D flow convention.

CPU methods (OpenCV): "tvl1" (TV-L1, the I3D/two-stream choice), "farneback" and "dis", made by
``make_flow_method``; ``compute_flow`` / ``iter_flow`` run one over a frame array or stream.
Device methods (``DEVICE_METHODS``, computed inside the feature actor, on its GPU when it has
one): "raft" (``RaftFlow``, torchvision RAFT small/large) and "tvl1-torch" (``reslstm.flow.tvl1``,
a PyTorch port of OpenCV's TV-L1 that gives OpenCV's flow to float noise, batched: all pairs
of a segment in one call). Every method returns float32 flow in pixels, (H, W, 2) with
channels (dx, dy): frame t at (y, x) moves to (y + dy, x + dx) in frame t + 1.
``make_flow(method)`` gives any of them as one callable over a frame array, and
``flow_clip_frames`` is the one flow step of extraction (flow, uint8 storage, padding), whatever
the method; for "tvl1-torch" the flow stays on the device, quantised there, and goes to the
extractor without a round trip through host memory.

"tvl1" always means OpenCV on the CPU, also on a cluster with GPUs: it never switches to
"tvl1-torch" by itself. A feature store records the method and refuses to resume with another,
so a method chosen by the hardware at hand would make a store started on CPU nodes refuse a
rerun on GPU nodes (or, recorded under one name, mix two implementations, which agree to float
noise only on OpenCV builds that round like OpenCV 5 with IPP and FMA). Ask for "tvl1-torch"
on GPU clusters; it runs on CPUs too, correctly but ~0.4x as fast as OpenCV per core. RAFT
needs a GPU unless explicitly allowed (``needs_gpu``).

The I3D convention is a separate, pure step: ``to_i3d_range`` clips to [-20, 20] px and scales
to [-1, 1]; ``quantize_flow`` / ``dequantize_flow`` store the same range as uint8 (128 + 255/40 f)
so flow travels and caches like an image, at a step of 40/255 px.
"""

from __future__ import annotations

import os
import sys
from typing import Callable, Iterable, Iterator

import cv2
import numpy as np

from reslstm.errors import ConfigError, DeviceUnavailable, ReslstmError

FlowFn = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (grey (H, W), grey (H, W)) -> (H, W, 2)

FLOW_BOUND = 20.0  # I3D clips flow to +-20 px
_Q_SCALE = 255.0 / (2 * FLOW_BOUND)  # uint8 steps per pixel of flow


# ---------------------------------------------------------------------------------------------
# CPU methods
# ---------------------------------------------------------------------------------------------

def _tvl1() -> FlowFn:
    # OpenCV's default TV-L1 parameters, as used for the I3D / two-stream flow (opencv-contrib).
    tvl1 = cv2.optflow.DualTVL1OpticalFlow_create()
    return lambda prev, nxt: tvl1.calc(prev, nxt, None)


def _farneback() -> FlowFn:
    # The parameters of OpenCV's dense-flow tutorial: a classic 3-level pyramid (scale 0.5),
    # 15 px averaging window, 3 iterations, poly_n=5 with its recommended poly_sigma=1.2.
    def calc(prev, nxt):
        return cv2.calcOpticalFlowFarneback(prev, nxt, None, pyr_scale=0.5, levels=3, winsize=15,
                                            iterations=3, poly_n=5, poly_sigma=1.2, flags=0)
    return calc


def _dis() -> FlowFn:
    # PRESET_MEDIUM: the most accurate of DIS's three presets, still far faster than TV-L1.
    dis = cv2.DISOpticalFlow_create(cv2.DISOPTICAL_FLOW_PRESET_MEDIUM)
    return lambda prev, nxt: dis.calc(prev, nxt, None)


FLOW_METHODS: dict[str, Callable[[], FlowFn]] = {"tvl1": _tvl1, "farneback": _farneback, "dis": _dis}


def make_flow_method(method: str) -> FlowFn:
    """A fresh flow function for ``method``: (grey uint8 (H, W), grey (H, W)) -> (H, W, 2)."""
    try:
        factory = FLOW_METHODS[method]
    except KeyError:
        raise ConfigError(f"unknown flow method {method!r}; choose one of "
                         f"{sorted(FLOW_METHODS)} (or a device method: make_flow)") from None
    return factory()


TVL1_TORCH_BATCH = 64  # pairs per batch on the device: ~6 GB at 256 x 455 (I3D's frames)


def _raft(device=None, **options):
    return RaftFlow(device=device, **options)


def _tvl1_torch(device=None, batch_size: int = TVL1_TORCH_BATCH, compile: bool = False,
                params=None):
    from reslstm.flow.tvl1 import TorchTVL1, TVL1Params

    # flow_tensor: the flow stays on the device (a float32 tensor), for flow_clip_frames to
    # quantise there and the extractor to take as it is.
    return TorchTVL1(params or TVL1Params(), device=device, batch_size=batch_size,
                     compile=compile).flow_tensor


# Computed inside the feature actor, on its device: name -> factory(device, **options).
DEVICE_FLOWS: dict[str, Callable] = {"tvl1-torch": _tvl1_torch, "raft": _raft}
DEVICE_METHODS = tuple(DEVICE_FLOWS)
METHODS = tuple(FLOW_METHODS) + DEVICE_METHODS
GPU_METHODS = ("raft",)  # refused without a GPU unless allowed: far too slow on CPUs
RAFT_SIZES = ("small", "large")  # torchvision's raft_small and raft_large


def runs_on_device(method: str) -> bool:
    """True for methods computed inside the feature actor (on its GPU), False for CPU ones."""
    if method not in METHODS:
        raise ConfigError(f"unknown flow method {method!r}; choose one of {', '.join(METHODS)}")
    return method in DEVICE_METHODS


def needs_gpu(method: str) -> bool:
    """True for methods a job refuses to run without a GPU unless told to (RAFT); "tvl1-torch"
    runs on CPUs too (slower than "tvl1"), so it is not one of them."""
    return runs_on_device(method) and method in GPU_METHODS


def tvl1_torch_id(params=None) -> str:
    """What a feature store records for "tvl1-torch": the name, plus the parameters that differ
    from OpenCV's defaults after a colon (``reslstm.flow.tvl1.params_id``), e.g. "tvl1-torch" or
    "tvl1-torch:nscales=3"."""
    from reslstm.flow.tvl1 import params_id

    extra = params_id(params) if params is not None else ""
    return "tvl1-torch" + (f":{extra}" if extra else "")


def make_flow(method: str, device=None, **options) -> Callable:
    """Any flow method as one callable: uint8 RGB frames (N, H, W, 3) -> float32 (N - 1, H, W,
    2) pixels, a NumPy array (CPU methods, RAFT) or a tensor on ``device`` ("tvl1-torch").
    ``device`` and ``options`` go to the device methods: RAFT's size, weights, allow_cpu,
    batch_size; tvl1-torch's batch_size (pairs per batch, ``TVL1_TORCH_BATCH``), compile,
    params (a ``reslstm.flow.tvl1.TVL1Params``)."""
    if runs_on_device(method):
        return DEVICE_FLOWS[method](device=device, **options)
    if options:
        raise ConfigError(f"flow method {method!r} takes no options, got {sorted(options)}")
    return lambda frames: compute_flow(frames, method)


class TooShortForFlow(ReslstmError, ValueError):
    kind = "too_short_for_flow"


def flow_clip_frames(rgb, num_real: int, clip_len: int, flow):
    """The flow step of extraction: quantised uint8 flow (n - 1, H, W, 2) of an RGB segment
    (n, H, W, 3) by ``flow`` (a ``make_flow`` callable): a NumPy array, or a uint8 tensor on
    the flow's device when the method returns a tensor ("tvl1-torch").

    ``num_real`` < n means the segment was padded (a video shorter than one flow clip): the
    flow is computed on the real frames and padded to ``clip_len`` flow frames
    (``clips.pad_frames``), as the RGB stream pads its frames.
    """
    from reslstm.video.clips import pad_frames

    if num_real < 2:
        raise TooShortForFlow(f"{num_real} frame(s): optical flow needs at least 2")
    return pad_frames(quantize_flow(flow(rgb[:num_real])), clip_len)


def _grey(frame: np.ndarray) -> np.ndarray:
    if frame.dtype != np.uint8 or frame.ndim != 3 or frame.shape[-1] != 3:
        raise ValueError(f"expected a uint8 RGB frame (H, W, 3), got {frame.dtype} {frame.shape}")
    return cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)


def iter_flow(frames: Iterable[np.ndarray], method: str) -> Iterator[np.ndarray]:
    """Flow between consecutive uint8 RGB frames (H, W, 3) -> float32 (H, W, 2) pixels, one per
    pair (N frames give N - 1 flows), keeping only the previous grey frame."""
    calc = make_flow_method(method)
    prev = None
    for frame in frames:
        grey = _grey(np.asarray(frame))
        if prev is not None:
            if grey.shape != prev.shape:
                raise ValueError(f"frame size changed from {prev.shape} to {grey.shape}")
            yield np.asarray(calc(prev, grey), dtype=np.float32)
        prev = grey


def compute_flow(frames: np.ndarray, method: str) -> np.ndarray:
    """(N, H, W, 3) uint8 RGB -> (N - 1, H, W, 2) float32 flow in pixels, channels (dx, dy)."""
    frames = np.asarray(frames)
    if frames.ndim != 4 or len(frames) == 0:
        raise ValueError(f"expected frames (N >= 1, H, W, 3), got shape {frames.shape}")
    flows = list(iter_flow(frames, method))
    if not flows:
        return np.zeros((0,) + frames.shape[1:3] + (2,), np.float32)
    return np.stack(flows)


# ---------------------------------------------------------------------------------------------
# I3D convention and uint8 storage
# ---------------------------------------------------------------------------------------------

def to_i3d_range(flow: np.ndarray) -> np.ndarray:
    """Flow in pixels -> float32 in [-1, 1]: clipped to [-20, 20] px, divided by 20."""
    return (np.clip(flow, -FLOW_BOUND, FLOW_BOUND) / FLOW_BOUND).astype(np.float32)


def quantize_flow(flow):
    """Flow in pixels -> uint8 128 + 255/40 f, rounded (half to even) and clipped (values
    beyond +-20 px saturate). Round trip error inside [-20, 20] is at most half a step, 20/255
    px. A NumPy array, or a torch tensor (quantised on its device, with the same float32
    arithmetic, so both give the same bytes)."""
    torch = sys.modules.get("torch")  # a tensor means torch is imported; no need to import it
    if torch is not None and isinstance(flow, torch.Tensor):
        q = torch.round(128.0 + _Q_SCALE * flow.to(torch.float32))
        return q.clamp_(0, 255).to(torch.uint8)
    q = np.rint(128.0 + _Q_SCALE * np.asarray(flow, dtype=np.float32))
    return np.clip(q, 0, 255).astype(np.uint8)


def dequantize_flow(q: np.ndarray) -> np.ndarray:
    """uint8 from ``quantize_flow`` -> float32 pixels (0 maps to -20.08, 255 to 19.92)."""
    return ((np.asarray(q, dtype=np.float32) - 128.0) / _Q_SCALE).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# GPU: RAFT
# ---------------------------------------------------------------------------------------------

def _resolve_device(device, allow_cpu: bool):
    import torch

    if device is None:
        device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise DeviceUnavailable(
            f"RAFT flow was asked to run on {device} but CUDA is not available on this machine. "
            "Run it on a GPU node, pass --allow-cpu-raft (allow_cpu=True) to run RAFT slowly on "
            f"the CPU, or pick a CPU flow method ({', '.join(sorted(FLOW_METHODS))}).")
    if device.type == "cpu" and not allow_cpu:
        raise DeviceUnavailable(
            "RAFT flow needs a CUDA GPU and none is available (or device='cpu' was given). Pass "
            "--allow-cpu-raft (allow_cpu=True) to run it slowly on the CPU, or pick a CPU flow "
            f"method ({', '.join(sorted(FLOW_METHODS))}).")
    return device


def raft_weights_id(size: str, weights: str | None) -> str:
    """What ``RaftFlow(size, weights).weights_id`` will be, without building RAFT: "random-init",
    "torchvision:Raft_<Size>_Weights.<MEMBER>" or the file's sha256. Raises ValueError for an
    unknown size or weights that are neither."""
    from torchvision.models import optical_flow as tv_flow

    if size not in RAFT_SIZES:
        raise ConfigError(f"unknown RAFT size {size!r}; choose one of {sorted(RAFT_SIZES)}")
    enum = {"small": tv_flow.Raft_Small_Weights, "large": tv_flow.Raft_Large_Weights}[size]
    if weights is None:
        return "random-init"
    if os.path.isfile(weights):
        from reslstm.extractors.base import file_sha256

        return file_sha256(weights)
    if weights in enum.__members__:
        return f"torchvision:{enum.__name__}.{weights}"
    raise ConfigError(f"RAFT weights {weights!r} are neither a file nor one of "
                     f"{list(enum.__members__)} for size {size!r}")


class RaftFlow:
    """torchvision RAFT between consecutive frames, batched on a device.

    size: "small" | "large". weights: None (random init: tests only), a torchvision enum name
    of ``Raft_Small_Weights`` / ``Raft_Large_Weights`` such as "C_T_V2" (loaded from torch hub's
    cache, downloaded there if missing and online), or a state-dict file (loaded with
    ``weights_only=True``, strict). ``weights_id`` records which: "random-init",
    "torchvision:Raft_Small_Weights.C_T_V2" or the file's sha256.
    Call with uint8 frames (N, H, W, 3) (array or tensor) -> float32 (N - 1, H, W, 2) pixels,
    channels (dx, dy) as compute_flow.
    """

    def __init__(self, size: str = "small", weights: str | None = None, device=None,
                 allow_cpu: bool = False, batch_size: int = 8, num_flow_updates: int = 12):
        import torch
        from torchvision.models import optical_flow as tv_flow

        builders = {"small": (tv_flow.raft_small, tv_flow.Raft_Small_Weights),
                    "large": (tv_flow.raft_large, tv_flow.Raft_Large_Weights)}
        self.weights_id = raft_weights_id(size, weights)  # validates size and weights
        self.device = _resolve_device(device, allow_cpu)
        build, enum = builders[size]
        if weights is None:
            model = build(weights=None)
        elif os.path.isfile(weights):
            model = build(weights=None)
            state = torch.load(weights, map_location="cpu", weights_only=True)
            model.load_state_dict(state, strict=True)
        else:
            try:
                model = build(weights=enum[weights])
            except Exception as e:  # no cache and no network, or a damaged download
                raise RuntimeError(
                    f"could not load RAFT weights {enum.__name__}.{weights} from torch hub's cache "
                    f"({torch.hub.get_dir()}) nor download them ({e}). Fetch "
                    f"{enum[weights].url} on a connected machine and pass the file path.") from e
        self.model = model.eval().to(self.device)
        self.size = size
        self.batch_size = batch_size
        self.num_flow_updates = num_flow_updates

    def _prepare(self, frames):
        """uint8 (n, H, W, 3) tensor on the CPU -> float (n, 3, H8, W8) in [-1, 1] on the device."""
        import torch

        x = frames.to(self.device, non_blocking=True).permute(0, 3, 1, 2).float()  # (n, 3, H, W)
        x = x / 127.5 - 1.0  # RAFT's input range [-1, 1]
        h, w = x.shape[-2:]
        # RAFT works at 1/8 resolution with a 4-level correlation pyramid: pad (replicating
        # edges) to multiples of 8 and at least 128 px, and crop the flow back afterwards.
        ph, pw = max(-h % 8, 128 - h), max(-w % 8, 128 - w)
        if ph or pw:
            x = torch.nn.functional.pad(x, (0, pw, 0, ph), mode="replicate")
        return x

    def __call__(self, frames) -> np.ndarray:
        """uint8 frames (N, H, W, 3), array or tensor -> float32 (N - 1, H, W, 2) pixels."""
        import torch

        from reslstm.flow.frames import rgb_frames

        frames = rgb_frames(frames, "RAFT")
        n, h, w = frames.shape[:3]
        out = []
        with torch.inference_mode():
            # Frames travel to the device as uint8, one batch (+1 frame for the last pair) at a
            # time, so device memory holds a batch, not the video.
            for i in range(0, n - 1, self.batch_size):
                j = min(i + self.batch_size, n - 1)
                x = self._prepare(frames[i:j + 1])  # (B + 1, 3, H8, W8)
                preds = self.model(x[:-1], x[1:], num_flow_updates=self.num_flow_updates)
                flow = preds[-1][:, :, :h, :w]  # (B, 2, H, W), channel 0 = dx, 1 = dy
                out.append(flow.permute(0, 2, 3, 1).float().cpu())
        return torch.cat(out).numpy().astype(np.float32, copy=False)
