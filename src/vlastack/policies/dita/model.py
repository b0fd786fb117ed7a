"""Dita: an in-context diffusion transformer policy (arXiv 2503.19757).

No small action head: one causal transformer denoises the action chunk in context,

    [text tokens; image tokens (frames x cameras x queries); (state token); timestep token; H noisy actions]

read out at the action positions through a linear head (epsilon prediction). Read bottom-up:
the prefix encoder (frozen text-encoder token states; Q-Former image tokens per camera and
frame with FiLM from the instruction; an optional state token), the causal LLaMA-style
denoiser with its prefix key/value cache, then the policy (the two verbs, input checks,
optimiser parameter groups; few-shot fine-tuning from a checkpoint is the base class's ``finetune_from``).

Padded instruction tokens are never attended to, and rotary positions count valid tokens
only, so a sample's output does not depend on how long the other instructions in its batch
are. With the causal mask the prefix does not see the timestep or the actions, so its keys
and values are computed once per control step and reused by every DDIM step.

Shape letters: B batch, n frames of history, K cameras, C vision channels, (h, w) patch grid,
Q queries, L text tokens, P prefix tokens, H action tokens, W width, D_a action dim.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from ...types import ACTION, STATE, TASK, ActionChunk, ContractError, Observation, image_key, pad_key
from ..base import Policy, check_tasks, feature_key, images_to_float, register_policy, to_tensor
from ..encoders import StateEncoder
from ..encoders.base import masked_mean
from ..layers import LlamaBlock, RotaryEmbedding, TimestepEmbedding, causal_mask
from ..noise import DDPM
from ..normalizer import Normalizer
from .config import DitaConfig
from .qformer import QFormer

_NO_DECAY_SUFFIXES = ("queries", "_embed")  # learned queries and embeddings: no weight decay


# ---------------------------------------------------------------- prefix: text, images, state


class PrefixEncoder(nn.Module):
    """Instruction tokens, Q-Former image tokens and an optional state token -> prefix (B, P, W).

    Image tokens of each frame and camera come from one shared Q-Former, then get a learned
    camera and frame embedding; text tokens a learned type embedding.
    """

    def __init__(self, cfg: DitaConfig, text_dim: int, feat_dim: int, grid: tuple[int, int]):
        super().__init__()
        w, qd = cfg.width, cfg.qformer_dim
        self.n_obs, self.n_cams, self.n_queries = cfg.n_obs_steps, len(cfg.cameras), cfg.num_queries
        self.text_proj = nn.Linear(text_dim, w)
        self.text_embed = nn.Parameter(torch.randn(w) * 0.02)  # (W,)
        self.qformer = QFormer(feat_dim, qd, cfg.qformer_num_heads, cfg.qformer_layers, cfg.num_queries, text_dim,
                               grid, cfg.qformer_mlp_ratio)
        self.image_proj = nn.Linear(qd, w)
        self.camera_embed = nn.Parameter(torch.randn(self.n_cams, w) * 0.02)  # (K, W)
        self.frame_embed = nn.Parameter(torch.randn(self.n_obs, w) * 0.02)  # (n, W)
        self.state_enc = StateEncoder(cfg.n_obs_steps * cfg.state_dim, w) if cfg.state_dim else None

    def forward(self, text: Tensor, text_valid: Tensor, grids: Tensor,
                state: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """text (B, L, D_t), text_valid (B, L) bool, grids (B, n, K, C, h, w), state (B, n*D_s) or None
        -> prefix (B, P, W), valid (B, P) bool with P = L + n*K*Q (+ 1 with a state token)."""
        b = grids.shape[0]
        text = text.to(self.text_proj.weight.dtype)
        pooled = masked_mean(text, text_valid)  # (B, D_t): FiLM conditioning of the Q-Former
        n_img = self.n_obs * self.n_cams
        q = self.qformer(grids.flatten(0, 2), pooled.repeat_interleave(n_img, dim=0))  # (B*n*K, Q, Dq)
        img = self.image_proj(q).view(b, self.n_obs, self.n_cams, self.n_queries, -1)  # (B, n, K, Q, W)
        img = img + self.frame_embed[None, :, None, None] + self.camera_embed[None, None, :, None]
        parts = [self.text_proj(text) + self.text_embed, img.flatten(1, 3)]  # (B, L, W), (B, n*K*Q, W)
        valid = [text_valid.bool(), torch.ones(b, img.shape[1] * img.shape[2] * img.shape[3], dtype=torch.bool,
                                               device=img.device)]
        if self.state_enc is not None:
            if state is None:
                raise ValueError("this prefix has a state token: pass the state")
            parts.append(self.state_enc(state)[:, None])  # (B, 1, W)
            valid.append(torch.ones(b, 1, dtype=torch.bool, device=img.device))
        return torch.cat(parts, dim=1), torch.cat(valid, dim=1)  # (B, P, W), (B, P)


# ---------------------------------------------------------------- the causal denoiser


@dataclass
class PrefixCache:
    """The prefix's keys and values at every layer, computed once per control step.

    kv: per layer (k, v), each (B, nh, P, hd), keys already rotated; valid: (B, P) bool;
    length: (B,) valid prefix tokens, i.e. the rotary position of the timestep token.
    """

    kv: list[tuple[Tensor, Tensor]]
    valid: Tensor
    length: Tensor


def _positions(valid: Tensor) -> Tensor:
    """Rotary positions counting valid tokens only: (B, L) bool -> (B, L) int64 (padding repeats its left neighbour)."""
    return (valid.long().cumsum(dim=1) - 1).clamp_min(0)


class DitaTransformer(nn.Module):
    """[prefix; timestep token; H noisy action tokens] through a causal LLaMA stack -> epsilon (B, H, D_a).

    Knows nothing of noise schedules beyond the step index it embeds (as ``t * 1000 / T``, so
    the 1000-step pretraining and 100-step fine-tuning schedules share one embedding range).
    """

    def __init__(self, cfg: DitaConfig):
        super().__init__()
        w = cfg.width
        self.t_embed = TimestepEmbedding(w, scale=1000.0 / cfg.num_train_timesteps)
        self.action_in = nn.Linear(cfg.action_dim, w)
        self.action_embed = nn.Parameter(torch.zeros(w))  # (W,), normal-init below
        self.rope = RotaryEmbedding(w // cfg.heads, cfg.rope_base)
        self.blocks = nn.ModuleList(LlamaBlock(w, cfg.heads, cfg.mlp_hidden, cfg.norm_eps) for _ in range(cfg.layers))
        self.norm = nn.RMSNorm(w, eps=cfg.norm_eps)
        self.action_out = nn.Linear(w, cfg.action_dim)
        # GPT-2 / LLaMA init: N(0, 0.02), residual output projections scaled by 1/sqrt(2 * layers)
        for name, m in self.named_modules():
            if isinstance(m, nn.Linear):
                std = 0.02 / math.sqrt(2 * cfg.layers) if name.endswith(("attn.proj", "mlp.w2")) else 0.02
                nn.init.normal_(m.weight, std=std)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        nn.init.normal_(self.action_embed, std=0.02)

    def _suffix(self, x_t: Tensor, t: Tensor) -> Tensor:
        """x_t (B, H, D_a), t (B,) -> [timestep token; action tokens] (B, 1+H, W)."""
        tok_t = self.t_embed(t)[:, None]  # (B, 1, W)
        return torch.cat([tok_t, self.action_in(x_t.to(tok_t.dtype)) + self.action_embed], dim=1)  # (B, 1+H, W)

    def _readout(self, h: Tensor) -> Tensor:
        """Suffix states (B, 1+H, W) -> predictions at the action positions (B, H, D_a)."""
        return self.action_out(self.norm(h[:, 1:]))  # (B, H, D_a)

    def forward(self, prefix: Tensor, prefix_valid: Tensor, x_t: Tensor, t: Tensor) -> Tensor:
        """The uncached pass over the whole sequence (training, and the cache's reference).

        prefix (B, P, W), prefix_valid (B, P) bool, x_t (B, H, D_a), t (B,) -> (B, H, D_a).
        """
        s = self._suffix(x_t, t)  # (B, 1+H, W)
        x = torch.cat([prefix, s], dim=1)  # (B, P+1+H, W)
        valid = torch.cat([prefix_valid.bool(), torch.ones(s.shape[:2], dtype=torch.bool, device=s.device)], dim=1)
        rope, mask = self.rope(_positions(valid)), causal_mask(valid, x.shape[1])  # (B, 1, P+1+H, P+1+H)
        for blk in self.blocks:
            x, _ = blk(x, rope, mask)  # (B, P+1+H, W)
        return self._readout(x[:, prefix.shape[1]:])  # (B, H, D_a)

    def forward_with_cache(self, prefix: Tensor, prefix_valid: Tensor, x_t: Tensor,
                           t: Tensor) -> tuple[Tensor, PrefixCache]:
        """The uncached pass that also keeps the prefix's keys/values: (B, H, D_a) and a :class:`PrefixCache`.

        Under the causal mask the prefix rows of a full pass are exactly what :meth:`prefix_cache`
        computes, so a sampler's first step runs the whole sequence once and every later step
        reuses its prefix keys/values, instead of a separate prefix pass before the first step.
        """
        s = self._suffix(x_t, t)  # (B, 1+H, W)
        x = torch.cat([prefix, s], dim=1)  # (B, P+1+H, W)
        pv = prefix_valid.bool()
        valid = torch.cat([pv, torch.ones(s.shape[:2], dtype=torch.bool, device=s.device)], dim=1)
        rope, mask = self.rope(_positions(valid)), causal_mask(valid, x.shape[1])  # (B, 1, P+1+H, P+1+H)
        n_p = prefix.shape[1]
        kv: list[tuple[Tensor, Tensor]] = []
        for blk in self.blocks:
            x, (k, v) = blk(x, rope, mask)  # (B, P+1+H, W), each (B, nh, P+1+H, hd)
            kv.append((k[:, :, :n_p], v[:, :, :n_p]))  # (B, nh, P, hd)
        return self._readout(x[:, n_p:]), PrefixCache(kv, pv, pv.long().sum(dim=1))

    def prefix_cache(self, prefix: Tensor, prefix_valid: Tensor) -> PrefixCache:
        """Run the prefix alone (B, P, W) and keep every layer's keys/values (the last layer's only)."""
        valid = prefix_valid.bool()
        rope, mask = self.rope(_positions(valid)), causal_mask(valid, prefix.shape[1])  # (B, 1, P, P)
        kv: list[tuple[Tensor, Tensor]] = []
        h = prefix
        for i, blk in enumerate(self.blocks):
            if i == len(self.blocks) - 1:
                kv.append(blk.kv(h, rope))  # the last layer's prefix outputs are never read
            else:
                h, kvi = blk(h, rope, mask)  # (B, P, W)
                kv.append(kvi)
        return PrefixCache(kv, valid, valid.long().sum(dim=1))

    def denoise(self, x_t: Tensor, t: Tensor, cache: PrefixCache) -> Tensor:
        """The cached pass: only the 1+H suffix tokens, attending to the cached prefix -> (B, H, D_a)."""
        s = self._suffix(x_t, t)  # (B, 1+H, W)
        n = s.shape[1]
        pos = cache.length[:, None] + torch.arange(n, device=s.device)  # (B, 1+H)
        valid = torch.cat([cache.valid, torch.ones(s.shape[:2], dtype=torch.bool, device=s.device)], dim=1)
        rope, mask = self.rope(pos), causal_mask(valid, n)  # mask (B, 1, 1+H, P+1+H)
        for blk, kv in zip(self.blocks, cache.kv):
            s, _ = blk(s, rope, mask, past=kv)  # (B, 1+H, W)
        return self._readout(s)  # (B, H, D_a)


# ---------------------------------------------------------------- the policy


@register_policy("dita")
class DitaPolicy(Policy):
    """Dita policy: ``compute_loss(batch)`` (DDPM epsilon MSE) and ``sample_actions(obs)`` (DDIM).

    Inputs follow the data contract (``types.fake_batch``): per camera uint8 images (B, n, H, W, 3)
    (or (B, H, W, 3) when n = 1), or cached features of a frozen vision encoder under
    ``features.<encoder name>.observation.images.<cam>`` (B, n, C, h, w); ``task`` (B strings);
    ``observation.state`` (B, n, D_s) when ``state_dim`` > 0; ``action`` (B, horizon, D_a) and
    ``action_is_pad`` (B, horizon) for training.
    """

    config_class = DitaConfig

    def __init__(self, config: DitaConfig, stats: Mapping[str, Mapping[str, Any]] | None = None):
        super().__init__(config)
        from ..encoders import make_text_encoder, make_vision_encoder

        cfg = config
        self.vision = make_vision_encoder(cfg.vision_encoder, **cfg.vision_encoder_kwargs)
        self.text = make_text_encoder(cfg.text_encoder, **cfg.text_encoder_kwargs)
        self.grid = tuple(int(g) for g in self.vision.grid_size(cfg.image_size))
        self.feat_dim = int(self.vision.out_dim)
        self.prefix_encoder = PrefixEncoder(cfg, int(self.text.out_dim), self.feat_dim, self.grid)
        self.net = DitaTransformer(cfg)
        self.noise = DDPM(cfg.num_train_timesteps, cfg.beta_schedule, "epsilon", clip_sample=cfg.clip_sample)
        dims, modes = {ACTION: cfg.action_dim}, {ACTION: cfg.action_norm}
        if cfg.state_dim:
            dims[STATE], modes[STATE] = cfg.state_dim, cfg.state_norm
        self.normalizer = Normalizer(dims, modes, stats=stats, on_constant=cfg.norm_on_constant,
                                     clip=cfg.clip_normalized)
        self.reinitialized: list[str] = []  # filled by finetune_from

    # ------------------------------------------------------------ inputs

    def _missing_camera(self, cam: str, data: Mapping[str, Any]) -> ContractError:
        ik, fk = image_key(cam), feature_key(self.vision.name, image_key(cam))
        have = sorted(k for k in data
                      if k.startswith(("observation.images.", "features.")) and not k.endswith("_is_pad"))
        return ContractError(f"missing camera {cam!r}: expected {ik!r} (uint8 images) or cached features {fk!r}; "
                             f"the policy needs cameras {list(self.config.cameras)}, got {have}")

    def _batch_size(self, data: Mapping[str, Any]) -> int:
        """B, read from the first camera's images or features (before any encoding)."""
        cam = self.config.cameras[0]
        for k in (feature_key(self.vision.name, image_key(cam)), image_key(cam)):
            if k in data:
                shape = getattr(data[k], "shape", None)
                if shape is None or len(shape) < 1:
                    raise ContractError(f"{k}: expected an array with a batch dimension, got {type(data[k]).__name__}")
                return int(shape[0])
        raise self._missing_camera(cam, data)

    def _grids(self, data: Mapping[str, Any], b: int) -> Tensor:
        """Patch grids of every camera and frame -> (B, n, K, C, h, w); cached features when present."""
        cfg, dev, n = self.config, self.device, self.config.n_obs_steps
        exp = (self.feat_dim, *self.grid)
        out: list[Tensor | None] = [None] * len(cfg.cameras)
        to_encode: list[tuple[int, Tensor]] = []
        for i, cam in enumerate(cfg.cameras):
            ik, fk = image_key(cam), feature_key(self.vision.name, image_key(cam))
            if fk in data:
                if not self.vision.frozen:
                    raise ContractError(f"{fk}: cached features cannot stand in for the trainable vision encoder "
                                        f"{self.vision.name!r} (vision_encoder_kwargs frozen=False); pass {ik!r}")
                f = to_tensor(data[fk], dev)
                f = f[:, None] if f.dim() == 4 and n == 1 else f  # (B, n, C, h, w)
                if tuple(f.shape) != (b, n, *exp):
                    raise ContractError(f"{fk}: expected cached features (B={b}, n_obs={n}, {exp[0]}, {exp[1]}, "
                                        f"{exp[2]}) from encoder {self.vision.name!r}, got shape {tuple(f.shape)}")
                out[i] = f.float()
            elif ik in data:
                x = images_to_float(data[ik], ik, cfg.image_size, dev)  # (B, [n,] 3, H, W)
                x = x[:, None] if x.dim() == 4 and n == 1 else x  # (B, n, 3, H, W)
                if x.dim() != 5 or tuple(x.shape[:2]) != (b, n):
                    raise ContractError(f"{ik}: expected images (B={b}, n_obs={n}, {cfg.image_size[0]}, "
                                        f"{cfg.image_size[1]}, 3), got shape {tuple(to_tensor(data[ik]).shape)}; "
                                        "build windows with config.delta_indices()")
                to_encode.append((i, x))
            else:
                raise self._missing_camera(cam, data)
        if to_encode:
            grid, _ = self.vision(torch.cat([x.flatten(0, 1) for _, x in to_encode]))  # (N, C, h, w)
            if tuple(grid.shape[1:]) != exp:
                raise RuntimeError(f"vision encoder {self.vision.name!r} returned {tuple(grid.shape[1:])}, "
                                   f"expected {exp}")
            for (i, _), g in zip(to_encode, grid.split(b * n)):
                out[i] = g.view(b, n, *exp)  # (B, n, C, h, w)
        return torch.stack(out, dim=2)  # (B, n, K, C, h, w)

    def _state(self, data: Mapping[str, Any], b: int) -> Tensor | None:
        """Normalised state (B, n * D_s), or None without a state token."""
        cfg = self.config
        if not cfg.state_dim:
            return None
        if STATE not in data:
            raise ContractError(f"missing {STATE!r}: expected float (B, {cfg.n_obs_steps}, {cfg.state_dim}) "
                                "(or build the policy with state_dim=0)")
        s = to_tensor(data[STATE], self.device).float()
        s = s[:, None] if s.dim() == 2 and cfg.n_obs_steps == 1 else s  # (B, n, D_s)
        if tuple(s.shape) != (b, cfg.n_obs_steps, cfg.state_dim):
            raise ContractError(f"{STATE}: expected (B={b}, {cfg.n_obs_steps}, {cfg.state_dim}) (n_obs_steps="
                                f"{cfg.n_obs_steps}, state_dim={cfg.state_dim}), got {tuple(s.shape)}")
        return self.normalizer.normalize(STATE, s).flatten(1)  # (B, n*D_s)

    def encode_prefix(self, data: Mapping[str, Any]) -> tuple[Tensor, Tensor]:
        """Checked inputs -> prefix tokens (B, P, W) and their validity (B, P) bool."""
        b = self._batch_size(data)
        tasks = check_tasks(data.get(TASK), b)
        state = self._state(data, b)
        grids = self._grids(data, b)  # (B, n, K, C, h, w)
        tokens, mask, _ = self.text(tasks)  # (B, L, D_t), (B, L)
        return self.prefix_encoder(tokens.to(self.device), mask.to(self.device), grids, state)

    # ------------------------------------------------------------ training

    def compute_loss(self, batch: Mapping[str, Any]) -> tuple[Tensor, dict[str, float]]:
        """DDPM epsilon-prediction MSE, averaged over valid (sample, step) pairs; padded steps masked."""
        cfg, dev = self.config, self.device
        prefix, valid = self.encode_prefix(batch)  # (B, P, W), (B, P)
        b = prefix.shape[0]
        if ACTION not in batch:
            raise ContractError(f"missing {ACTION!r}: expected float (B={b}, horizon={cfg.horizon}, "
                                f"action_dim={cfg.action_dim})")
        a = to_tensor(batch[ACTION], dev).float()
        if tuple(a.shape) != (b, cfg.horizon, cfg.action_dim):
            raise ContractError(f"{ACTION}: expected (B={b}, horizon={cfg.horizon}, action_dim={cfg.action_dim}), "
                                f"got {tuple(a.shape)}")
        step_valid = ~to_tensor(batch[pad_key(ACTION)], dev).bool() if pad_key(ACTION) in batch \
            else torch.ones(b, cfg.horizon, dtype=torch.bool, device=dev)  # (B, H)
        if tuple(step_valid.shape) != (b, cfg.horizon):
            raise ContractError(f"{pad_key(ACTION)}: expected (B={b}, horizon={cfg.horizon}), "
                                f"got {tuple(step_valid.shape)}")
        a = self.normalizer.normalize(ACTION, a)  # (B, H, D_a) in [-1, 1]
        a = torch.where(step_valid[..., None], a, torch.zeros_like(a))  # padded steps (even NaN) -> 0
        eps = torch.randn_like(a)  # (B, H, D_a)
        t = self.noise.sample_timesteps(b, device=dev)  # (B,)
        pred = self.net(prefix, valid, self.noise.add_noise(a, eps, t), t)  # (B, H, D_a)
        err = (pred - self.noise.target(a, eps, t)).pow(2).mean(-1)  # (B, H)
        loss = torch.where(step_valid, err, torch.zeros_like(err)).sum() / step_valid.sum().clamp_min(1)
        return loss, {"loss": float(loss.detach()), "valid_fraction": float(step_valid.float().mean())}

    def param_groups(self, lr: float | None = None, weight_decay: float = 0.0) -> list[dict[str, Any]]:
        """Optimiser parameter groups with learning-rate multipliers ``lr_scale``.

        "decay": weight matrices; "no_decay": biases, norms, learned queries and embeddings;
        "vision": a trainable vision backbone at ``config.vision_lr_scale`` (Dita: 0.1x). With ``lr``
        each group also gets ``lr = lr * lr_scale``. Frozen parameters and empty groups are left out.
        """
        vision_ids = {id(p) for p in self.vision.parameters()}
        decay, no_decay, vision = [], [], []
        for name, p in self.named_parameters():
            if not p.requires_grad:
                continue
            if id(p) in vision_ids:
                vision.append(p)
            elif p.ndim < 2 or name.endswith(_NO_DECAY_SUFFIXES):
                no_decay.append(p)
            else:
                decay.append(p)
        groups = [dict(name="decay", params=decay, weight_decay=weight_decay, lr_scale=1.0),
                  dict(name="no_decay", params=no_decay, weight_decay=0.0, lr_scale=1.0),
                  dict(name="vision", params=vision, weight_decay=weight_decay, lr_scale=self.config.vision_lr_scale)]
        groups = [g for g in groups if g["params"]]
        if lr is not None:
            for g in groups:
                g["lr"] = lr * g["lr_scale"]
        return groups

    # ------------------------------------------------------------ sampling

    def initial_noise(self, batch: int, generator: torch.Generator | None = None) -> dict[str, Tensor]:
        """The sampler's starting noise: ``action`` (B, horizon, D_a)."""
        cfg = self.config
        return {"action": torch.randn(batch, cfg.horizon, cfg.action_dim, generator=generator, device=self.device)}

    @torch.no_grad()
    def sample_actions(self, obs: Observation | Mapping[str, Any], num_inference_steps: int | None = None,
                       use_prefix_cache: bool = True, eta: float | None = None,
                       generator: torch.Generator | None = None, seed: int | None = None,
                       noise: Mapping[str, Tensor] | None = None) -> ActionChunk:
        """DDIM sampling of a chunk (B, horizon - n_past_actions, D_a) in physical units.

        The prefix's keys/values are computed once, by the first DDIM step's pass over the whole
        sequence, and reused by every later step, which runs only the 1 + H suffix tokens, unless
        ``use_prefix_cache`` is False (then the whole sequence runs at every step; same result).
        ``seed`` (or ``generator``) makes chunks reproducible; ``noise`` gives the initial noise instead
        (``action`` (B, horizon, D_a), as the exported chunk graphs take it). ``extras``: ``past_actions``
        (B, n_past, D_a), ``num_network_calls``, ``prefix_cache``.
        """
        cfg, dev = self.config, self.device
        data = obs.to_flat() if isinstance(obs, Observation) else obs
        if not isinstance(data, Mapping):
            raise TypeError(f"sample_actions takes an Observation or a flat dict, got {type(data).__name__}")
        steps = int(num_inference_steps or cfg.num_inference_steps)
        prefix, valid = self.encode_prefix(data)  # (B, P, W), (B, P)
        b = prefix.shape[0]
        if seed is not None:
            generator = torch.Generator(device=dev).manual_seed(int(seed))
        noise = (self.initial_noise(b, generator) if noise is None else noise)["action"].to(dev)  # (B, H, D_a)
        if use_prefix_cache:
            kept: list[PrefixCache] = []  # filled by the first step's full pass

            def model_fn(x: Tensor, t: Tensor) -> Tensor:
                if not kept:
                    eps, cache = self.net.forward_with_cache(prefix, valid, x, t)  # (B, H, D_a)
                    kept.append(cache)
                    return eps
                return self.net.denoise(x, t, kept[0])  # (B, H, D_a)
        else:
            def model_fn(x: Tensor, t: Tensor) -> Tensor:
                return self.net(prefix, valid, x, t)  # (B, H, D_a)
        a = self.noise.sample(model_fn, noise, steps, eta=cfg.ddim_eta if eta is None else eta,
                              generator=generator)  # (B, H, D_a) normalised
        actions = self.normalizer.unnormalize(ACTION, a)  # (B, H, D_a)
        p = cfg.n_past_actions
        return ActionChunk(actions[:, p:], extras={"past_actions": actions[:, :p], "num_network_calls": steps,
                                                   "prefix_cache": bool(use_prefix_cache)})
