"""OpenCV's bilinear ``cv::resize`` for float32, bit for bit, and the two places TV-L1 uses it:
the image pyramid (``build_pyramid``) and the upscaling of a coarse flow to the next finer
level (``upscale_flow``).

cv::resize(INTER_LINEAR) on float32 goes through IPP in OpenCV's x86 builds: source
coordinate (d + 0.5) * scale - 0.5 in double, a horizontal pass then a vertical one, each
value ``fma(f, b - a, a)`` (``rounding.fma``), with IPP's rule past the last source pixel
(``_linear_table``). The pyramid steps by ``resize(src, Size(), s, s)`` (scale 1 / s, output
size rounded: ``params.pyramid_sizes``); the flow goes up by ``resize(u, finer size)`` (scale
src / dst, as IPP divides the sizes) and is multiplied by exactly 1 / scale_step, not by the
true size ratio. Builds without IPP round differently (the ~0.01 px floor of ``reslstm.flow.tvl1``).
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np
import torch

from .rounding import f32, fma


@lru_cache(maxsize=256)
def _linear_table(n_in: int, n_out: int, scale: float, shrink: bool):
    """cv::resize INTER_LINEAR along one axis: source index pairs and float32 fractions.

    fx = (d + 0.5) * scale - 0.5 (in double), sx = floor(fx), fx -= sx; sx < 0 -> (0, 0).
    Past the last source pixel (sx >= n_in - 1) the IPP kernel OpenCV uses for float32 takes
    (n_in - 1, fx = 0) when enlarging but (n_in - 2, fx = 1) when shrinking: the same value,
    rounded differently (a + (b - a) need not give b back exactly). Both checked bit for bit."""
    d = np.arange(n_out, dtype=np.float64)
    f = (d + 0.5) * scale - 0.5
    s = np.floor(f)
    f = f - s
    s = s.astype(np.int64)
    low = s < 0
    f[low], s[low] = 0.0, 0
    high = s >= n_in - 1
    if shrink and n_in >= 2:
        f[high], s[high] = 1.0, n_in - 2
    else:
        f[high], s[high] = 0.0, n_in - 1
    return s, np.minimum(s + 1, n_in - 1), f.astype(np.float32)


def _resize_axis(x: torch.Tensor, dim: int, n_out: int, scale: float) -> torch.Tensor:
    """One bilinear pass along ``dim`` of float32 ``x``: fma(f, b - a, a), the arithmetic of
    OpenCV's (IPP) float32 resize, equal to it bit for bit."""
    n_in = x.shape[dim]
    i0, i1, f = _linear_table(n_in, n_out, float(scale), n_out < n_in)
    dev = x.device
    shape = [1] * x.ndim
    shape[dim] = n_out
    f = torch.from_numpy(f).to(dev).view(shape)
    a = x.index_select(dim, torch.from_numpy(i0).to(dev))
    b = x.index_select(dim, torch.from_numpy(i1).to(dev))
    return fma(f.expand_as(a), b - a, a)


def resize(x: torch.Tensor, size: tuple[int, int], scale: tuple[float, float]) -> torch.Tensor:
    """cv::resize(INTER_LINEAR) of float32 (..., h, w) to ``size`` (h, w); ``scale`` is the
    source step per destination pixel (y, x): 1 / fx for resize(src, Size(), fx, fy), src / dst
    for resize(src, dsize) (the IPP kernel divides the sizes so). Horizontal pass first."""
    x = _resize_axis(x, x.ndim - 1, size[1], scale[1])
    return _resize_axis(x, x.ndim - 2, size[0], scale[0])


def build_pyramid(grey: torch.Tensor, sizes: list[tuple[int, int]],
                  scale_step: float) -> list[torch.Tensor]:
    """float32 grey (B, H, W) -> its levels at ``sizes`` (``params.pyramid_sizes``), finest
    first, each resized from the previous one."""
    s = 1.0 / scale_step  # resize(src, Size(), fx, fy): scale_x = 1 / fx
    levels = [grey]
    for size in sizes[1:]:
        levels.append(resize(levels[-1], size, (s, s)))
    return levels


def upscale_flow(u: torch.Tensor, size: tuple[int, int], scale_step: float) -> torch.Tensor:
    """Flow (B, C, h, w) of a coarse level -> (B, C, H, W) of the finer one: resized to
    ``size`` (the IPP kernel steps by src / dst, computed so), then u1, u2 (not u3) times
    float32(1 / scale_step)."""
    h, w = size
    ch, cw = u.shape[-2:]
    u = resize(u, (h, w), (ch / h, cw / w))
    return torch.cat([u[:, :2] * f32(1.0 / scale_step), u[:, 2:]], dim=1)
