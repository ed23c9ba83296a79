"""One inner iteration of TV-L1 and the pieces around it, for a batch of pairs: the centred
gradient of I1 (once per level), OpenCV's ``medianBlur`` of the flow (at the start of every
outer iteration) and ``tvl1_step`` (thresholding, divergence, u update, forward gradient, dual
update), in OpenCV's order of float operations (opencv_contrib ``optflow/src/tvl1flow.cpp``:
``centeredGradient``, ``estimateV``, ``divergence``, ``estimateU``, ``forwardGradient``,
``estimateDualVariables``).

Everything here is pure tensor code without host syncs, so ``solver`` can hand ``tvl1_step``
and ``median_step`` to ``torch.compile`` whole: the median is a network of minimum / maximum
operations (exact, and fused into one kernel), not a sort.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .params import TVL1Params
from .rounding import f32, hypot


def centered_gradient(img: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """OpenCV's centeredGradient of (B, h, w): 0.5 * (next - previous) inside, one-sided
    0.5 * (difference) on the border rows / columns (corners included)."""
    h, w = img.shape[-2:]
    dev = img.device
    right = torch.arange(w, device=dev).add(1).clamp(max=w - 1)
    left = torch.arange(w, device=dev).sub(1).clamp(min=0)
    down = torch.arange(h, device=dev).add(1).clamp(max=h - 1)
    up = torch.arange(h, device=dev).sub(1).clamp(min=0)
    dx = 0.5 * (img.index_select(-1, right) - img.index_select(-1, left))
    dy = 0.5 * (img.index_select(-2, down) - img.index_select(-2, up))
    return dx, dy


def _drop_extremes(vals: list[torch.Tensor]) -> list[torch.Tensor]:
    """Remove one smallest and one largest value (elementwise over the planes) from ``vals``,
    keeping the others (as a multiset): compare pairs, then run the minimum through the low
    halves and the maximum through the high halves."""
    k = len(vals)
    lows, highs = [], []
    for i in range(k // 2):
        a, b = vals[2 * i], vals[2 * i + 1]
        lows.append(torch.minimum(a, b))
        highs.append(torch.maximum(a, b))
    if k % 2:
        lows.append(vals[-1])
    m, rest = lows[0], []
    for x in lows[1:]:
        rest.append(torch.maximum(m, x))
        m = torch.minimum(m, x)  # the minimum travels on and is dropped
    if k % 2:
        highs.append(rest.pop())  # the odd value's slot may hold the maximum
    m, kept = highs[0], []
    for x in highs[1:]:
        kept.append(torch.minimum(m, x))
        m = torch.maximum(m, x)  # the maximum travels on and is dropped
    return rest + kept


def median(u: torch.Tensor, ksize: int) -> torch.Tensor:
    """cv::medianBlur(ksize) of each plane of float32 (..., h, w), replicated border.

    Forgetful selection on the ksize^2 shifted planes with minimum / maximum only (exact, and
    fuses into one kernel under torch.compile): start with n // 2 + 2 of the n values, drop the
    extremes, add the next value, until one value, the median, is left."""
    h, w = u.shape[-2:]
    r = ksize // 2
    lead = u.shape[:-2]
    padded = F.pad(u.reshape(-1, 1, h, w), (r, r, r, r), mode="replicate").view(*lead, h + 2 * r, w + 2 * r)
    vals = [padded[..., i:i + h, j:j + w] for i in range(ksize) for j in range(ksize)]
    n = len(vals)
    work, rest = vals[:n // 2 + 2], vals[n // 2 + 2:]
    while len(work) > 1:
        work = _drop_extremes(work)
        if rest:
            work.append(rest.pop(0))
    return work[0]


class Constants:
    """float32 scalars of an iteration, rounded as OpenCV rounds them."""

    def __init__(self, p: TVL1Params):
        self.l_t = f32(p.lambda_ * p.theta)
        self.theta = f32(p.theta)
        self.taut = f32(p.tau / p.theta)
        self.gamma = f32(p.gamma)


def tvl1_step(u, px, py_pad, g, rho_c, ltg, neg_ltg, neg_grad, active, *, l_t: float,
              theta: float, taut: float, gamma: float):
    """One inner iteration of OpenCV's procOneScale for a batch.

    State: u (B, C, h, w) flow (u1, u2[, u3 when gamma > 0]); dual variables px = (p11, p21[,
    p31]) (B, C, h, w) and py_pad = (p12, p22[, p32]) (B, C, h + 1, w) with a zero row on top
    (the divergence reads p12[y - 1] = 0 at y = 0). Per warp: g (B, C, h, w) = (I1wx, I1wy[,
    gamma]), rho_c (B, h, w), ltg = l_t * |grad|^2, neg_ltg = -ltg and neg_grad = -|grad|^2
    where |grad|^2 > FLT_EPSILON, else +inf. active: (B,) bool or None (all active); inactive
    pairs keep their state. Returns (u, px, py_pad, error (B,) float64)."""
    # estimateV. fi = -rho / grad is computed as rho / (-grad) (IEEE-identical); the +inf
    # stands for "grad <= FLT_EPSILON: no step" (rho / inf = 0).
    rho = rho_c + (g[:, 0] * u[:, 0] + g[:, 1] * u[:, 1])
    if gamma:
        rho = rho + gamma * u[:, 2]
    coef = torch.where(rho < neg_ltg, l_t, torch.where(rho > ltg, -l_t, rho / neg_grad))
    v = u + coef.unsqueeze(1) * g  # d = +-l_t * g or fi * g, as OpenCV's products

    # divergence with backward differences; OpenCV's column 0 adds the two x-terms first:
    # (p1 + p2) - p2[y - 1]
    py, py_up = py_pad[..., 1:, :], py_pad[..., :-1, :]
    div = torch.cat([(px[..., :1] + py[..., :1]) - py_up[..., :1],
                     (px[..., 1:] - px[..., :-1]) + (py[..., 1:] - py_up[..., 1:])], dim=-1)

    # estimateU and its error, the sum of squared changes of u, taken in double (OpenCV adds
    # float32 terms one by one; a double sum is as close to that, and the same on every device)
    u_new = v + theta * div
    du = u_new - u
    error = (du * du).sum(dim=(1, 2, 3), dtype=torch.float64)

    # forwardGradient (0 on the last column for x, on the last row for y)
    ux = F.pad(u_new[..., 1:] - u_new[..., :-1], (0, 1))
    uy = F.pad(u_new[..., 1:, :] - u_new[..., :-1, :], (0, 0, 0, 1))

    # estimateDualVariables
    ng = 1.0 + taut * hypot(ux, uy)
    px_new = (px + taut * ux) / ng
    py_new = F.pad((py + taut * uy) / ng, (0, 0, 1, 0))

    if active is not None:
        keep = active.view(-1, 1, 1, 1)
        u_new = torch.where(keep, u_new, u)
        px_new = torch.where(keep, px_new, px)
        py_new = torch.where(keep, py_new, py_pad)
    return u_new, px_new, py_new, error


def median_step(u, active, *, ksize: int):
    """The median at the start of an outer iteration, on u1 and u2 (not u3); active: (B,)
    bool or None (all)."""
    if u.shape[1] == 2:
        filtered = median(u, ksize)
    else:
        filtered = torch.cat([median(u[:, :2], ksize), u[:, 2:]], dim=1)
    if active is None:
        return filtered
    return torch.where(active.view(-1, 1, 1, 1), filtered, u)
