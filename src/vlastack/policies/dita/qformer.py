"""Dita's image tokenizer: a Q-Former with FiLM conditioning on the instruction.

A fixed set of learned queries reads one image's patch grid through ``layers`` blocks of
(self-attention over the queries, cross-attention to the patches, MLP); after every block
the queries are modulated by the mean-pooled instruction embedding, ``x * (1 + gamma) + beta``,
with gamma and beta zero-initialised (FiLM starts as the identity). Every camera and frame
goes through the same Q-Former; the policy tells them apart with learned embeddings.

Shape letters: N images, C patch channels, (h, w) patch grid, Q queries, D Q-Former width,
D_t text width.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from ..layers import CrossAttention, Mlp, SelfAttention, sinusoidal_2d


class FiLM(nn.Module):
    """Conditioning vector (N, D_c) -> per-channel ``x * (1 + gamma) + beta`` on x (N, L, D); zero-initialised."""

    def __init__(self, cond_dim: int, dim: int):
        super().__init__()
        self.proj = nn.Linear(cond_dim, 2 * dim)
        nn.init.zeros_(self.proj.weight)
        nn.init.zeros_(self.proj.bias)

    def forward(self, x: Tensor, cond: Tensor) -> Tensor:
        """x (N, L, D), cond (N, D_c) -> (N, L, D)."""
        gamma, beta = self.proj(cond).chunk(2, dim=-1)  # 2 x (N, D)
        return x * (1 + gamma[:, None]) + beta[:, None]  # (N, L, D)


class QFormerBlock(nn.Module):
    """Pre-LN self-attention over queries, cross-attention to patches, MLP, then FiLM from the text."""

    def __init__(self, dim: int, heads: int, text_dim: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.self_attn = SelfAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.cross = CrossAttention(dim, dim, heads)
        self.norm3 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.film = FiLM(text_dim, dim)

    def forward(self, q: Tensor, patches: Tensor, text: Tensor) -> Tensor:
        """q (N, Q, D), patches (N, S, D), text (N, D_t) -> (N, Q, D)."""
        q = q + self.self_attn(self.norm1(q))  # (N, Q, D)
        q = q + self.cross(self.norm2(q), patches)  # (N, Q, D)
        q = q + self.mlp(self.norm3(q))  # (N, Q, D)
        return self.film(q, text)  # (N, Q, D)


class QFormer(nn.Module):
    """Patch grids (N, C, h, w) + pooled instruction (N, D_t) -> query tokens (N, Q, D).

    Patches are projected to the Q-Former width, given 2-D sinusoidal positions and a LayerNorm.
    """

    def __init__(self, feat_dim: int, dim: int, heads: int, layers: int, num_queries: int, text_dim: int,
                 grid: tuple[int, int], mlp_ratio: float = 4.0):
        super().__init__()
        self.grid = tuple(int(g) for g in grid)
        self.patch_proj = nn.Linear(feat_dim, dim)
        self.register_buffer("patch_pos", sinusoidal_2d(*self.grid, dim), persistent=False)  # (h*w, D)
        self.patch_norm = nn.LayerNorm(dim)
        self.queries = nn.Parameter(torch.randn(num_queries, dim) * 0.02)  # (Q, D)
        self.blocks = nn.ModuleList(QFormerBlock(dim, heads, text_dim, mlp_ratio) for _ in range(layers))
        self.norm_out = nn.LayerNorm(dim)

    def forward(self, grids: Tensor, text: Tensor) -> Tensor:
        """grids (N, C, h, w), text (N, D_t) -> (N, Q, D)."""
        if tuple(grids.shape[-2:]) != self.grid:
            raise ValueError(f"Q-Former built for a {self.grid} patch grid, got {tuple(grids.shape[-2:])}")
        p = self.patch_proj(grids.flatten(2).transpose(1, 2).to(self.queries.dtype))  # (N, h*w, D)
        p = self.patch_norm(p + self.patch_pos)  # (N, h*w, D)
        q = self.queries.expand(grids.shape[0], -1, -1)  # (N, Q, D)
        for blk in self.blocks:
            q = blk(q, p, text)  # (N, Q, D)
        return self.norm_out(q)  # (N, Q, D)
