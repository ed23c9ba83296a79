"""``c3d``: C3D (Tran et al., 2015), the Sports-1M network, as fc6 or fc7 clip features.

Layout of the common PyTorch port of the Sports-1M Caffe model (``c3d.pickle``), loaded strictly:
conv1 (64), pool1 (1, 2, 2) | conv2 (128), pool2 | conv3a, conv3b (256), pool3 |
conv4a, conv4b (512), pool4 | conv5a, conv5b (512), pool5 (2, 2, 2) with padding (0, 1, 1) |
fc6 (8192 -> 4096), fc7 (4096 -> 4096), fc8 (4096 -> 487). Every conv is 3x3x3, padding 1,
with a bias; keys ``conv1.weight``, ``conv1.bias``, ..., ``fc8.bias``.

The fc layers fix the input to 16 x 112 x 112 (pool5 gives 512 x 1 x 4 x 4 = 8192).
Features (option ``layer``): "fc6" (default, the feature of the C3D paper) or "fc7", both after
their ReLU, as Caffe's in-place ReLU leaves them in the blob that was extracted.

Input: the Caffe model was trained on BGR frames in 0..255 minus the Sports-1M mean cube
(16 x 128 x 171) and the port converted the weights without reordering channels, so clips are
fed in BGR order, 0..255, minus the cube's per-channel means (B, G, R) = (90, 98, 102) — the
per-channel simplification used by the common PyTorch training code for this checkpoint.
Frames are decoded at short side 128 (the original resizes to 128 x 171) and cropped to 112.
Flow: 2 channels scaled to [-128, 128] (the magnitude of the mean-subtracted RGB input that
RGB-inflated kernels were trained on); not flow-pretrained unless a 2-channel file is given.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from reslstm.errors import ConfigError

from .base import Extractor, seeded_init
from .registry import ExtractorInfo, register, resolve_weights

# (name, in, out) of the eight convolutions; a pool follows the names listed in _POOL_AFTER.
_CONVS = (
    ("conv1", None, 64), ("conv2", 64, 128), ("conv3a", 128, 256), ("conv3b", 256, 256),
    ("conv4a", 256, 512), ("conv4b", 512, 512), ("conv5a", 512, 512), ("conv5b", 512, 512),
)
_POOL_AFTER = {
    "conv1": ((1, 2, 2), (0, 0, 0)),
    "conv2": ((2, 2, 2), (0, 0, 0)),
    "conv3b": ((2, 2, 2), (0, 0, 0)),
    "conv4b": ((2, 2, 2), (0, 0, 0)),
    "conv5b": ((2, 2, 2), (0, 1, 1)),
}
LAYERS = ("fc6", "fc7")


class C3D(Extractor):
    name = "c3d"
    feature_dim = 4096
    input_size = 112
    resize_short = 128
    clip_len = 16
    min_clip_len = 16
    max_clip_len = 16
    pixel_scale = 1.0
    rgb_mean = (90.0, 98.0, 102.0)  # B, G, R
    rgb_std = (1.0, 1.0, 1.0)
    channel_order = "bgr"
    flow_range = 128.0
    first_conv_key = "conv1.weight"

    def __init__(self, stream: str, layer: str = "fc6", num_classes: int = 487, seed: int = 0):
        super().__init__(stream)
        if layer not in LAYERS:
            raise ConfigError(f"c3d feature layer {layer!r} unknown; valid layers: {', '.join(LAYERS)}")
        self.layer, self.num_classes = layer, num_classes
        with seeded_init(seed):
            for name, cin, cout in _CONVS:
                self.add_module(name, nn.Conv3d(cin or self.in_channels, cout, 3, padding=1))
            self.fc6 = nn.Linear(8192, 4096)
            self.fc7 = nn.Linear(4096, 4096)
            self.fc8 = nn.Linear(4096, num_classes)
            for module in self.modules():
                if isinstance(module, (nn.Conv3d, nn.Linear)):
                    nn.init.kaiming_normal_(module.weight, mode="fan_in", nonlinearity="relu")
                    nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x (B, C, 16, 112, 112) -> (B, 4096)."""
        if tuple(x.shape[2:]) != (16, 112, 112):
            raise ValueError(f"c3d takes (B, C, 16, 112, 112) clips (its fc6 fixes the size), got {tuple(x.shape)}")
        for name, _, _ in _CONVS:
            x = F.relu(getattr(self, name)(x))
            if name in _POOL_AFTER:
                kernel, padding = _POOL_AFTER[name]
                x = F.max_pool3d(x, kernel, kernel, padding)
        x = F.relu(self.fc6(x.flatten(1)))  # (B, 512 * 1 * 4 * 4) -> (B, 4096)
        if self.layer == "fc7":
            x = F.relu(self.fc7(x))
        return x

    def layout_hint(self) -> str:
        return (
            "the Sports-1M C3D port (c3d.pickle): conv1, conv2, conv3a, conv3b, conv4a, conv4b, conv5a, conv5b "
            f"(.weight/.bias, conv1.weight ({64}, {self.in_channels}, 3, 3, 3)), fc6 (4096, 8192), fc7 (4096, 4096), "
            f"fc8 ({self.num_classes}, 4096)"
        )


@register("c3d", ExtractorInfo.of(C3D))
def build_c3d(stream: str, weights=None, layer: str = "fc6", num_classes: int = 487, seed: int = 0) -> C3D:
    model = C3D(stream, layer=layer, num_classes=num_classes, seed=seed)
    kind, path = resolve_weights("c3d", weights)
    if kind == "file":
        model.load_weights_file(path)
    return model
