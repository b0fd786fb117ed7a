"""Build the policy a run trains: its config from preset + dataset + overrides, its weights from
scratch or from a checkpoint (``train.init_from``).

Precedence of a policy field, lowest first: the preset (or, with ``init_from``, the checkpoint's
config); for the data-contract fields (``cameras``, ``image_size``, ``state_dim``,
``action_dim``) the dataset's value; then every non-null key of the ``policy`` section.
A preset that sets ``state_dim: 0`` (no proprioception, Dita's ``paper_sized``) keeps it.
Encoder kwargs merge key by key with the base's, unless the section names another encoder
(e.g. ``vision_encoder: hf:/models/siglip2``): then the base's kwargs, meant for its own
encoder, are dropped.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from vlastack.policies.base import Policy, PolicyConfig, policy_class
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
        else:
            try:
                base = dict(cls.PRESETS[cls.preset_name(preset)])
            except ValueError:
                raise TrainConfigError(f"policy.preset: unknown preset {preset!r} of {name!r}; presets: "
                                       f"{sorted(cls.PRESETS)}") from None
    merged = dict(base)
    for k, v in (data or {}).items():
        if k not in DATA_FIELDS:
            raise ValueError(f"data field {k!r} is not one of {DATA_FIELDS}")
        if v is None or k in explicit:
            continue
        if k == "state_dim" and merged.get("state_dim") == 0:
            continue  # the preset reads no proprioception on purpose
        merged[k] = v
    for enc in ("vision_encoder", "text_encoder"):  # another encoder: the base's kwargs were for the old one
        if enc in explicit and explicit[enc] != merged.get(enc):
            merged.pop(enc + "_kwargs", None)
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


def build_policy(section: Mapping[str, Any], data: Mapping[str, Any], stats: Mapping[str, Mapping[str, Any]],
                 init_from: str | None = None) -> tuple[Policy, list[str]]:
    """The policy to train and the weights left fresh (when fine-tuning ``init_from``).

    Without ``init_from``: built from the preset. With it (a checkpoint path or Hub repo id): the
    checkpoint's config is the base, every weight whose name and shape match is loaded
    (:meth:`Policy.finetune_from`) and the normalizer is refitted on ``stats``.
    """
    name = section.get("name")
    cls = policy_class(name)
    if init_from is None:
        cfg = policy_config(section, data)
        policy = cls(cfg, stats=policy_stats(stats, cfg))
        policy.preset = section.get("preset")
        return policy, []
    from vlastack.policies import checkpoint as ckpt

    try:
        path = ckpt.locate(init_from)
        meta = ckpt.read_meta(path)
    except (FileNotFoundError, ValueError) as e:
        raise TrainConfigError(f"train.init_from: {e}") from None
    if meta.type != name:
        raise TrainConfigError(f"train.init_from: {path} holds a {meta.type!r} policy, this run trains "
                               f"{name!r} (policy={meta.type})")
    cfg = policy_config(section, data, base=meta.config)
    changed = {k: v for k, v in cfg.to_dict().items() if meta.config.get(k) != v}
    try:
        policy = cls.finetune_from(path, stats=policy_stats(stats, cfg), **changed)
    except ckpt.CheckpointError as e:
        raise TrainConfigError(f"train.init_from: {e}") from None
    return policy, list(policy.reinitialized)
