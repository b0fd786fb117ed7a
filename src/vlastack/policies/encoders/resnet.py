"""ResNet-18 with GroupNorm, trained from scratch (Diffusion Policy style), in plain torch.

Diffusion Policy swaps every BatchNorm of a torchvision ResNet-18 for
GroupNorm(C / 16 groups) because batch statistics misbehave with small batches
and EMA weights, and optionally pools the last feature map with a spatial softmax
(robomimic's keypoint pooling). torchvision is deliberately not a dependency.

Grid: 512 channels (8 x ``base_width``) at stride 32 (4x4 at 128x128).
Pooled: ``pool="avg"`` the spatial mean (N, 512); ``pool="spatial_softmax"``
K keypoints' expected (x, y) in [-1, 1], (N, 2K), then a linear map to (N, 512).
"""

from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import VisionEncoder, check_images, downsampled, seeded_init


def _gn(channels: int, group_size: int) -> nn.GroupNorm:
    return nn.GroupNorm(max(1, channels // group_size), channels)


class BasicBlock(nn.Module):
    """Two 3x3 convolutions with GroupNorm and a residual (projected when the shape changes)."""

    def __init__(self, cin: int, cout: int, stride: int, group_size: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.norm1 = _gn(cout, group_size)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.norm2 = _gn(cout, group_size)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), _gn(cout, group_size))

    def forward(self, x: Tensor) -> Tensor:
        """(N, cin, h, w) -> (N, cout, h / stride, w / stride)."""
        y = F.relu(self.norm1(self.conv1(x)))  # (N, cout, h', w')
        y = self.norm2(self.conv2(y))  # (N, cout, h', w')
        skip = x if self.down is None else self.down(x)  # (N, cout, h', w')
        return F.relu(y + skip)


class SpatialSoftmax(nn.Module):
    """Keypoint pooling: 1x1 conv to K maps, softmax over space, expected (x, y) per map."""

    def __init__(self, channels: int, num_keypoints: int, temperature: float = 1.0):
        super().__init__()
        self.proj = nn.Conv2d(channels, num_keypoints, 1)
        self.temperature = float(temperature)
        self.num_keypoints = int(num_keypoints)

    def forward(self, x: Tensor) -> Tensor:
        """(N, C, h, w) -> (N, 2K) keypoint coordinates in [-1, 1]."""
        n, _, h, w = x.shape
        logits = self.proj(x).flatten(2) / self.temperature  # (N, K, h*w)
        attn = logits.softmax(-1)  # (N, K, h*w)
        ys = torch.linspace(-1, 1, h, device=x.device, dtype=x.dtype)
        xs = torch.linspace(-1, 1, w, device=x.device, dtype=x.dtype)
        gy, gx = torch.meshgrid(ys, xs, indexing="ij")  # (h, w) each
        coords = torch.stack([gx.reshape(-1), gy.reshape(-1)], -1)  # (h*w, 2)
        kp = attn @ coords  # (N, K, 2)
        return kp.reshape(n, -1)  # (N, 2K)


class ResNet18GNEncoder(VisionEncoder):
    """ResNet-18 / GroupNorm image encoder from scratch; trainable by default.

    Args:
        pool: "avg" or "spatial_softmax".
        num_keypoints: K for spatial-softmax pooling.
        base_width: channels of the first stage (64 in ResNet-18; smaller for quick tests).
        group_size: channels per GroupNorm group (16 as in Diffusion Policy).
        frozen: freeze the random weights (rarely useful; kept for symmetry).
        seed: seeds the initialisation when not None.
        name: feature-cache name, default "resnet18_gn".
    """

    POOLS = ("avg", "spatial_softmax")

    def __init__(self, pool: str = "avg", num_keypoints: int = 32, base_width: int = 64, group_size: int = 16,
                 frozen: bool = False, seed: int | None = 0, name: str | None = None):
        super().__init__()
        if pool not in self.POOLS:
            raise ValueError(f"resnet18_gn: unknown pool {pool!r}; choose one of {self.POOLS}")
        if base_width < 1 or num_keypoints < 1 or group_size < 1:
            raise ValueError(f"resnet18_gn: base_width, num_keypoints, group_size must be >= 1, "
                             f"got {base_width}, {num_keypoints}, {group_size}")
        widths = [base_width, 2 * base_width, 4 * base_width, 8 * base_width]
        with seeded_init(seed):
            self.stem = nn.Sequential(nn.Conv2d(3, widths[0], 7, 2, 3, bias=False), _gn(widths[0], group_size),
                                      nn.ReLU(), nn.MaxPool2d(3, 2, 1))
            stages, cin = [], widths[0]
            for i, c in enumerate(widths):
                stride = 1 if i == 0 else 2
                stages.append(nn.Sequential(BasicBlock(cin, c, stride, group_size), BasicBlock(c, c, 1, group_size)))
                cin = c
            self.stages = nn.Sequential(*stages)
            if pool == "spatial_softmax":
                self.keypoints = SpatialSoftmax(widths[-1], num_keypoints)
                self.kp_proj = nn.Linear(2 * num_keypoints, widths[-1])
            for m in self.modules():
                if isinstance(m, nn.Conv2d):
                    nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            for stage in self.stages:  # zero-init the last norm of each residual branch
                for block in stage:
                    nn.init.zeros_(block.norm2.weight)
        self.pool = pool
        self.out_dim = widths[-1]
        self.frozen = bool(frozen)
        self.name = name or "resnet18_gn"
        self._apply_freeze()

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """images (N, 3, H, W) in [0, 1] -> grid (N, 512, H/32, W/32), pooled (N, 512)."""
        images = check_images(images, self.name, self)
        with self._grad_ctx():
            x = self.stem(images * 2.0 - 1.0)  # (N, w0, H/4, W/4)
            grid = self.stages(x)  # (N, 8 w0, H/32, W/32)
            if self.pool == "avg":
                pooled = grid.mean(dim=(2, 3))  # (N, C)
            else:
                pooled = self.kp_proj(self.keypoints(grid))  # (N, 2K) -> (N, C)
        return grid, pooled

    def grid_size(self, image_hw: Sequence[int]) -> tuple[int, int]:
        """(h, w): five halvings (stem conv, max-pool, three strided stages), rounding up."""
        h, w = (int(s) for s in image_hw)
        return downsampled(h, 5), downsampled(w, 5)
