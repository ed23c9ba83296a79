"""TV-L1's parameters: ``TVL1Params`` (OpenCV's defaults, validated), the pyramid sizes OpenCV's
``calc()`` processes (``pyramid_sizes``), and the identity a feature store records for them
(``params_id``).

Nothing here touches a tensor: the parameters are plain data, hashable, so a solver (and its
compiled steps) is cached per parameter set.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from reslstm.errors import ConfigError

MIN_SIDE = 3  # OpenCV's gradient kernels read one pixel on each side of the border pixels
MIN_LEVEL_SIDE = 16  # calc() drops a pyramid level (and every coarser one) under 16 px


@dataclass(frozen=True)
class TVL1Params:
    """OpenCV's DualTVL1OpticalFlow parameters, OpenCV's defaults (useInitialFlow is not
    offered: the flow always starts at zero, as it does for the default OpenCV object).

    tau: time step of the dual update; lambda_: weight of the data term; theta: coupling of u
    and v; nscales: pyramid levels (fewer when a level would fall under 16 px); warps: warpings
    per level; epsilon: stopping threshold (a warp ends once the sum of squared changes of u is
    <= epsilon^2 * W * H); inner_iterations / outer_iterations: loops per warp (the median runs
    at the start of each outer one); scale_step: pyramid scale, in (0, 1); gamma: weight of the
    illumination term u3 (0: off); median_filtering: median kernel size, 3 or 5 (OpenCV filters
    float32 only with those), or 0 / 1 for no median.
    """

    tau: float = 0.25
    lambda_: float = 0.15
    theta: float = 0.3
    nscales: int = 5
    warps: int = 5
    epsilon: float = 0.01
    inner_iterations: int = 30
    outer_iterations: int = 10
    scale_step: float = 0.8
    gamma: float = 0.0
    median_filtering: int = 5

    def __post_init__(self):
        for name in ("tau", "lambda_", "theta"):
            value = getattr(self, name)
            if not is_real(value) or not value > 0 or not math.isfinite(value):
                raise ConfigError(f"TVL1Params.{name} must be a finite number > 0, got {value!r}")
        for name in ("epsilon", "gamma"):
            value = getattr(self, name)
            if not is_real(value) or not value >= 0 or not math.isfinite(value):
                raise ConfigError(f"TVL1Params.{name} must be a finite number >= 0, got {value!r}")
        for name in ("nscales", "warps", "inner_iterations", "outer_iterations"):
            value = getattr(self, name)
            if not is_int(value) or value < 1:
                raise ConfigError(f"TVL1Params.{name} must be an integer >= 1, got {value!r}")
        if not is_real(self.scale_step) or not 0 < self.scale_step < 1:
            raise ConfigError(f"TVL1Params.scale_step must be in (0, 1), got {self.scale_step!r}")
        if not is_int(self.median_filtering) or self.median_filtering not in (0, 1, 3, 5):
            raise ConfigError("TVL1Params.median_filtering must be 3 or 5 (OpenCV's medianBlur "
                             "filters float32 only with those sizes), or 0 / 1 for no median; "
                             f"got {self.median_filtering!r}")


def is_real(x) -> bool:
    return isinstance(x, (int, float, np.integer, np.floating)) and not isinstance(x, bool)


def is_int(x) -> bool:
    return isinstance(x, (int, np.integer)) and not isinstance(x, bool)


def params_id(params: TVL1Params) -> str:
    """The parameters that differ from OpenCV's defaults, as ``name=value`` joined by commas
    in field order ("" for the defaults): what a feature store records after the method's
    name, so flow computed with other parameters is never mixed with OpenCV's."""
    default, parts = TVL1Params(), []
    for f in dataclasses.fields(params):
        value = getattr(params, f.name)
        if value != getattr(default, f.name):
            parts.append(f"{f.name}={int(value) if f.type == 'int' else float(value)!r}")
    return ",".join(parts)


def params_from_id(text: str) -> TVL1Params:
    """The inverse of ``params_id``: "" -> the defaults, "tau=0.2,nscales=3" -> those."""
    fields = {f.name: f.type for f in dataclasses.fields(TVL1Params)}
    kwargs = {}
    for part in filter(None, text.split(",")):
        name, sep, value = part.partition("=")
        if not sep or name not in fields:
            raise ConfigError(f"not a TV-L1 parameter id: {text!r} (expected name=value pairs "
                             f"of {', '.join(fields)})")
        kwargs[name] = int(value) if fields[name] == "int" else float(value)
    return TVL1Params(**kwargs)


def pyramid_sizes(height: int, width: int, params: TVL1Params = TVL1Params()) -> list[tuple[int, int]]:
    """(h, w) of each pyramid level OpenCV's calc() processes, finest first.

    Level s + 1 is resize(level s, scale_step), its size rounded (cvRound of side * scale_step,
    computed from the previous level's size). Like calc(), the pyramid stops at the first level
    with a side under 16 px: OpenCV then lowers the object's ``nscales`` for good, so a reused
    OpenCV object keeps the lowered count for later, larger frames; this function (and
    ``tvl1_flow``) always start from ``params.nscales``, like a fresh OpenCV object.
    At 224x224 with the defaults: 224, 179, 143, 114, 91.
    """
    sizes = [(int(height), int(width))]
    for _ in range(1, params.nscales):
        h, w = sizes[-1]
        # Python's round() on a float is round-half-even, like cvRound.
        nh, nw = round(h * params.scale_step), round(w * params.scale_step)
        if nh < MIN_LEVEL_SIDE or nw < MIN_LEVEL_SIDE:
            break
        sizes.append((nh, nw))
    return sizes
