"""Transformer building blocks shared by the policies (DUST, Dita).

Read bottom-up: position and timestep embeddings, attention helpers, then the
blocks (adaLN-zero DiT block with optional cross-attention, MMDiT block with one
joint self-attention over several token streams). Every attention runs on
:func:`torch.nn.functional.scaled_dot_product_attention`. The networks here know
nothing of noise schedules (those live in :mod:`vlastack.policies.noise`).

Shape letters: B batch, L sequence length, S conditioning length, D width,
nh heads, hd head width.
"""

from __future__ import annotations

import math
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# ---------------------------------------------------------------- embeddings


def sinusoidal_1d(positions: Tensor, dim: int, max_period: float = 10000.0) -> Tensor:
    """Fixed sinusoidal embedding of (possibly fractional) positions.

    positions: (...,) float or int; returns (..., dim) float32 with
    ``[sin(p * w_0), ..., sin(p * w_{dim/2-1}), cos(p * w_0), ...]`` and
    ``w_i = max_period ** (-i / (dim/2))``. ``dim`` must be even.
    """
    if dim % 2:
        raise ValueError(f"sinusoidal embedding needs an even dim, got {dim}")
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32,
                                                           device=positions.device) / half)  # (half,)
    args = positions.float()[..., None] * freqs  # (..., half)
    return torch.cat([torch.sin(args), torch.cos(args)], dim=-1)  # (..., dim)


def sinusoidal_2d(height: int, width: int, dim: int, device=None) -> Tensor:
    """2-D sinusoidal embedding of a ``height x width`` grid, row-major.

    Half the channels encode the row, half the column (as in MAE / DiT).
    Returns (height * width, dim); ``dim`` must be divisible by 4.
    """
    if dim % 4:
        raise ValueError(f"2-D sinusoidal embedding needs dim divisible by 4, got {dim}")
    rows = torch.arange(height, device=device).repeat_interleave(width)  # (h*w,)
    cols = torch.arange(width, device=device).repeat(height)  # (h*w,)
    return torch.cat([sinusoidal_1d(rows, dim // 2), sinusoidal_1d(cols, dim // 2)], dim=-1)  # (h*w, dim)


class TimestepEmbedding(nn.Module):
    """Noise level -> conditioning vector: sinusoid of ``t * scale`` then a 2-layer SiLU MLP.

    Flow matching passes tau in [0, 1] with ``scale=1000`` (so the sinusoid sees the
    same range as integer DDPM steps, which pass ``scale=1``).
    """

    def __init__(self, dim: int, freq_dim: int = 256, scale: float = 1000.0):
        super().__init__()
        self.freq_dim, self.scale = freq_dim, scale
        self.mlp = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))
        nn.init.normal_(self.mlp[0].weight, std=0.02)
        nn.init.normal_(self.mlp[2].weight, std=0.02)
        nn.init.zeros_(self.mlp[0].bias)
        nn.init.zeros_(self.mlp[2].bias)

    def forward(self, t: Tensor) -> Tensor:
        """t: (B,) -> (B, dim)."""
        freq = sinusoidal_1d(t.float() * self.scale, self.freq_dim)  # (B, freq_dim)
        return self.mlp(freq.to(self.mlp[0].weight.dtype))  # (B, dim)


# ---------------------------------------------------------------- helpers


def _over_tokens(v: Tensor) -> Tensor:
    """A modulation vector per sample (B, D) -> (B, 1, D); one per token (B, L, D) stays as is."""
    return v[:, None] if v.dim() == 2 else v


def modulate(x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """adaLN modulation: x (B, L, D), shift/scale (B, D) or per token (B, L, D) -> (B, L, D)."""
    return x * (1 + _over_tokens(scale)) + _over_tokens(shift)


def norm_modulate(norm: nn.LayerNorm, x: Tensor, shift: Tensor, scale: Tensor) -> Tensor:
    """``modulate(norm(x), shift, scale)`` for a LayerNorm without affine: x (B, L, D) -> (B, L, D).

    When the modulation is shared by the whole batch (shift/scale (1, D), as in sampling, where
    every sample is at the same noise level) it is one ``layer_norm`` call with weight 1 + scale
    and bias shift instead of four element-wise passes. Per-token modulations (B or 1, L, D)
    take the element-wise path.
    """
    if shift.dim() == 2 and shift.shape[0] == 1 and scale.shape[0] == 1 and norm.weight is None:
        return F.layer_norm(x, norm.normalized_shape, 1 + scale[0], shift[0], norm.eps)  # (B, L, D)
    return modulate(norm(x), shift, scale)


def gated_add(x: Tensor, gate: Tensor, y: Tensor) -> Tensor:
    """Gated residual ``x + gate * y`` in one pass: x, y (B, L, D), gate (B or 1, D) or (B or 1, L, D) -> (B, L, D)."""
    return torch.addcmul(x, _over_tokens(gate), y)


def _split_heads(x: Tensor, heads: int) -> Tensor:
    b, n, d = x.shape
    return x.view(b, n, heads, d // heads).transpose(1, 2)  # (B, nh, L, hd)


def _merge_heads(x: Tensor) -> Tensor:
    b, h, n, hd = x.shape
    return x.transpose(1, 2).reshape(b, n, h * hd)  # (B, L, D)


def key_padding_bias(valid: Tensor | None) -> Tensor | None:
    """Boolean key mask (B, S) True = attend -> SDPA-ready (B, 1, 1, S) bool mask (or None).

    A float (B, S) additive mask (0 = attend, -inf = ignore) passes through the same way; callers
    that reuse one mask for many attention calls precompute it so SDPA does not convert it each time.
    """
    if valid is None:
        return None
    return valid[:, None, None, :]  # (B, 1, 1, S)


class Mlp(nn.Module):
    """Two-layer feed-forward: Linear -> GELU(tanh) -> Linear."""

    def __init__(self, dim: int, hidden: int, out_dim: int | None = None):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, out_dim or dim)

    def forward(self, x: Tensor) -> Tensor:
        """(B, L, D) -> (B, L, out_dim)."""
        return self.fc2(F.gelu(self.fc1(x), approximate="tanh"))


class SelfAttention(nn.Module):
    """Multi-head self-attention with fused QKV; optional key mask and causal mask."""

    def __init__(self, dim: int, heads: int, qk_norm: bool = False):
        super().__init__()
        if dim % heads:
            raise ValueError(f"width {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.q_norm = nn.LayerNorm(dim // heads) if qk_norm else nn.Identity()
        self.k_norm = nn.LayerNorm(dim // heads) if qk_norm else nn.Identity()

    def forward(self, x: Tensor, key_valid: Tensor | None = None, causal: bool = False) -> Tensor:
        """x (B, L, D), key_valid (B, L) bool True = attend -> (B, L, D)."""
        q, k, v = self.qkv(x).chunk(3, dim=-1)  # 3 x (B, L, D)
        q, k, v = (_split_heads(t, self.heads) for t in (q, k, v))  # (B, nh, L, hd)
        q, k = self.q_norm(q), self.k_norm(k)
        mask = key_padding_bias(key_valid)
        if causal and mask is not None:
            n = x.shape[1]
            mask = mask & torch.ones(n, n, dtype=torch.bool, device=x.device).tril()  # (B, 1, L, L)
            causal = False
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, is_causal=causal)  # (B, nh, L, hd)
        return self.proj(_merge_heads(out))  # (B, L, D)


class CrossAttention(nn.Module):
    """Multi-head attention from a token sequence (queries) to a conditioning sequence.

    The conditioning's keys and values can be computed once with :meth:`context_kv`
    and passed back in place of the context (they do not change across denoising steps).

    Given the raw context, few queries and a longer context (a training step: DUST's streams
    of 8-17 tokens against 40-70 conditioning tokens), projecting every context token to keys and
    values costs more than the attention itself. Then the projections are folded into the queries
    instead (:meth:`absorbed`): per head, ``q_h . (W_k,h c) = (W_k,h^T q_h) . c`` and
    ``sum_j p_j W_v,h c_j = W_v,h (sum_j p_j c_j)``, so the cost grows with the queries, not the
    context. The key bias adds the same amount to every score of a query, which the softmax
    cancels, and the value bias passes through the (normalised) weights unchanged. Same
    parameters, same function; outputs and gradients equal the plain path to float rounding.
    :meth:`absorbs` decides by counting multiply-adds.
    """

    def __init__(self, dim: int, context_dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"width {dim} is not divisible by {heads} heads")
        self.heads = heads
        self.q = nn.Linear(dim, dim)
        self.kv = nn.Linear(context_dim, 2 * dim)
        self.proj = nn.Linear(dim, dim)

    def context_kv(self, context: Tensor) -> tuple[Tensor, Tensor]:
        """context (B, S, C) -> keys and values, each (B, nh, S, hd)."""
        k, v = self.kv(context).chunk(2, dim=-1)  # 2 x (B, S, D)
        return _split_heads(k, self.heads), _split_heads(v, self.heads)

    def absorbs(self, n_queries: int, n_context: int) -> bool:
        """Whether :meth:`absorbed` takes fewer multiply-adds than projecting the context to keys and values.

        Plain: keys and values of S context tokens (2 S C D) plus the attention (2 L S D). Absorbed:
        queries into context space and back (2 L D C) plus the attention in context space (2 nh L S C).
        """
        d, c = self.q.out_features, self.kv.in_features
        plain = n_context * c * d + n_queries * n_context * d
        folded = n_queries * d * c + self.heads * n_queries * n_context * c
        return folded < plain

    def absorbed(self, x: Tensor, context: Tensor, context_valid: Tensor | None = None) -> Tensor:
        """The attention with the key/value projections folded into the queries (see the class docstring).

        x (B, L, D), context (B, S, C), context_valid (B, S) bool -> (B, L, D). A sample whose keys
        are all masked has no defined attention; the two paths then differ (by the value bias).
        """
        b, n, d = x.shape
        nh, c = self.heads, context.shape[-1]
        hd = d // nh
        w_k, w_v = self.kv.weight[:d].view(nh, hd, c), self.kv.weight[d:].view(nh, hd, c)  # (nh, hd, C) each
        q = self.q(x).view(b * n, nh, hd).transpose(0, 1)  # (nh, B*L, hd)
        qc = torch.bmm(q, w_k).view(nh, b, n, c).transpose(0, 1).reshape(b, 1, nh * n, c)  # (B, 1, nh*L, C)
        ctx = context[:, None]  # (B, 1, S, C): one "head" of width C, keys = values = the context
        mask = None if context_valid is None else context_valid[:, None, None, :]  # (B, 1, 1, S)
        pc = F.scaled_dot_product_attention(qc, ctx, ctx, attn_mask=mask, scale=hd ** -0.5)  # (B, 1, nh*L, C)
        pc = pc.view(b, nh, n, c).transpose(0, 1).reshape(nh, b * n, c)  # (nh, B*L, C)
        out = torch.bmm(pc, w_v.transpose(1, 2))  # (nh, B*L, hd)
        out = out.view(nh, b, n, hd).permute(1, 2, 0, 3).reshape(b, n, d)  # (B, L, D)
        if self.kv.bias is not None:
            out = out + self.kv.bias[d:]  # the value bias (the key bias cancels in the softmax)
        return self.proj(out)  # (B, L, D)

    def forward(self, x: Tensor, context: Tensor | tuple[Tensor, Tensor],
                context_valid: Tensor | None = None) -> Tensor:
        """x (B, L, D), context (B, S, C) or precomputed (k, v), context_valid (B, S) bool -> (B, L, D)."""
        if not isinstance(context, tuple) and self.absorbs(x.shape[1], context.shape[1]):
            return self.absorbed(x, context, context_valid)
        k, v = context if isinstance(context, tuple) else self.context_kv(context)  # (B, nh, S, hd)
        q = _split_heads(self.q(x), self.heads)  # (B, nh, L, hd)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=key_padding_bias(context_valid))
        return self.proj(_merge_heads(out))  # (B, L, D)


class TransformerBlock(nn.Module):
    """Plain pre-LN transformer block (self-attention + MLP), e.g. a conditioning encoder layer."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: Tensor, key_valid: Tensor | None = None, causal: bool = False) -> Tensor:
        """x (B, L, D) -> (B, L, D)."""
        x = x + self.attn(self.norm1(x), key_valid, causal)  # (B, L, D)
        return x + self.mlp(self.norm2(x))  # (B, L, D)


# ---------------------------------------------------------------- blocks


class AdaLNZero(nn.Module):
    """c (B, D) -> ``n`` modulation vectors (B, D) each; zero-initialised (the block starts as identity)."""

    def __init__(self, dim: int, n: int):
        super().__init__()
        self.n = n
        self.linear = nn.Linear(dim, n * dim)
        nn.init.zeros_(self.linear.weight)
        nn.init.zeros_(self.linear.bias)

    def forward(self, c: Tensor) -> tuple[Tensor, ...]:
        """(B, D) -> n x (B, D)."""
        return self.linear(F.silu(c)).chunk(self.n, dim=-1)


class DiTBlock(nn.Module):
    """adaLN-zero DiT block: modulated self-attention, optional cross-attention, modulated MLP.

    x = x + g1 * Attn(mod(LN(x)));  x = x + CrossAttn(LN(x), ctx)  (when ``context_dim``);
    x = x + g2 * MLP(mod(LN(x))). Gates g start at zero, so a fresh block is the identity
    on its self-attention and MLP paths (the cross-attention path is PixArt-style, ungated).
    """

    def __init__(self, dim: int, heads: int, mlp_ratio: float = 4.0, context_dim: int | None = None):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.attn = SelfAttention(dim, heads)
        self.cross = CrossAttention(dim, context_dim, heads) if context_dim else None
        self.norm_cross = nn.LayerNorm(dim, eps=1e-6) if context_dim else None
        self.norm2 = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.ada = AdaLNZero(dim, 6)

    def forward(self, x: Tensor, c: Tensor | None, context: Tensor | tuple[Tensor, Tensor] | None = None,
                context_valid: Tensor | None = None, mod: Sequence[Tensor] | None = None) -> Tensor:
        """x (B, L, D), c (B, D), context (B, S, C) or its cached (k, v) -> (B, L, D).

        ``mod``: the six modulation vectors ``self.ada(c)`` precomputed (each (B or 1, D), or one per
        token (B or 1, L, D)); c is then unused.
        """
        sh1, sc1, g1, sh2, sc2, g2 = self.ada(c) if mod is None else mod  # 6 x (B, D)
        x = gated_add(x, g1, self.attn(norm_modulate(self.norm1, x, sh1, sc1)))  # (B, L, D)
        if self.cross is not None:
            if context is None:
                raise ValueError("this DiT block cross-attends: pass a conditioning context")
            x = x + self.cross(self.norm_cross(x), context, context_valid)  # (B, L, D)
        return gated_add(x, g2, self.mlp(norm_modulate(self.norm2, x, sh2, sc2)))  # (B, L, D)


class MMDiTBlock(nn.Module):
    """Multimodal DiT block over several token streams (SD3-style, Mixture-of-Transformers).

    Each stream keeps its own adaLN modulation (from its own conditioning vector),
    LayerNorms, QKV, output projection, MLP and optional cross-attention; the streams
    meet in one joint self-attention over their concatenated tokens.

    ``forward(..., need=...)`` lets a caller skip the post-attention work (output
    projection, cross-attention, MLP) of streams whose output it will not read; the
    skipped stream still contributes keys and values to the joint attention.
    """

    def __init__(self, dim: int, heads: int, n_streams: int = 2, mlp_ratio: float = 4.0,
                 context_dim: int | None = None):
        super().__init__()
        if dim % heads:
            raise ValueError(f"width {dim} is not divisible by {heads} heads")
        self.heads, self.n_streams = heads, n_streams
        self.norm1 = nn.ModuleList(nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6) for _ in range(n_streams))
        self.qkv = nn.ModuleList(nn.Linear(dim, 3 * dim) for _ in range(n_streams))
        self.proj = nn.ModuleList(nn.Linear(dim, dim) for _ in range(n_streams))
        self.cross = nn.ModuleList(CrossAttention(dim, context_dim, heads) for _ in range(n_streams)) \
            if context_dim else None
        self.norm_cross = nn.ModuleList(nn.LayerNorm(dim, eps=1e-6) for _ in range(n_streams)) \
            if context_dim else None
        self.norm2 = nn.ModuleList(nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6) for _ in range(n_streams))
        self.mlp = nn.ModuleList(Mlp(dim, int(dim * mlp_ratio)) for _ in range(n_streams))
        self.ada = nn.ModuleList(AdaLNZero(dim, 6) for _ in range(n_streams))

    def forward(self, xs: Sequence[Tensor], cs: Sequence[Tensor],
                contexts: Sequence[Tensor | tuple[Tensor, Tensor] | None] | None = None,
                context_valid: Tensor | None = None,
                need: Sequence[bool] | None = None,
                mods: Sequence[Sequence[Tensor]] | None = None) -> list[Tensor | None]:
        """xs[i] (B, L_i, D), cs[i] (B, D), contexts[i] (B, S, C) or cached (k, v) for stream i.

        ``mods[i]``: stream i's six modulation vectors ``self.ada[i](cs[i])`` precomputed (each
        (B or 1, D)); cs is then unused. Returns a list of (B, L_i, D), with None for streams where
        ``need[i]`` is False.
        """
        conds = mods if mods is not None else cs
        if len(xs) != self.n_streams or conds is None or len(conds) != self.n_streams:
            raise ValueError(f"MMDiT block built for {self.n_streams} streams, got {len(xs)} inputs, "
                             f"{None if conds is None else len(conds)} conds")
        need = [True] * self.n_streams if need is None else list(need)
        if mods is None:
            mods = [ada(c) for ada, c in zip(self.ada, cs)]  # n x 6 x (B, D)
        qs, ks, vs = [], [], []
        for i, x in enumerate(xs):
            h = norm_modulate(self.norm1[i], x, mods[i][0], mods[i][1])  # (B, L_i, D)
            q, k, v = self.qkv[i](h).chunk(3, dim=-1)  # 3 x (B, L_i, D)
            qs.append(q), ks.append(k), vs.append(v)
        lens = [x.shape[1] for x in xs]
        k = _split_heads(torch.cat(ks, dim=1), self.heads)  # (B, nh, L, hd)
        v = _split_heads(torch.cat(vs, dim=1), self.heads)  # (B, nh, L, hd)
        if all(need):
            q = _split_heads(torch.cat(qs, dim=1), self.heads)  # (B, nh, L, hd)
            att = _merge_heads(F.scaled_dot_product_attention(q, k, v)).split(lens, dim=1)  # n x (B, L_i, D)
        else:  # only the queries of needed streams
            att = [_merge_heads(F.scaled_dot_product_attention(_split_heads(qs[i], self.heads), k, v))
                   if need[i] else None for i in range(self.n_streams)]  # (B, L_i, D) or None
        out: list[Tensor | None] = []
        for i, x in enumerate(xs):
            if not need[i]:
                out.append(None)
                continue
            sh1, sc1, g1, sh2, sc2, g2 = mods[i]
            x = gated_add(x, g1, self.proj[i](att[i]))  # (B, L_i, D)
            if self.cross is not None:
                ctx = contexts[i] if contexts is not None else None
                if ctx is None:
                    raise ValueError(f"this MMDiT block cross-attends: pass a context for stream {i}")
                x = x + self.cross[i](self.norm_cross[i](x), ctx, context_valid)  # (B, L_i, D)
            x = gated_add(x, g2, self.mlp[i](norm_modulate(self.norm2[i], x, sh2, sc2)))  # (B, L_i, D)
            out.append(x)
        return out


class FinalLayer(nn.Module):
    """DiT output head: adaLN-modulated LayerNorm then a projection (zero-initialised).

    ``head`` replaces the single Linear when given (e.g. DUST's 2-layer MLP decoder);
    its last Linear is zero-initialised.
    """

    def __init__(self, dim: int, out_dim: int, head: nn.Module | None = None):
        super().__init__()
        self.norm = nn.LayerNorm(dim, elementwise_affine=False, eps=1e-6)
        self.ada = AdaLNZero(dim, 2)
        self.head = head if head is not None else nn.Linear(dim, out_dim)
        last = [m for m in self.head.modules() if isinstance(m, nn.Linear)][-1]
        nn.init.zeros_(last.weight)
        nn.init.zeros_(last.bias)

    def forward(self, x: Tensor, c: Tensor | None, mod: Sequence[Tensor] | None = None) -> Tensor:
        """x (B, L, D), c (B, D) -> (B, L, out_dim); ``mod``: ``self.ada(c)`` precomputed (c then unused)."""
        shift, scale = self.ada(c) if mod is None else mod  # 2 x (B, D)
        return self.head(norm_modulate(self.norm, x, shift, scale))  # (B, L, out_dim)


class _PackedWeight:
    """A oneDNN-packed copy of one weight, with the weight object and version it was packed from.

    Not copied or pickled (copies repack on first use).
    """

    def __init__(self):
        self.source: Tensor | None = None
        self.version: tuple = ()
        self.packed: Tensor | None = None

    def __deepcopy__(self, memo) -> "_PackedWeight":
        return _PackedWeight()

    def __getstate__(self) -> dict:
        return {"source": None, "version": (), "packed": None}


class PrepackedLinear(nn.Linear):
    """An ``nn.Linear`` that, on the CPU without gradients, multiplies by a oneDNN-packed weight.

    Made from an existing Linear by :func:`prepack_linears` (same parameters, same state dict).
    At batch 1 a policy's linears are bound by reading their weights; ``F.linear`` reorders the
    weight into the kernel's blocked layout on every call, the packed copy is reordered once
    (and again only when the weight object or its version changes). Training, autograd, other
    devices, CPU autocast and dtype mismatches take the plain ``F.linear`` path; the packed
    result equals it to float rounding.
    """

    _pack: _PackedWeight

    def forward(self, x: Tensor) -> Tensor:
        """x (..., in_features) -> (..., out_features)."""
        w = self.weight
        if (torch.is_grad_enabled() and (w.requires_grad or x.requires_grad)) or x.device.type != "cpu" \
                or w.device.type != "cpu" or x.dtype != w.dtype or x.dim() < 2 or torch.is_autocast_enabled("cpu"):
            return F.linear(x, w, self.bias)
        pk = self.__dict__.get("_pack")
        if pk is None:
            pk = self.__dict__["_pack"] = _PackedWeight()
        version = (w._version, w.data_ptr(), w.dtype, tuple(w.shape))  # `.to()` swaps .data in place
        if pk.source is not w or pk.version != version:
            with torch.no_grad():
                pk.packed = torch.ops.mkldnn._reorder_linear_weight(w.detach().contiguous(), 16)
            pk.source, pk.version = w, version
        return torch.ops.mkldnn._linear_pointwise(x.contiguous(), pk.packed, self.bias, "none", [], "")


def prepack_linears(module: nn.Module) -> int:
    """Turn every ``nn.Linear`` inside ``module`` into a :class:`PrepackedLinear` in place; returns how many.

    Parameters, state-dict keys and training behaviour are unchanged; only CPU inference without
    gradients takes the packed path. No-op (returns 0) where torch has no oneDNN.
    """
    if not torch.backends.mkldnn.is_available():
        return 0
    n = 0
    for m in module.modules():
        if type(m) is nn.Linear:
            m.__class__ = PrepackedLinear
            n += 1
    return n


def mlp_stack(in_dim: int, hidden: int, out_dim: int, layers: int, act: type[nn.Module] = nn.SiLU) -> nn.Sequential:
    """``layers`` Linear layers with ``act`` between them: in_dim -> hidden ... -> out_dim."""
    if layers < 1:
        raise ValueError(f"an MLP needs at least one layer, got {layers}")
    dims = [in_dim] + [hidden] * (layers - 1) + [out_dim]
    mods: list[nn.Module] = []
    for i in range(layers):
        mods.append(nn.Linear(dims[i], dims[i + 1]))
        if i < layers - 1:
            mods.append(act())
    return nn.Sequential(*mods)


# ---------------------------------------------------------------- LLaMA-style causal blocks


class SwiGLU(nn.Module):
    """LLaMA feed-forward: ``W2(SiLU(W1 x) * W3 x)`` (W1 and W3 fused into one Linear), no biases."""

    def __init__(self, dim: int, hidden: int, bias: bool = False):
        super().__init__()
        self.hidden = hidden
        self.w13 = nn.Linear(dim, 2 * hidden, bias=bias)
        self.w2 = nn.Linear(hidden, dim, bias=bias)

    def forward(self, x: Tensor) -> Tensor:
        """(B, L, D) -> (B, L, D)."""
        gate, up = self.w13(x).chunk(2, dim=-1)  # 2 x (B, L, hidden)
        return self.w2(F.silu(gate) * up)  # (B, L, D)


class RotaryEmbedding(nn.Module):
    """Rotary positions (RoPE, LLaMA's half-split convention) for heads of width ``head_dim``.

    ``forward(positions)`` gives the (cos, sin) pair that :func:`apply_rotary` applies to queries
    and keys; attention scores then depend only on relative positions. Positions may differ per
    sample (e.g. counted over valid tokens only, so padding does not shift later tokens).
    """

    def __init__(self, head_dim: int, base: float = 10000.0):
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"rotary embedding needs an even head width, got {head_dim}")
        inv = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)  # (hd/2,)
        self.register_buffer("inv_freq", inv, persistent=False)

    def forward(self, positions: Tensor) -> tuple[Tensor, Tensor]:
        """positions (L,) or (B, L) -> cos, sin, each (1 or B, 1, L, hd) float32."""
        pos = positions[None] if positions.dim() == 1 else positions  # (B|1, L)
        ang = pos.float()[..., None] * self.inv_freq  # (B|1, L, hd/2)
        ang = torch.cat([ang, ang], dim=-1)[:, None]  # (B|1, 1, L, hd)
        return ang.cos(), ang.sin()


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate x (B, nh, L, hd) by positions' cos/sin (B|1, 1, L, hd) -> (B, nh, L, hd)."""
    x1, x2 = x.chunk(2, dim=-1)  # 2 x (B, nh, L, hd/2)
    return x * cos.to(x.dtype) + torch.cat([-x2, x1], dim=-1) * sin.to(x.dtype)


def causal_mask(key_valid: Tensor, q_len: int) -> Tensor:
    """SDPA bool mask (B, 1, q_len, S) for queries at the last ``q_len`` of S positions.

    Query i (absolute position S - q_len + i) attends to key j iff j <= S - q_len + i and
    ``key_valid[:, j]``. With q_len = S it is the usual causal mask with key padding; with a
    cached prefix (S = prefix + q_len) it lets new tokens see every valid prefix key.
    """
    s = key_valid.shape[1]
    if not 1 <= q_len <= s:
        raise ValueError(f"causal mask: q_len must be in [1, {s}], got {q_len}")
    tri = torch.ones(q_len, s, dtype=torch.bool, device=key_valid.device).tril(diagonal=s - q_len)  # (q_len, S)
    return tri[None, None] & key_valid.bool()[:, None, None, :]  # (B, 1, q_len, S)


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention with rotary positions and reusable keys/values.

    ``forward(x, rope, mask, past)`` attends from x's tokens to ``past`` keys/values (a cached
    prefix, already rotated) followed by x's own, and also returns x's keys/values for caching.
    """

    def __init__(self, dim: int, heads: int, bias: bool = False):
        super().__init__()
        if dim % heads:
            raise ValueError(f"width {dim} is not divisible by {heads} heads")
        self.heads, self.dim = heads, dim
        self.qkv = nn.Linear(dim, 3 * dim, bias=bias)
        self.proj = nn.Linear(dim, dim, bias=bias)

    def kv(self, x: Tensor, rope: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        """Only the keys/values of x (B, L, D): each (B, nh, L, hd), keys rotated."""
        w = self.qkv.weight[self.dim:]  # (2D, D)
        b = self.qkv.bias[self.dim:] if self.qkv.bias is not None else None
        k, v = F.linear(x, w, b).chunk(2, dim=-1)  # 2 x (B, L, D)
        return apply_rotary(_split_heads(k, self.heads), *rope), _split_heads(v, self.heads)

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor], mask: Tensor | None,
                past: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """x (B, L, D), rope for x's positions, mask (B, 1, L, P + L) bool, past (k, v) each (B, nh, P, hd).

        Returns out (B, L, D) and x's own (k, v), each (B, nh, L, hd).
        """
        q, k, v = self.qkv(x).chunk(3, dim=-1)  # 3 x (B, L, D)
        q = apply_rotary(_split_heads(q, self.heads), *rope)  # (B, nh, L, hd)
        k = apply_rotary(_split_heads(k, self.heads), *rope)  # (B, nh, L, hd)
        v = _split_heads(v, self.heads)  # (B, nh, L, hd)
        k_all = torch.cat([past[0], k], dim=2) if past is not None else k  # (B, nh, P+L, hd)
        v_all = torch.cat([past[1], v], dim=2) if past is not None else v  # (B, nh, P+L, hd)
        out = F.scaled_dot_product_attention(q, k_all, v_all, attn_mask=mask)  # (B, nh, L, hd)
        return self.proj(_merge_heads(out)), (k, v)


class LlamaBlock(nn.Module):
    """Pre-norm LLaMA block: RMSNorm -> rotary causal self-attention, RMSNorm -> SwiGLU; no biases."""

    def __init__(self, dim: int, heads: int, mlp_hidden: int, eps: float = 1e-6):
        super().__init__()
        self.norm1 = nn.RMSNorm(dim, eps=eps)
        self.attn = CausalSelfAttention(dim, heads)
        self.norm2 = nn.RMSNorm(dim, eps=eps)
        self.mlp = SwiGLU(dim, mlp_hidden)

    def kv(self, x: Tensor, rope: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        """Keys/values this block's attention makes from x (B, L, D) (skips everything else)."""
        return self.attn.kv(self.norm1(x), rope)

    def forward(self, x: Tensor, rope: tuple[Tensor, Tensor], mask: Tensor | None,
                past: tuple[Tensor, Tensor] | None = None) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        """x (B, L, D) -> (B, L, D) and x's (k, v) for caching; see :class:`CausalSelfAttention`."""
        h, kv = self.attn(self.norm1(x), rope, mask, past)  # (B, L, D)
        x = x + h
        return x + self.mlp(self.norm2(x)), kv  # (B, L, D)
