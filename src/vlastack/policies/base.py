"""What every policy shares: config handling, the two verbs, checkpoints and a registry.

A policy is an ``nn.Module`` with one typed config dataclass (a :class:`PolicyConfig`,
validated in ``__post_init__``) and two verbs:

    compute_loss(batch) -> (loss, metrics)          batch in the data contract (types.fake_batch)
    sample_actions(obs, **sampling) -> ActionChunk  actions (B, H, D_a) in physical units

Checkpoints are a directory with ``config.json`` (policy name, config, format version and
fingerprints of frozen encoders) and ``model.safetensors`` (every trainable weight and
buffer, normalisation statistics included). Frozen encoders are rebuilt from the config
and checked against their stored fingerprint instead of being copied into every
checkpoint (``save_pretrained(..., include_frozen=True)`` stores them too).

Registry: ``@register_policy("dust")`` on the class; ``make_policy("dust", "tiny", stats=...)``;
``policy_class("dust")``; ``load_policy(path)`` for any registered policy.

Cached encoder features travel in batches under :func:`vlastack.types.feature_key` names,
``features.<encoder name>.<image key>`` (what the window sampler emits), shaped like the
images' window (B, T, C, h, w).
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
from pathlib import Path
from typing import Any, ClassVar, Mapping

import numpy as np
import torch
from torch import Tensor, nn

from vlastack.types import FEATURES_PREFIX, ActionChunk, ContractError, feature_key

CHECKPOINT_FORMAT = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


# ---------------------------------------------------------------- configs


def _is_tuple_type(tp: Any) -> bool:
    """Whether a (possibly string) annotation denotes a tuple (``tuple[...]``, ``tuple | None``)."""
    return "tuple" in (tp if isinstance(tp, str) else repr(tp))


def _to_json(v: Any) -> Any:
    if isinstance(v, (tuple, list)):
        return [_to_json(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _to_json(x) for k, x in v.items()}
    return v


def _from_json(v: Any, as_tuple: bool) -> Any:
    if isinstance(v, list) and as_tuple:
        return tuple(_from_json(x, True) for x in v)
    return v


@dataclasses.dataclass
class PolicyConfig:
    """Base of policy configs: JSON round trip, presets, derived time windows.

    Subclasses are dataclasses validated in ``__post_init__`` and may define
    ``PRESETS: dict[str, dict]`` (field overrides per preset name).
    """

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {}

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of every field (tuples become lists)."""
        return {f.name: _to_json(getattr(self, f.name)) for f in dataclasses.fields(self)}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "PolicyConfig":
        """Inverse of :meth:`to_dict`; unknown fields raise naming the valid ones."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - set(fields))
        if unknown:
            raise ValueError(f"{cls.__name__}: unknown fields {unknown}; valid fields: {sorted(fields)}")
        return cls(**{k: _from_json(v, _is_tuple_type(fields[k].type)) for k, v in d.items()})

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "PolicyConfig":
        """The named preset with ``overrides`` applied on top."""
        if name not in cls.PRESETS:
            raise ValueError(f"{cls.__name__}: unknown preset {name!r}; presets: {sorted(cls.PRESETS)}")
        return cls.from_dict({**cls.PRESETS[name], **_to_json(overrides)})

    def replace(self, **changes: Any) -> "PolicyConfig":
        """A copy with ``changes`` (validated again)."""
        return dataclasses.replace(self, **changes)

    def delta_indices(self) -> dict[str, list[int]]:
        """Frame offsets per key the policy reads around the current step t (for the window sampler)."""
        raise NotImplementedError


# ---------------------------------------------------------------- input checks


def to_tensor(x: Any, device: torch.device | str | None = None) -> Tensor:
    """numpy array / tensor / nested list -> tensor on ``device`` (no copy when already there)."""
    if isinstance(x, Tensor):
        return x.to(device) if device is not None else x
    return torch.as_tensor(np.asarray(x), device=device)


def images_to_float(x: Any, key: str, image_size: tuple[int, int], device=None) -> Tensor:
    """uint8 images (..., H, W, 3) -> float (..., 3, H, W) in [0, 1], checking dtype and size.

    Raises :class:`ContractError` naming ``key`` and the expected layout.
    """
    t = to_tensor(x, device)
    h, w = image_size
    if t.dtype != torch.uint8:
        raise ContractError(f"{key}: expected uint8 images (..., {h}, {w}, 3), got dtype {t.dtype} "
                            f"shape {tuple(t.shape)}")
    if t.dim() < 3 or t.shape[-1] != 3:
        raise ContractError(f"{key}: expected channels-last images (..., {h}, {w}, 3), got shape {tuple(t.shape)}")
    if tuple(t.shape[-3:-1]) != (h, w):
        raise ContractError(f"{key}: expected image size {h}x{w} (H x W), got {t.shape[-3]}x{t.shape[-2]} "
                            f"(shape {tuple(t.shape)}); resize to the policy's image_size")
    return t.movedim(-1, -3).float().div_(255.0)  # (..., 3, H, W)


def check_tasks(task: Any, batch_size: int) -> list[str]:
    """The instruction list, checked: one non-empty string per sample."""
    if task is None:
        raise ContractError(f"missing the instruction 'task': expected {batch_size} strings")
    task = [task] if isinstance(task, str) else list(task)
    if len(task) != batch_size:
        raise ContractError(f"'task': expected {batch_size} instructions (one per sample), got {len(task)}")
    bad = [i for i, s in enumerate(task) if not isinstance(s, str) or not s.strip()]
    if bad:
        raise ContractError(f"'task': instructions at {bad} are empty or not strings; expected text")
    return task


# ---------------------------------------------------------------- policy base

_REGISTRY: dict[str, type["Policy"]] = {}
# policies that live in this package register on import; make_policy imports them on demand
_BUILTIN: dict[str, str] = {"dust": "vlastack.policies.dust", "dita": "vlastack.policies.dita"}


class Policy(nn.Module):
    """Base class: config, the two verbs, ``save_pretrained`` / ``from_pretrained``.

    Subclasses set ``config_class``, are decorated with :func:`register_policy` and implement
    ``__init__(config, stats=None)``, :meth:`compute_loss` and :meth:`sample_actions`.
    """

    name: ClassVar[str] = ""
    config_class: ClassVar[type[PolicyConfig]] = PolicyConfig

    def __init__(self, config: PolicyConfig):
        super().__init__()
        if not isinstance(config, self.config_class):
            raise TypeError(f"{type(self).__name__} needs a {self.config_class.__name__}, got {type(config).__name__}")
        self.config = config

    # ------------------------------------------------------------ the two verbs

    def compute_loss(self, batch: Mapping[str, Any]) -> tuple[Tensor, dict[str, float]]:
        """Training loss (scalar tensor) and float metrics for a batch in the data contract."""
        raise NotImplementedError

    def sample_actions(self, obs: Any, **sampling: Any) -> ActionChunk:
        """A chunk of actions (B, H, D_a) in physical units for an observation."""
        raise NotImplementedError

    # ------------------------------------------------------------ helpers

    @property
    def device(self) -> torch.device:
        """Device of the policy's first parameter or buffer."""
        for t in self.parameters():
            return t.device
        for t in self.buffers():
            return t.device
        return torch.device("cpu")

    def num_parameters(self, trainable_only: bool = True) -> int:
        """Parameter count (trainable only by default)."""
        return sum(p.numel() for p in self.parameters() if p.requires_grad or not trainable_only)

    def frozen_modules(self) -> dict[str, nn.Module]:
        """Top-most submodules marked ``frozen`` with a ``fingerprint()`` (frozen encoders), by prefix."""
        out: dict[str, nn.Module] = {}
        for name, mod in self.named_modules():
            if name and getattr(mod, "frozen", False) and hasattr(mod, "fingerprint") \
                    and not any(name.startswith(p + ".") for p in out):
                out[name] = mod
        return out

    # ------------------------------------------------------------ checkpoints

    def save_pretrained(self, path: str | os.PathLike, include_frozen: bool = False,
                        extra: Mapping[str, Any] | None = None) -> Path:
        """Write ``config.json`` + ``model.safetensors`` into directory ``path`` (created)."""
        from safetensors.torch import save_file

        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        frozen = self.frozen_modules()
        skip = () if include_frozen else tuple(p + "." for p in frozen)
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in self.state_dict().items()
                   if not k.startswith(skip)}
        meta = {"policy": self.name, "format": CHECKPOINT_FORMAT, "config": self.config.to_dict(),
                "frozen_modules": {p: m.fingerprint() for p, m in frozen.items()},
                "includes_frozen": bool(include_frozen), **dict(extra or {})}
        tmp_w, tmp_c = path / (WEIGHTS_FILE + ".tmp"), path / (CONFIG_FILE + ".tmp")
        save_file(tensors, str(tmp_w), metadata={"policy": self.name, "format": str(CHECKPOINT_FORMAT)})
        tmp_c.write_text(json.dumps(meta, indent=2))
        os.replace(tmp_w, path / WEIGHTS_FILE)
        os.replace(tmp_c, path / CONFIG_FILE)
        return path

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike, map_location: str | torch.device = "cpu",
                        **config_overrides: Any) -> "Policy":
        """Rebuild the exact policy saved by :meth:`save_pretrained`.

        Called on :class:`Policy` it dispatches through the registry; called on a subclass it
        raises if the checkpoint belongs to another policy. ``config_overrides`` change
        config fields that do not alter weights (e.g. sampling steps).
        """
        from safetensors.torch import load_file

        path = Path(path)
        cfg_file, w_file = path / CONFIG_FILE, path / WEIGHTS_FILE
        if not cfg_file.is_file() or not w_file.is_file():
            raise FileNotFoundError(f"{path} is not a policy checkpoint: expected {CONFIG_FILE} and {WEIGHTS_FILE}")
        meta = json.loads(cfg_file.read_text())
        name = meta.get("policy")
        if not name:
            raise ValueError(f"{cfg_file} names no policy (key 'policy'); not a vlastack checkpoint")
        if meta.get("format") != CHECKPOINT_FORMAT:
            raise ValueError(f"{cfg_file}: checkpoint format {meta.get('format')!r}, this code reads {CHECKPOINT_FORMAT}")
        target = policy_class(name) if cls is Policy else cls
        if target.name != name:
            raise ValueError(f"{path} holds a {name!r} policy checkpoint, expected a {target.name!r} one "
                             f"(load it with Policy.from_pretrained or policy_class({name!r}))")
        config = target.config_class.from_dict({**meta["config"], **_to_json(config_overrides)})
        policy = target(config)
        state = load_file(str(w_file))
        frozen = policy.frozen_modules()
        expected = policy.state_dict()
        skip = () if meta.get("includes_frozen") else tuple(p + "." for p in frozen)
        missing = sorted(k for k in expected if k not in state and not k.startswith(skip))
        unexpected = sorted(k for k in state if k not in expected)
        shapes = sorted(f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(expected[k].shape)}"
                        for k in state if k in expected and state[k].shape != expected[k].shape)
        if missing or unexpected or shapes:
            raise ValueError(f"{path}: weights do not match the {name!r} policy built from its config: "
                             f"missing {missing[:8]}, unexpected {unexpected[:8]}, shape mismatches {shapes[:8]}")
        policy.load_state_dict(state, strict=False)
        for prefix, fp in meta.get("frozen_modules", {}).items():
            if prefix not in frozen:
                raise ValueError(f"{path}: checkpoint expects frozen module {prefix!r}, the rebuilt policy has none")
            now = frozen[prefix].fingerprint()
            if now != fp:
                raise ValueError(f"{path}: frozen module {prefix!r} ({getattr(frozen[prefix], 'name', '?')}) "
                                 f"has weights {now}, the checkpoint was trained with {fp}; install the same "
                                 "encoder weights or save with include_frozen=True")
        return policy.to(map_location)


# ---------------------------------------------------------------- registry


def register_policy(name: str):
    """Class decorator: register a :class:`Policy` subclass under ``name``."""

    def deco(cls: type[Policy]) -> type[Policy]:
        if not (isinstance(cls, type) and issubclass(cls, Policy)):
            raise TypeError(f"register_policy({name!r}) decorates Policy subclasses, got {cls!r}")
        old = _REGISTRY.get(name)
        if old is not None and old.__qualname__ != cls.__qualname__:
            raise ValueError(f"policy name {name!r} is already registered to {old.__module__}.{old.__qualname__}")
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return deco


def available_policies() -> list[str]:
    """Registered names plus built-in ones that register on import."""
    return sorted(set(_REGISTRY) | set(_BUILTIN))


def policy_class(name: str) -> type[Policy]:
    """The policy class registered under ``name`` (importing built-in policies on demand)."""
    if name not in _REGISTRY and name in _BUILTIN:
        try:
            importlib.import_module(_BUILTIN[name])
        except ModuleNotFoundError as e:
            if e.name and _BUILTIN[name].startswith(e.name):
                raise ValueError(f"policy {name!r} is not available in this install (module {_BUILTIN[name]} "
                                 f"missing); registered: {sorted(_REGISTRY)}") from e
            raise
    if name not in _REGISTRY:
        raise ValueError(f"unknown policy {name!r}; available: {available_policies()}")
    return _REGISTRY[name]


def make_policy(name: str, config: PolicyConfig | Mapping[str, Any] | str | None = None,
                stats: Mapping[str, Mapping[str, Any]] | None = None, **overrides: Any) -> Policy:
    """Build policy ``name`` from a config object, a dict of fields, a preset name or defaults.

    ``overrides`` are config fields applied on top; ``stats`` fit the normalizer.
    """
    cls = policy_class(name)
    cc = cls.config_class
    if config is None:
        cfg = cc.from_dict(_to_json(overrides))
    elif isinstance(config, str):
        cfg = cc.preset(config, **overrides)
    elif isinstance(config, Mapping):
        cfg = cc.from_dict({**config, **_to_json(overrides)})
    elif isinstance(config, cc):
        cfg = config.replace(**overrides) if overrides else config
    else:
        raise TypeError(f"make_policy({name!r}): config must be a {cc.__name__}, a dict, a preset name "
                        f"{sorted(cc.PRESETS)} or None; got {type(config).__name__}")
    return cls(cfg, stats=stats)


def load_policy(path: str | os.PathLike, map_location: str | torch.device = "cpu", **overrides: Any) -> Policy:
    """Load any registered policy's checkpoint."""
    return Policy.from_pretrained(path, map_location=map_location, **overrides)


__all__ = ["Policy", "PolicyConfig", "register_policy", "make_policy", "policy_class", "available_policies",
           "load_policy", "feature_key", "images_to_float", "check_tasks", "to_tensor", "FEATURES_PREFIX"]
