"""TV-L1 optical flow in PyTorch that reproduces OpenCV's CPU ``DualTVL1OpticalFlow``, batched.
It may import ``reslstm.flow.frames`` and ``reslstm.errors`` (and PyTorch), nothing else of the
project.

The public API (re-exported here):

- ``TVL1Params``: every parameter of ``cv2.optflow.DualTVL1OpticalFlow_create()`` with OpenCV's
  default (tau 0.25, lambda 0.15, theta 0.3, 5 scales, 5 warps, epsilon 0.01, 30 inner x 10 outer
  iterations, scale step 0.8, gamma 0, 5x5 median), validated.
- ``tvl1_flow(prev, nxt)``: grey pairs (B, H, W) (uint8, or float in 0..255) -> flow (B, H, W, 2)
  float32 pixels, channels (dx, dy), the layout of OpenCV's ``calc``. Runs on the inputs' device
  (CPU or CUDA); each pair stops on its own error, exactly as a lone OpenCV call would.
- ``TorchTVL1``: the extraction pipeline's entry point: uint8 RGB frames (N, H, W, 3) -> flow of
  the N - 1 consecutive pairs, at most ``batch_size`` pairs on the device at a time
  (``reslstm.flow.methods.make_flow("tvl1-torch")`` builds one).
- ``rgb_to_grey``: bit-exact ``cv2.cvtColor(frame, cv2.COLOR_RGB2GRAY)`` for uint8 tensors, so
  frames travel to the GPU once, as uint8 RGB.
- ``pyramid_sizes``: the level sizes OpenCV's ``calc`` uses (and how it lowers ``nscales``);
  ``params_id``: how a feature store names parameters that differ from OpenCV's.

The modules, one concern each: ``params`` (parameters, validation, pyramid sizes), ``rounding``
(float32 rounding as OpenCV's C++: casts, FMAs, hypotf), ``grey`` (the colour conversion),
``resize`` (OpenCV's bilinear resize: the pyramid and the flow upscaling), ``warp`` (the cubic
remap), ``iteration`` (centred gradient, median, one inner iteration), ``solver`` (levels,
warps, per-pair stopping, compaction, torch.compile) and ``api`` (``tvl1_flow``, ``TorchTVL1``).

The algorithm follows opencv_contrib ``modules/optflow/src/tvl1flow.cpp`` step by step, in float32
with OpenCV's operation order: the pyramid is built with bilinear ``resize`` (scale 0.8, output
size rounded, source coordinates (d + 0.5) / 0.8 - 0.5); the coarsest level starts from zero
flow; each finer level starts from the coarser flow resized bilinearly to the finer size and
multiplied by 1 / 0.8. Per level: the centred gradient of I1 is computed once and the dual
variables are reset once; per warp, I1 and its gradient are warped with ``remap`` (Keys cubic,
A = -0.75, taps outside the image read 0), then up to 10 outer iterations (each starting with
a 5x5 median of u1 and u2, replicated border) of up to 30 inner ones (thresholding, divergence
of p, u update, forward gradient of u, dual update) run until the sum of squared changes of u
is at most epsilon^2 * W * H.

Exactness: TV-L1's early stop and multi-scale warping amplify last-bit differences (OpenCV
against itself, with 1e-4 grey levels of noise added to a frame, moves by 0.01-0.03 px), so
this port reproduces OpenCV's rounding, not only its formulas: OpenCV 5's remap (its per-pixel
cubic weights and FMA sums), the IPP bilinear resize cv::resize uses for float32 (FMA lerps,
its border rule), glibc's hypotf, and OpenCV's order of every float operation (FMAs emulated
in double: ``rounding``). Against OpenCV 5.0 with IPP on x86-64 (AVX2/FMA) the flows agree to
~1e-11 px mean end-point error on real 112x112 pairs and to float noise at 224x224; the error
sum is taken in double where OpenCV adds floats one by one, which could move a stop by one
iteration in rare cases. Builds that round differently (OpenCV 4's 1/32-pixel cubic table, no
IPP) leave the floor-level ~0.01 px.

Speed (``solver``): one launch per operation for the whole batch, per-pair stopping on the
device, optional ``torch.compile`` with eager numerics; float32 only. On a CPU core it runs at
~0.4x OpenCV's speed: the CPU path is for correctness; speed comes from batching on a GPU.
"""

from .api import TorchTVL1, tvl1_flow
from .grey import rgb_to_grey
from .params import TVL1Params, params_from_id, params_id, pyramid_sizes

__all__ = ["TVL1Params", "TorchTVL1", "params_from_id", "params_id", "pyramid_sizes",
           "rgb_to_grey", "tvl1_flow"]
