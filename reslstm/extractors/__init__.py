"""3D-CNN clip feature extractors behind one registry: ``create_extractor(name, stream, weights)``.

Importing the package registers every model module (tiny3d, i3d, c3d, torchvision's video
models); ``extractor_info`` and ``weights_identity`` describe one without building it;
``clip_features`` runs an extractor over every clip of a frame sequence.

May import: ``reslstm.video.clips``, ``reslstm.fusion`` (stream names), ``reslstm.errors``.
Nothing here knows about the feature store, flow or Ray.
"""

from . import c3d, i3d, tiny3d, tv_video  # noqa: F401  (register the models)
from .base import RANDOM_INIT, Extractor, WeightsError
from .registry import (ExtractorInfo, available_extractors, create_extractor, extractor_info,
                       extractor_options, register, resolve_weights, weights_identity)
from .runner import clip_features

__all__ = [
    "Extractor",
    "ExtractorInfo",
    "RANDOM_INIT",
    "WeightsError",
    "available_extractors",
    "clip_features",
    "create_extractor",
    "extractor_info",
    "extractor_options",
    "register",
    "resolve_weights",
    "weights_identity",
]
