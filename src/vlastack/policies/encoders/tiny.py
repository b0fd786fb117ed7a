"""Tiny random encoders for fast tests of other modules (deterministic given a seed).

Vision: a few strided 3x3 convolutions (stride ``stride``, ``out_dim`` channels).
Text: words hashed (CRC32, stable across processes, unlike ``hash()``) into a small
embedding table, plus fixed sinusoidal positions and a leading start token, so
different instructions and word orders give different tokens.
"""

from __future__ import annotations

import math
import re
import zlib
from typing import Sequence

import torch
from torch import Tensor, nn

from .base import TextEncoder, VisionEncoder, check_images, check_texts, downsampled, masked_mean, \
    module_device, seeded_init, sinusoidal_1d


class TinyVisionEncoder(VisionEncoder):
    """log2(stride) conv3x3/stride-2 + SiLU layers -> grid (N, out_dim, H/stride, W/stride); frozen by default."""

    def __init__(self, out_dim: int = 32, stride: int = 16, hidden: int = 16, seed: int = 0, frozen: bool = True,
                 name: str | None = None):
        super().__init__()
        n_down = int(round(math.log2(stride))) if stride >= 1 else -1
        if stride < 2 or 2 ** n_down != stride:
            raise ValueError(f"tiny vision: stride must be a power of two >= 2, got {stride}")
        if out_dim < 1 or hidden < 1:
            raise ValueError(f"tiny vision: out_dim and hidden must be >= 1, got {out_dim}, {hidden}")
        layers: list[nn.Module] = []
        cin = 3
        with seeded_init(seed):
            for i in range(n_down):
                cout = out_dim if i == n_down - 1 else hidden
                layers.append(nn.Conv2d(cin, cout, 3, 2, 1))
                if i < n_down - 1:
                    layers.append(nn.SiLU())
                cin = cout
        self.net = nn.Sequential(*layers)
        self._n_down = n_down
        self.out_dim = int(out_dim)
        self.frozen = bool(frozen)
        self.name = name or "tiny"
        self._apply_freeze()

    def forward(self, images: Tensor) -> tuple[Tensor, Tensor]:
        """images (N, 3, H, W) in [0, 1] -> grid (N, C, H/stride, W/stride), pooled (N, C)."""
        images = check_images(images, self.name, self)
        with self._grad_ctx():
            grid = self.net(images * 2.0 - 1.0)  # (N, C, h, w)
            pooled = grid.mean(dim=(2, 3))  # (N, C)
        return grid, pooled

    def grid_size(self, image_hw: Sequence[int]) -> tuple[int, int]:
        """(ceil(H / stride), ceil(W / stride))."""
        h, w = (int(s) for s in image_hw)
        return downsampled(h, self._n_down), downsampled(w, self._n_down)


_WORD = re.compile(r"[a-z0-9]+")


class TinyTextEncoder(TextEncoder):
    """Hashed word embeddings + sinusoidal positions; tokens (N, L, D) with L <= max_length; frozen by default."""

    def __init__(self, out_dim: int = 32, vocab_size: int = 1024, max_length: int = 16, seed: int = 0,
                 frozen: bool = True, name: str | None = None):
        super().__init__()
        if vocab_size < 3 or max_length < 2 or out_dim < 2:
            raise ValueError(f"tiny text: need vocab_size >= 3, max_length >= 2, out_dim >= 2; "
                             f"got {vocab_size}, {max_length}, {out_dim}")
        with seeded_init(seed):
            self.embed = nn.Embedding(vocab_size, out_dim, padding_idx=0)
            nn.init.normal_(self.embed.weight, std=1.0)
            with torch.no_grad():
                self.embed.weight[0].zero_()
        self.register_buffer("pos", sinusoidal_1d(max_length, out_dim), persistent=False)  # (L_max, D)
        self.vocab_size = int(vocab_size)
        self.max_length = int(max_length)
        self.out_dim = int(out_dim)
        self.frozen = bool(frozen)
        self.name = name or "tiny"
        self._apply_freeze()

    def token_ids(self, text: str) -> list[int]:
        """Start token (1) then one id per lower-cased word, hashed into [2, vocab_size); truncated."""
        ids = [1] + [2 + zlib.crc32(w.encode()) % (self.vocab_size - 2) for w in _WORD.findall(text.lower())]
        return ids[: self.max_length]

    def forward(self, texts: list[str]) -> tuple[Tensor, Tensor, Tensor]:
        """texts (N strings) -> tokens (N, L, D), mask (N, L) bool True=valid, pooled (N, D)."""
        texts = check_texts(texts, self.name)
        ids = [self.token_ids(t) for t in texts]
        length = max(len(i) for i in ids)
        device = module_device(self)
        idx = torch.zeros(len(texts), length, dtype=torch.long, device=device)  # (N, L)
        for i, row in enumerate(ids):
            idx[i, : len(row)] = torch.tensor(row, dtype=torch.long)
        mask = idx != 0  # (N, L)
        with self._grad_ctx():
            tokens = (self.embed(idx) + self.pos[:length]) * mask.unsqueeze(-1)  # (N, L, D), padding zeroed
            pooled = masked_mean(tokens, mask)  # (N, D)
        return tokens, mask, pooled
