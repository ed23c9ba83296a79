"""String factory for extractors: ``create_extractor(name, stream, weights=None, **options)``,
and their static metadata: ``extractor_info(name)``.

Model modules register a factory ``factory(stream, weights, **options) -> Extractor`` under a
name with ``@register("name", info)``. ``info`` (an ``ExtractorInfo``) holds what a caller needs
to know before building the model: feature size, crop and decoding sizes, clip lengths and the
weights it loads by name, so planning an extraction never builds a model (as timm keeps its
pretrained configs apart from the models). Unknown names, streams and options fail with the
list of valid ones instead of a bare KeyError/TypeError deep inside a model.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from dataclasses import dataclass

from reslstm.errors import ConfigError
from reslstm.fusion import STREAMS

from .base import (INFLATED_SUFFIX, RANDOM_INIT, Extractor, WeightsError, file_sha256,
                   first_conv_channels, is_random)

Factory = Callable[..., Extractor]
_FACTORIES: dict[str, Factory] = {}


@dataclass(frozen=True)
class ExtractorInfo:
    """What an extractor is, readable without building it. ``torchvision_weights``: the name
    of torchvision's weights enum of the model (e.g. "R3D_18_Weights"), for models that also
    load weights by member name ("KINETICS400_V1"); None for file-only models."""

    name: str
    feature_dim: int
    input_size: int                    # crop side
    resize_short: int                  # short side frames are decoded at
    clip_len: int = 16
    min_clip_len: int = 1
    max_clip_len: int | None = None
    first_conv_key: str = ""           # state_dict key of the first convolution's weight
    torchvision_weights: str | None = None
    weight_names: tuple[str, ...] = ()  # members of that enum

    @classmethod
    def of(cls, model: type, **overrides) -> "ExtractorInfo":
        """The info of an ``Extractor`` subclass, read from its class attributes."""
        fields = {k: getattr(model, k) for k in ("name", "feature_dim", "input_size",
                                                  "resize_short", "clip_len", "min_clip_len",
                                                  "max_clip_len", "first_conv_key")}
        return cls(**{**fields, **overrides})

    def check_clip_len(self, clip_len: int) -> None:
        too_long = self.max_clip_len is not None and clip_len > self.max_clip_len
        if clip_len < self.min_clip_len or too_long:
            limit = f"{self.min_clip_len}..{self.max_clip_len or 'any'}"
            raise ConfigError(f"{self.name} takes clips of {limit} frames, got clip_len={clip_len}")


_INFOS: dict[str, ExtractorInfo] = {}


def register(name: str, info: ExtractorInfo) -> Callable[[Factory], Factory]:
    """Decorator: make ``factory`` available as ``create_extractor(name, ...)``, described by
    ``info``."""

    def decorate(factory: Factory) -> Factory:
        if name in _FACTORIES and _FACTORIES[name] is not factory:
            raise ValueError(f"extractor name {name!r} is registered twice")
        _FACTORIES[name], _INFOS[name] = factory, info
        return factory

    return decorate


def extractor_info(name: str) -> ExtractorInfo:
    """The static metadata of extractor ``name`` (no model is built)."""
    _lookup(name)
    return _INFOS[name]


def available_extractors() -> list[str]:
    """Registered extractor names, sorted."""
    return sorted(_FACTORIES)


def extractor_options(name: str) -> list[str]:
    """The keyword options ``create_extractor(name, ...)`` accepts beyond stream and weights."""
    params = inspect.signature(_lookup(name)).parameters
    return [p for p in params if p not in ("stream", "weights")]


def _lookup(name: str) -> Factory:
    try:
        return _FACTORIES[name]
    except KeyError:
        raise ConfigError(
            f"unknown extractor {name!r}; available extractors: {', '.join(available_extractors())}"
        ) from None


def create_extractor(name: str, stream: str, weights=None, **options) -> Extractor:
    """Build extractor ``name`` for ``stream`` ("rgb" | "flow"), in eval mode on the CPU.

    weights: None / "none" -> deterministic random init (option ``seed``, default 0,
    weights_id "random-init"); a path -> that checkpoint, strictly; torchvision models also take
    a weights enum name such as "KINETICS400_V1" (read from torchvision's cache).
    """
    factory = _lookup(name)
    if stream not in STREAMS:
        raise ConfigError(f"unknown stream {stream!r} for {name}; valid streams: {', '.join(STREAMS)}")
    valid = extractor_options(name)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ConfigError(f"{name} has no option(s) {', '.join(unknown)}; valid options: {', '.join(valid) or 'none'}")
    extractor = factory(stream=stream, weights=weights, **options)
    return extractor.eval()


def resolve_weights(name: str, weights) -> tuple[str, object]:
    """What ``weights`` names for extractor ``name``: ("random", None), ("torchvision",
    member) or ("file", Path). Raises ``WeightsError`` saying what is accepted otherwise."""
    from pathlib import Path

    info = extractor_info(name)
    if is_random(weights):
        return "random", None
    if info.torchvision_weights and isinstance(weights, str):
        member = weights.split(".")[-1]
        if weights in info.weight_names or member in info.weight_names:
            return "torchvision", member
    if Path(weights).is_file():
        return "file", Path(weights)
    if info.torchvision_weights:
        raise WeightsError(f"{name}: weights {weights!r} is neither a file nor a torchvision weights "
                           f"name ({', '.join(info.weight_names)}); pass one of those, a "
                           "checkpoint path, or None for random init")
    raise WeightsError(f"{name}: weights {weights!r} is not a file. Pass the path of a "
                       "checkpoint, or None / 'none' for deterministic random init.")


def weights_identity(name: str, stream: str, weights) -> tuple[str, bool]:
    """(weights_id, flow_pretrained) that ``create_extractor(name, stream, weights)`` reports,
    worked out without building the model: "random-init"; "torchvision:<Enum>.<MEMBER>"; or
    the file's sha256. A flow extractor given RGB weights (3 input channels at the first
    convolution; torchvision's weights always) adds "+rgb-inflated-to-flow" and is not
    flow-pretrained."""
    info = extractor_info(name)
    kind, value = resolve_weights(name, weights)
    if kind == "random":
        return RANDOM_INIT, False
    if kind == "torchvision":
        return (f"torchvision:{info.torchvision_weights}.{value}"
                + (INFLATED_SUFFIX if stream == "flow" else "")), False
    inflated = stream == "flow" and first_conv_channels(value, info.first_conv_key) == 3
    return file_sha256(value) + (INFLATED_SUFFIX if inflated else ""), stream == "flow" and not inflated
