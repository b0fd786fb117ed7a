"""DUST: a dual-stream flow-matching VLA with a world-model stream (arXiv 2510.27607).

Read bottom-up: the conditioning encoder (current-frame vision tokens + instruction tokens
through a small self-attention stack), the dual-stream denoiser (action stream: state token +
H action tokens; vision stream: pooled frozen-encoder features of the future frame o_{t+k};
N MMDiT blocks with joint attention, then stream-specific DiT blocks, each stream with its own
timestep embedding), then the policy (the two verbs, input checks, the asynchronous sampler).

Shape letters: B batch, T frames in a window, K cameras, C vision-feature channels, (h, w)
encoder grid, S conditioning tokens, H action horizon, N_v future tokens, W width.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ...types import ACTION, STATE, TASK, ActionChunk, ContractError, Observation, image_key, pad_key
from ..base import Policy, check_tasks, feature_key, images_to_float, register_policy, to_tensor
from ..layers import (DiTBlock, FinalLayer, MMDiTBlock, TimestepEmbedding, TransformerBlock, mlp_stack,
                      prepack_linears, sinusoidal_1d, sinusoidal_2d)
from ..noise import FlowMatching
from ..normalizer import Normalizer
from .config import DUSTConfig
from .strategies import make_strategy

HAS_ACTION = "has_action"  # optional (B,) bool batch key: False marks action-free (video) samples


# ---------------------------------------------------------------- conditioning


class ConditionEncoder(nn.Module):
    """Current-frame vision tokens + instruction tokens -> a self-attention stack -> (B, S, W).

    Vision tokens get 2-D sinusoidal positions, a learned camera embedding and a learned
    history-step embedding; text tokens 1-D positions and a learned type embedding.
    """

    def __init__(self, vision_dim: int, text_dim: int, width: int, heads: int, layers: int, n_cams: int,
                 n_obs: int, grid: tuple[int, int], mlp_ratio: float):
        super().__init__()
        self.vision_proj = nn.Linear(vision_dim, width)
        self.text_proj = nn.Linear(text_dim, width)
        self.camera_embed = nn.Parameter(torch.randn(n_cams, width) * 0.02)  # (K, W)
        self.step_embed = nn.Parameter(torch.randn(n_obs, width) * 0.02)  # (n_obs, W)
        self.text_embed = nn.Parameter(torch.randn(width) * 0.02)  # (W,)
        self.register_buffer("grid_pos", sinusoidal_2d(*grid, width), persistent=False)  # (h*w, W)
        self.norm_in = nn.LayerNorm(width)
        self.blocks = nn.ModuleList(TransformerBlock(width, heads, mlp_ratio) for _ in range(layers))
        self.norm_out = nn.LayerNorm(width)

    def forward(self, grids: Tensor, text: Tensor, text_valid: Tensor) -> tuple[Tensor, Tensor]:
        """grids (B, n_obs, K, C, h, w), text (B, L, D_t), text_valid (B, L) -> ctx (B, S, W), valid (B, S)."""
        b, dt = grids.shape[0], self.vision_proj.weight.dtype
        v = grids.to(dt).flatten(-2).transpose(-1, -2)  # (B, n_obs, K, h*w, C)
        v = self.vision_proj(v) + self.grid_pos + self.camera_embed[None, None, :, None] \
            + self.step_embed[None, :, None, None]  # (B, n_obs, K, h*w, W)
        v = v.flatten(1, 3)  # (B, n_obs*K*h*w, W)
        pos = sinusoidal_1d(torch.arange(text.shape[1], device=text.device), v.shape[-1]).to(dt)  # (L, W)
        t = self.text_proj(text.to(dt)) + pos + self.text_embed  # (B, L, W)
        x = torch.cat([v, t], dim=1)  # (B, S, W)
        valid = torch.cat([torch.ones(b, v.shape[1], dtype=torch.bool, device=v.device),
                           text_valid.to(torch.bool)], dim=1)  # (B, S)
        x = self.norm_in(x)
        for blk in self.blocks:
            x = blk(x, valid)  # (B, S, W)
        return self.norm_out(x), valid


# ---------------------------------------------------------------- dual-stream denoiser


def _init_linears(module: nn.Module) -> None:
    """Xavier-uniform Linear weights and zero biases (DiT), before the zero-init of gates and heads."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


class DUSTNetwork(nn.Module):
    """The MMDiT denoiser: action stream (+ world-model stream) through MMDiT then stream-specific DiT blocks.

    Knows nothing of noise schedules: it maps noisy streams and their noise levels to velocities.
    Streams: index 0 = action (state token + H action tokens), index 1 = vision (future tokens).
    Each stream has its own weights everywhere (timestep embedding, adaLN, LayerNorms, QKV,
    projections, MLPs, cross-attention); the streams meet only in the MMDiT blocks' joint
    self-attention. Without a world model (strategy ``no_wm``) the MMDiT blocks have one stream
    and reduce to DiT blocks. :class:`SharedDiTNetwork` is the shared-weight DiT of the ablation.
    """

    def __init__(self, cfg: DUSTConfig, feat_dim: int, text_dim: int | None = None):
        super().__init__()
        w = cfg.width
        self.world_model = cfg.world_model
        # pooled instruction -> a vector added to every timestep embedding (cfg.instruction_adaln)
        self.instr_embed = None
        if cfg.instruction_adaln:
            if not text_dim:
                raise ValueError("instruction_adaln needs the text encoder's width (text_dim)")
            self.instr_embed = nn.Sequential(nn.Linear(text_dim, w), nn.SiLU(), nn.Linear(w, w))
        # action stream: encoders and positions
        self.state_enc = nn.Linear(cfg.n_obs_steps * cfg.state_dim, w)
        self.action_enc = nn.Linear(cfg.action_dim, w)
        self.register_buffer("action_pos", sinusoidal_1d(torch.arange(cfg.horizon + 1), w), persistent=False)
        # the block stack and its timestep embedding(s)
        self.build_trunk(cfg)
        # vision (world-model) stream: encoder and positions
        if self.world_model:
            hidden = cfg.future_mlp_hidden or w
            n_fc = len(cfg.future_camera_list)
            gh, gw = cfg.future_grid
            self.future_enc = mlp_stack(feat_dim, hidden, w, layers=3)
            self.future_camera_embed = nn.Parameter(torch.zeros(n_fc, w))  # (K_f, W), normal-init below
            self.register_buffer("future_pos", sinusoidal_2d(gh, gw, w).repeat(n_fc, 1), persistent=False)
        _init_linears(self)
        # re-apply the zero / small initialisations that xavier overwrote
        for m in self.modules():
            if hasattr(m, "ada") and isinstance(m.ada, nn.Module):
                for a in (m.ada if isinstance(m.ada, nn.ModuleList) else [m.ada]):
                    nn.init.zeros_(a.linear.weight), nn.init.zeros_(a.linear.bias)
        for mlp in [te.mlp for te in self.time_embedders()] + ([self.instr_embed] if self.instr_embed is not None else []):
            nn.init.normal_(mlp[0].weight, std=0.02), nn.init.normal_(mlp[2].weight, std=0.02)
        # decoders (zero-initialised last layers)
        self.action_out = FinalLayer(w, cfg.action_dim)
        if self.world_model:
            nn.init.normal_(self.future_camera_embed, std=0.02)
            self.vision_out = FinalLayer(w, feat_dim, head=mlp_stack(w, cfg.future_mlp_hidden or w, feat_dim, 2))
            _init_linears(self.vision_out.head)
            nn.init.zeros_(self.vision_out.head[-1].weight), nn.init.zeros_(self.vision_out.head[-1].bias)
        self.n_future = self.future_pos.shape[0] if self.world_model else 0
        self._mod_cache = ModulationCache()  # per-step adaLN modulations across chunks (not in the state dict)

    # ------------------------------------------------------------ the trunk (what the subclass replaces)

    def build_trunk(self, cfg: DUSTConfig) -> None:
        """Per-stream timestep embeddings, MMDiT blocks, then per-stream DiT blocks."""
        w, ctx_dim = cfg.width, cfg.width
        n_streams = 2 if self.world_model else 1
        self.t_embed_a = TimestepEmbedding(w)
        self.mmdit = nn.ModuleList(
            MMDiTBlock(w, cfg.heads, n_streams, cfg.mlp_ratio, ctx_dim if cfg.mmdit_cross_attention else None)
            for _ in range(cfg.n_mmdit))
        self.action_blocks = nn.ModuleList(DiTBlock(w, cfg.heads, cfg.mlp_ratio, ctx_dim)
                                           for _ in range(cfg.n_stream_blocks))
        if self.world_model:
            self.t_embed_o = TimestepEmbedding(w)
            self.vision_blocks = nn.ModuleList(DiTBlock(w, cfg.heads, cfg.mlp_ratio, ctx_dim)
                                               for _ in range(cfg.n_stream_blocks))
        self.ctx_per_mmdit = cfg.mmdit_cross_attention

    def time_embed(self, stream: int) -> TimestepEmbedding:
        """The timestep embedding of a stream (0 action, 1 vision)."""
        return self.t_embed_a if stream == 0 else self.t_embed_o

    def time_embedders(self) -> list[TimestepEmbedding]:
        """Every distinct timestep embedding."""
        return [self.t_embed_a] + ([self.t_embed_o] if self.world_model else [])

    def context_kv(self, ctx: Tensor) -> dict[str, list]:
        """Keys/values of the conditioning for every cross-attention (reused across denoising steps)."""
        out: dict[str, list] = {"action": [b.cross.context_kv(ctx) for b in self.action_blocks], "mmdit": []}
        if self.ctx_per_mmdit:
            out["mmdit"] = [[c.context_kv(ctx) for c in b.cross] for b in self.mmdit]
        if self.world_model:
            out["vision"] = [b.cross.context_kv(ctx) for b in self.vision_blocks]
        return out

    def ada_layers(self, stream: int) -> list[nn.Module]:
        """The adaLN-zero modules of one stream (0 action, 1 vision), in the order the tokens meet them."""
        if stream == 0:
            return [b.ada[0] for b in self.mmdit] + [b.ada for b in self.action_blocks] + [self.action_out.ada]
        return [b.ada[1] for b in self.mmdit] + [b.ada for b in self.vision_blocks] + [self.vision_out.ada]

    # ------------------------------------------------------------ pieces shared by training and sampling

    def modulations(self, c: Tensor, stream: int) -> list[Tensor]:
        """Every adaLN modulation of a stream for conditioning vectors c (N, W): per layer (N, k, W).

        One matmul per layer for all N rows, so the sampler computes the modulations of every
        denoising step at once (reading each adaLN weight once per chunk instead of once per step).
        """
        hc = F.silu(c)  # (N, W)
        return [F.linear(hc, a.linear.weight, a.linear.bias).view(c.shape[0], a.n, -1)  # (N, k, W)
                for a in self.ada_layers(stream)]

    def conditioning(self, stream: int, tau: Tensor, y: Tensor | None) -> Tensor:
        """adaLN conditioning vectors: timestep embedding of tau (N,) (+ the instruction's, y (N, D_t)) -> (N, W)."""
        c = self.time_embed(stream)(tau)  # (N, W)
        if self.instr_embed is not None:
            if y is None:
                raise ValueError("instruction_adaln: the pooled instruction embedding y is missing")
            c = c + self.instr_embed(y.to(c.dtype))  # (N, W)
        return c

    def embed_action(self, state: Tensor, a_t: Tensor) -> Tensor:
        """Action-stream tokens: state token + H action tokens with 1-D positions -> (B, 1+H, W)."""
        return torch.cat([self.state_enc(state)[:, None], self.action_enc(a_t)], dim=1) + self.action_pos

    def future_pos_embed(self) -> Tensor:
        """2-D positions + camera embedding of the vision-stream tokens -> (N_v, W)."""
        return self.future_pos + self.future_camera_embed.repeat_interleave(
            self.n_future // self.future_camera_embed.shape[0], dim=0)  # (N_v, W)

    def denoise(self, xa: Tensor, xo: Tensor | None, mods_a: list, mods_o: list | None, ctx: Tensor | dict,
                ctx_valid: Tensor | None, need_action: bool = True) -> tuple[Tensor | None, Tensor | None]:
        """The block stack on embedded tokens: xa (B, 1+H, W), xo (B, N_v, W) -> v_a (B, H, D_a) | None, v_o.

        mods_a / mods_o: per adaLN layer (see :meth:`ada_layers`) its modulation vectors, each
        (B or 1, W). ctx: the conditioning (B, S, W) or its keys/values from :meth:`context_kv`.
        """
        kv = ctx if isinstance(ctx, dict) else None
        xs = [xa] + ([xo] if xo is not None else [])
        n_mm = len(self.mmdit)
        for i, blk in enumerate(self.mmdit):
            ctxs = None
            if self.ctx_per_mmdit:
                ctxs = kv["mmdit"][i] if kv is not None else [ctx] * len(xs)
            need = [False, True] if (not need_action and i == n_mm - 1) else None
            mods = [mods_a[i]] + ([mods_o[i]] if xo is not None else [])
            xs = blk(xs, None, ctxs, ctx_valid, need, mods=mods)  # [(B, 1+H, W) | None, (B, N_v, W)]
        v_a = v_o = None
        if need_action:
            x = xs[0]
            for j, blk in enumerate(self.action_blocks):
                x = blk(x, None, kv["action"][j] if kv is not None else ctx, ctx_valid,
                        mod=mods_a[n_mm + j])  # (B, 1+H, W)
            v_a = self.action_out(x[:, 1:], None, mod=mods_a[-1])  # (B, H, D_a)
        if xo is not None:
            x = xs[1]
            for j, blk in enumerate(self.vision_blocks):
                x = blk(x, None, kv["vision"][j] if kv is not None else ctx, ctx_valid,
                        mod=mods_o[n_mm + j])  # (B, N_v, W)
            v_o = self.vision_out(x, None, mod=mods_o[-1])  # (B, N_v, C)
        return v_a, v_o

    def forward(self, state: Tensor, a_t: Tensor, tau_a: Tensor | None, ctx: Tensor, ctx_valid: Tensor,
                o_t: Tensor | None = None, tau_o: Tensor | None = None, kv: dict[str, list] | None = None,
                need_action: bool = True, plan: "SamplingPlan | None" = None,
                step: int = 0, y: Tensor | None = None) -> tuple[Tensor | None, Tensor | None]:
        """Velocities of both streams.

        state (B, n_obs*D_s), a_t (B, H, D_a), tau_a (B,), ctx (B, S, W), ctx_valid (B, S),
        o_t (B, N_v, C), tau_o (B,); kv from :meth:`context_kv`; y (B, D_t) the pooled instruction
        (with ``instruction_adaln``). With ``need_action=False`` the
        action-only work (last MMDiT block's action outputs, action DiT blocks, decoder) is skipped
        and v_a is None. With a ``plan`` from :meth:`sampling_plan`, step ``step`` of it is run
        (state, taus, ctx, ctx_valid and kv come from the plan). Returns v_a (B, H, D_a) | None, v_o (B, N_v, C) | None.
        """
        if plan is not None:
            return self.step(plan, step, a_t, o_t, need_action)
        dt = self.action_enc.weight.dtype  # float32, or bfloat16 after DUSTPolicy.for_inference
        state, a_t, ctx = state.to(dt), a_t.to(dt), ctx.to(dt)
        xa = self.embed_action(state, a_t)  # (B, 1+H, W)
        mods_a = [m.unbind(1) for m in self.modulations(self.conditioning(0, tau_a, y), 0)]  # per layer k x (B, W)
        xo = mods_o = None
        if self.world_model:
            if o_t is None or tau_o is None:
                raise ValueError("the world-model stream needs o_t and tau_o")
            xo = self.future_enc(o_t.to(dt)) + self.future_pos_embed()  # (B, N_v, W)
            mods_o = [m.unbind(1) for m in self.modulations(self.conditioning(1, tau_o, y), 1)]  # per layer k x (B, W)
        v_a, v_o = self.denoise(xa, xo, mods_a, mods_o, kv if kv is not None else ctx, ctx_valid, need_action)
        return (v_a.float() if v_a is not None else None), (v_o.float() if v_o is not None else None)

    # ------------------------------------------------------------ sampling: constants once per chunk

    def sampling_plan(self, state: Tensor, ctx: Tensor, ctx_valid: Tensor, taus_a: list[float],
                      taus_o: list[float] | None, y: Tensor | None = None) -> "SamplingPlan":
        """Everything constant across a chunk's denoising steps, computed once.

        state (B, n_obs*D_s), ctx (B, S, W), ctx_valid (B, S); taus_a / taus_o: the noise level of
        each step; y (B, D_t): the pooled instruction (with ``instruction_adaln``). Precomputes the cross-attention keys/values, the state token, the vision-stream
        positions, an additive key mask, and every step's adaLN modulations (one matmul per layer
        over the distinct noise levels).
        """
        dt, dev = self.action_enc.weight.dtype, ctx.device
        ctx = ctx.to(dt)
        mask = torch.zeros(ctx_valid.shape, dtype=dt, device=dev).masked_fill_(~ctx_valid.bool(), float("-inf"))

        return SamplingPlan(
            kv=self.context_kv(ctx), mask=mask,
            state_tok=self.state_enc(state.to(dt))[:, None] + self.action_pos[:1],  # (B, 1, W)
            action_pos=self.action_pos[1:],  # (H, W)
            future_pos=self.future_pos_embed() if self.world_model else None,  # (N_v, W)
            mods_a=self.step_modulations(taus_a, 0, y),
            mods_o=self.step_modulations(taus_o, 1, y) if self.world_model and taus_o is not None else None,
            dtype=dt)

    def step_modulations(self, taus: list[float], stream: int,
                         y: Tensor | None = None) -> list[list[tuple[Tensor, ...]]]:
        """Every adaLN modulation of one stream at each step's noise level: per step, per layer k x (1 or B, W).

        Without ``instruction_adaln`` they depend only on the noise levels and the weights, not on
        the observation, so without gradients they are kept across chunks (:class:`ModulationCache`)
        and recomputed only when a schedule is new or the timestep-embedding / adaLN weights
        changed. With it, the pooled instruction y (B, D_t) is added to every level's embedding
        and the modulations are per sample (B, W), computed per chunk.
        """
        embed = self.time_embed(stream)
        dev = self.action_enc.weight.device
        if self.instr_embed is not None:
            levels = sorted(set(taus))
            c = self.conditioning(stream, torch.tensor(levels, dtype=torch.float32, device=dev).repeat(y.shape[0]),
                                  y.repeat_interleave(len(levels), dim=0))  # (B*n_levels, W)
            mods = [m.view(y.shape[0], len(levels), *m.shape[1:]) for m in self.modulations(c, stream)]
            # per layer (B, n_levels, k, W) -> per level, per layer k x (B, W)
            rows = [[m[:, i].unbind(1) for m in mods] for i in range(len(levels))]
            return [rows[levels.index(t)] for t in taus]
        cache = not torch.is_grad_enabled()
        if cache:
            params = list(embed.parameters()) + [t for a in self.ada_layers(stream) for t in a.linear.parameters()]
            key = (stream, tuple(float(t) for t in taus), self.action_enc.weight.dtype, dev,
                   torch.is_inference_mode_enabled())
            hit = self._mod_cache.get(key, params)
            if hit is not None:
                return hit
        levels = sorted(set(taus))
        c = embed(torch.tensor(levels, dtype=torch.float32, device=dev))  # (n_levels, W)
        mods = [m.unsqueeze(2).unbind(0) for m in self.modulations(c, stream)]  # per layer n_levels x (k, 1, W)
        rows = [[m[i].unbind(0) for m in mods] for i in range(len(levels))]  # per level, per layer k x (1, W)
        out = [rows[levels.index(t)] for t in taus]
        if cache:
            self._mod_cache.put(key, params, out)
        return out

    def step(self, plan: "SamplingPlan", i: int, a_t: Tensor, o_t: Tensor | None,
             need_action: bool = True) -> tuple[Tensor | None, Tensor | None]:
        """Velocities at step ``i`` of a :meth:`sampling_plan`: a_t (B, H, D_a), o_t (B, N_v, C) -> v_a | None, v_o."""
        dt = plan.dtype
        xa = torch.cat([plan.state_tok, self.action_enc(a_t.to(dt)) + plan.action_pos], dim=1)  # (B, 1+H, W)
        xo = self.future_enc(o_t.to(dt)) + plan.future_pos if o_t is not None else None  # (B, N_v, W)
        v_a, v_o = self.denoise(xa, xo, plan.mods_a[i], plan.mods_o[i] if xo is not None else None, plan.kv,
                                plan.mask, need_action)
        return (v_a.float() if v_a is not None else None), (v_o.float() if v_o is not None else None)


def _per_token(mods_a: Sequence[Tensor], mods_o: Sequence[Tensor], len_a: int, len_o: int) -> list[Tensor]:
    """Two token groups' modulation vectors, each (B or 1, W), spread over their tokens: k x (B or 1, L_a + L_o, W)."""
    return [torch.cat([a[:, None].expand(-1, len_a, -1), o[:, None].expand(-1, len_o, -1)], dim=1)
            for a, o in zip(mods_a, mods_o)]


class SharedDiTNetwork(DUSTNetwork):
    """The ablation's DiT denoiser: one shared-weight DiT over action and future-frame tokens.

    Every block weight, every adaLN layer and the timestep embedding are shared by the two
    modalities; the tokens (state + H actions, then N_v future tokens) run through
    ``n_mmdit + n_stream_blocks`` DiT blocks as one sequence, and each token is modulated by
    the timestep of its modality (tau_A for action tokens, tau_o for future tokens: equal
    under joint noise). Only the modality encoders, positions and decoders are per modality.
    Blocks past the first ``n_mmdit`` always cross-attend to the conditioning; the first
    ``n_mmdit`` do when ``mmdit_cross_attention`` (as in :class:`DUSTNetwork`).
    """

    def build_trunk(self, cfg: DUSTConfig) -> None:
        """One timestep embedding and one stack of DiT blocks for both modalities."""
        if not self.world_model:
            raise ValueError(f"strategy {cfg.strategy!r}: the shared-weight DiT runs action and future-frame "
                             "tokens together; without a world model use strategy 'no_wm'")
        w = cfg.width
        self.t_embed = TimestepEmbedding(w)
        self.blocks = nn.ModuleList(
            DiTBlock(w, cfg.heads, cfg.mlp_ratio, w if (i >= cfg.n_mmdit or cfg.mmdit_cross_attention) else None)
            for i in range(cfg.n_mmdit + cfg.n_stream_blocks))

    def time_embed(self, stream: int) -> TimestepEmbedding:
        """The shared timestep embedding (both modalities)."""
        return self.t_embed

    def time_embedders(self) -> list[TimestepEmbedding]:
        """The one timestep embedding."""
        return [self.t_embed]

    def context_kv(self, ctx: Tensor) -> dict[str, list]:
        """Keys/values of the conditioning per block (None for blocks without cross-attention)."""
        return {"blocks": [b.cross.context_kv(ctx) if b.cross is not None else None for b in self.blocks]}

    def ada_layers(self, stream: int) -> list[nn.Module]:
        """The shared blocks' adaLN-zero modules, then the modality's decoder adaLN."""
        return [b.ada for b in self.blocks] + [(self.action_out if stream == 0 else self.vision_out).ada]

    def denoise(self, xa: Tensor, xo: Tensor | None, mods_a: list, mods_o: list | None, ctx: Tensor | dict,
                ctx_valid: Tensor | None, need_action: bool = True) -> tuple[Tensor | None, Tensor | None]:
        """The shared blocks on [action tokens; future tokens]: xa (B, 1+H, W), xo (B, N_v, W) -> v_a | None, v_o.

        mods_a / mods_o: per adaLN layer (see :meth:`ada_layers`) each modality's modulation vectors
        (B or 1, W); inside the blocks they become per-token (B or 1, 1+H+N_v, W).
        """
        if xo is None or mods_o is None:
            raise ValueError("the shared-weight DiT needs the future-frame tokens and their modulations")
        kv = ctx if isinstance(ctx, dict) else None
        len_a, len_o = xa.shape[1], xo.shape[1]
        x = torch.cat([xa, xo], dim=1)  # (B, 1+H+N_v, W)
        for j, blk in enumerate(self.blocks):
            c = None if blk.cross is None else (kv["blocks"][j] if kv is not None else ctx)
            x = blk(x, None, c, ctx_valid, mod=_per_token(mods_a[j], mods_o[j], len_a, len_o))  # (B, 1+H+N_v, W)
        v_a = self.action_out(x[:, 1:len_a], None, mod=mods_a[-1]) if need_action else None  # (B, H, D_a)
        v_o = self.vision_out(x[:, len_a:], None, mod=mods_o[-1])  # (B, N_v, C)
        return v_a, v_o


#: the denoiser class of each strategy network kind (strategies.NETWORKS)
NETWORK_CLASSES: dict[str, type[DUSTNetwork]] = {"mmdit": DUSTNetwork, "dit": SharedDiTNetwork}


class ModulationCache:
    """Recent schedules' per-step adaLN modulations, each valid while its weights are unchanged.

    An entry keeps the parameter tensors it was computed from, their version counters and
    storages: an optimizer step or ``load_state_dict`` (in place, new versions) or a dtype /
    device move (new storage) invalidates it. Copies and pickles of a module start with an empty cache.
    Writes through ``param.data`` bypass version counters: call :meth:`clear` after such a write.
    """

    def __init__(self, max_entries: int = 8):
        self.max_entries = max_entries
        self.entries: dict[tuple, tuple[list[Tensor], tuple[int, ...], Any]] = {}

    def get(self, key: tuple, params: list[Tensor]) -> Any | None:
        """The value stored under ``key`` if it came from exactly these ``params`` at their current versions."""
        entry = self.entries.get(key)
        if entry is None:
            return None
        held, versions, value = entry
        if len(held) == len(params) and all(a is b for a, b in zip(held, params)) \
                and versions == self._versions(params):
            return value
        del self.entries[key]
        return None

    def put(self, key: tuple, params: list[Tensor], value: Any) -> None:
        """Store ``value`` computed from ``params`` (the oldest entry goes when full)."""
        if key not in self.entries and len(self.entries) >= self.max_entries:
            self.entries.pop(next(iter(self.entries)))
        self.entries[key] = (list(params), self._versions(params), value)

    @staticmethod
    def _versions(params: list[Tensor]) -> tuple:
        """Version counter and storage of each parameter (``module.to()`` swaps ``.data`` without a new version)."""
        return tuple((p._version, p.data_ptr(), p.dtype) for p in params)

    def clear(self) -> None:
        """Drop every entry."""
        self.entries.clear()

    def __deepcopy__(self, memo) -> "ModulationCache":
        return ModulationCache(self.max_entries)

    def __getstate__(self) -> dict:
        return {"max_entries": self.max_entries, "entries": {}}


@dataclass
class SamplingPlan:
    """Per-chunk constants of the Euler sampler (see :meth:`DUSTNetwork.sampling_plan`)."""

    kv: dict[str, list]  # cross-attention keys/values per block
    mask: Tensor  # (B, S) additive key mask: 0 attend, -inf padding
    state_tok: Tensor  # (B, 1, W) state token with its position
    action_pos: Tensor  # (H, W) positions of the action tokens
    future_pos: Tensor | None  # (N_v, W) positions + camera embedding of the vision tokens
    mods_a: list  # per step, per action-stream adaLN layer: k x (1, W)
    mods_o: list | None  # per step, per vision-stream adaLN layer: k x (1, W)
    dtype: torch.dtype


# ---------------------------------------------------------------- the policy


@register_policy("dust")
class DUSTPolicy(Policy):
    """DUST policy: ``compute_loss(batch)`` (decoupled flow matching) and ``sample_actions(obs)``.

    Inputs follow the data contract (``types.fake_batch``): images uint8 (B, T, H, W, 3) per camera
    with T = n_obs (+ 1 future frame for the world model), or cached features of the vision encoder
    under ``features.<encoder name>.observation.images.<cam>`` (B, T, C, h, w); state (B, n_obs, D_s);
    action (B, H, D_a); ``<key>_is_pad`` masks; ``task`` list of B strings; optional ``has_action`` (B,).
    """

    config_class = DUSTConfig

    def __init__(self, config: DUSTConfig, stats: Mapping[str, Mapping[str, Any]] | None = None):
        super().__init__(config)
        from ..encoders import make_text_encoder, make_vision_encoder

        cfg = config
        self.strategy = make_strategy(cfg.strategy)
        self.flow = FlowMatching(cfg.tau_s, cfg.tau_alpha, cfg.tau_beta)
        self.vision = make_vision_encoder(cfg.vision_encoder, **cfg.vision_encoder_kwargs)
        self.text = make_text_encoder(cfg.text_encoder, **cfg.text_encoder_kwargs)
        if cfg.world_model and not self.vision.frozen:
            raise ValueError(f"DUST's world-model target is the frozen vision encoder's features, but "
                             f"{cfg.vision_encoder!r} is trainable; pass vision_encoder_kwargs={{'frozen': True}}, "
                             f"a frozen encoder, or strategy='no_wm'")
        self.grid = tuple(self.vision.grid_size(cfg.image_size))
        self.cond_grid = cfg.cond_grid or self.grid
        for what, g in (("future_grid", cfg.future_grid if cfg.world_model else self.grid), ("cond_grid", self.cond_grid)):
            if self.grid[0] % g[0] or self.grid[1] % g[1]:
                raise ValueError(f"{what} {tuple(g)} must divide the vision encoder's grid {self.grid} "
                                 f"({cfg.vision_encoder} at image_size {cfg.image_size})")
        self.feat_dim = int(self.vision.out_dim)
        self.condition = ConditionEncoder(self.feat_dim, int(self.text.out_dim), cfg.width, cfg.heads, cfg.cond_layers,
                                          len(cfg.cameras), cfg.n_obs_steps, self.cond_grid, cfg.mlp_ratio)
        self.net = NETWORK_CLASSES[self.strategy.network](cfg, self.feat_dim, int(self.text.out_dim))
        self.normalizer = Normalizer({STATE: cfg.state_dim, ACTION: cfg.action_dim},
                                     {STATE: cfg.state_norm, ACTION: cfg.action_norm}, stats=stats,
                                     on_constant=cfg.norm_on_constant)
        self._future_idx = [cfg.cameras.index(c) for c in cfg.future_camera_list]

    def for_inference(self, dtype: torch.dtype = torch.bfloat16, prepack: bool = True) -> "DUSTPolicy":
        """Cast the conditioning stack and the denoiser to ``dtype`` for sampling; returns self in eval mode.

        Encoders, the normalizer and the Euler integration stay float32. At batch 1 the denoiser
        is bound by reading its weights, so bfloat16 (on CPUs with avx512_bf16 / AMX, or GPUs)
        roughly halves sampling latency. ``prepack`` turns their Linear layers into
        :class:`~vlastack.policies.layers.PrepackedLinear` (oneDNN-packed weights for CPU inference
        without gradients; same parameters and state dict; ``dtype=torch.float32`` keeps float32
        and only prepacks). Deployment only: keep training in float32.
        """
        self.condition.to(dtype)
        self.net.to(dtype)
        if prepack:
            prepack_linears(self.condition)
            prepack_linears(self.net)
        return self.eval()

    # ------------------------------------------------------------ inputs

    def _camera_frames(self, data: Mapping[str, Any], want: Mapping[str, list[int]], batch: int) -> dict[str, Tensor]:
        """Feature grids per camera for the frame indices in ``want`` (cam -> indices on the T axis).

        Cached features are used when present, otherwise images are encoded (one encoder call).
        Returns cam -> (B, len(want[cam]), C, h, w).
        """
        cfg, dev = self.config, self.device
        out: dict[str, Tensor] = {}
        to_encode: list[tuple[str, Tensor]] = []
        for cam, idx in want.items():
            ik, fk = image_key(cam), feature_key(self.vision.name, image_key(cam))
            if fk in data:
                f = to_tensor(data[fk], dev)
                f = f[:, None] if f.dim() == 4 else f  # (B, T, C, h, w)
                exp = (self.feat_dim, *self.grid)
                if f.dim() != 5 or tuple(f.shape[2:]) != exp or f.shape[0] != batch:
                    raise ContractError(f"{fk}: expected cached features (B={batch}, T, {exp[0]}, {exp[1]}, {exp[2]}) "
                                        f"from encoder {self.vision.name!r}, got shape {tuple(f.shape)}")
                if f.shape[1] <= max(idx):
                    raise ContractError(f"{fk}: expected at least {max(idx) + 1} frames on axis 1, got {f.shape[1]}")
                run = idx == list(range(idx[0], idx[0] + len(idx)))
                out[cam] = (f[:, idx[0]:idx[0] + len(idx)] if run else f[:, idx]).float()  # a slice copies once
            elif ik in data:
                x = images_to_float(data[ik], ik, cfg.image_size, dev)  # (B, [T,] 3, H, W)
                x = x[:, None] if x.dim() == 4 else x  # (B, T, 3, H, W)
                if x.dim() != 5 or x.shape[0] != batch:
                    raise ContractError(f"{ik}: expected images (B={batch}, T, {cfg.image_size[0]}, "
                                        f"{cfg.image_size[1]}, 3), got shape {tuple(to_tensor(data[ik]).shape)}")
                if x.shape[1] <= max(idx):
                    raise ContractError(f"{ik}: expected at least {max(idx) + 1} frames on axis 1 (n_obs="
                                        f"{cfg.n_obs_steps}{' + future frame' if max(idx) >= cfg.n_obs_steps else ''}),"
                                        f" got {x.shape[1]}; build windows with config.delta_indices()")
                to_encode.append((cam, x[:, idx]))
            else:
                have = sorted(k for k in data if k.startswith(("observation.images.", "features.")))
                raise ContractError(f"missing camera {cam!r}: expected {ik!r} (uint8 images) or cached features "
                                    f"{fk!r}; the policy needs cameras {list(cfg.cameras)}, got {have}")
        if to_encode:
            flat = torch.cat([x.flatten(0, 1) for _, x in to_encode])  # (sum B*T_i, 3, H, W)
            grid, _ = self.vision(flat)  # (N, C, h, w)
            if tuple(grid.shape[1:]) != (self.feat_dim, *self.grid):
                raise RuntimeError(f"vision encoder {self.vision.name!r} returned {tuple(grid.shape[1:])}, "
                                   f"expected {(self.feat_dim, *self.grid)}")
            for (cam, x), g in zip(to_encode, grid.split([x.shape[0] * x.shape[1] for _, x in to_encode])):
                out[cam] = g.view(x.shape[0], x.shape[1], *g.shape[1:])  # (B, T_i, C, h, w)
        return out

    def _state(self, data: Mapping[str, Any], batch: int | None = None) -> Tensor:
        """Normalised state (B, n_obs * D_s), checked against the config."""
        cfg = self.config
        if STATE not in data:
            raise ContractError(f"missing {STATE!r}: expected float (B, {cfg.n_obs_steps}, {cfg.state_dim})")
        s = to_tensor(data[STATE], self.device).float()
        s = s[:, None] if s.dim() == 2 else s  # (B, n_obs, D_s)
        if s.dim() != 3 or s.shape[1] != cfg.n_obs_steps or s.shape[2] != cfg.state_dim \
                or (batch is not None and s.shape[0] != batch):
            raise ContractError(f"{STATE}: expected (B, {cfg.n_obs_steps}, {cfg.state_dim}) (state_dim="
                                f"{cfg.state_dim}, n_obs_steps={cfg.n_obs_steps}), got {tuple(s.shape)}")
        return self.normalizer.normalize(STATE, s).flatten(1)  # (B, n_obs*D_s)

    def _condition(self, frames: dict[str, Tensor], tasks: list[str]) -> tuple[Tensor, Tensor, Tensor | None]:
        """Current-frame grids per camera + instructions -> ctx (B, S, W), valid (B, S), pooled text (B, D_t) | None.

        The pooled instruction embedding is returned only where the denoiser uses it (``instruction_adaln``).
        """
        n = self.config.n_obs_steps
        grids = torch.stack([frames[c][:, :n] for c in self.config.cameras], dim=2)  # (B, n_obs, K, C, h, w)
        if tuple(self.cond_grid) != tuple(self.grid):
            b, t, k = grids.shape[:3]
            grids = F.adaptive_avg_pool2d(grids.flatten(0, 2), self.cond_grid).view(b, t, k, self.feat_dim,
                                                                                   *self.cond_grid)
        tokens, mask, _ = self.text(tasks)  # (B, L, D_t), (B, L)
        tokens, mask = tokens.to(self.device), mask.to(self.device)
        ctx, valid = self.condition(grids, tokens, mask)
        if not self.config.instruction_adaln:
            return ctx, valid, None
        # the masked mean of the instruction's tokens; computed from the tokens, not
        # the encoder's own pooled vector, so that exported graphs (which take tokens and mask) agree
        m = mask.to(tokens.dtype)[..., None]  # (B, L, 1)
        return ctx, valid, (tokens * m).sum(1) / m.sum(1).clamp_min(1.0)  # (B, D_t)

    def _future_target(self, frames: dict[str, Tensor]) -> Tensor:
        """The world-model target: future-frame features pooled to the future grid -> (B, N_v, C)."""
        cfg = self.config
        n = cfg.n_obs_steps
        g = torch.stack([frames[c][:, n] for c in cfg.future_camera_list], dim=1)  # (B, K_f, C, h, w)
        b, k = g.shape[:2]
        kh, kw = self.grid[0] // cfg.future_grid[0], self.grid[1] // cfg.future_grid[1]  # the grid divides (checked)
        g = F.avg_pool2d(g.flatten(0, 1), (kh, kw))  # (B*K_f, C, gh, gw); = adaptive pooling, ~1.5x faster
        o = g.view(b, k, self.feat_dim, -1).transpose(-1, -2).reshape(b, -1, self.feat_dim)  # (B, N_v, C)
        if cfg.future_target_norm == "layernorm":
            o = F.layer_norm(o, (self.feat_dim,))
        return o

    # ------------------------------------------------------------ training

    def compute_loss(self, batch: Mapping[str, Any]) -> tuple[Tensor, dict[str, float]]:
        """Decoupled flow-matching loss ||v_A - (A - eps_A)||^2 + lambda_WM ||v_o - (o - eps_o)||^2.

        Padded action steps are masked; samples without actions (``has_action`` False, or every
        action step padded, or no ``action`` key at all) contribute only to the vision loss.
        """
        cfg, dev = self.config, self.device
        state = self._state(batch)  # (B, n_obs*D_s)
        b = state.shape[0]
        tasks = check_tasks(batch.get(TASK), b)
        # actions and their mask
        if ACTION in batch:
            a = to_tensor(batch[ACTION], dev).float()
            if a.dim() != 3 or tuple(a.shape) != (b, cfg.horizon, cfg.action_dim):
                raise ContractError(f"{ACTION}: expected (B={b}, horizon={cfg.horizon}, action_dim={cfg.action_dim}), "
                                    f"got {tuple(a.shape)}")
            valid = ~to_tensor(batch[pad_key(ACTION)], dev).bool() if pad_key(ACTION) in batch \
                else torch.ones(b, cfg.horizon, dtype=torch.bool, device=dev)  # (B, H)
        else:
            a = torch.zeros(b, cfg.horizon, cfg.action_dim, device=dev)
            valid = torch.zeros(b, cfg.horizon, dtype=torch.bool, device=dev)
        has_action = valid.any(dim=1)  # (B,)
        if HAS_ACTION in batch:
            has_action = has_action & to_tensor(batch[HAS_ACTION], dev).bool().view(b)
        valid = valid & has_action[:, None]  # (B, H)
        if not self.strategy.world_model and not bool(has_action.any()):
            raise ValueError(f"strategy {cfg.strategy!r} has no world-model stream, so an action-free batch "
                             "gives it nothing to learn; use a world-model strategy for video pretraining")
        a = torch.where(has_action[:, None, None], self.normalizer.normalize(ACTION, a), torch.zeros_like(a))
        # vision: current frames for every camera, plus the future frame of future cameras
        n = cfg.n_obs_steps
        want = {c: list(range(n)) + ([n] if self.strategy.world_model and c in cfg.future_camera_list else [])
                for c in cfg.cameras}
        frames = self._camera_frames(batch, want, b)
        ctx, ctx_valid, y = self._condition(frames, tasks)
        # noise levels (action-free samples see pure action noise, tau_a = 0)
        tau_a, tau_o = self.strategy.train_taus(self.flow, b, device=dev)  # (B,), (B,) | None
        tau_a = torch.where(has_action, tau_a, torch.zeros_like(tau_a))
        eps_a = torch.randn_like(a)  # (B, H, D_a)
        a_t = self.flow.interpolate(a, eps_a, tau_a)  # (B, H, D_a)
        o = o_t = eps_o = None
        if self.strategy.world_model:
            o = self._future_target(frames)  # (B, N_v, C)
            eps_o = torch.randn_like(o)
            o_t = self.flow.interpolate(o, eps_o, tau_o)  # (B, N_v, C)
        v_a, v_o = self.net(state, a_t, tau_a, ctx, ctx_valid, o_t, tau_o, y=y)
        # action loss: mean over valid (sample, step) pairs
        err_a = (v_a - self.flow.velocity_target(a, eps_a)).pow(2).mean(-1)  # (B, H)
        err_a = torch.where(valid, err_a, torch.zeros_like(err_a))
        loss_a = err_a.sum() / valid.sum().clamp_min(1)
        metrics = {"loss_action": float(loss_a.detach()), "action_fraction": float(has_action.float().mean())}
        loss = loss_a
        if self.strategy.world_model:
            err_o = (v_o - self.flow.velocity_target(o, eps_o)).pow(2).mean(dim=(1, 2))  # (B,)
            keep = torch.ones(b, dtype=torch.bool, device=dev)
            if cfg.mask_padded_future:
                for c in cfg.future_camera_list:
                    pk = pad_key(image_key(c))
                    if pk in batch:
                        keep = keep & ~to_tensor(batch[pk], dev).bool()[:, n]
            loss_o = torch.where(keep, err_o, torch.zeros_like(err_o)).sum() / keep.sum().clamp_min(1)
            loss = loss + cfg.lambda_wm * loss_o
            metrics["loss_world"] = float(loss_o.detach())
        metrics["loss"] = float(loss.detach())
        return loss, metrics

    # ------------------------------------------------------------ sampling

    def initial_noise(self, batch: int, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """The sampler's starting noise: ``action`` (B, H, D_a), then ``future`` (B, N_v, C) with a world model."""
        cfg, dev = self.config, self.device
        out = {"action": torch.randn(batch, cfg.horizon, cfg.action_dim, generator=generator, device=dev)}
        if self.strategy.world_model:
            out["future"] = torch.randn(batch, cfg.num_future_tokens, self.feat_dim, generator=generator, device=dev)
        return out

    @torch.inference_mode()
    def sample_actions(self, obs: Observation | Mapping[str, Any], num_action_steps: int | None = None,
                       num_vision_steps: int | None = None, generator: torch.Generator | None = None,
                       seed: int | None = None, skip_action_blocks: bool = True,
                       noise: Mapping[str, Tensor] | None = None) -> ActionChunk:
        """Euler sampling of an action chunk (B, H, D_a) in physical units.

        N_A = ``num_action_steps`` and N_o = ``num_vision_steps`` default to the config; vision
        advances every step, actions every q = N_o / N_A steps, and steps where actions do not
        advance skip the action-only blocks (``skip_action_blocks=False`` runs them anyway, to
        measure the saving; the result is the same). ``seed`` (or ``generator``) makes chunks reproducible;
        ``noise`` gives the initial noise instead (``action`` (B, H, D_a), ``future`` (B, N_v, C)), as
        the exported chunk graphs take it (:mod:`vlastack.policies.export`).
        ``extras``: ``future`` (B, N_v, C) predicted future features (normalised space, or None),
        ``num_network_calls``, ``num_action_updates``.

        Runs under ``torch.inference_mode``; what does not change across the denoising steps
        (cross-attention keys/values, every step's adaLN modulations, the state token, positions,
        the key mask) is computed once per chunk (:meth:`DUSTNetwork.sampling_plan`).
        """
        cfg, dev = self.config, self.device
        data = obs.to_flat() if isinstance(obs, Observation) else obs
        if not isinstance(data, Mapping):
            raise TypeError(f"sample_actions takes an Observation or a flat dict, got {type(data).__name__}")
        n_a = num_action_steps or cfg.num_action_steps
        n_o = num_vision_steps or n_a * max(cfg.num_vision_steps // cfg.num_action_steps, 1)  # keep the config's q
        steps = self.strategy.schedule(n_a, n_o)
        state = self._state(data)  # (B, n_obs*D_s)
        b = state.shape[0]
        tasks = check_tasks(data.get(TASK), b)
        frames = self._camera_frames(data, {c: list(range(cfg.n_obs_steps)) for c in cfg.cameras}, b)
        ctx, ctx_valid, y = self._condition(frames, tasks)
        world = self.strategy.world_model
        plan = self.net.sampling_plan(state, ctx, ctx_valid, [st.tau_a for st in steps],
                                      [st.tau_o for st in steps] if world else None, y)
        if seed is not None:
            generator = torch.Generator(device=dev).manual_seed(int(seed))
        if noise is None:
            noise = self.initial_noise(b, generator)
        a = noise["action"].to(dev)  # (B, H, D_a)
        o = noise["future"].to(dev) if world else None  # (B, N_v, C)
        calls = updates = 0
        for i, st in enumerate(steps):
            v_a, v_o = self.net(state, a, None, ctx, ctx_valid, o, None, plan=plan, step=i,
                                need_action=st.advance or not skip_action_blocks)  # (B, H, D_a) | None, (B, N_v, C)
            calls += 1
            if o is not None:
                o = self.flow.euler_step(o, v_o, st.dt_o)  # (B, N_v, C)
            if st.advance:
                a = self.flow.euler_step(a, v_a, st.dt_a)  # (B, H, D_a)
                updates += 1
        actions = self.normalizer.unnormalize(ACTION, a)  # (B, H, D_a)
        return ActionChunk(actions, extras={"future": o, "num_network_calls": calls, "num_action_updates": updates})
