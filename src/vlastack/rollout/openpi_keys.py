"""Observation key mapping for clients written against openpi's examples (a transform step).

openpi's example clients send ``prompt`` for the instruction and their own image and state keys,
e.g. LIBERO's ``observation/image``, ``observation/wrist_image``, ``observation/state`` or
DROID's ``observation/exterior_image_1_left``, ``observation/joint_position``,
``observation/gripper_position``; ALOHA's nest them (``{"images": {"cam_high": ...}, "state": ...}``).
:class:`KeyMap` renames such an observation to the data contract's keys before the server reads it:

- nested dicts are flattened with ``/`` (``images`` -> ``cam_high`` becomes ``images/cam_high``);
- each ``client key -> our key`` of the map is applied (our keys: ``task``, ``observation.state``,
  ``observation.images.<camera>``); several client keys mapped to ``observation.state`` are
  concatenated along the last axis in the map's order (DROID's joint and gripper positions);
- ``prompt`` is always read as ``task`` unless the map says otherwise;
- keys the map does not name pass through unchanged, so clients that already send our keys work.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from vlastack.types import IMAGE_PREFIX, STATE, TASK

#: openpi's name for the instruction
PROMPT = "prompt"


class KeyMapError(ValueError):
    """A key map that cannot work (a target that is not one of our keys, a bad entry)."""


class KeyMapRequestError(ValueError):
    """An observation the key map cannot rename (the same key given twice under two names)."""


def _flatten(obs: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested dicts -> one level with ``/``-joined keys (``{"a": {"b": x}}`` -> ``{"a/b": x}``)."""
    out: dict[str, Any] = {}
    for k, v in obs.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flatten(v, key + "/"))
        else:
            out[key] = v
    return out


def _is_target(key: str) -> bool:
    return key in (TASK, STATE) or (key.startswith(IMAGE_PREFIX) and len(key) > len(IMAGE_PREFIX))


class KeyMap:
    """Renames a client's observation keys to ours (see the module docstring); callable on a dict."""

    def __init__(self, key_map: Mapping[str, str] | None = None):
        """``key_map``: client key -> our key, e.g. ``{"observation/image": "observation.images.left"}``."""
        key_map = dict(key_map or {})
        for src, dst in key_map.items():
            if not isinstance(src, str) or not src:
                raise KeyMapError(f"key_map: client keys must be non-empty strings, got {src!r}")
            if not isinstance(dst, str) or not _is_target(dst):
                raise KeyMapError(f"key_map: {src!r} -> {dst!r}: the target must be one of {TASK!r}, {STATE!r} or "
                                  f"'{IMAGE_PREFIX}<camera>'")
        images = [d for d in key_map.values() if d.startswith(IMAGE_PREFIX)]
        if len(set(images)) != len(images) or list(key_map.values()).count(TASK) > 1:
            raise KeyMapError(f"key_map: several client keys map to the same camera or to {TASK!r}: {key_map}")
        if PROMPT not in key_map and TASK not in key_map.values():
            key_map[PROMPT] = TASK
        self.map = key_map

    def check_targets(self, expected: Mapping[str, Any]) -> None:
        """Raise :class:`KeyMapError` when a target is not among the keys the policy reads (``expected``)."""
        unknown = sorted({d for d in self.map.values() if d not in expected})
        if unknown:
            raise KeyMapError(f"key_map: targets {unknown} are not read by this policy; it reads {sorted(expected)}")

    def __call__(self, obs: Any) -> Any:
        """``obs`` with its keys renamed; anything but a dict is returned as is (the server rejects it)."""
        if not isinstance(obs, Mapping):
            return obs
        flat = _flatten(obs)
        out: dict[str, Any] = {}
        states: list[Any] = []
        for src, dst in self.map.items():
            if src not in flat:
                continue
            value = flat.pop(src)
            if dst in flat:
                raise KeyMapRequestError(f"{dst!r} given twice: directly and as {src!r} (key_map {src!r} -> {dst!r})")
            if dst == STATE:
                states.append(value)
            else:
                out[dst] = value
        if len(states) == 1:
            out[STATE] = states[0]
        elif states:
            try:
                out[STATE] = np.concatenate([np.atleast_1d(np.asarray(s, np.float32)) for s in states], axis=-1)
            except ValueError as e:
                parts = [k for k, d in self.map.items() if d == STATE and k in _flatten(obs)]
                raise KeyMapRequestError(f"cannot concatenate {parts} into {STATE!r}: {e}") from e
        return {**flat, **out}

    def to_dict(self) -> dict[str, str]:
        """The map, ``prompt`` included (for the server metadata)."""
        return dict(self.map)
