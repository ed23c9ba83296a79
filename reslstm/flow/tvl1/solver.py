"""The TV-L1 solver for a batch of pairs: the coarse-to-fine loop over pyramid levels, the
warps of a level, and the iterations of a warp with per-pair stopping.

OpenCV's ``calc`` / ``procOneScale``, batched: the coarsest level starts from zero flow; each
finer level starts from the coarser flow upscaled (``resize.upscale_flow``). Per level the
centred gradient of I1 is computed once and the dual variables are reset once; per warp, I1
and its gradient are warped along the current flow (``warp``), then up to ``outer_iterations``
x ``inner_iterations`` iterations (``iteration.tvl1_step``; the median at the start of each
outer one) run until the sum of squared changes of u is at most epsilon^2 * W * H.

Speed: the state is (B, C, h, w) tensors, one launch per operation for the whole batch. The
stopping test is a per-pair device mask every iteration (no host sync); the host looks at the
mask only every ``sync_every`` iterations, to end a warp once every pair has stopped and to
drop stopped pairs from the working batch (compaction), so a batch costs about what its pairs
cost alone, and every pair stops exactly where a lone OpenCV call would. ``compile=True`` hands
the per-iteration step and the median to ``torch.compile`` (Inductor fuses the ~35 elementwise
operations of an iteration, and the ~260 min/max of the median network, into a few kernels),
with options that keep eager float32 numerics in generated GPU code (no FMA contraction, IEEE
division, no flush-to-zero), so the compiled flow is the eager one. CUDA graphs are not used:
the loop length is data-dependent (per-pair stopping decided on the device, read by the host
every few iterations) and the working batch shrinks as pairs stop, which would need one graph
per shape. bf16 is not offered: with an 8-bit mantissa the fixed-point iteration drifts far
beyond the last-bit agreement with OpenCV (and beyond the 0.01 px floor); float32 is the only
precision.
"""

from __future__ import annotations

import torch

from .iteration import Constants, centered_gradient, median_step, tvl1_step
from .params import TVL1Params
from .resize import upscale_flow
from .rounding import FLT_EPSILON, f32
from .warp import cubic_remap, cubic_sampler

# Inductor options that keep eager float32 numerics in generated GPU kernels: no contraction
# of a * b + c into FMAs, IEEE division (Triton's default '/' is approximate) and no flushing
# of subnormals. On the CPU Inductor already keeps them.
_COMPILE_OPTIONS = {
    "emulate_precision_casts": True,
    "eager_numerics.division_rounding": True,
    "eager_numerics.disable_ftz": True,
}


def _compile_options() -> dict:
    """``_COMPILE_OPTIONS`` that this torch's Inductor knows (older releases lack some and
    refuse unknown ones; their GPU kernels may then differ from eager in the last bits, which
    the CUDA tests would show)."""
    import torch._inductor

    known = set(torch._inductor.list_options())
    return {k: v for k, v in _COMPILE_OPTIONS.items() if k in known}


class Solver:
    """TV-L1 for batches of pyramids, with one parameter set; ``get_solver`` caches them so
    compiled steps are reused across calls. ``sync_every``: iterations between the host's looks
    at the stop mask (None: 1 on the CPU, 5 on CUDA; the flow does not depend on it, only the
    work wasted on stopped pairs does)."""

    def __init__(self, params: TVL1Params, compile: bool = False, sync_every: int | None = None):
        self.params = params
        c = Constants(params)
        self.consts = c
        kwargs = {"l_t": c.l_t, "theta": c.theta, "taut": c.taut, "gamma": c.gamma}

        def step(u, px, py_pad, g, rho_c, ltg, neg_ltg, neg_grad, active):
            return tvl1_step(u, px, py_pad, g, rho_c, ltg, neg_ltg, neg_grad, active, **kwargs)

        ksize = params.median_filtering

        def median(u, active):
            return median_step(u, active, ksize=ksize)

        if compile:
            options = _compile_options()
            step = torch.compile(step, dynamic=True, options=options)
            median = torch.compile(median, dynamic=True, options=options)
        self.step = step
        self.median = median
        self.sync_every = sync_every

    # -- one pyramid level -------------------------------------------------------------------
    def level(self, i0: torch.Tensor, i1: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        """procOneScale for a batch: i0, i1 (B, h, w) float32 levels, u (B, C, h, w) initial
        flow -> flow (B, C, h, w)."""
        prm = self.params
        b, nc, h, w = u.shape
        eps = f32(prm.epsilon * prm.epsilon * h * w)  # static_cast<float>(eps^2 * area)
        sync_every = self.sync_every or (1 if u.device.type == "cpu" else 5)
        i1x, i1y = centered_gradient(i1)
        warp_src = torch.stack([i1, i1x, i1y], dim=1)  # (B, 3, h, w)
        px = u.new_zeros(b, nc, h, w)  # dual variables: reset once per level
        py_pad = u.new_zeros(b, nc, h + 1, w)
        n_iter = prm.outer_iterations * prm.inner_iterations
        median_on = prm.median_filtering > 1
        l_t = self.consts.l_t
        for _ in range(prm.warps):
            u1, u2 = u[:, 0], u[:, 1]
            warped = cubic_remap(warp_src, cubic_sampler(u1, u2))
            i1w, gx, gy = warped[:, 0], warped[:, 1], warped[:, 2]
            grad = gx * gx + gy * gy
            rho_c = ((i1w - gx * u1) - gy * u2) - i0
            planes = [gx, gy] + ([torch.full_like(gx, self.consts.gamma)] if nc == 3 else [])
            ltg = l_t * grad
            warp_consts = [torch.stack(planes, dim=1), rho_c, ltg, -ltg,
                           torch.where(grad > FLT_EPSILON, -grad, float("inf"))]
            state = [u, px, py_pad]
            # The working set: pairs still iterating this warp, ``idx`` into the batch (None:
            # all). With sync_every 1 the host sees every stop at once and drops the pair, so
            # every working pair is active and the step needs no mask; otherwise stopped pairs
            # are masked, and dropped once a fifth of the working set has stopped.
            idx, work, consts = None, list(state), warp_consts
            n_work = b
            active = None if sync_every == 1 else torch.ones(b, dtype=torch.bool, device=u.device)
            for k in range(n_iter):
                if median_on and k % prm.inner_iterations == 0:
                    work[0] = self.median(work[0], active)
                *work, err = self.step(*work, *consts, active)
                still = err > eps
                active = still if active is None else active & still
                if (k + 1) % sync_every and k + 1 < n_iter:
                    continue
                n_active = int(active.sum())  # the only host sync of the loop
                if n_active == n_work:
                    if sync_every == 1:
                        active = None
                    continue
                if n_active == 0 or k + 1 == n_iter:
                    break
                if sync_every > 1 and n_active > 0.8 * n_work:
                    continue  # a few stopped pairs ride along, masked, until more have stopped
                # compaction: write the stopped pairs back, keep working on the active ones
                stopped = (~active).nonzero().squeeze(1)
                keep = active.nonzero().squeeze(1)
                if idx is None:  # the state becomes the full batch the working set maps into
                    state = list(work)
                else:
                    _write_back(state, [t.index_select(0, stopped) for t in work], idx[stopped])
                idx = keep if idx is None else idx[keep]
                work = [t.index_select(0, keep) for t in work]
                consts = [t.index_select(0, keep) for t in consts]
                n_work = n_active
                active = None if sync_every == 1 else torch.ones(n_work, dtype=torch.bool,
                                                                  device=u.device)
            if idx is None:
                u, px, py_pad = work
            else:
                u, px, py_pad = _write_back(state, work, idx)
        return u

    def flow(self, pyr0: list[torch.Tensor], pyr1: list[torch.Tensor]) -> torch.Tensor:
        """Pyramids of I0 and I1 (same sizes) -> flow (B, H, W, 2) float32."""
        prm = self.params
        nc = 3 if prm.gamma else 2
        b = pyr0[0].shape[0]
        coarse = pyr0[-1]
        u = coarse.new_zeros(b, nc, *coarse.shape[-2:])
        for s in range(len(pyr0) - 1, -1, -1):
            u = self.level(pyr0[s], pyr1[s], u)
            if s == 0:
                break
            u = upscale_flow(u, pyr0[s - 1].shape[-2:], prm.scale_step)
        return u[:, :2].permute(0, 2, 3, 1).contiguous()


def _write_back(state, parts, idx):
    """Copy ``parts`` into the full-batch tensors ``state`` (owned here) at rows ``idx``."""
    for full, part in zip(state, parts):
        full.index_copy_(0, idx, part)
    return state


_SOLVERS: dict = {}


def get_solver(params: TVL1Params, compile: bool = False, sync_every: int | None = None) -> Solver:
    """The solver for these settings, cached so compiled steps are reused across calls."""
    key = (params, bool(compile), sync_every)
    if key not in _SOLVERS:
        _SOLVERS[key] = Solver(params, compile=compile, sync_every=sync_every)
    return _SOLVERS[key]
