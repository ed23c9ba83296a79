"""The base every clip extractor shares: declared input geometry, normalisation, weights.

A model subclass builds its layers, sets the class attributes below and implements one
``forward(x (B, C, s, H, W) float) -> (B, feature_dim)``. The base owns everything else:

- ``normalize``: uint8 clips (B, s, H, W, C) -> float (B, C, s, H, W) on the clips' device.
  RGB: ``(x * pixel_scale - mean) / std`` per channel, in the model's channel order (C3D wants
  BGR). Flow arrives as the uint8 quantisation of ``reslstm.flow.methods.quantize_flow``
  (q = 128 + f * 255/40); it is dequantised here with the same formula as
  ``flow.dequantize_flow`` ((q - 128) * 40/255 pixels), clipped to [-20, 20] and scaled to
  [-flow_range, flow_range] (I3D convention: flow_range = 1).
- weights: ``load_weights_file`` reads a checkpoint with ``torch.load(weights_only=True)``,
  accepts a plain state_dict or one wrapped under ``"state_dict"`` or ``"model"`` (and strips a
  ``"module."`` prefix left by DataParallel), matches keys and shapes strictly against
  ``weights_module()`` and raises ``WeightsError`` naming the file, the missing, unexpected and
  mis-shaped keys and the layout that was expected. ``weights_id`` becomes the file's sha256.
- flow from RGB: a flow extractor handed an RGB checkpoint (3 input channels at
  ``first_conv_key``) gets that kernel averaged over its input channels and copied into both
  flow channels; ``flow_pretrained`` stays False and the weights id says ``+rgb-inflated-to-flow``.
- random init: ``seeded_init(seed)`` builds layers from a private CPU generator state, so the
  same seed gives the same weights on every machine and the caller's RNG state is untouched.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch
from torch import nn

from reslstm.errors import ConfigError, ReslstmError
from reslstm.fusion import STREAMS

RANDOM_INIT = "random-init"
INFLATED_SUFFIX = "+rgb-inflated-to-flow"
# flow.quantize_flow maps [-20, 20] pixels onto uint8 around 128 with this many pixels per 255.
FLOW_QUANT_RANGE = 40.0
FLOW_BOUND = 20.0


class WeightsError(ReslstmError, ValueError):
    """A weights file that cannot be read or does not match the model's layout."""


@contextlib.contextmanager
def seeded_init(seed: int) -> Iterator[None]:
    """Run module construction from CPU RNG state ``seed``; restores the caller's state after.

    Only the CPU generator is forked and seeded (``torch.manual_seed`` would also reseed every
    CUDA device for good): layers are built on the CPU, so that is the one that matters.
    """
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(int(seed))
        yield


def file_sha256(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def _key_list(keys, limit: int = 10) -> str:
    keys = sorted(keys)
    shown = ", ".join(keys[:limit])
    return f"{len(keys)} [{shown}{', ...' if len(keys) > limit else ''}]"


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Tensors of a checkpoint file: a plain state_dict, or one under "state_dict" / "model"."""
    path = Path(path)
    if not path.is_file():
        raise WeightsError(f"weights file {path} does not exist (pass a checkpoint path, or None for random init)")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle errors, zip errors, unsafe globals: all mean "not a plain checkpoint"
        raise WeightsError(
            f"cannot read weights file {path} with torch.load(weights_only=True): {exc}. "
            "Expected a state_dict of tensors saved with torch.save."
        ) from exc
    return _unwrap_state(obj, path)


def _unwrap_state(obj, path: Path) -> dict[str, torch.Tensor]:
    """A plain state_dict out of a loaded checkpoint (see ``read_state_dict``)."""
    if isinstance(obj, Mapping):
        for wrapper in ("state_dict", "model"):
            if wrapper in obj and isinstance(obj[wrapper], Mapping):
                obj = obj[wrapper]
                break
    if not isinstance(obj, Mapping) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(
            f"weights file {path} holds a {type(obj).__name__}, not a state_dict of tensors "
            "(a dict name -> tensor, optionally under 'state_dict' or 'model')"
        )
    state = dict(obj)
    if state and all(k.startswith("module.") for k in state):
        state = {k[len("module."):]: v for k, v in state.items()}
    return state


class Extractor(nn.Module):
    """A 3D CNN mapping a clip (B, C, s, H, W) to one feature vector per clip (B, feature_dim).

    Attributes every subclass sets (class attributes or in ``__init__``):
      name, feature_dim, input_size (crop side), resize_short (short side frames are decoded at),
      clip_len (default s), min_clip_len / max_clip_len (None: no upper limit),
      rgb_mean / rgb_std (per channel, after multiplying uint8 by pixel_scale, model channel order),
      channel_order ("rgb" | "bgr"), flow_range (flow is scaled to [-flow_range, flow_range]),
      first_conv_key (state_dict key of the first convolution's weight, for RGB->flow inflation).
    The defaults below are I3D's convention, which a subclass restates only where it differs:
    clips of 16 frames (any length from 1), RGB scaled to [-1, 1], flow to [-1, 1].
    Set by the base: stream, in_channels, weights_id, flow_pretrained.
    """

    name: str = "extractor"
    feature_dim: int
    input_size: int
    resize_short: int
    clip_len: int = 16
    min_clip_len: int = 1
    max_clip_len: int | None = None
    pixel_scale: float = 1.0 / 255.0
    rgb_mean: tuple[float, float, float] = (0.5, 0.5, 0.5)
    rgb_std: tuple[float, float, float] = (0.5, 0.5, 0.5)
    channel_order: str = "rgb"
    flow_range: float = 1.0
    first_conv_key: str = ""

    def __init__(self, stream: str):
        super().__init__()
        if stream not in STREAMS:
            raise ConfigError(f"unknown stream {stream!r}; valid streams: {', '.join(STREAMS)}")
        self.stream = stream
        self.in_channels = 3 if stream == "rgb" else 2
        self.weights_id = RANDOM_INIT
        self.flow_pretrained = False

    # ------------------------------------------------------------------ input

    def weights_module(self) -> nn.Module:
        """The module whose state_dict has the published checkpoint layout (default: self)."""
        return self

    def normalize(self, clips: torch.Tensor) -> torch.Tensor:
        """uint8 clips (B, s, H, W, C) -> float32 model input (B, C, s, H, W) on the same device."""
        if clips.dtype != torch.uint8 or clips.ndim != 5:
            raise ValueError(f"{self.name}.normalize wants uint8 (B, s, H, W, C) clips, got {clips.dtype} {tuple(clips.shape)}")
        if clips.shape[-1] != self.in_channels:
            raise ValueError(
                f"{self.name} ({self.stream}) wants {self.in_channels} channels, got {clips.shape[-1]} "
                "(RGB frames have 3, quantised flow has 2: dx, dy)"
            )
        x = clips.permute(0, 4, 1, 2, 3).float()  # (B, C, s, H, W)
        if self.stream == "flow":
            x = (x - 128.0) * (FLOW_QUANT_RANGE / 255.0)  # pixels, as flow.dequantize_flow
            x = x.clamp_(-FLOW_BOUND, FLOW_BOUND).mul_(self.flow_range / FLOW_BOUND)
            return x.contiguous()
        if self.channel_order == "bgr":
            x = x.flip(1)
        # (x * scale - mean) / std as one multiply-add per channel: (1, C, 1, 1, 1) factors.
        std = torch.tensor(self.rgb_std, device=x.device)
        gain = (self.pixel_scale / std).view(1, 3, 1, 1, 1)
        shift = (-torch.tensor(self.rgb_mean, device=x.device) / std).view(1, 3, 1, 1, 1)
        return x.mul_(gain).add_(shift).contiguous()

    # ---------------------------------------------------------------- weights

    def load_weights_file(self, path: str | Path) -> None:
        """Load a checkpoint strictly into ``weights_module()``; sets weights_id / flow_pretrained."""
        path = Path(path)
        state = read_state_dict(path)
        inflated = self._maybe_inflate_rgb_to_flow(state)
        self.load_state_strict(state, source=str(path))
        self.weights_id = file_sha256(path) + (INFLATED_SUFFIX if inflated else "")
        self.flow_pretrained = self.stream == "flow" and not inflated

    def _maybe_inflate_rgb_to_flow(self, state: dict[str, torch.Tensor]) -> bool:
        key = self.first_conv_key
        if self.stream != "flow" or not key or key not in state:
            return False
        weight = state[key]
        if weight.ndim != 5 or weight.shape[1] != 3:
            return False
        state[key] = inflate_rgb_kernel(weight, self.in_channels)
        return True

    def load_state_strict(self, state: Mapping[str, torch.Tensor], source: str) -> None:
        """Strict key and shape match, with an error that says what was expected."""
        target = self.weights_module()
        expected = target.state_dict()
        # Checkpoints written before BatchNorm counted batches lack num_batches_tracked; the
        # counter does nothing in eval mode and load_state_dict fills it in, so it may be absent.
        missing = [k for k in expected if k not in state and not k.endswith("num_batches_tracked")]
        unexpected = [k for k in state if k not in expected]
        mis_shaped = [
            f"{k}: file {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
            for k in expected
            if k in state and tuple(state[k].shape) != tuple(expected[k].shape)
        ]
        if missing or unexpected or mis_shaped:
            lines = [f"weights file {source} does not match {self.name} ({self.stream}, {self.in_channels} input channels):"]
            if missing:
                lines.append(f"  missing keys: {_key_list(missing)}")
            if unexpected:
                lines.append(f"  unexpected keys: {_key_list(unexpected)}")
            if mis_shaped:
                lines.append(f"  wrong shapes: {_key_list(mis_shaped, 5)}")
            lines.append(f"  expected layout: {self.layout_hint()}")
            raise WeightsError("\n".join(lines))
        target.load_state_dict(state, strict=False)  # already checked; lets BN fill num_batches_tracked

    def layout_hint(self) -> str:
        """One line describing the checkpoint layout this model loads (override per model)."""
        keys = list(self.weights_module().state_dict())
        return f"{len(keys)} tensors, e.g. {', '.join(keys[:3])}"

    def describe(self) -> dict:
        """The facts a feature store records about how its features were made."""
        return {
            "extractor": self.name,
            "stream": self.stream,
            "feature_dim": self.feature_dim,
            "input_size": self.input_size,
            "resize_short": self.resize_short,
            "clip_len": self.clip_len,
            "weights_id": self.weights_id,
            "flow_pretrained": self.flow_pretrained,
        }

    def extra_repr(self) -> str:
        return f"stream={self.stream}, feature_dim={self.feature_dim}, weights_id={self.weights_id}"


def inflate_rgb_kernel(weight: torch.Tensor, channels: int = 2) -> torch.Tensor:
    """(out, 3, kt, kh, kw) RGB kernel -> (out, channels, kt, kh, kw): the channel mean, repeated."""
    return weight.mean(dim=1, keepdim=True).expand(-1, channels, -1, -1, -1).contiguous()


def inflate_first_conv(conv: nn.Conv3d, channels: int = 2) -> nn.Conv3d:
    """A copy of ``conv`` taking ``channels`` inputs, its kernel the RGB kernel's channel mean."""
    new = nn.Conv3d(
        channels, conv.out_channels, conv.kernel_size, conv.stride, conv.padding,
        conv.dilation, conv.groups, conv.bias is not None,
    )
    with torch.no_grad():
        new.weight.copy_(inflate_rgb_kernel(conv.weight, channels))
        if conv.bias is not None:
            new.bias.copy_(conv.bias)
    return new


def is_random(weights) -> bool:
    """None / "none" / "random" / "random-init": deterministic random init."""
    return weights is None or (isinstance(weights, str)
                               and weights.lower() in ("none", "random", RANDOM_INIT))


def first_conv_channels(path: str | Path, key: str) -> int | None:
    """Input channels of the 5-D kernel ``key`` in a checkpoint file (None when absent),
    read memory-mapped where the file allows it, so only that tensor is touched."""
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # legacy (non-zip) files cannot be memory-mapped; read_state_dict says more
        obj = None
    state = read_state_dict(path) if obj is None else _unwrap_state(obj, Path(path))
    weight = state.get(key)
    return int(weight.shape[1]) if weight is not None and weight.ndim == 5 else None
