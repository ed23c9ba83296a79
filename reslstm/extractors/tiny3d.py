"""``tiny3d``: a small, fast 3D CNN with fixed random weights, for the demo and the tests.

It is not pretrained and never claims to be: unless a weights file is given its weights_id is
"random-init", drawn from a fixed seed (option ``seed``, default 0) with Kaiming-normal kernels.

Its features must keep the direction of motion inside a clip (a growing disc and a shrinking
disc are the same frames in opposite order), so:
- the clip is first normalised per channel over (s, H, W) (instance norm, no parameters): with
  random kernels, the colours of object and background otherwise dominate every feature and
  hide the motion (a linear probe separated growing from shrinking discs of random colours
  at ~65 % without it and 100 % with it);
- every stage has a temporal kernel of 3, whose random weights are not time-symmetric, so the
  units are direction selective; on the RGB stream the first kernels are made zero-mean along
  time, so they respond to change rather than to static texture and colour;
- the head averages over a 2 x 2 grid of space and 2 halves of the clip: averaging the whole
  frame would cancel the outward motion of an expanding shape against itself (and a
  rotation's), while a grid keeps where each direction of motion happens, and the two time
  bins keep what changed from the first half of the clip to the second:
  feature = 64 channels x 2 x 2 x 2 cells = 512.
On the synthetic demo set these choices took the RGB stream of a late-fusion Res-LSTM from
~0.4 to ~0.7 test top-1 (flow ~0.85).

Input 64 x 64 crops from frames decoded at short side 72 (10-crop is possible), 16 frames,
RGB scaled to [-1, 1]; flow (2 channels) in the I3D range [-1, 1]. About 0.25 GFLOP a clip.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import Extractor, seeded_init
from .registry import ExtractorInfo, register, resolve_weights

# (out_channels, kernel, stride) per stage; padding keeps "same" size before striding.
_STAGES = (
    (16, (3, 3, 3), (1, 2, 2)),  # (16, 32, 32) at 16 x 64 x 64 input
    (32, (3, 3, 3), (1, 2, 2)),  # (16, 16, 16)
    (64, (3, 3, 3), (2, 2, 2)),  # (8, 8, 8)
    (64, (3, 3, 3), (2, 2, 2)),  # (4, 4, 4)
)
_POOL = (2, 2, 2)  # (time, height, width) cells of the head


class Tiny3D(Extractor):
    name = "tiny3d"
    feature_dim = _STAGES[-1][0] * _POOL[0] * _POOL[1] * _POOL[2]
    input_size = 64
    resize_short = 72
    min_clip_len = 4  # clips of 16 by default; RGB and flow to [-1, 1] as I3D (the base's)
    first_conv_key = "conv1.weight"

    def __init__(self, stream: str, seed: int = 0):
        super().__init__(stream)
        generator = torch.Generator().manual_seed(int(seed))
        cin = self.in_channels
        # nn.Conv3d draws its default init from the global RNG: build inside seeded_init so the
        # caller's RNG state is untouched, then draw the real kernels from our own generator.
        with seeded_init(seed):
            for i, (cout, kernel, stride) in enumerate(_STAGES, start=1):
                conv = nn.Conv3d(cin, cout, kernel, stride, padding=tuple(k // 2 for k in kernel))
                # Kaiming (fan-in, ReLU) keeps activations O(1) through the stages without BN.
                nn.init.kaiming_normal_(conv.weight, mode="fan_in", nonlinearity="relu", generator=generator)
                nn.init.zeros_(conv.bias)
                if i == 1 and stream == "rgb":
                    with torch.no_grad():  # zero-mean along time: respond to change, not colour
                        conv.weight -= conv.weight.mean(dim=2, keepdim=True)
                self.add_module(f"conv{i}", conv)
                cin = cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, C, s, H, W) -> (B, 512)."""
        x = F.instance_norm(x)  # per clip and channel over (s, H, W): colour-independent
        for i in range(1, len(_STAGES) + 1):
            x = F.relu(getattr(self, f"conv{i}")(x))
        x = F.adaptive_avg_pool3d(x, _POOL)  # (B, 64, 2, 2, 2): 2 time bins x a 2 x 2 grid
        return x.flatten(1)

    def layout_hint(self) -> str:
        return "tiny3d state_dict: conv1..conv4 .weight/.bias (Conv3d, kernel 3x3x3)"


@register("tiny3d", ExtractorInfo.of(Tiny3D))
def build_tiny3d(stream: str, weights=None, seed: int = 0) -> Tiny3D:
    model = Tiny3D(stream, seed=seed)
    kind, path = resolve_weights("tiny3d", weights)
    if kind == "file":
        model.load_weights_file(path)
    return model
