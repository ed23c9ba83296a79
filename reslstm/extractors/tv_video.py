"""torchvision's Kinetics-400 video models as extractors: r3d_18, mc3_18, r2plus1d_18, s3d, swin3d_t.

The feature is the penultimate layer: the pooled vector the classifier would read (512 for the
ResNet-18 family, 1024 for S3D, 768 for Swin3D-T). The classifier stays in the module, unused,
so torchvision's checkpoint files load strictly.

Weights (``weights=``):
- None / "none": torchvision's own random init from a fixed seed (option ``seed``), "random-init";
- an enum member name of the model's weights class ("KINETICS400_V1", "DEFAULT"): read from
  torchvision's cache, ``<torch.hub.get_dir()>/checkpoints/<file name of the weights URL>``; if
  absent, torchvision's normal download fills the cache, and a failed download says where to
  put the file. weights_id "torchvision:<Enum>.<MEMBER>";
- a path: that checkpoint, strictly (weights_id its sha256).

Sizes and normalisation come from the Kinetics weights' transforms: 112 crops from short side
128 for the ResNet-18 family, 224 from 256 for S3D and Swin3D; Kinetics mean/std (ImageNet for
Swin3D). Flow: the first convolution takes 2 channels, its kernel the pretrained RGB kernel
averaged over input channels and copied into both; flow_pretrained stays False and the
weights_id ends in "+rgb-inflated-to-flow". Flow values are in [-1, 1].
"""

from __future__ import annotations

import urllib.error
from dataclasses import dataclass
from pathlib import Path

import torch
import torchvision
from torch import nn

from .base import (INFLATED_SUFFIX, Extractor, WeightsError, inflate_first_conv, read_state_dict,
                   seeded_init)
from .registry import ExtractorInfo, register, resolve_weights


@dataclass(frozen=True)
class _Spec:
    feature_dim: int
    first_conv: str  # dotted module path of the first Conv3d inside the torchvision model
    clip_len: int


_SPECS = {
    "r3d_18": _Spec(512, "stem.0", 16),
    "mc3_18": _Spec(512, "stem.0", 16),
    "r2plus1d_18": _Spec(512, "stem.0", 16),
    "s3d": _Spec(1024, "features.0.0.0", 16),
    "swin3d_t": _Spec(768, "patch_embed.proj", 16),
}


def _cache_path(weights_enum) -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(weights_enum.url).name


def _torchvision_state(name: str, weights_enum) -> dict[str, torch.Tensor]:
    """The state_dict of a torchvision weights enum: from the cache, else torchvision's download."""
    path = _cache_path(weights_enum)
    if not path.is_file():
        try:
            torch.hub.load_state_dict_from_url(weights_enum.url, progress=False, check_hash=True)
        except (urllib.error.URLError, OSError, RuntimeError) as exc:
            raise WeightsError(
                f"{name}: {weights_enum} is not in torchvision's cache and could not be downloaded ({exc}). "
                f"Put the file {path.name} (from {weights_enum.url}) at {path}, or pass weights=<path of the file>."
            ) from exc
    return read_state_dict(path)


class TorchvisionVideo(Extractor):
    """A torchvision video classifier held as ``self.net`` (published layout) and read before its head."""

    def __init__(self, name: str, stream: str, seed: int = 0):
        super().__init__(stream)
        spec, info = _SPECS[name], INFOS[name]
        self.name = name
        self._spec = spec
        meta = torchvision.models.get_model_weights(name).KINETICS400_V1.transforms()
        self.feature_dim, self.input_size = info.feature_dim, info.input_size
        self.resize_short, self.clip_len = info.resize_short, info.clip_len
        self.rgb_mean = tuple(float(v) for v in meta.mean)
        self.rgb_std = tuple(float(v) for v in meta.std)
        self.pixel_scale = 1.0 / 255.0
        self.first_conv_key = spec.first_conv + ".weight"
        with seeded_init(seed):
            self.net = getattr(torchvision.models.video, name)(weights=None)
            if name == "s3d":
                # torchvision leaves S3D at PyTorch's default init, whose variance shrinks layer
                # by layer until random-init features are ~1e-7; fan-in Kaiming keeps them O(1).
                for module in self.net.modules():
                    if isinstance(module, nn.Conv3d):
                        nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
            if stream == "flow":
                self._swap_first_conv()  # a new Conv3d draws its default init: keep it seeded

    def _swap_first_conv(self) -> None:
        parent_path, _, leaf = self._spec.first_conv.rpartition(".")
        parent = self.net.get_submodule(parent_path)
        setattr(parent, leaf, inflate_first_conv(getattr(parent, leaf), self.in_channels))

    def weights_module(self) -> nn.Module:
        return self.net

    def load_enum(self, member: str) -> None:
        enum_cls = torchvision.models.get_model_weights(self.name)
        try:
            weights_enum = enum_cls[member]
        except KeyError:
            valid = ", ".join(m for m in enum_cls.__members__)
            raise WeightsError(f"{self.name}: no torchvision weights {member!r}; valid: {valid}, a file path, or None") from None
        state = _torchvision_state(self.name, weights_enum)
        inflated = self._maybe_inflate_rgb_to_flow(state)
        self.load_state_strict(state, source=str(_cache_path(weights_enum)))
        self.weights_id = f"torchvision:{weights_enum}" + (INFLATED_SUFFIX if inflated else "")
        self.flow_pretrained = False  # torchvision publishes RGB weights only

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, C, s, H, W) -> (B, feature_dim): the pooled vector before the classifier."""
        net = self.net
        if self.name == "s3d":
            return net.features(x).mean(dim=(2, 3, 4))  # (B, 1024, T', H', W') -> (B, 1024)
        if self.name == "swin3d_t":
            x = net.norm(net.features(net.pos_drop(net.patch_embed(x))))  # (B, T', H', W', 768)
            return x.mean(dim=(1, 2, 3))
        x = net.layer4(net.layer3(net.layer2(net.layer1(net.stem(x)))))  # (B, 512, T', H', W')
        return net.avgpool(x).flatten(1)

    def layout_hint(self) -> str:
        return f"torchvision.models.video.{self.name} state_dict (as in {Path(self._enum_url()).name}), first conv {self.first_conv_key}"

    def _enum_url(self) -> str:
        return torchvision.models.get_model_weights(self.name).KINETICS400_V1.url


def _make_factory(name: str):
    def factory(stream: str, weights=None, seed: int = 0) -> TorchvisionVideo:
        kind, value = resolve_weights(name, weights)  # checked before the model is built
        model = TorchvisionVideo(name, stream, seed=seed)
        if kind == "torchvision":
            model.load_enum(value)
        elif kind == "file":
            model.load_weights_file(value)
        return model

    factory.__name__ = f"build_{name}"
    factory.__doc__ = f"torchvision {name} as a clip extractor (weights: None | 'KINETICS400_V1' | path)."
    return factory


def _info(name: str) -> ExtractorInfo:
    """Static metadata from the spec and the Kinetics weights' transforms (no model built)."""
    enum = torchvision.models.get_model_weights(name)
    meta = enum.KINETICS400_V1.transforms()
    spec = _SPECS[name]
    return ExtractorInfo(name=name, feature_dim=spec.feature_dim, input_size=int(meta.crop_size[0]),
                         resize_short=int(min(meta.resize_size)), clip_len=spec.clip_len,
                         first_conv_key=spec.first_conv + ".weight",
                         torchvision_weights=enum.__name__, weight_names=tuple(enum.__members__))


INFOS = {name: _info(name) for name in _SPECS}
for _name in _SPECS:
    register(_name, INFOS[_name])(_make_factory(_name))
