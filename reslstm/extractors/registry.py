"""String factory for extractors: ``create_extractor(name, stream, weights=None, **options)``.

Model modules register a factory ``factory(stream, weights, **options) -> Extractor`` under a
name with ``@register("name")``. Unknown names, streams and options fail with the list of valid
ones instead of a bare KeyError/TypeError deep inside a model.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

from .base import STREAMS, Extractor

Factory = Callable[..., Extractor]
_FACTORIES: dict[str, Factory] = {}


def register(name: str) -> Callable[[Factory], Factory]:
    """Decorator: make ``factory`` available as ``create_extractor(name, ...)``."""

    def decorate(factory: Factory) -> Factory:
        if name in _FACTORIES and _FACTORIES[name] is not factory:
            raise ValueError(f"extractor name {name!r} is registered twice")
        _FACTORIES[name] = factory
        return factory

    return decorate


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
        raise ValueError(
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
        raise ValueError(f"unknown stream {stream!r} for {name}; valid streams: {', '.join(STREAMS)}")
    valid = extractor_options(name)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise ValueError(f"{name} has no option(s) {', '.join(unknown)}; valid options: {', '.join(valid) or 'none'}")
    extractor = factory(stream=stream, weights=weights, **options)
    return extractor.eval()
