"""float32 arithmetic rounded as OpenCV's C++ rounds it: the three operations whose rounding
PyTorch's plain float32 operators do not reproduce.

TV-L1's early stop and multi-scale warping amplify last-bit differences (OpenCV against itself,
with 1e-4 grey levels of noise added to a frame, moves by 0.01-0.03 px), so the port reproduces
OpenCV's rounding, not only its formulas. Most of it is operation order (kept in the modules
that compute); what needs emulation lives here:

- ``f32``: a constant computed in double and cast to float, as ``static_cast<float>(...)``.
- ``fma``: OpenCV's SIMD kernels (remap, IPP's resize) are built with fused multiply-adds (one
  rounding for a * b + c). Emulated in double: the float32 product is exact in double, the sum
  is rounded once in double and once to float32. That double rounding differs from a true FMA
  only when the double sum lands exactly half-way between two floats, about once in 2^29.
- ``hypot``: glibc's ``hypotf`` (correctly rounded), which estimateDualVariables calls.
"""

from __future__ import annotations

import numpy as np
import torch

FLT_EPSILON = float(np.finfo(np.float32).eps)  # OpenCV's threshold on |grad I1|^2


def f32(x: float) -> float:
    """The float32 value OpenCV gets from static_cast<float>(x) (x computed in double)."""
    return float(np.float32(x))


def fma(a: torch.Tensor, b, c) -> torch.Tensor:
    """float32 fused multiply-add a * b + c with one rounding (see the module docstring):
    a float32 tensor, b and c float32 tensors or Python floats -> float32 tensor."""
    b = b.double() if isinstance(b, torch.Tensor) else float(b)
    c = c.double() if isinstance(c, torch.Tensor) else float(c)
    return (a.double() * b + c).float()


def hypot(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """float32 hypot rounded as glibc's hypotf: torch.hypot on the CPU (checked equal);
    elsewhere sqrt(x^2 + y^2) in double, rounded once (CUDA's hypotf is not correctly
    rounded)."""
    if x.device.type == "cpu":
        return torch.hypot(x, y)
    x, y = x.double(), y.double()
    return torch.sqrt(x * x + y * y).float()
