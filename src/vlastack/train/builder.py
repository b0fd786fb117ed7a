"""Build the policy a run trains: its config from preset + dataset + overrides, its weights from
scratch or from a checkpoint (``train.init_from``).

Precedence of a policy field, lowest first: the preset (or, with ``init_from``, the checkpoint's
config); for the data-contract fields (``cameras``, ``image_size``, ``state_dim``,
``action_dim``) the dataset's value; then every non-null key of the ``policy`` section.
A preset that sets ``state_dim: 0`` (no proprioception, Dita's ``paper``) keeps it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from vlastack.policies.base import CONFIG_FILE, WEIGHTS_FILE, Policy, PolicyConfig, policy_class
from vlastack.types import ACTION, STATE, DatasetSpec

from .config import DATA_FIELDS, POLICY_META_KEYS, TrainConfigError, check_policy_fields


def data_fields(spec: DatasetSpec) -> dict[str, Any]:
    """The data-contract fields a store fixes: cameras, image_size (H, W), state_dim, action_dim (None: absent)."""
    out: dict[str, Any] = {"cameras": list(spec.cameras) or None, "image_size": None,
                           "state_dim": spec.state_dim or None, "action_dim": spec.action_dim or None}
    if spec.image_keys:
        out["image_size"] = [int(s) for s in spec.features[spec.image_keys[0]].shape[:2]]
    return out


def _merge(base: Any, new: Any) -> Any:
    """``new`` over ``base``; dicts (encoder kwargs) merge key by key."""
    if isinstance(base, Mapping) and isinstance(new, Mapping):
        return {**base, **new}
    return new


def policy_config(section: Mapping[str, Any], data: Mapping[str, Any] | None = None,
                  base: Mapping[str, Any] | None = None) -> PolicyConfig:
    """The policy's config dataclass from the ``policy`` section, the dataset's fields and a base.

    ``base``: a checkpoint's config dict (fine-tuning); otherwise the section's ``preset``.
    Raises :class:`TrainConfigError` naming the field for unknown fields, wrong types and
    values the policy's own validation rejects.
    """
    name = section.get("name")
    try:
        cls = policy_class(name).config_class
    except ValueError as e:
        raise TrainConfigError(f"policy.name: {e}") from None
    fields = {k: v for k, v in section.items() if k not in POLICY_META_KEYS}
    explicit = {k: v for k, v in fields.items() if v is not None}
    check_policy_fields(cls, explicit)
    if base is None:
        preset = section.get("preset")
        if preset is None:
            base = {}
        elif preset not in cls.PRESETS:
            raise TrainConfigError(f"policy.preset: unknown preset {preset!r} of {name!r}; presets: "
                                   f"{sorted(cls.PRESETS)}")
        else:
            base = dict(cls.PRESETS[preset])
    merged = dict(base)
    for k, v in (data or {}).items():
        if k not in DATA_FIELDS:
            raise ValueError(f"data field {k!r} is not one of {DATA_FIELDS}")
        if v is None or k in explicit:
            continue
        if k == "state_dim" and merged.get("state_dim") == 0:
            continue  # the preset reads no proprioception on purpose
        merged[k] = v
    for k, v in explicit.items():
        merged[k] = _merge(merged.get(k), v)
    try:
        return cls.from_dict(merged)
    except (ValueError, TypeError) as e:
        raise TrainConfigError(f"policy: {e}") from None


def neutral_stats(dim: int) -> dict[str, np.ndarray]:
    """Statistics that normalise to the identity (for keys the data never shows, e.g. actions of videos)."""
    z, o = np.zeros(dim, np.float32), np.ones(dim, np.float32)
    return {"mean": z, "std": o, "min": -o, "max": o, "q01": -o, "q99": o}


def policy_stats(stats: Mapping[str, Mapping[str, Any]], config: PolicyConfig) -> dict[str, dict[str, Any]]:
    """The stats a policy's normalizer needs, with neutral actions when the data has none (videos)."""
    out = {k: dict(v) for k, v in stats.items() if k in (STATE, ACTION)}
    if ACTION not in out:
        out[ACTION] = neutral_stats(int(config.action_dim))
    for k in (STATE, ACTION):
        dim = int(getattr(config, "state_dim" if k == STATE else "action_dim", 0) or 0)
        if k in out and dim and len(np.asarray(out[k]["mean"]).reshape(-1)) != dim:
            field = "state_dim" if k == STATE else "action_dim"
            raise TrainConfigError(f"policy.{field}: {dim}, but the dataset's {k!r} has "
                                   f"{len(np.asarray(out[k]['mean']).reshape(-1))} dimensions")
    return out


def checkpoint_meta(path: str | Path) -> dict[str, Any]:
    """``config.json`` of a checkpoint directory (policy name and config)."""
    p = Path(path) / CONFIG_FILE
    if not p.is_file() or not (Path(path) / WEIGHTS_FILE).is_file():
        raise TrainConfigError(f"train.init_from: {path} is not a policy checkpoint (expected {CONFIG_FILE} and "
                               f"{WEIGHTS_FILE})")
    return json.loads(p.read_text())


def load_matching(policy: Policy, path: str | Path) -> list[str]:
    """Load every weight of checkpoint ``path`` whose name and shape match ``policy``; keep the
    normalizer (fitted on the new data). Returns the names left at their fresh initialisation."""
    from safetensors.torch import load_file

    state = load_file(str(Path(path) / WEIGHTS_FILE))
    own = policy.state_dict()
    frozen = tuple(p + "." for p in policy.frozen_modules())
    load = {k: v for k, v in state.items() if k in own and not k.startswith("normalizer.")
            and tuple(own[k].shape) == tuple(v.shape)}
    policy.load_state_dict(load, strict=False)
    return sorted(k for k in own if k not in load and not k.startswith(("normalizer.", *frozen)))


def build_policy(section: Mapping[str, Any], data: Mapping[str, Any], stats: Mapping[str, Mapping[str, Any]],
                 init_from: str | None = None) -> tuple[Policy, list[str]]:
    """The policy to train and the weights left fresh (when fine-tuning ``init_from``).

    Without ``init_from``: built from the preset. With it: the checkpoint's config is the
    base, matching weights are loaded (a policy's own ``finetune_from``, e.g. Dita's new
    action head, when it has one) and the normalizer is refitted on ``stats``.
    """
    name = section.get("name")
    cls = policy_class(name)
    if init_from is None:
        cfg = policy_config(section, data)
        return cls(cfg, stats=policy_stats(stats, cfg)), []
    from vlastack.rollout.policy_adapters import resolve_checkpoint

    try:
        ckpt = resolve_checkpoint(init_from)
    except (FileNotFoundError, ValueError) as e:
        raise TrainConfigError(f"train.init_from: {e}") from None
    meta = checkpoint_meta(ckpt)
    if meta.get("policy") != name:
        raise TrainConfigError(f"train.init_from: {ckpt} holds a {meta.get('policy')!r} policy, this run trains "
                               f"{name!r} (policy={meta.get('policy')})")
    cfg = policy_config(section, data, base=meta["config"])
    pstats = policy_stats(stats, cfg)
    finetune = getattr(cls, "finetune_from", None)
    if callable(finetune):
        changed = {k: v for k, v in cfg.to_dict().items() if meta["config"].get(k) != v}
        policy = finetune(ckpt, stats=pstats, **changed)
        return policy, list(getattr(policy, "reinitialized", []))
    policy = cls(cfg, stats=pstats)
    return policy, load_matching(policy, ckpt)
