"""Two-stream fusion: mid fusion of feature sequences and late fusion of softmax outputs.

Mid fusion combines the RGB and flow sequences x^c and x^f element-wise (sum or product)
before one Res-LSTM. Late fusion combines the class probabilities of two independently
trained networks (product, sum, or the TSN weighting 1.5 * flow + 1 * rgb).

Every late fusion returns a probability distribution over the last axis:
- "product": p_rgb * p_flow / sum_c(p_rgb * p_flow), computed in log space so that many
  small probabilities do not underflow; the normalisation does not change the argmax;
- "sum": (p_rgb + p_flow) / 2;
- "weighted": (w_rgb * p_rgb + w_flow * p_flow) / (w_rgb + w_flow).

The functions accept torch tensors or NumPy arrays (late fusion of stored predictions needs
no model) and return the same kind. Importing this module does not import torch: Ray Data's
decode and read tasks, which only need the names, start without it.

The names are defined here once, for every layer: ``STREAMS`` (the two input streams, also the
feature store's datasets and the extractors' inputs), ``MID_OPS`` / ``LATE_OPS`` and
``FUSION_NAMES`` (every value of ``ModelConfig.fusion`` / ``--stream``), and, beside them, the
model's ``PROJECTIONS`` and ``ARCHS`` (``--input-proj``, ``--arch``), so that the configs read
every name of the method without importing torch.
"""

from __future__ import annotations

from functools import partial
from typing import Callable

import numpy as np

from reslstm.errors import ConfigError

# The two streams, in the order every store, table and model lists them.
STREAMS = ("rgb", "flow")
# The head that carries a two-stream model's (or two runs') fused scores, beside one per stream.
FUSED = "fused"
MID_OPS = ("sum", "product")
LATE_OPS = ("product", "sum", "weighted")
# The model's input projections d_f -> h and architectures (``reslstm.model``).
PROJECTIONS = ("pca", "linear", "none")
ARCHS = ("reslstm", "meanpool")

# The smallest positive float32: clamps zero probabilities before the log of "product", so a
# class that one stream rules out gets a vanishing, not undefined, fused score.
_TINY = float(np.finfo(np.float32).tiny)


def align_clips(a, b):
    """Truncate two clip sequences to the shorter one, along the clip axis.

    The clip axis is axis 0 for 2-D (K, d) arrays and axis -2 otherwise (e.g. (B, K, d)).
    The RGB and flow streams of one video can differ by a clip: flow has one frame fewer.
    Returns (a[:n], b[:n]) with n = min(K_a, K_b); views, not copies.
    """
    if a.ndim != b.ndim or a.ndim < 2:
        raise ValueError(
            f"align_clips needs two arrays of the same rank >= 2, got shapes "
            f"{tuple(a.shape)} and {tuple(b.shape)}"
        )
    axis = 0 if a.ndim == 2 else a.ndim - 2
    n = min(a.shape[axis], b.shape[axis])
    index = (slice(None),) * axis + (slice(0, n),)
    return a[index], b[index]


def _check_same_shape(a, b, what: str) -> None:
    if tuple(a.shape) != tuple(b.shape):
        hint = " (align_clips truncates two clip sequences to the shorter)" if what == "mid" else ""
        raise ValueError(
            f"{what} fusion needs inputs of the same shape, got {tuple(a.shape)} and "
            f"{tuple(b.shape)}{hint}"
        )


def mid_fuse(xc, xf, op: str = "sum"):
    """Element-wise fusion of the RGB and flow sequences: x^c + x^f or x^c * x^f.

    xc, xf: (..., T, h) tensors or arrays of the same shape -> the same shape.
    """
    if op not in MID_OPS:
        raise ConfigError(f"unknown mid fusion op {op!r}; valid ops: {', '.join(MID_OPS)}")
    _check_same_shape(xc, xf, "mid")
    return xc + xf if op == "sum" else xc * xf


def late_fuse(p_rgb, p_flow, op: str = "product", w_rgb: float = 1.0, w_flow: float = 1.5):
    """Fuse two softmax outputs (..., C) into one probability distribution (..., C).

    See the module docstring for the three ops; ``w_rgb`` and ``w_flow`` only matter for
    "weighted" (defaults: the TSN weights, flow counts 1.5 times as much as RGB).
    """
    if op not in LATE_OPS:
        raise ConfigError(f"unknown late fusion op {op!r}; valid ops: {', '.join(LATE_OPS)}")
    _check_same_shape(p_rgb, p_flow, "late")
    import torch  # here, not at the top: the names above are read where torch is not needed

    as_numpy = isinstance(p_rgb, np.ndarray)
    if as_numpy != isinstance(p_flow, np.ndarray):
        raise TypeError("late_fuse needs two tensors or two NumPy arrays, not one of each")
    pr = torch.from_numpy(p_rgb) if as_numpy else p_rgb
    pf = torch.from_numpy(p_flow) if as_numpy else p_flow

    if op == "product":
        # log p_rgb + log p_flow, renormalised with a log-softmax: the normalised product.
        log_sum = pr.clamp_min(_TINY).log() + pf.clamp_min(_TINY).log()
        fused = torch.softmax(log_sum, dim=-1)
    elif op == "sum":
        fused = (pr + pf) / 2
    else:
        if w_rgb < 0 or w_flow < 0 or w_rgb + w_flow <= 0:
            raise ConfigError(
                f"late fusion weights must be >= 0 with a positive sum, got w_rgb={w_rgb}, "
                f"w_flow={w_flow}"
            )
        fused = (w_rgb * pr + w_flow * pf) / (w_rgb + w_flow)
    return fused.numpy() if as_numpy else fused


# Fusion names as they appear in ModelConfig.fusion (the single-stream names are not fusions).
FUSIONS: dict[str, Callable] = {
    "mid-sum": partial(mid_fuse, op="sum"),
    "mid-product": partial(mid_fuse, op="product"),
    "late-product": partial(late_fuse, op="product"),
    "late-sum": partial(late_fuse, op="sum"),
    "late-weighted": partial(late_fuse, op="weighted"),
}


# Every value of ModelConfig.fusion / --stream, listed once: one stream, or a fusion of both.
FUSION_NAMES = STREAMS + tuple(FUSIONS)


def streams_of(name: str) -> tuple[str, ...]:
    """The streams a ``FUSION_NAMES`` entry reads: ("rgb",), ("flow",) or ("rgb", "flow")."""
    if name not in FUSION_NAMES:
        raise ConfigError(f"unknown stream or fusion {name!r}; valid: {', '.join(FUSION_NAMES)}")
    return (name,) if name in STREAMS else STREAMS


def make_fusion(name: str, **options) -> Callable:
    """The fusion callable f(rgb, flow) for a config name such as "mid-sum" or "late-product".

    ``options`` are passed on (e.g. ``w_rgb``/``w_flow`` for "late-weighted").
    """
    if name not in FUSIONS:
        raise ConfigError(f"unknown fusion {name!r}; valid fusions: {', '.join(FUSIONS)}")
    base = FUSIONS[name]
    return partial(base, **options) if options else base


def is_mid(name: str) -> bool:
    """True for the mid fusions (one network on the fused sequence)."""
    return name.startswith("mid-")


def is_late(name: str) -> bool:
    """True for the late fusions (two networks whose probabilities are fused)."""
    return name.startswith("late-")
