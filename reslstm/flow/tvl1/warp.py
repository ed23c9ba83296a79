"""The warp of TV-L1: ``cv::remap(INTER_CUBIC, BORDER_CONSTANT 0)`` of I1 and its gradient
along the current flow, bit for bit as OpenCV 5 computes it.

OpenCV >= 5 computes exact Keys cubic weights (A = -0.75) per pixel (older versions read a
1/32-pixel table), then sums the 16 taps row by row with fused multiply-adds. The sampling
(tap indices and weights) depends only on the flow, so ``cubic_sampler`` computes it once per
warp and ``cubic_remap`` applies it to the three planes warped together (I1, I1x, I1y). Taps
outside the image read 0 (BORDER_CONSTANT), which is what OpenCV's TV-L1 asks for; clamping to
the edge instead moves the flow by ~0.04 px.
"""

from __future__ import annotations

import torch

from .rounding import fma


def _cubic_weights(x: torch.Tensor) -> list[torch.Tensor]:
    """Keys cubic (A = -0.75) weights of the taps at -1, 0, 1, 2 for float32 fractions x,
    computed as OpenCV 5's remap computes them (bit for bit): with u = 1 - x,
    c0 = A * (x * (u * u)), c1 = fma(fma(A + 2, x, -(A + 3)), x * x, 1),
    c3 = A * ((x * x) * u), c2 = ((1 - c0) - c1) - c3."""
    a = -0.75
    u = 1.0 - x
    xx = x * x
    c0 = a * (x * (u * u))
    c1 = fma(fma(x, a + 2.0, -(a + 3.0)), xx, 1.0)
    c3 = a * (xx * u)
    c2 = ((1.0 - c0) - c1) - c3
    return [c0, c1, c2, c3]


def cubic_sampler(u1: torch.Tensor, u2: torch.Tensor):
    """Precomputed remap(INTER_CUBIC, BORDER_CONSTANT 0) sampling at (x + u1, y + u2), shared
    by the planes warped together.

    u1, u2: (B, h, w) float32. Returns (row offsets y * w of the 4 tap rows, columns of the 4
    tap columns, weights wx, wy): 4 each of (B, 1, h*w), int64 and float64 (float32 values;
    double so that products with float32 pixels are exact), weights of taps outside the image
    zero."""
    b, h, w = u1.shape
    dev = u1.device
    xs = torch.arange(w, device=dev, dtype=torch.float32).view(1, 1, w)
    ys = torch.arange(h, device=dev, dtype=torch.float32).view(1, h, 1)
    mx = (xs + u1).reshape(b, 1, -1)  # float32, as buildFlowMap: map1 = x + u1
    my = (ys + u2).reshape(b, 1, -1)
    fx, fy = torch.floor(mx), torch.floor(my)
    wx, wy = _cubic_weights(mx - fx), _cubic_weights(my - fy)
    # Far-away samples (huge flow) only need invalid taps: clamp before the integer cast.
    sx = fx.clamp(-4, w + 4).long()
    sy = fy.clamp(-4, h + 4).long()
    cols, rows = [], []
    for k in range(4):
        ix, iy = sx + (k - 1), sy + (k - 1)
        wx[k] = torch.where((ix >= 0) & (ix < w), wx[k], 0.0).double()  # taps outside read 0
        wy[k] = torch.where((iy >= 0) & (iy < h), wy[k], 0.0).double()
        cols.append(ix.clamp(0, w - 1))
        rows.append(iy.clamp(0, h - 1) * w)
    return rows, cols, wx, wy


def cubic_remap(images: torch.Tensor, sampler) -> torch.Tensor:
    """Sample float32 images (B, C, h, w) with a ``cubic_sampler`` -> (B, C, h, w), with
    OpenCV's arithmetic: per row of taps r = fma(s_i, wx_i, r) from left to right, then
    the rows the same way with wy (bit for bit equal to cv::remap in OpenCV 5)."""
    rows, cols, wx, wy = sampler
    b, c, h, w = images.shape
    flat = images.reshape(b, c, h * w).double()
    out = None
    for j in range(4):
        row = None
        for i in range(4):
            tap = flat.gather(2, (rows[j] + cols[i]).expand(b, c, h * w))
            # fma(tap, w, row): the product is exact in double, the sum rounded once
            row = (tap * wx[i] if row is None else torch.addcmul(row, tap, wx[i])).float().double()
        out = (row * wy[j] if out is None else torch.addcmul(out, row, wy[j])).float().double()
    return out.float().view(b, c, h, w)
