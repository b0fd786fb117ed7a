"""The data contract: feature specs, observations, action chunks and batches.

Keys follow LeRobot's flat names so data and policies move between the two:

    observation.state            float32 [D_s]
    observation.images.<camera>  uint8 H x W x 3 in storage; float 3 x H x W in [0, 1] in models
    action                       float32 [D_a]
    task                         str, the language instruction
    episode_index, frame_index, timestamp, next.success

A training batch is a flat ``dict[str, Tensor]`` whose per-key tensors are
(B, T, ...) with T the key's window length, plus ``<key>_is_pad`` (B, T) bool
masks for window steps padded past an episode's edge. A predicted chunk is
(B, H, D_a).

Quaternions, in states and in code, are scalar last, ``(x, y, z, w)`` (:data:`QUAT_ORDER`: scipy's
``Rotation``, robosuite's and robomimic's order). MuJoCo's ``(w, x, y, z)`` (MJCF ``quat=``,
``data.xquat``, ``mju_*`` functions) is converted where MuJoCo is called, with
:func:`quat_from_mujoco` / :func:`quat_to_mujoco`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

STATE = "observation.state"
IMAGE_PREFIX = "observation.images."
ACTION = "action"
TASK = "task"
EPISODE_INDEX = "episode_index"
FRAME_INDEX = "frame_index"
TIMESTAMP = "timestamp"
SUCCESS = "next.success"
PAD_SUFFIX = "_is_pad"

_KINDS = ("image", "state", "action", "other")


def image_key(camera: str) -> str:
    """The flat key of a camera's images, e.g. ``observation.images.left``."""
    return IMAGE_PREFIX + camera


def camera_of(key: str) -> str:
    """The camera name of an image key (inverse of :func:`image_key`)."""
    if not key.startswith(IMAGE_PREFIX):
        raise ValueError(f"{key!r} is not an image key (expected prefix {IMAGE_PREFIX!r})")
    return key[len(IMAGE_PREFIX):]


def pad_key(key: str) -> str:
    """The padding-mask key that goes with ``key``."""
    return key + PAD_SUFFIX


#: the one quaternion order of the code base: scalar last
QUAT_ORDER = "xyzw"


def quat_from_mujoco(q: Any) -> np.ndarray:
    """MuJoCo's (..., 4) quaternions (w, x, y, z) -> the code base's (x, y, z, w)."""
    return np.roll(np.asarray(q, dtype=float), -1, axis=-1)


def quat_to_mujoco(q: Any) -> np.ndarray:
    """The code base's (..., 4) quaternions (x, y, z, w) -> MuJoCo's (w, x, y, z)."""
    return np.roll(np.asarray(q, dtype=float), 1, axis=-1)


FEATURES_PREFIX = "features."


def feature_key(encoder: str, key: str) -> str:
    """Batch key of ``key``'s cached features by frozen encoder ``encoder``: ``features.<encoder>.<key>``
    (stored in a trajectory store under ``features/<encoder>/<key>``)."""
    return f"{FEATURES_PREFIX}{encoder}.{key}"


class ContractError(ValueError):
    """Data that does not match its declared spec; the message names key and problem."""


@dataclass(frozen=True)
class FeatureSpec:
    """One per-frame feature: its key, per-frame shape, dtype, element names and units.

    Images are stored H x W x 3 uint8; ``shape`` is the stored per-frame shape.
    """

    key: str
    shape: tuple[int, ...]
    dtype: str
    names: tuple[str, ...] | None = None
    units: str | None = None
    kind: str = "other"

    def __post_init__(self):
        object.__setattr__(self, "shape", tuple(int(s) for s in self.shape))
        if self.names is not None:
            object.__setattr__(self, "names", tuple(self.names))
        np.dtype(self.dtype)  # raises on nonsense
        if self.kind not in _KINDS:
            raise ContractError(f"{self.key}: kind {self.kind!r} not one of {_KINDS}")
        if self.kind == "image":
            if len(self.shape) != 3 or self.shape[2] != 3 or self.dtype != "uint8":
                raise ContractError(f"{self.key}: images are H x W x 3 uint8, got {self.shape} {self.dtype}")
        if self.names is not None and len(self.shape) == 1 and len(self.names) != self.shape[0]:
            raise ContractError(f"{self.key}: {len(self.names)} names for shape {self.shape}")

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form (stored in Zarr attributes and checkpoints)."""
        d = dataclasses.asdict(self)
        d["shape"] = list(self.shape)
        d["names"] = list(self.names) if self.names is not None else None
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "FeatureSpec":
        """Inverse of :meth:`to_dict`."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})

    def check(self, value: np.ndarray, leading: int = 1) -> None:
        """Raise :class:`ContractError` unless ``value`` is ``leading`` dims of frames of this feature."""
        value = np.asarray(value)
        if value.shape[leading:] != self.shape:
            raise ContractError(f"{self.key}: expected per-frame shape {self.shape}, got {value.shape[leading:]} (full {value.shape})")
        if np.dtype(value.dtype) != np.dtype(self.dtype):
            raise ContractError(f"{self.key}: expected dtype {self.dtype}, got {value.dtype}")


@dataclass(frozen=True)
class ActionSpace:
    """How to read the action vector: frame, delta/absolute, rotation format, layout.

    ``layout`` maps a component name to its [start, stop) slice in the vector, so
    converters can check the order at every boundary (RoboCasa's raw vs LeRobot order).
    """

    frame: str = "base"
    mode: str = "delta"
    rotation: str = "axis_angle"
    layout: tuple[tuple[str, int, int], ...] = (("position", 0, 3), ("rotation", 3, 6), ("gripper", 6, 7))
    gripper: str = "-1 open, +1 closed"

    @property
    def dim(self) -> int:
        """Total action dimension."""
        return max(stop for _, _, stop in self.layout)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        d = dataclasses.asdict(self)
        d["layout"] = [list(x) for x in self.layout]
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ActionSpace":
        """Inverse of :meth:`to_dict`."""
        d = dict(d)
        if "layout" in d:
            d["layout"] = tuple(tuple(x) for x in d["layout"])
        return cls(**d)


@dataclass(frozen=True)
class DatasetSpec:
    """The features of a dataset or the inputs a policy expects, keyed by flat name."""

    features: Mapping[str, FeatureSpec]
    fps: float = 20.0
    action_space: ActionSpace = field(default_factory=ActionSpace)

    def __post_init__(self):
        for k, f in self.features.items():
            if k != f.key:
                raise ContractError(f"feature registered under {k!r} has key {f.key!r}")

    @property
    def cameras(self) -> list[str]:
        """Camera names, in declaration order."""
        return [camera_of(k) for k, f in self.features.items() if f.kind == "image"]

    @property
    def image_keys(self) -> list[str]:
        """Flat image keys, in declaration order."""
        return [k for k, f in self.features.items() if f.kind == "image"]

    @property
    def state_dim(self) -> int:
        """Dimension of ``observation.state`` (0 if absent)."""
        return self.features[STATE].shape[0] if STATE in self.features else 0

    @property
    def action_dim(self) -> int:
        """Dimension of ``action`` (0 if absent)."""
        return self.features[ACTION].shape[0] if ACTION in self.features else 0

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form."""
        return {"fps": self.fps, "action_space": self.action_space.to_dict(),
                "features": {k: f.to_dict() for k, f in self.features.items()}}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "DatasetSpec":
        """Inverse of :meth:`to_dict`."""
        return cls(features={k: FeatureSpec.from_dict(v) for k, v in d["features"].items()},
                   fps=float(d.get("fps", 20.0)),
                   action_space=ActionSpace.from_dict(d.get("action_space", {})))

    @classmethod
    def robot(cls, cameras=("left", "right", "wrist"), image_size=(128, 128), state_dim=9,
              action_dim=7, fps=20.0) -> "DatasetSpec":
        """The usual arm spec: cameras at ``image_size`` (H, W), a state vector and actions."""
        feats: dict[str, FeatureSpec] = {}
        for cam in cameras:
            k = image_key(cam)
            feats[k] = FeatureSpec(k, (*image_size, 3), "uint8", ("height", "width", "channel"), "pixel", "image")
        feats[STATE] = FeatureSpec(STATE, (state_dim,), "float32", tuple(f"s{i}" for i in range(state_dim)), None, "state")
        aspace = ActionSpace() if action_dim == 7 else ActionSpace(layout=(("action", 0, action_dim),))
        feats[ACTION] = FeatureSpec(ACTION, (action_dim,), "float32", tuple(f"a{i}" for i in range(action_dim)), None, "action")
        return cls(feats, fps, aspace)


@dataclass
class Observation:
    """What a policy reads at one control step, batched.

    images: camera -> uint8 (B, T, H, W, 3) or (B, H, W, 3); state: (B, [T,] D_s) float32;
    task: B instruction strings. Arrays may be numpy or torch.
    """

    images: dict[str, Any]
    state: Any
    task: list[str]

    def to_flat(self) -> dict[str, Any]:
        """LeRobot-style flat dict."""
        out = {image_key(c): v for c, v in self.images.items()}
        out[STATE] = self.state
        out[TASK] = list(self.task)
        return out

    @classmethod
    def from_flat(cls, d: Mapping[str, Any]) -> "Observation":
        """Build from a flat dict; raises :class:`ContractError` naming a missing key."""
        for k in (STATE, TASK):
            if k not in d:
                raise ContractError(f"observation is missing {k!r}; got keys {sorted(d)}")
        images = {camera_of(k): v for k, v in d.items() if k.startswith(IMAGE_PREFIX) and not k.endswith(PAD_SUFFIX)}
        task = d[TASK]
        task = [task] if isinstance(task, str) else list(task)
        return cls(images=images, state=d[STATE], task=task)

    @property
    def batch_size(self) -> int:
        """B."""
        return len(self.task)


@dataclass
class ActionChunk:
    """A predicted chunk: actions (B, H, D_a) in physical units, plus optional extras
    (e.g. DUST's predicted future-observation features under ``extras["future"]``)."""

    actions: Any
    extras: dict[str, Any] = field(default_factory=dict)

    @property
    def horizon(self) -> int:
        """H."""
        return int(self.actions.shape[1])


Batch = dict  # flat dict[str, Tensor]: (B, T, ...) per key, plus "<key>_is_pad" (B, T) and "task" list[str]


def _fake_value(f: FeatureSpec, lead: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    if f.kind == "image":
        h, w, _ = f.shape
        # smooth gradients plus noise: compressible and not constant, like a camera frame
        yy, xx = np.meshgrid(np.linspace(0, 1, h), np.linspace(0, 1, w), indexing="ij")
        base = np.stack([xx, yy, (xx + yy) / 2], -1) * 200
        noise = rng.integers(0, 55, size=(*lead, h, w, 3))
        return (base + noise).astype(np.uint8)
    return rng.standard_normal((*lead, *f.shape)).astype(f.dtype)


_TASKS = ("open the drawer", "pick the apple from the counter and place it in the sink",
          "turn on the stove", "press the coffee machine button")


def fake_observation(spec: DatasetSpec, batch_size: int = 1, n_obs: int = 1, seed: int = 0,
                     as_torch: bool = False) -> Observation:
    """A random observation matching ``spec``: images (B, n_obs, H, W, 3) uint8, state (B, n_obs, D_s)."""
    rng = np.random.default_rng(seed)
    images = {camera_of(k): _fake_value(spec.features[k], (batch_size, n_obs), rng) for k in spec.image_keys}
    state = _fake_value(spec.features[STATE], (batch_size, n_obs), rng) if STATE in spec.features else \
        np.zeros((batch_size, n_obs, 0), np.float32)
    obs = Observation(images, state, [_TASKS[i % len(_TASKS)] for i in range(batch_size)])
    if as_torch:
        import torch
        obs.images = {c: torch.from_numpy(v) for c, v in obs.images.items()}
        obs.state = torch.from_numpy(obs.state)
    return obs


def fake_batch(spec: DatasetSpec, batch_size: int = 4, n_obs: int = 1, horizon: int = 16,
               future_offset: int | None = None, seed: int = 0, as_torch: bool = True) -> Batch:
    """A random training batch matching ``spec``.

    images (B, n_obs, H, W, 3) uint8 (plus the future frame appended on T when
    ``future_offset`` is set: T = n_obs + 1), state (B, n_obs, D_s), action (B, horizon, D_a),
    ``*_is_pad`` all False, ``task`` list of B strings.
    """
    rng = np.random.default_rng(seed)
    out: dict[str, Any] = {}
    t_img = n_obs + (1 if future_offset is not None else 0)
    for k in spec.image_keys:
        out[k] = _fake_value(spec.features[k], (batch_size, t_img), rng)
        out[pad_key(k)] = np.zeros((batch_size, t_img), bool)
    if STATE in spec.features:
        out[STATE] = _fake_value(spec.features[STATE], (batch_size, n_obs), rng)
        out[pad_key(STATE)] = np.zeros((batch_size, n_obs), bool)
    if ACTION in spec.features:
        out[ACTION] = _fake_value(spec.features[ACTION], (batch_size, horizon), rng)
        out[pad_key(ACTION)] = np.zeros((batch_size, horizon), bool)
    out[TASK] = [_TASKS[i % len(_TASKS)] for i in range(batch_size)]
    if as_torch:
        import torch
        out = {k: (torch.from_numpy(v) if isinstance(v, np.ndarray) else v) for k, v in out.items()}
    return out
