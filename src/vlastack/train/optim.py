"""Optimizer pieces: AdamW parameter groups, the warmup + cosine schedule, and the EMA of weights.

Parameter groups: weight matrices decay; biases, norms, learned queries and embeddings do not;
a trainable vision backbone gets its own group at ``lr_scale`` x the learning rate (a policy's
``param_groups()``, e.g. Dita's, is used when it has one). Every group carries ``lr_scale`` and
the schedule sets ``lr = base_lr * lr_scale * factor(step)``.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Any, Iterator

import torch
from torch import nn

from .config import EMAConfig, OptimConfig, ScheduleConfig

NO_DECAY_SUFFIXES = ("queries", "_embed", "embedding", "_pos", "_token")
_NORMS = (nn.LayerNorm, nn.GroupNorm, nn.BatchNorm1d, nn.BatchNorm2d, nn.RMSNorm, nn.Embedding)


def param_groups(policy: nn.Module, cfg: OptimConfig) -> list[dict[str, Any]]:
    """AdamW groups of the trainable parameters: decay / no_decay / backbone (see the module docstring)."""
    own = getattr(policy, "param_groups", None)
    if callable(own):
        groups = own(lr=cfg.lr, weight_decay=cfg.weight_decay)
        for g in groups:
            g.setdefault("lr_scale", 1.0)
        return groups
    norm_params = {id(p) for m in policy.modules() if isinstance(m, _NORMS) for p in m.parameters(recurse=False)}
    vision = getattr(policy, "vision", None)
    vision_ids = {id(p) for p in vision.parameters()} if isinstance(vision, nn.Module) else set()
    decay, no_decay, backbone = [], [], []
    for name, p in policy.named_parameters():
        if not p.requires_grad:
            continue
        if id(p) in vision_ids:
            backbone.append(p)
        elif p.ndim < 2 or id(p) in norm_params or name.endswith(NO_DECAY_SUFFIXES):
            no_decay.append(p)
        else:
            decay.append(p)
    groups = [dict(name="decay", params=decay, weight_decay=cfg.weight_decay, lr_scale=1.0),
              dict(name="no_decay", params=no_decay, weight_decay=0.0, lr_scale=1.0),
              dict(name="backbone", params=backbone, weight_decay=cfg.weight_decay, lr_scale=cfg.backbone_lr_scale)]
    groups = [g for g in groups if g["params"]]
    for g in groups:
        g["lr"] = cfg.lr * g["lr_scale"]
    return groups


def make_optimizer(policy: nn.Module, cfg: OptimConfig) -> torch.optim.AdamW:
    """AdamW over :func:`param_groups`; raises when nothing is trainable or a value is unresolved (null)."""
    unset = [k for k in ("lr", "betas", "eps", "weight_decay") if getattr(cfg, k) is None]
    if unset:
        raise ValueError(f"train.optim: {unset} still null; fill them with train.config.resolve_optim first")
    groups = param_groups(policy, cfg)
    if not groups:
        raise ValueError("the policy has no trainable parameters")
    params = [p for g in groups for p in g["params"]]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), eps=cfg.eps, weight_decay=cfg.weight_decay,
                             fused=True if fused_adamw_ok(params) else None)


def fused_adamw_ok(params: list[torch.Tensor]) -> bool:
    """Whether torch's fused AdamW kernel takes these parameters: plain (not sharded) floating-point
    tensors on one CPU or CUDA device type. On one CPU thread it steps DUST small's 21M parameters
    about 3x faster than the default per-tensor loop (same update up to float rounding)."""
    kinds = {p.device.type for p in params}
    return bool(params) and len(kinds) == 1 and kinds <= {"cpu", "cuda"} \
        and all(type(p.data) is torch.Tensor and p.is_floating_point() for p in params)


class CosineSchedule:
    """Linear warmup to the base rate, then cosine decay to ``final_lr_ratio`` at ``total_steps``.

    ``total_steps`` can be re-planned during a run with a wall-clock budget (:meth:`replan`);
    it is part of :meth:`state_dict`, so a resumed run continues on the same curve.
    """

    def __init__(self, cfg: ScheduleConfig, base_lr: float, total_steps: int):
        if cfg.warmup_steps is None and cfg.warmup_fraction is None:
            raise ValueError("CosineSchedule: no warmup set; resolve the config first (train.config.resolve_optim)")
        self.warmup = None if cfg.warmup_steps is None else int(cfg.warmup_steps)
        self.warmup_fraction = None if cfg.warmup_fraction is None else float(cfg.warmup_fraction)
        self.final = float(cfg.final_lr_ratio)
        self.base_lr = float(base_lr)
        self.total_steps = int(total_steps)

    @property
    def warmup_steps(self) -> int:
        """Warmup length in steps: fixed, or the fraction of the (current) total."""
        if self.warmup is not None:
            return self.warmup
        return int(round(self.warmup_fraction * self.total_steps))

    def factor(self, step: int) -> float:
        """Multiplier of the base rate for optimizer step ``step`` (0-based)."""
        warm = min(self.warmup_steps, max(self.total_steps - 1, 0))
        if step < warm:
            return (step + 1) / (warm + 1)
        span = max(self.total_steps - warm, 1)
        p = min(max((step - warm) / span, 0.0), 1.0)
        return self.final + (1.0 - self.final) * 0.5 * (1.0 + math.cos(math.pi * p))

    def apply(self, optimizer: torch.optim.Optimizer, step: int) -> float:
        """Set every group's rate for ``step``; returns the base group's rate."""
        f = self.factor(step)
        for g in optimizer.param_groups:
            g["lr"] = self.base_lr * float(g.get("lr_scale", 1.0)) * f
        return self.base_lr * f

    def replan(self, total_steps: int) -> None:
        """Change the run's length (wall-clock budgets)."""
        self.total_steps = max(int(total_steps), 1)

    def state_dict(self) -> dict[str, Any]:
        """Resumable state."""
        return {"total_steps": self.total_steps, "warmup": self.warmup, "warmup_fraction": self.warmup_fraction,
                "final": self.final, "base_lr": self.base_lr}

    def load_state_dict(self, d: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""
        self.total_steps = int(d["total_steps"])


class EMA:
    """Exponential moving average of the trainable parameters (buffers are copied as they are).

    decay_t = min(decay, (1 + t) / (10 + t)) with ``warmup``. Works on sharded (DTensor) parameters too.
    """

    def __init__(self, model: nn.Module, cfg: EMAConfig):
        self.cfg = cfg
        self.names = [n for n, p in model.named_parameters() if p.requires_grad]
        params = dict(model.named_parameters())
        self.shadow = [params[n].detach().clone() for n in self.names]
        self.updates = 0

    def decay(self) -> float:
        """The decay for the next update."""
        d = self.cfg.decay
        if self.cfg.warmup:
            d = min(d, (1 + self.updates) / (10 + self.updates))
        return d

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """shadow <- decay * shadow + (1 - decay) * params."""
        w = 1.0 - self.decay()
        params = dict(model.named_parameters())
        for n, s in zip(self.names, self.shadow):
            s.lerp_(params[n].detach(), w)
        self.updates += 1

    @contextmanager
    @torch.no_grad()
    def applied(self, model: nn.Module) -> Iterator[None]:
        """Swap the EMA weights into ``model`` for the block, then restore the trained ones."""
        params = dict(model.named_parameters())
        saved = [params[n].detach().clone() for n in self.names]
        for n, s in zip(self.names, self.shadow):
            params[n].copy_(s)
        try:
            yield
        finally:
            for n, s in zip(self.names, saved):
                params[n].copy_(s)

    def state_dict(self) -> dict[str, Any]:
        """Resumable state (shadow tensors by parameter name)."""
        return {"updates": self.updates, "shadow": {n: s for n, s in zip(self.names, self.shadow)}}

    @torch.no_grad()
    def load_state_dict(self, d: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`; raises naming a parameter that is missing or reshaped."""
        self.updates = int(d["updates"])
        for n, s in zip(self.names, self.shadow):
            if n not in d["shadow"]:
                raise ValueError(f"EMA state lacks parameter {n!r}")
            s.copy_(d["shadow"][n])
