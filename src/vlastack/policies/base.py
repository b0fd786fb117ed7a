"""What every policy shares: config handling, the two verbs, checkpoints and a registry.

A policy is an ``nn.Module`` with one typed config dataclass (a :class:`PolicyConfig`,
validated in ``__post_init__``) and two verbs:

    compute_loss(batch) -> (loss, metrics)          batch in the data contract (types.fake_batch)
    sample_actions(obs, **sampling) -> ActionChunk  actions (B, H, D_a) in physical units

Checkpoints (:mod:`.checkpoint`): a directory or Hugging Face Hub repo with a flat
``config.json`` (``type``: the policy name, the config's fields, a ``vlastack`` block with the
format version and fingerprints of frozen encoders), ``model.safetensors`` (every trainable
weight and buffer, normalisation statistics included) and a ``README.md`` model card.
``policy.save_pretrained(dir)``; ``Policy.from_pretrained(dir_or_repo_id)``;
``cls.finetune_from(dir, stats=..., **overrides)`` for new shapes. Frozen encoders are rebuilt
from the config and checked against their stored fingerprint instead of being copied into every
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
import os
import warnings
from pathlib import Path
from typing import Any, ClassVar, Mapping

import numpy as np
import torch
from torch import Tensor, nn

from vlastack.types import FEATURES_PREFIX, ActionChunk, ContractError, feature_key

from . import checkpoint as ckpt
from .checkpoint import CONFIG_FILE, WEIGHTS_FILE  # noqa: F401  (re-exported)


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
    ``PRESETS: dict[str, dict]`` (field overrides per preset name), ``PRESET_ALIASES``
    (former preset name -> current one) and ``OPTIM_DEFAULTS`` (the policy's published
    optimiser: ``lr``, ``betas``, ``eps``, ``weight_decay``, and ``warmup_steps`` or
    ``warmup_fraction``; what ``vlastack train`` uses where ``train.optim`` / ``train.schedule``
    leave a value null, see :func:`vlastack.train.config.resolve_optim`).
    """

    PRESETS: ClassVar[dict[str, dict[str, Any]]] = {}
    PRESET_ALIASES: ClassVar[dict[str, str]] = {}
    OPTIM_DEFAULTS: ClassVar[dict[str, Any]] = {}

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
    def preset_name(cls, name: str) -> str:
        """The current name of preset ``name`` (a former name warns); raises naming the valid presets."""
        if name in cls.PRESET_ALIASES:
            new = cls.PRESET_ALIASES[name]
            warnings.warn(f"{cls.__name__}: preset {name!r} is a deprecated alias of {new!r}", DeprecationWarning,
                          stacklevel=3)
            return new
        if name not in cls.PRESETS:
            raise ValueError(f"{cls.__name__}: unknown preset {name!r}; presets: {sorted(cls.PRESETS)}")
        return name

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> "PolicyConfig":
        """The named preset with ``overrides`` applied on top."""
        return cls.from_dict({**cls.PRESETS[cls.preset_name(name)], **_to_json(overrides)})

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
    d = t.dim()  # non-negative permutation: ONNX's legacy exporter mistranslates movedim(-1, -3)
    return t.permute(*range(d - 3), d - 1, d - 3, d - 2).float().div_(255.0)  # (..., 3, H, W)


def check_tasks(task: Any, batch_size: int) -> list[str]:
    """The instruction list, checked: one string per sample, text or exactly ``""`` (no instruction:
    the blank-instruction evaluation control); whitespace-only strings are refused as a likely bug."""
    if task is None:
        raise ContractError(f"missing the instruction 'task': expected {batch_size} strings")
    task = [task] if isinstance(task, str) else list(task)
    if len(task) != batch_size:
        raise ContractError(f"'task': expected {batch_size} instructions (one per sample), got {len(task)}")
    bad = [i for i, s in enumerate(task) if not isinstance(s, str) or (s and not s.strip())]
    if bad:
        raise ContractError(f"'task': instructions at {bad} are whitespace or not strings; expected text "
                            "(or \"\" for no instruction)")
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
    preset: str | None = None  # the preset the config came from, when known (recorded in checkpoints)

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
        """Write ``config.json`` + ``model.safetensors`` + a ``README.md`` model card into directory ``path``.

        Frozen encoders are rebuilt from the config when loading (their fingerprints are stored)
        unless ``include_frozen``. ``extra`` goes into config.json's ``vlastack`` block (the
        training loop records ``training``: step, data, validation loss, preset).
        """
        meta, tensors = self.checkpoint_parts(include_frozen, extra)
        return ckpt.write_checkpoint(path, meta, tensors)

    def checkpoint_parts(self, include_frozen: bool = False, extra: Mapping[str, Any] | None = None
                         ) -> tuple[ckpt.CheckpointMeta, dict[str, Tensor]]:
        """What :meth:`save_pretrained` writes: the ``config.json`` meta and the CPU tensors of
        ``model.safetensors`` (frozen encoders left out unless ``include_frozen``)."""
        frozen = self.frozen_modules()
        skip = () if include_frozen else tuple(p + "." for p in frozen)
        tensors = {k: v.detach().to("cpu").contiguous() for k, v in self.state_dict().items()
                   if not k.startswith(skip)}
        info = {"parameters": self.num_parameters(), **({"preset": self.preset} if self.preset else {}),
                **dict(extra or {})}
        meta = ckpt.CheckpointMeta(self.name, self.config.to_dict(), {p: m.fingerprint() for p, m in frozen.items()},
                                   bool(include_frozen), info)
        return meta, tensors

    @classmethod
    def _open(cls, source: str | os.PathLike, hub: Mapping[str, Any]) -> tuple[Path, ckpt.CheckpointMeta,
                                                                              type["Policy"]]:
        """(local directory, meta, policy class) of checkpoint ``source``, checking it suits ``cls``."""
        path = ckpt.locate(source, **hub)
        meta = ckpt.read_meta(path)
        target = policy_class(meta.type) if cls is Policy else cls
        if target.name != meta.type:
            raise ckpt.CheckpointError(f"{path} holds a {meta.type!r} policy checkpoint, expected a {target.name!r} "
                                       f"one (load it with Policy.from_pretrained or policy_class({meta.type!r}))")
        return path, meta, target

    @classmethod
    def from_pretrained(cls, source: str | os.PathLike, map_location: str | torch.device = "cpu",
                        revision: str | None = None, cache_dir: str | os.PathLike | None = None,
                        local_files_only: bool = False, **config_overrides: Any) -> "Policy":
        """Rebuild the exact policy saved by :meth:`save_pretrained`, from a directory or a Hub repo id.

        ``source``: a checkpoint directory, a ``last`` pointer, a training run directory, or a
        Hugging Face Hub repo id ``org/name`` (fetched at ``revision`` through the hub cache;
        ``HF_HUB_OFFLINE=1`` or ``local_files_only`` read the cache only). Called on :class:`Policy`
        it dispatches through the registry; called on a subclass it raises if the checkpoint
        belongs to another policy. ``config_overrides`` change config fields that do not alter
        weights (e.g. sampling steps); to change shapes use :meth:`finetune_from`.
        """
        path, meta, target = cls._open(source, dict(revision=revision, cache_dir=cache_dir,
                                                    local_files_only=local_files_only))
        policy = target(target.config_class.from_dict({**meta.config, **_to_json(config_overrides)}))
        try:
            ckpt.load_weights(policy, path, meta, strict=True)
        except ckpt.CheckpointError as e:
            if config_overrides and "weights do not match" in str(e):
                raise ckpt.CheckpointError(f"{e}. The overrides {sorted(config_overrides)} change the network's "
                                           f"shapes; to fine-tune on them use {target.__name__}.finetune_from(path, "
                                           "stats=..., **overrides)") from e
            raise
        policy.preset = meta.preset
        return policy.to(map_location)

    @classmethod
    def finetune_from(cls, source: str | os.PathLike, stats: Mapping[str, Mapping[str, Any]] | None = None,
                      map_location: str | torch.device = "cpu", **overrides: Any) -> "Policy":
        """Start fine-tuning from a checkpoint with config ``overrides`` (e.g. a new ``action_dim``).

        Every weight whose name and shape match the new network loads; the others keep their fresh
        initialisation and are listed in ``policy.reinitialized``. ``stats`` refit the normaliser
        (required when a normalised dimension changes); without them the checkpoint's statistics
        are kept. Frozen encoders are rebuilt and checked against their fingerprints.
        """
        path, meta, target = cls._open(source, {})
        policy = target(target.config_class.from_dict({**meta.config, **_to_json(overrides)}), stats=stats)
        fresh = ckpt.load_weights(policy, path, meta, strict=False, skip=("normalizer.",) if stats is not None else ())
        norm_fresh = [k for k in fresh if k.startswith("normalizer.")]
        if stats is None and norm_fresh:
            raise ckpt.CheckpointError(f"{path}: the overrides change normalised dimensions ({norm_fresh}); pass "
                                       "stats=<the fine-tuning dataset's compute_stats()>")
        policy.reinitialized = [k for k in fresh if not k.startswith("normalizer.")]
        policy.preset = meta.preset
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
        policy = cls(cc.preset(config, **overrides), stats=stats)
        policy.preset = config
        return policy
    elif isinstance(config, Mapping):
        cfg = cc.from_dict({**config, **_to_json(overrides)})
    elif isinstance(config, cc):
        cfg = config.replace(**overrides) if overrides else config
    else:
        raise TypeError(f"make_policy({name!r}): config must be a {cc.__name__}, a dict, a preset name "
                        f"{sorted(cc.PRESETS)} or None; got {type(config).__name__}")
    return cls(cfg, stats=stats)


def load_policy(source: str | os.PathLike, map_location: str | torch.device = "cpu", **kwargs: Any) -> Policy:
    """Load any registered policy's checkpoint (a local path or a Hub repo id; see :meth:`Policy.from_pretrained`)."""
    return Policy.from_pretrained(source, map_location=map_location, **kwargs)


__all__ = ["Policy", "PolicyConfig", "register_policy", "make_policy", "policy_class", "available_policies",
           "load_policy", "feature_key", "images_to_float", "check_tasks", "to_tensor", "FEATURES_PREFIX"]
