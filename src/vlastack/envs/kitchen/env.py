"""Gymnasium env for the kitchen tasks, speaking vlastack's data contract.

Action (7-D float, each component in [-1, 1]; values outside are clipped):

    [0:3] delta position of the grip site (between the fingertips), in the robot base frame
          (axes equal to the world's: x forward into the counter, y to the robot's left, z up);
          1.0 asks for 0.05 m in one 50 ms control step;
    [3:6] delta rotation as an axis-angle vector in the same frame, applied on the left of the
          current orientation; 1.0 asks for 0.5 rad per step;
    [6]   gripper: -1 opens, +1 closes.

robosuite's OSC_POSE controller (kp 150, critically damped) tracks the goal at 20 Hz over
25 physics steps of 2 ms.

Observation (a dict with LeRobot-style flat keys):

    observation.images.<cam>  uint8 (H, W, 3), upright, for cam in ``cameras``
                              (``left``, ``right``: over-the-shoulder views; ``wrist``: in-hand)
    observation.state         float32 (16,): see :data:`STATE_NAMES` (world frame; m, rad,
                              quaternion x, y, z, w: the code base's order, robosuite's too)
    task                      str, the episode's language instruction

``info["success"]`` (and its alias ``info["is_success"]``, which LeRobot's evaluation reads) is
the task predicate after the step; ``terminated`` becomes True on
success (unless ``terminate_on_success=False``) and ``truncated`` at the task's horizon.
Stepping after either raises. ``reset(seed=s)`` makes the episode a pure function of ``s``.

``env.data_spec`` is the :class:`~vlastack.types.DatasetSpec` of what the env produces;
``env.spec`` is gymnasium's own registration record (``EnvSpec``, or None when built directly).
"""

from __future__ import annotations

import string
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from vlastack.types import ACTION, STATE, TASK, ActionSpace, DatasetSpec, FeatureSpec, image_key, quat_from_mujoco

from .groups import SCENES, resolve_group, split_pairs
from .scene import CAMERA_NAMES, build_scene_class
from .tasks import TASKS

DEFAULT_CAMERAS = ("left", "right", "wrist")
STATE_NAMES = ("eef_pos_x", "eef_pos_y", "eef_pos_z",
               "eef_quat_x", "eef_quat_y", "eef_quat_z", "eef_quat_w",
               "gripper_qpos_left", "gripper_qpos_right",
               *(f"joint_pos_{i}" for i in range(7)))
STATE_UNITS = "m (eef_pos, gripper_qpos), unit quaternion xyzw (eef_quat), rad (joint_pos); world frame"
ACTION_NAMES = ("d_pos_x", "d_pos_y", "d_pos_z", "d_rot_x", "d_rot_y", "d_rot_z", "gripper")
ACTION_SPACE = ActionSpace(frame="base", mode="delta", rotation="axis_angle",
                           layout=(("position", 0, 3), ("rotation", 3, 6), ("gripper", 6, 7)),
                           gripper="-1 open, +1 closed")
FPS = 20.0


def _mat_to_quat_xyzw(mat: np.ndarray) -> np.ndarray:
    """Quaternion (x, y, z, w) of a rotation matrix, by MuJoCo (whose own order is w first)."""
    import mujoco

    q = np.zeros(4)
    mujoco.mju_mat2Quat(q, np.ascontiguousarray(mat, dtype=np.float64).reshape(9))
    return quat_from_mujoco(q)


def _image_hw(image_size) -> tuple[int, int]:
    if isinstance(image_size, (int, np.integer)):
        h = w = int(image_size)
    else:
        try:
            h, w = (int(v) for v in image_size)
        except (TypeError, ValueError):
            raise ValueError(f"image_size must be an int or (height, width), got {image_size!r}") from None
    if not (16 <= h <= 1024 and 16 <= w <= 1024):
        raise ValueError(f"image_size {h}x{w} out of range: each side must be in [16, 1024]")
    return h, w


class KitchenEnv(gym.Env):
    """One kitchen task as a gymnasium env (see the module docstring for spaces and units).

    Args:
        task: a task name from :data:`vlastack.envs.kitchen.TASKS` (e.g. ``"OpenDrawer"``).
        cameras: which of ``left``, ``right``, ``wrist`` to render (may be empty).
        image_size: int or (height, width) of every camera image.
        horizon: steps before truncation (default: the task's own).
        terminate_on_success: end the episode at the first successful step.
        seed: seed of the first episode when ``reset`` gets none.
        scene: ``"single"`` (default): the task's own scene, its fixture centred in front of the
            robot; ``"group"``: the shared scene of a task group (:mod:`.groups`), where every
            task of the group starts from the same state for a seed and only the instruction
            says which task is meant.
        group: with ``scene="group"``, which group (default: the first that lists the task).
        split: with ``scene="group"``, which (layout, style) pairs episodes draw from:
            ``"train"`` (default), ``"heldout"`` (never in demos) or ``"all"``.
        arm_render: ``"hulls"`` (default) draws the arm's links with their low-poly collision
            meshes in the ``left`` / ``right`` cameras, ``"meshes"`` with the detailed visual
            meshes (about 2x the render time per camera on a CPU). The wrist camera never sees
            the links; the gripper always has its visual meshes.
        render_mode: ``"rgb_array"`` (default: :meth:`render` returns the cameras side by side)
            or None (:meth:`render` returns None).
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": FPS}

    def __init__(self, task: str, cameras=DEFAULT_CAMERAS, image_size=128, horizon: int | None = None,
                 terminate_on_success: bool = True, seed: int | None = None, arm_render: str = "hulls",
                 scene: str = "single", group: str | None = None, split: str = "train",
                 render_mode: str | None = "rgb_array"):
        if task not in TASKS:
            raise ValueError(f"unknown kitchen task {task!r}; valid tasks: {', '.join(sorted(TASKS))}")
        if render_mode not in (None, *self.metadata["render_modes"]):
            raise ValueError(f"unknown render_mode {render_mode!r}; valid: None, "
                             + ", ".join(repr(m) for m in self.metadata["render_modes"]))
        if scene not in SCENES:
            raise ValueError(f"unknown scene {scene!r}; valid scenes: {', '.join(SCENES)}")
        split_pairs(split)  # validates the split name
        if scene == "single" and group is not None:
            raise ValueError(f"group={group!r} needs scene='group' (got scene='single')")
        task_group = resolve_group(task, group) if scene == "group" else None
        if isinstance(cameras, str):
            cameras = (cameras,)
        cameras = tuple(cameras)
        bad = [c for c in cameras if c not in CAMERA_NAMES]
        if bad:
            raise ValueError(f"unknown camera name(s) {bad}; valid cameras: {', '.join(CAMERA_NAMES)}")
        if len(set(cameras)) != len(cameras):
            raise ValueError(f"camera names repeat in {cameras}")
        self.task_name = task
        self.task = TASKS[task]()
        self.cameras = cameras
        self.image_size = _image_hw(image_size)
        self.horizon = int(horizon if horizon is not None else self.task.horizon)
        if self.horizon < 1:
            raise ValueError(f"horizon must be >= 1, got {self.horizon}")
        self.terminate_on_success = terminate_on_success
        self.render_mode = render_mode
        self._first_seed = seed
        self.scene_kind = scene
        self.group = task_group.name if task_group is not None else None
        self.split = split
        self.scene = build_scene_class()(self.task, render_size=self.image_size,
                                         use_renderer=bool(cameras), horizon=self.horizon, arm_render=arm_render,
                                         group=task_group, split=split)
        h, w = self.image_size
        obs_spaces: dict[str, spaces.Space] = {image_key(c): spaces.Box(0, 255, (h, w, 3), np.uint8) for c in cameras}
        obs_spaces[STATE] = spaces.Box(-np.inf, np.inf, (len(STATE_NAMES),), np.float32)
        obs_spaces[TASK] = spaces.Text(max_length=512, charset=string.printable)
        self.observation_space = spaces.Dict(obs_spaces)
        self.action_space = spaces.Box(-1.0, 1.0, (7,), np.float32)
        self._steps = 0
        self._ended: str | None = "reset() has not been called yet"
        self._success = False
        self.episode_seed: int | None = None

    # ------------------------------------------------------------------ contract
    @property
    def data_spec(self) -> DatasetSpec:
        """The data contract this env produces: cameras, 16-D state, 7-D action, 20 fps."""
        h, w = self.image_size
        feats: dict[str, FeatureSpec] = {}
        for cam in self.cameras:
            k = image_key(cam)
            feats[k] = FeatureSpec(k, (h, w, 3), "uint8", ("height", "width", "channel"), "pixel", "image")
        feats[STATE] = FeatureSpec(STATE, (len(STATE_NAMES),), "float32", STATE_NAMES, STATE_UNITS, "state")
        feats[ACTION] = FeatureSpec(ACTION, (7,), "float32", ACTION_NAMES,
                                    "normalised [-1, 1]: 0.05 m, 0.5 rad per unit; gripper -1 open +1 closed",
                                    "action")
        return DatasetSpec(feats, FPS, ACTION_SPACE)

    @property
    def instruction(self) -> str:
        """The current episode's language instruction."""
        return self.scene.episode_meta.get("instruction", "")

    # ------------------------------------------------------------------ gym API
    def reset(self, *, seed: int | None = None, options: dict | None = None):
        """Start an episode; with ``seed`` it is fully determined by the seed."""
        if seed is None and self.episode_seed is None and self._first_seed is not None:
            seed = self._first_seed
        super().reset(seed=seed)
        if seed is None:
            seed = int(self.np_random.integers(2**31 - 1))
        self.episode_seed = int(seed)
        self.scene.episode_rng = np.random.default_rng(self.episode_seed)
        self.scene.reset()
        self._steps = 0
        self._ended = None
        self._success = bool(self.scene._check_success())
        return self._observation(), self._info()

    def step(self, action):
        """Apply one 7-D action for one 50 ms control step."""
        if self._ended is not None:
            raise RuntimeError(f"step() called but the episode has ended ({self._ended}); call reset() first")
        a = np.asarray(action, dtype=np.float64)
        if a.shape != (7,):
            raise ValueError(f"action must have shape (7,) [d_pos(3), d_rot(3), gripper], got shape {a.shape}")
        if not np.all(np.isfinite(a)):
            raise ValueError(f"action contains NaN or inf at index {np.flatnonzero(~np.isfinite(a)).tolist()}: {a}")
        self.scene.step(np.clip(a, -1.0, 1.0))
        self._steps += 1
        self._success = bool(self.scene._check_success())
        terminated = self._success and self.terminate_on_success
        truncated = self._steps >= self.horizon and not terminated
        if terminated:
            self._ended = "the task succeeded (terminated)"
        elif truncated:
            self._ended = f"the horizon of {self.horizon} steps was reached (truncated)"
        return self._observation(), float(self._success), terminated, truncated, self._info()

    def render(self):
        """The current camera images side by side (uint8 H x (W * n_cameras) x 3); None when
        ``render_mode`` is None."""
        if self.render_mode is None:
            return None
        h, w = self.image_size
        cams = self.cameras or ("left",)
        if not self.scene.has_offscreen_renderer:
            raise RuntimeError("this env was made without cameras, so it cannot render")
        return np.concatenate([self.scene.render_image(c, h, w) for c in cams], axis=1)

    def close(self):
        """Free the simulator and its render context."""
        if self.scene is not None:
            self.scene.close()

    # ------------------------------------------------------------------ internals
    def state_vector(self) -> np.ndarray:
        """The 16-D ``observation.state`` (see :data:`STATE_NAMES`)."""
        sc = self.scene
        return np.concatenate([sc.eef_pos, _mat_to_quat_xyzw(sc.eef_mat), sc.gripper_qpos, sc.arm_qpos]).astype(np.float32)

    def _observation(self) -> dict[str, Any]:
        h, w = self.image_size
        obs: dict[str, Any] = {image_key(c): self.scene.render_image(c, h, w) for c in self.cameras}
        obs[STATE] = self.state_vector()
        obs[TASK] = self.instruction
        return obs

    def _info(self) -> dict[str, Any]:
        return {"success": self._success, "is_success": self._success, "task_name": self.task_name,
                "instruction": self.instruction, "episode_seed": self.episode_seed, "step": self._steps}
