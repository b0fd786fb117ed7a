"""robomimic / robosuite hdf5 files into trajectory stores.

Two layouts are read (:class:`RobomimicReader` tells them apart by what each demo holds):

- **robomimic-processed** (``dataset_states_to_obs.py`` output): ``data/demo_N/obs/<key>``,
  optional ``next_obs/``, ``actions``, ``rewards``, ``dones``, ``states``, attrs ``num_samples`` and
  ``model_file``; ``data`` attrs ``env_args`` (JSON: env_name, type, env_kwargs) and ``total``;
  filter keys ``mask/<name>`` listing demo names (e.g. ``train`` / ``valid``).
  Keys map through :class:`RobomimicMapping`: by default every ``<cam>_image`` obs becomes
  ``observation.images.<cam>``, ``robot0_eef_pos + robot0_eef_quat + robot0_gripper_qpos`` are
  concatenated into ``observation.state`` (9-d), ``actions`` become ``action``, ``object`` becomes
  ``observation.environment_state``, ``rewards`` / ``dones`` become ``next.reward`` / ``next.done``.
- **raw robosuite** (``DataCollectionWrapper`` + ``gather_demonstrations_as_hdf5``):
  ``data/demo_N/states`` (flattened MuJoCo state: time, qpos, qvel) and ``actions``, attr
  ``model_file``; ``data`` attrs ``env``, ``env_info``. No camera observations exist in these files,
  so the store gets low-dim data only: ``observation.state`` is the flattened simulator state
  (``states[t]`` precedes ``actions[t]``). Rendering images from the states needs the simulator and
  is left to an environment-side tool (restore each state in a matching env).

Task strings: ``ep_meta["lang"]`` when a demo carries it (RoboCasa), else a short instruction per
robosuite environment (:data:`ENV_INSTRUCTIONS`), else the environment name; ``task=`` overrides.
robosuite keeps only successful demonstrations, so episodes are marked successful unless the file
says otherwise (a demo attr ``success``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from vlastack.datasets.lerobot import ConversionError
from vlastack.types import ACTION, IMAGE_PREFIX, STATE, ActionSpace, DatasetSpec, FeatureSpec

ENV_STATE = "observation.environment_state"
REWARD = "next.reward"
DONE = "next.done"

#: Default instructions for robosuite's shipped tasks (their files carry no language).
ENV_INSTRUCTIONS = {
    "Lift": "lift the cube",
    "Stack": "stack the red cube on the green cube",
    "PickPlaceCan": "pick up the can and place it in its bin",
    "PickPlaceMilk": "pick up the milk carton and place it in its bin",
    "PickPlaceBread": "pick up the bread and place it in its bin",
    "PickPlaceCereal": "pick up the cereal box and place it in its bin",
    "NutAssemblySquare": "fit the square nut onto the square peg",
    "NutAssemblyRound": "fit the round nut onto the round peg",
    "Door": "open the door",
    "Wipe": "wipe the table",
    "ToolHang": "hang the tool on the stand",
    "TwoArmLift": "lift the pot with both arms",
    "TwoArmTransport": "transport the object to the other bin",
}


@dataclass(frozen=True)
class RobomimicMapping:
    """How robomimic obs keys become our flat keys.

    images: obs key -> camera name; ``None`` maps every ``<cam>_image`` obs to camera ``<cam>``.
    state_keys: obs keys concatenated (in order) into ``observation.state``.
    env_state_key: obs key stored as ``observation.environment_state`` (skipped if absent).
    extra_obs: further obs keys kept as kind ``"other"`` under ``observation.<key>``.
    """

    images: dict[str, str] | None = None
    state_keys: tuple[str, ...] = ("robot0_eef_pos", "robot0_eef_quat", "robot0_gripper_qpos")
    action_key: str = "actions"
    env_state_key: str | None = "object"
    extra_obs: tuple[str, ...] = ()
    keep_rewards: bool = True

    @classmethod
    def parse(cls, text: str) -> "RobomimicMapping":
        """Build from ``'state=a+b+c,image:agentview_image=front,extra=object'`` style text (CLI)."""
        kw: dict[str, Any] = {}
        images: dict[str, str] = {}
        for part in filter(None, (p.strip() for p in text.split(","))):
            if "=" not in part:
                raise ValueError(f"mapping item {part!r}: expected key=value "
                                 "(state=..., image:<obs key>=<camera>, action=..., env_state=..., extra=...)")
            k, v = part.split("=", 1)
            if k == "state":
                kw["state_keys"] = tuple(filter(None, v.split("+")))
            elif k.startswith("image:"):
                images[k[len("image:"):]] = v
            elif k == "action":
                kw["action_key"] = v
            elif k == "env_state":
                kw["env_state_key"] = v or None
            elif k == "extra":
                kw["extra_obs"] = tuple(filter(None, v.split("+")))
            else:
                raise ValueError(f"mapping item {part!r}: unknown name {k!r}; choose state, image:<key>, "
                                 "action, env_state or extra")
        if images:
            kw["images"] = images
        return cls(**kw)


Progress = Callable[[int, int], None]


def is_robomimic_file(path: str | Path) -> bool:
    """Whether ``path`` is an hdf5 file with a ``data`` group of demos."""
    p = Path(path)
    if not p.is_file():
        return False
    with open(p, "rb") as fh:
        if fh.read(8) != b"\x89HDF\r\n\x1a\n":
            return False
    import h5py

    with h5py.File(p, "r") as f:
        return "data" in f and isinstance(f["data"], h5py.Group)


def _attr_str(v: Any) -> str:
    return v.decode() if isinstance(v, bytes) else str(v)


def _demo_order(names) -> list[str]:
    def key(n: str):
        tail = n.rsplit("_", 1)[-1]
        return (0, int(tail), n) if tail.isdigit() else (1, 0, n)
    return sorted(names, key=key)


class RobomimicReader:
    """Reads demos from a robomimic-processed or raw robosuite hdf5 file.

    ``reader.layout`` is ``"robomimic"`` or ``"robosuite_raw"``; ``reader.spec`` our DatasetSpec;
    ``reader.read_episode(i)`` returns ``(frames, task, meta)``; iterating yields every demo.
    """

    def __init__(self, path: str | Path, mapping: RobomimicMapping | None = None, filter_key: str | None = None,
                 task: str | None = None, fps: float | None = None):
        import h5py

        self.path = Path(path)
        if not self.path.is_file():
            raise ConversionError(f"{self.path}: no such file (expected a robomimic / robosuite hdf5)")
        try:
            self.file = h5py.File(self.path, "r")
        except OSError as e:
            raise ConversionError(f"{self.path}: not a readable hdf5 file ({e})") from e
        if "data" not in self.file:
            raise ConversionError(f"{self.path}: no 'data' group; got {sorted(self.file)}")
        self.data = self.file["data"]
        self.mapping = mapping or RobomimicMapping()
        demos = _demo_order([k for k in self.data if isinstance(self.data[k], h5py.Group)])
        if filter_key is not None:
            masks = sorted(self.file["mask"]) if "mask" in self.file else []
            if filter_key not in masks:
                raise ConversionError(f"{self.path}: filter key {filter_key!r} not found; available: {masks}")
            wanted = {_attr_str(x) for x in self.file["mask"][filter_key][()]}
            missing = wanted - set(demos)
            if missing:
                raise ConversionError(f"{self.path}: mask/{filter_key} names demos not in data/: {sorted(missing)}")
            demos = [d for d in demos if d in wanted]
        if not demos:
            raise ConversionError(f"{self.path}: no demos" + (f" in filter key {filter_key!r}" if filter_key else ""))
        self.demos = demos
        first = self.data[demos[0]]
        if "obs" in first:
            self.layout = "robomimic"
        elif "states" in first:
            self.layout = "robosuite_raw"
        else:
            raise ConversionError(f"{self.path}: data/{demos[0]} has neither obs/ (robomimic) nor states "
                                  f"(raw robosuite); got {sorted(first)}")
        self.env_meta = self._env_meta()
        self.env_name = str(self.env_meta.get("env_name") or _attr_str(self.data.attrs.get("env", "unknown")))
        kwargs = self.env_meta.get("env_kwargs", {})
        self.fps = float(fps or kwargs.get("control_freq") or 20.0)
        self.task = task
        self.spec = self._build_spec()

    # -- metadata
    def _env_meta(self) -> dict:
        if "env_args" in self.data.attrs:
            return json.loads(_attr_str(self.data.attrs["env_args"]))
        if "env_info" in self.data.attrs:  # raw robosuite: env_info is the suite.make config
            info = json.loads(_attr_str(self.data.attrs["env_info"]))
            return {"env_name": info.get("env_name", _attr_str(self.data.attrs.get("env", ""))), "type": 1,
                    "env_kwargs": info}
        return {}

    def _controller_type(self) -> str | None:
        cc = self.env_meta.get("env_kwargs", {}).get("controller_configs") or {}
        parts = cc.get("body_parts") or {}
        for part in ("right", "arms"):
            if isinstance(parts.get(part), dict):
                return parts[part].get("type")
        return cc.get("type")

    def _obs_keys(self) -> list[str]:
        return sorted(self.data[self.demos[0]]["obs"]) if self.layout == "robomimic" else []

    def _image_map(self) -> dict[str, str]:
        if self.layout != "robomimic":
            return {}
        if self.mapping.images is not None:
            return dict(self.mapping.images)
        return {k: k[: -len("_image")] for k in self._obs_keys() if k.endswith("_image")}

    def _build_spec(self) -> DatasetSpec:
        d0 = self.data[self.demos[0]]
        feats: dict[str, FeatureSpec] = {}
        obs_keys = self._obs_keys()
        for okey, cam in self._image_map().items():
            if okey not in obs_keys:
                raise ConversionError(f"{self.path}: image obs {okey!r} not in the file; obs keys are {obs_keys}")
            shape = d0["obs"][okey].shape[1:]
            if len(shape) != 3 or shape[2] != 3:
                raise ConversionError(f"{okey}: images must be T x H x W x 3, got {d0['obs'][okey].shape}")
            k = IMAGE_PREFIX + cam
            feats[k] = FeatureSpec(k, shape, "uint8", ("height", "width", "channel"), "pixel", "image")
        if self.layout == "robomimic":
            names: list[str] = []
            for sk in self.mapping.state_keys:
                if sk not in obs_keys:
                    raise ConversionError(f"{self.path}: state key {sk!r} not among obs keys {obs_keys}")
                dim = int(np.prod(d0["obs"][sk].shape[1:]))
                names += [f"{sk}.{i}" for i in range(dim)]
            if names:
                feats[STATE] = FeatureSpec(STATE, (len(names),), "float32", tuple(names), None, "state")
        else:
            dim = d0["states"].shape[1]
            feats[STATE] = FeatureSpec(STATE, (dim,), "float32", None, "mujoco flattened state (time, qpos, qvel)",
                                       "state")
        akey = self.mapping.action_key
        if akey not in d0:
            raise ConversionError(f"{self.path}: data/{self.demos[0]} has no {akey!r}; got {sorted(d0)}")
        adim = d0[akey].shape[1]
        feats[ACTION] = FeatureSpec(ACTION, (adim,), "float32", None, None, "action")
        if self.layout == "robomimic":
            es = self.mapping.env_state_key
            if es and es in obs_keys:
                feats[ENV_STATE] = FeatureSpec(ENV_STATE, d0["obs"][es].shape[1:], "float32", None, None, "other")
            for ek in self.mapping.extra_obs:
                if ek not in obs_keys:
                    raise ConversionError(f"{self.path}: extra obs {ek!r} not among obs keys {obs_keys}")
                k = f"observation.{ek}"
                feats[k] = FeatureSpec(k, d0["obs"][ek].shape[1:], "float32", None, None, "other")
        if self.mapping.keep_rewards:
            if "rewards" in d0:
                feats[REWARD] = FeatureSpec(REWARD, (1,), "float32", None, None, "other")
            if "dones" in d0:
                feats[DONE] = FeatureSpec(DONE, (1,), "bool", None, None, "other")
        ctype = self._controller_type()
        if adim == 7 and ctype in ("OSC_POSE", None):
            aspace = ActionSpace()  # robosuite OSC_POSE delta: pos 0:3, axis-angle 3:6, gripper 6 (-1 open, +1 closed)
        else:
            aspace = ActionSpace(frame="unknown", mode="unknown", rotation="unknown",
                                 layout=(("action", 0, adim),), gripper="unknown")
        return DatasetSpec(feats, self.fps, aspace)

    # -- episodes
    @property
    def num_episodes(self) -> int:
        """Number of demos read (after the filter key)."""
        return len(self.demos)

    def _length(self, demo) -> int:
        return int(demo[self.mapping.action_key].shape[0])

    @property
    def num_frames(self) -> int:
        """Total frames over the demos read."""
        return sum(self._length(self.data[d]) for d in self.demos)

    def _task_of(self, demo) -> str:
        if self.task:
            return self.task
        if "ep_meta" in demo.attrs:
            try:
                lang = json.loads(_attr_str(demo.attrs["ep_meta"])).get("lang")
                if lang:
                    return str(lang)
            except json.JSONDecodeError:
                pass
        return ENV_INSTRUCTIONS.get(self.env_name, self.env_name)

    def read_episode(self, i: int) -> tuple[dict[str, np.ndarray], str, dict]:
        """Demo ``i`` (in file order, after the filter key) as (frames, task, meta)."""
        if not 0 <= i < self.num_episodes:
            raise IndexError(f"demo {i} out of range [0, {self.num_episodes})")
        name = self.demos[i]
        demo = self.data[name]
        n = self._length(demo)
        if "num_samples" in demo.attrs and int(demo.attrs["num_samples"]) != n:
            raise ConversionError(f"data/{name}: attr num_samples={int(demo.attrs['num_samples'])} but "
                                  f"{self.mapping.action_key} has {n} rows")

        def get(path: str) -> np.ndarray:
            if path not in demo:
                raise ConversionError(f"data/{name}: missing {path!r}")
            arr = demo[path][()]
            if arr.shape[0] != n:
                raise ConversionError(f"data/{name}/{path}: {arr.shape[0]} rows, actions have {n}")
            return arr

        frames: dict[str, np.ndarray] = {}
        for okey, cam in self._image_map().items():
            frames[IMAGE_PREFIX + cam] = np.ascontiguousarray(get(f"obs/{okey}"), dtype=np.uint8)  # (T, H, W, 3)
        if self.layout == "robomimic":
            if self.mapping.state_keys:
                parts = [get(f"obs/{k}").reshape(n, -1) for k in self.mapping.state_keys]
                frames[STATE] = np.concatenate(parts, 1).astype(np.float32)  # (T, D_s)
            if ENV_STATE in self.spec.features:
                frames[ENV_STATE] = get(f"obs/{self.mapping.env_state_key}").astype(np.float32)
            for ek in self.mapping.extra_obs:
                frames[f"observation.{ek}"] = get(f"obs/{ek}").astype(np.float32)
        else:
            frames[STATE] = get("states").astype(np.float32)  # (T, 1 + nq + nv)
        frames[ACTION] = get(self.mapping.action_key).astype(np.float32)  # (T, D_a)
        if REWARD in self.spec.features:
            frames[REWARD] = get("rewards").astype(np.float32).reshape(n, 1)
        if DONE in self.spec.features:
            frames[DONE] = get("dones").astype(bool).reshape(n, 1)
        for k, f in self.spec.features.items():
            if frames[k].shape[1:] != f.shape:
                raise ConversionError(f"data/{name}: {k} per-frame shape {frames[k].shape[1:]} differs from the "
                                      f"first demo's {f.shape}")
        success = bool(demo.attrs["success"]) if "success" in demo.attrs else True
        meta = {"demo": name, "env_name": self.env_name, "layout": self.layout, "success": success}
        return frames, self._task_of(demo), meta

    def __iter__(self) -> Iterator[tuple[dict[str, np.ndarray], str, dict]]:
        for i in range(self.num_episodes):
            yield self.read_episode(i)

    def close(self) -> None:
        """Close the hdf5 file."""
        self.file.close()

    def __enter__(self) -> "RobomimicReader":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def robomimic_to_store(src: str | Path, dst: str | Path, *, mapping: RobomimicMapping | None = None,
                       filter_key: str | None = None, task: str | None = None, overwrite: bool = False,
                       progress: Progress | None = None):
    """Convert a robomimic-processed or raw robosuite hdf5 file into a trajectory store at ``dst``."""
    from vlastack.datasets.lerobot import episodes_into_store

    with RobomimicReader(src, mapping=mapping, filter_key=filter_key, task=task) as reader:
        def episodes():
            for frames, instruction, meta in reader:
                meta["source"] = f"{reader.layout} {reader.path.name} {meta['demo']}"
                yield frames, instruction, meta
        return episodes_into_store(dst, reader.spec, episodes(), reader.num_episodes, overwrite=overwrite,
                                   progress=progress)
