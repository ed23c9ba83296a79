"""``i3d``: Inception-v1 inflated to 3D (Carreira and Zisserman, 2017), RGB and flow.

Module names and shapes follow the widely used PyTorch port of the Kinetics checkpoints
(``rgb_imagenet.pt``: 3 input channels, ``flow_imagenet.pt``: 2), so those files load strictly:

    Conv3d_1a_7x7.conv3d.weight (64, C, 7, 7, 7)       Conv3d_1a_7x7.bn.{weight,bias,running_mean,
    Conv3d_2b_1x1, Conv3d_2c_3x3                          running_var,num_batches_tracked}
    Mixed_3b ... Mixed_5c, each with branches b0, b1a, b1b, b2a, b2b, b3b (b3a is a max pool)
    logits.conv3d.weight (num_classes, 1024, 1, 1, 1), logits.conv3d.bias   (no BN in logits)

Every unit is conv3d (no bias) + BatchNorm3d(eps=1e-3, momentum=0.01) + ReLU with TensorFlow
"SAME" padding computed from the input size (more padding after than before when odd), so any
clip length and crop size work. Max pools pad with zeros, which equals TF's SAME max pooling
because their inputs are ReLU outputs (>= 0).

Feature: the 1024-d mean of Mixed_5c over (T, H, W). For 16 x 224 x 224 clips Mixed_5c is
(2, 7, 7) and this is the original 2x7x7 average pool; the logits layer is loaded but unused.
RGB is scaled to [-1, 1]; flow (dx, dy) to [-1, 1] after clipping at +-20 pixels.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .base import Extractor, seeded_init
from .registry import ExtractorInfo, register, resolve_weights


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TF "SAME" padding (before, after) of one dimension: output = ceil(size / stride)."""
    remainder = size % stride
    total = max(kernel - (stride if remainder == 0 else remainder), 0)
    return total // 2, total - total // 2


def _pad_same(x: torch.Tensor, kernel: tuple[int, int, int], stride: tuple[int, int, int]) -> torch.Tensor:
    pads: list[int] = []
    for size, k, s in zip(reversed(x.shape[-3:]), reversed(kernel), reversed(stride)):  # F.pad wants W, H, T
        pads.extend(same_padding(size, k, s))
    return F.pad(x, pads) if any(pads) else x


class Unit3D(nn.Module):
    """conv3d -> BN -> ReLU with SAME padding; the logits unit has a bias and neither BN nor ReLU."""

    def __init__(self, cin: int, cout: int, kernel=(1, 1, 1), stride=(1, 1, 1), bn: bool = True,
                 relu: bool = True, bias: bool = False):
        super().__init__()
        self.kernel, self.stride, self.relu = tuple(kernel), tuple(stride), relu
        self.conv3d = nn.Conv3d(cin, cout, self.kernel, self.stride, padding=0, bias=bias)
        self.bn = nn.BatchNorm3d(cout, eps=1e-3, momentum=0.01) if bn else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.conv3d(_pad_same(x, self.kernel, self.stride))
        if self.bn is not None:
            x = self.bn(x)
        return F.relu(x) if self.relu else x


class MaxPoolSame(nn.Module):
    def __init__(self, kernel, stride):
        super().__init__()
        self.kernel, self.stride = tuple(kernel), tuple(stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.max_pool3d(_pad_same(x, self.kernel, self.stride), self.kernel, self.stride)


class Inception(nn.Module):
    """Four branches concatenated on channels: 1x1 | 1x1->3x3 | 1x1->3x3 | maxpool 3x3->1x1."""

    def __init__(self, cin: int, widths: tuple[int, int, int, int, int, int]):
        super().__init__()
        w0, w1a, w1b, w2a, w2b, w3b = widths
        self.b0 = Unit3D(cin, w0)
        self.b1a = Unit3D(cin, w1a)
        self.b1b = Unit3D(w1a, w1b, (3, 3, 3))
        self.b2a = Unit3D(cin, w2a)
        self.b2b = Unit3D(w2a, w2b, (3, 3, 3))
        self.b3a = MaxPoolSame((3, 3, 3), (1, 1, 1))
        self.b3b = Unit3D(cin, w3b)
        self.out_channels = w0 + w1b + w2b + w3b

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.b0(x), self.b1b(self.b1a(x)), self.b2b(self.b2a(x)), self.b3b(self.b3a(x))], dim=1)


# The trunk in order: (name, kind, args). Inception widths: b0, b1a, b1b, b2a, b2b, b3b.
_TRUNK = (
    ("Conv3d_1a_7x7", "unit", (64, (7, 7, 7), (2, 2, 2))),
    ("MaxPool3d_2a_3x3", "pool", ((1, 3, 3), (1, 2, 2))),
    ("Conv3d_2b_1x1", "unit", (64, (1, 1, 1), (1, 1, 1))),
    ("Conv3d_2c_3x3", "unit", (192, (3, 3, 3), (1, 1, 1))),
    ("MaxPool3d_3a_3x3", "pool", ((1, 3, 3), (1, 2, 2))),
    ("Mixed_3b", "mixed", (64, 96, 128, 16, 32, 32)),
    ("Mixed_3c", "mixed", (128, 128, 192, 32, 96, 64)),
    ("MaxPool3d_4a_3x3", "pool", ((3, 3, 3), (2, 2, 2))),
    ("Mixed_4b", "mixed", (192, 96, 208, 16, 48, 64)),
    ("Mixed_4c", "mixed", (160, 112, 224, 24, 64, 64)),
    ("Mixed_4d", "mixed", (128, 128, 256, 24, 64, 64)),
    ("Mixed_4e", "mixed", (112, 144, 288, 32, 64, 64)),
    ("Mixed_4f", "mixed", (256, 160, 320, 32, 128, 128)),
    ("MaxPool3d_5a_2x2", "pool", ((2, 2, 2), (2, 2, 2))),
    ("Mixed_5b", "mixed", (256, 160, 320, 32, 128, 128)),
    ("Mixed_5c", "mixed", (384, 192, 384, 48, 128, 128)),
)


class I3D(Extractor):
    name = "i3d"
    feature_dim = 1024
    input_size = 224
    resize_short = 256
    # Clips of 16 frames (any length), RGB and flow to [-1, 1]: the base's defaults, I3D's.
    first_conv_key = "Conv3d_1a_7x7.conv3d.weight"

    def __init__(self, stream: str, num_classes: int = 400, seed: int = 0):
        super().__init__(stream)
        self.num_classes = num_classes
        self._trunk_names = [name for name, _, _ in _TRUNK]
        with seeded_init(seed):
            cin = self.in_channels
            for name, kind, args in _TRUNK:
                if kind == "unit":
                    cout, kernel, stride = args
                    layer = Unit3D(cin, cout, kernel, stride)
                    cin = cout
                elif kind == "pool":
                    layer = MaxPoolSame(*args)
                else:
                    layer = Inception(cin, args)
                    cin = layer.out_channels
                self.add_module(name, layer)
            self.logits = Unit3D(cin, num_classes, bn=False, relu=False, bias=True)
            for module in self.modules():
                if isinstance(module, nn.Conv3d):
                    # Fan-in Kaiming keeps random-init activations O(1) through 60 layers.
                    nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
                    if module.bias is not None:
                        nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, C, s, H, W) -> (B, 1024)."""
        for name in self._trunk_names:
            x = getattr(self, name)(x)
        return x.mean(dim=(2, 3, 4))  # (B, 1024, T', H', W') -> (B, 1024)

    def layout_hint(self) -> str:
        return (
            f"the PyTorch port of the Kinetics I3D checkpoints ({'rgb' if self.in_channels == 3 else 'flow'}_imagenet.pt): "
            f"Conv3d_1a_7x7.conv3d.weight (64, {self.in_channels}, 7, 7, 7), Conv3d_1a_7x7.bn.*, ..., "
            f"Mixed_5c.b3b.*, logits.conv3d.weight ({self.num_classes}, 1024, 1, 1, 1) and logits.conv3d.bias"
        )


@register("i3d", ExtractorInfo.of(I3D))
def build_i3d(stream: str, weights=None, num_classes: int = 400, seed: int = 0) -> I3D:
    model = I3D(stream, num_classes=num_classes, seed=seed)
    kind, path = resolve_weights("i3d", weights)
    if kind == "file":
        model.load_weights_file(path)
    return model
