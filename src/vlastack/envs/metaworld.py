"""MetaWorld v3 (MT10 / MT50) behind the data contract, with templated instructions and experts.

``make_metaworld_env("pick-place-v3", seed=0)`` returns a gymnasium env whose observations are
flat data-contract dicts:

    observation.images.<camera>  uint8 (H, W, 3), rendered offscreen (shadows and reflections off)
    observation.state            float32 (D_s,), see ``STATE_LAYOUTS`` (default "full", 21-D)
    task                         str, a language instruction drawn (by seed) from paraphrases

``info["success"]`` (and its alias ``info["is_success"]``, which LeRobot's evaluation reads) is
MetaWorld's own success predicate. The episode ends (``terminated``) at the
first success unless ``terminate_on_success=False``, and is truncated after ``max_steps`` steps
(MetaWorld's horizon: 500). Stepping an ended episode, an unknown task or camera, and an action
of the wrong shape or with NaN raise errors that name the problem and the valid choices.

Seeds: ``reset(seed=s)`` fully determines the episode: the object and goal placement (MetaWorld's
``rand_vec``, drawn from the env's own seeded generator rather than the global numpy one, so every
seed is a new placement, unlike MT1's 50 fixed goals) and the instruction paraphrase.

Rendering: one offscreen MuJoCo renderer per env, sized to the image, with shadows, reflections
and multisampling off (``antialias=True`` turns 4x multisampling back on).

Cameras (MetaWorld's own, in ``CAMERAS``): ``corner``, ``corner2``, ``corner3`` and ``corner4``
are mounted rolled by 180 degrees in MetaWorld's MJCF (their up axis points down), so their
frames are rotated by 180 degrees to come out upright and unmirrored; ``topview`` looks straight
down; ``behindGripper`` and ``gripperPOV`` ride on the hand. Default: ``("corner", "behindGripper")``.

``env.data_spec`` is the :class:`DatasetSpec` of the observations and actions; ``env.spec`` is
gymnasium's registration record (``EnvSpec``, or None when built directly).

Actions: 4-D in [-1, 1]: the hand's mocap target moves by ``0.01 m * action[:3]`` per step in the
world frame, ``action[3]`` is the gripper effort (-1 open, +1 closed). Control runs at 80 Hz
(5 physics steps of 2.5 ms).
"""

from __future__ import annotations

import os

os.environ.setdefault("MUJOCO_GL", "egl")  # must precede the first mujoco import
os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])

import atexit  # noqa: E402
import weakref  # noqa: E402
from typing import Any, Sequence  # noqa: E402

import gymnasium as gym  # noqa: E402
import numpy as np  # noqa: E402

from vlastack.types import (  # noqa: E402
    ACTION,
    STATE,
    TASK,
    ActionSpace,
    DatasetSpec,
    FeatureSpec,
    image_key,
    quat_from_mujoco,
)

#: every MetaWorld camera; the ones in ``_ROLLED`` are flipped upright.
CAMERAS = ("corner", "corner2", "corner3", "corner4", "topview", "behindGripper", "gripperPOV")
DEFAULT_CAMERAS = ("corner", "behindGripper")
DEFAULT_MAX_STEPS = 500

_HAND = ("hand_x", "hand_y", "hand_z")
_OBJ = tuple(f"obj{i}_{c}" for i in range(2) for c in ("x", "y", "z", "qx", "qy", "qz", "qw"))
_GOAL = ("goal_x", "goal_y", "goal_z")
#: state layouts: name -> element names. MetaWorld's 39-D observation is
#: [hand xyz (0:3), gripper opening in [0, 1] (3), two objects' pos + quat, zero padded (4:18),
#:  the same 18 values one step earlier (18:36), goal xyz (36:39)]; we keep the current step only.
#: MetaWorld's quaternion order differs by task (scipy's x-y-z-w, or MuJoCo's w-x-y-z for the tasks
#: in :data:`MUJOCO_QUAT_TASKS`); our state always holds x, y, z, w, the code base's order.
STATE_LAYOUTS: dict[str, tuple[str, ...]] = {
    "proprio": _HAND + ("gripper",),                 # obs[0:4]
    "objects": _HAND + ("gripper",) + _OBJ,          # obs[0:18]
    "full": _HAND + ("gripper",) + _OBJ + _GOAL,     # obs[0:18] + obs[36:39]
}

#: tasks whose ``_get_quat_objects`` returns MuJoCo's w-first ``xquat`` (metaworld 3.1.1; a test reads
#: the source to keep this list true); the others use scipy's ``as_quat`` (x, y, z, w) or zeros.
MUJOCO_QUAT_TASKS = frozenset({
    "assembly-v3", "basketball-v3", "bin-picking-v3", "box-close-v3", "button-press-topdown-v3",
    "button-press-topdown-wall-v3", "button-press-v3", "button-press-wall-v3", "coffee-button-v3", "dial-turn-v3",
    "disassemble-v3", "door-lock-v3", "door-unlock-v3", "drawer-open-v3", "faucet-close-v3", "faucet-open-v3",
    "hammer-v3", "hand-insert-v3", "peg-unplug-side-v3", "pick-out-of-hole-v3", "sweep-v3"})

# Instruction paraphrases per task (several per task; the episode seed picks one).
_PHRASES: dict[str, tuple[str, ...]] = {
    "assembly-v3": ("put the ring on the peg", "pick up the nut and fit it over the peg", "assemble the ring onto the peg"),
    "basketball-v3": ("dunk the ball into the basket", "put the basketball in the hoop", "pick up the ball and drop it through the hoop"),
    "bin-picking-v3": ("move the cube from one bin to the other", "pick the block out of the left bin and place it in the right bin", "transfer the cube to the other bin"),
    "box-close-v3": ("close the box with its lid", "put the lid on the box", "pick up the lid and cover the box"),
    "button-press-topdown-v3": ("press the button from the top", "push the button down from above", "press down on the button"),
    "button-press-topdown-wall-v3": ("press the button from the top behind the wall", "reach over the wall and push the button down", "press down on the button past the wall"),
    "button-press-v3": ("press the button", "push the button in from the front", "press the button on the box"),
    "button-press-wall-v3": ("press the button behind the wall", "reach around the wall and push the button", "push the button that sits behind the wall"),
    "coffee-button-v3": ("press the button on the coffee machine", "push the coffee machine's button", "start the coffee machine"),
    "coffee-pull-v3": ("pull the mug out from the coffee machine", "take the mug away from the coffee machine", "slide the cup out of the coffee machine"),
    "coffee-push-v3": ("push the mug under the coffee machine", "slide the cup into the coffee machine", "put the mug under the coffee spout"),
    "dial-turn-v3": ("turn the dial", "rotate the dial", "twist the knob around"),
    "disassemble-v3": ("take the ring off the peg", "pick the nut up off the peg", "remove the ring from the peg"),
    "door-close-v3": ("close the door", "swing the door shut", "push the door closed"),
    "door-lock-v3": ("lock the door", "turn the lock on the door", "rotate the door lock down"),
    "door-open-v3": ("open the door", "pull the door open", "swing the door open by its handle"),
    "door-unlock-v3": ("unlock the door", "turn the door lock open", "rotate the door lock to unlock it"),
    "hand-insert-v3": ("put the gripper into the hole", "insert the hand into the hole", "reach into the hole in the table"),
    "drawer-close-v3": ("close the drawer", "push the drawer shut", "slide the drawer closed"),
    "drawer-open-v3": ("open the drawer", "pull the drawer out", "slide the drawer open by its handle"),
    "faucet-open-v3": ("turn on the faucet", "open the tap", "rotate the faucet handle to turn the water on"),
    "faucet-close-v3": ("turn off the faucet", "close the tap", "rotate the faucet handle to turn the water off"),
    "hammer-v3": ("hammer the nail in", "pick up the hammer and drive the nail", "use the hammer to knock the nail into the wall"),
    "handle-press-side-v3": ("press the handle down from the side", "push the side handle down", "press down on the handle from its side"),
    "handle-press-v3": ("press the handle down", "push the handle down", "press down on the handle"),
    "handle-pull-side-v3": ("pull the handle up from the side", "lift the side handle up", "pull up on the handle from its side"),
    "handle-pull-v3": ("pull the handle up", "lift the handle", "pull up on the handle"),
    "lever-pull-v3": ("pull the lever up", "raise the lever", "lift the lever up"),
    "peg-insert-side-v3": ("insert the peg into the hole from the side", "pick up the peg and push it sideways into the hole", "slide the peg into the side hole"),
    "pick-place-wall-v3": ("pick up the puck and place it at the goal behind the wall", "move the puck over the wall to the target", "place the puck on the target past the wall"),
    "pick-out-of-hole-v3": ("pick the peg out of the hole", "lift the peg out of the hole", "take the peg out of the hole"),
    "pick-place-v3": ("pick up the puck and place it at the goal", "move the puck to the target position", "grasp the puck and put it on the target"),
    "plate-slide-v3": ("slide the plate into the cabinet", "push the plate into the cabinet", "slide the plate forward into the cabinet"),
    "plate-slide-side-v3": ("slide the plate into the cabinet from the side", "push the plate sideways into the cabinet", "slide the plate sideways into the cabinet"),
    "plate-slide-back-v3": ("slide the plate out of the cabinet", "pull the plate back out of the cabinet", "get the plate out of the cabinet"),
    "plate-slide-back-side-v3": ("slide the plate out of the cabinet sideways", "pull the plate out of the cabinet to the side", "slide the plate sideways out of the cabinet"),
    "peg-unplug-side-v3": ("unplug the peg sideways", "pull the peg out of the side socket", "unplug the peg from the side"),
    "soccer-v3": ("kick the ball into the goal", "push the soccer ball into the net", "score a goal with the ball"),
    "stick-push-v3": ("use the stick to push the bottle", "grab the stick and push the thermos with it", "push the bottle to the goal using the stick"),
    "stick-pull-v3": ("use the stick to pull the bottle", "grab the stick and pull the thermos with it", "pull the bottle to the goal using the stick"),
    "push-v3": ("push the puck to the goal", "slide the puck to the target", "push the puck to the target position"),
    "push-wall-v3": ("push the puck to the goal around the wall", "slide the puck past the wall to the target", "push the puck around the wall to the goal"),
    "push-back-v3": ("push the puck back to the goal", "pull the puck backwards to the target", "slide the puck back toward the robot"),
    "reach-v3": ("reach the goal position", "move the gripper to the target", "reach toward the goal"),
    "reach-wall-v3": ("reach the goal behind the wall", "move the gripper over the wall to the target", "reach past the wall to the goal"),
    "shelf-place-v3": ("place the block on the shelf", "pick up the cube and put it on the shelf", "put the block onto the shelf"),
    "sweep-into-v3": ("sweep the puck into the hole", "push the puck into the hole", "slide the puck into the hole"),
    "sweep-v3": ("sweep the puck off the table", "push the puck off the edge of the table", "sweep the puck off the side of the table"),
    "window-open-v3": ("open the window", "slide the window open", "push the window open sideways"),
    "window-close-v3": ("close the window", "slide the window shut", "push the window closed sideways"),
}
_FRAMES = ("{}", "{}.", "please {}", "robot, {}", "can you {}?")


class MetaWorldError(ValueError):
    """Bad input to the MetaWorld adapter; the message names the problem and the valid choices."""


def _all_tasks() -> list[str]:
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS

    return list(ALL_V3_ENVIRONMENTS)


def _mt10() -> list[str]:
    from metaworld.env_dict import MT10_V3

    return list(MT10_V3)


#: benchmark names that expand to task lists in :func:`resolve_tasks`.
BENCHMARKS = ("MT10", "MT50")


def list_tasks(benchmark: str = "MT50") -> list[str]:
    """Task names of ``benchmark`` ("MT10" or "MT50"), in MetaWorld's order."""
    if benchmark == "MT10":
        return _mt10()
    if benchmark == "MT50":
        return _all_tasks()
    raise MetaWorldError(f"benchmark: unknown {benchmark!r}; valid choices: {list(BENCHMARKS)}")


def canonical_task(task: str) -> str:
    """``task`` as a MetaWorld v3 name (``"pick-place"`` -> ``"pick-place-v3"``); raises on unknown names."""
    names = _all_tasks()
    if not isinstance(task, str):
        raise MetaWorldError(f"task: expected a string, got {type(task).__name__}")
    if task in names:
        return task
    if task + "-v3" in names:
        return task + "-v3"
    raise MetaWorldError(f"task: unknown MetaWorld task {task!r}; valid choices: {names}")


def instructions(task: str) -> list[str]:
    """Every instruction paraphrase of ``task`` (phrasings x framings)."""
    task = canonical_task(task)
    return [f.format(p) for p in _PHRASES[task] for f in _FRAMES]


def _task_salt(task: str) -> int:
    """A stable per-task integer, so one seed does not pick the same paraphrase slot in every task."""
    import zlib

    return zlib.crc32(task.encode())


def sample_instruction(task: str, rng: np.random.Generator) -> str:
    """One paraphrase of ``task``'s instruction drawn with ``rng``."""
    choices = instructions(task)
    return choices[int(rng.integers(len(choices)))]


def _check_cameras(cameras: Sequence[str] | None) -> tuple[str, ...]:
    if cameras is None:
        return DEFAULT_CAMERAS
    if isinstance(cameras, str):
        cameras = (cameras,)
    cameras = tuple(cameras)  # empty: no rendering (state-only, e.g. for expert sweeps)
    for c in cameras:
        if c not in CAMERAS:
            raise MetaWorldError(f"cameras: unknown camera {c!r}; valid choices: {list(CAMERAS)}")
    if len(set(cameras)) != len(cameras):
        raise MetaWorldError(f"cameras: duplicates in {list(cameras)}")
    return cameras


def _check_size(image_size) -> tuple[int, int]:
    if isinstance(image_size, (int, np.integer)) and not isinstance(image_size, bool):
        image_size = (image_size, image_size)  # one int: square, as the kitchen accepts
    try:
        h, w = (int(s) for s in image_size)
    except (TypeError, ValueError):
        raise MetaWorldError(f"image_size: expected an int or (height, width), got {image_size!r}") from None
    if not (8 <= h <= 2048 and 8 <= w <= 2048):
        raise MetaWorldError(f"image_size: {(h, w)} out of range; each side must be in 8..2048")
    return h, w


def metaworld_spec(cameras: Sequence[str] = DEFAULT_CAMERAS, image_size=(128, 128), state: str = "full",
                   fps: float = 80.0) -> DatasetSpec:
    """The :class:`DatasetSpec` of a MetaWorld env: cameras, ``observation.state`` and 4-D ``action``."""
    cameras = _check_cameras(cameras)
    h, w = _check_size(image_size)
    if state not in STATE_LAYOUTS:
        raise MetaWorldError(f"state: unknown layout {state!r}; valid choices: {list(STATE_LAYOUTS)}")
    feats: dict[str, FeatureSpec] = {}
    for cam in cameras:
        k = image_key(cam)
        feats[k] = FeatureSpec(k, (h, w, 3), "uint8", ("height", "width", "channel"), "pixel", "image")
    names = STATE_LAYOUTS[state]
    feats[STATE] = FeatureSpec(STATE, (len(names),), "float32", names,
                               "m (positions), 1 (gripper opening in [0, 1], quaternions x y z w)", "state")
    feats[ACTION] = FeatureSpec(ACTION, (4,), "float32", ("dx", "dy", "dz", "gripper"),
                                "[-1, 1]: position x 0.01 m per step, gripper effort", "action")
    aspace = ActionSpace(frame="world", mode="delta", rotation="none",
                         layout=(("position", 0, 3), ("gripper", 3, 4)), gripper="-1 open, +1 closed")
    return DatasetSpec(feats, float(fps), aspace)


class MetaWorldEnv(gym.Env):
    """One MetaWorld v3 task as a gymnasium env with data-contract observations (see module doc)."""

    #: MetaWorld controls at 80 Hz (5 physics steps of 2.5 ms); __init__ restates it from the sim's dt
    metadata = {"render_modes": ["rgb_array"], "render_fps": 80.0}

    def __init__(self, task: str, seed: int = 0, cameras: Sequence[str] | None = None,
                 image_size=(128, 128), max_steps: int = DEFAULT_MAX_STEPS, state: str = "full",
                 terminate_on_success: bool = True, render_mode: str | None = "rgb_array",
                 antialias: bool = False):
        """Build the env for ``task`` (e.g. "pick-place-v3"); ``seed`` is used by the first ``reset()``.

        ``antialias`` renders with 4x multisampling (slower on the CPU; off by default).
        """
        self.task_name = canonical_task(task)
        self.cameras = _check_cameras(cameras)
        self.image_size = _check_size(image_size)
        if state not in STATE_LAYOUTS:
            raise MetaWorldError(f"state: unknown layout {state!r}; valid choices: {list(STATE_LAYOUTS)}")
        if int(max_steps) < 1:
            raise MetaWorldError(f"max_steps: must be >= 1, got {max_steps}")
        if render_mode not in (None, "rgb_array"):
            raise MetaWorldError(f"render_mode: {render_mode!r}; valid choices: [None, 'rgb_array']")
        self.state_layout = state
        self.antialias = bool(antialias)
        self.max_steps = int(max_steps)
        self.terminate_on_success = bool(terminate_on_success)
        self.render_mode = render_mode
        self._seed = int(seed)
        self._sim = self._build_sim()
        self._renderer = None
        self._data_spec = metaworld_spec(self.cameras, self.image_size, state, fps=1.0 / self._sim.dt)
        self.metadata = {**type(self).metadata, "render_fps": 1.0 / self._sim.dt}
        self._flip = self._rolled_cameras()
        h, w = self.image_size
        spaces: dict[str, gym.Space] = {image_key(c): gym.spaces.Box(0, 255, (h, w, 3), np.uint8) for c in self.cameras}
        spaces[STATE] = gym.spaces.Box(-np.inf, np.inf, (len(STATE_LAYOUTS[state]),), np.float32)
        spaces[TASK] = gym.spaces.Text(max_length=256, charset=_CHARSET)
        self.observation_space = gym.spaces.Dict(spaces)
        self.action_space = gym.spaces.Box(-1.0, 1.0, (4,), np.float32)
        self._raw: np.ndarray | None = None  # MetaWorld's 39-D observation, float64
        self._instruction = ""
        self._t = 0
        self._done = True
        self._last_success = False
        self._episode_seed: int | None = None
        self._next_seed_rng = np.random.default_rng(self._seed)
        self._first_reset = True

    # ------------------------------------------------------------------ construction

    def _build_sim(self):
        from metaworld.env_dict import ALL_V3_ENVIRONMENTS

        sim = ALL_V3_ENVIRONMENTS[self.task_name]()  # render_mode None: we render ourselves
        # MT-style goal-observable task whose placement comes from the env's seeded generator
        sim._partially_observable = False
        del sim.sawyer_observation_space  # cached property: recompute for the observable goal
        sim._freeze_rand_vec = False
        sim.seeded_rand_vec = True
        sim._set_task_called = True
        sim.max_path_length = 10**9  # we enforce our own horizon and end-of-episode errors
        return sim

    def _rolled_cameras(self) -> set[str]:
        """Cameras whose image up axis points down in the world (MetaWorld's corner cameras)."""
        import mujoco

        m, d = self._sim.model, self._sim.data
        mujoco.mj_forward(m, d)
        out = set()
        for cam in self.cameras:
            up_world_z = d.cam_xmat[m.camera(cam).id].reshape(3, 3)[2, 1]  # z of the camera's y (up) axis
            if up_world_z < 0:
                out.add(cam)
        return out

    def _get_renderer(self):
        if self._renderer is None:
            import mujoco

            h, w = self.image_size
            m = self._sim.model
            # an offscreen buffer of exactly the image size without multisampling: 2-3x faster on
            # CPU GL than MuJoCo's default (640 x 480, 4 samples); antialias=True restores 4 samples
            m.vis.global_.offwidth, m.vis.global_.offheight = w, h
            m.vis.quality.offsamples = 4 if self.antialias else 0
            r = mujoco.Renderer(m, h, w)
            r.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0  # 5-10x faster on CPU GL
            r.scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
            self._renderer = r
            _track(self)
        return self._renderer

    # ------------------------------------------------------------------ properties

    @property
    def data_spec(self) -> DatasetSpec:
        """The :class:`DatasetSpec` of this env's observations and actions."""
        return self._data_spec

    def __repr__(self) -> str:
        return f"MetaWorldEnv({self.task_name!r}, cameras={list(self.cameras)}, image_size={self.image_size})"

    __str__ = __repr__

    @property
    def raw_observation(self) -> np.ndarray:
        """MetaWorld's 39-D observation of the current step (what its scripted experts read)."""
        if self._raw is None:
            raise RuntimeError("no observation yet: call reset() first")
        return self._raw

    @property
    def instruction(self) -> str:
        """The current episode's language instruction."""
        return self._instruction

    @property
    def episode_seed(self) -> int | None:
        """The seed of the current episode (None before the first reset)."""
        return self._episode_seed

    @property
    def elapsed_steps(self) -> int:
        """Steps taken in the current episode."""
        return self._t

    @property
    def sim(self):
        """The underlying MetaWorld ``SawyerXYZEnv`` (privileged access for experts and tests)."""
        return self._sim

    # ------------------------------------------------------------------ gym API

    def render_camera(self, camera: str) -> np.ndarray:
        """One camera's current frame: uint8 (H, W, 3), upright."""
        if camera not in self.cameras:
            raise MetaWorldError(f"camera: {camera!r} not rendered by this env; valid choices: {list(self.cameras)}")
        r = self._get_renderer()
        r.update_scene(self._sim.data, camera=camera)
        img = r.render()  # (H, W, 3) uint8
        if camera in self._flip:
            img = img[::-1, ::-1]  # 180-degree roll: upright and unmirrored
        return np.ascontiguousarray(img)

    def render(self) -> np.ndarray | None:
        """All cameras side by side: uint8 (H, W * n_cameras, 3); None when ``render_mode`` is None."""
        if self.render_mode is None:
            return None
        if not self.cameras:
            raise RuntimeError("this env was made without cameras (cameras=[]), so it cannot render")
        return np.concatenate([self.render_camera(c) for c in self.cameras], axis=1)

    def _observation(self) -> dict[str, Any]:
        raw = self._raw
        if self.task_name in MUJOCO_QUAT_TASKS:  # object quaternions to x, y, z, w
            raw = raw.copy()
            raw[7:11], raw[14:18] = quat_from_mujoco(raw[7:11]), quat_from_mujoco(raw[14:18])
        if self.state_layout == "proprio":
            state = raw[0:4]
        elif self.state_layout == "objects":
            state = raw[0:18]
        else:
            state = np.concatenate([raw[0:18], raw[36:39]])
        obs: dict[str, Any] = {image_key(c): self.render_camera(c) for c in self.cameras}
        obs[STATE] = state.astype(np.float32)  # (D_s,)
        obs[TASK] = self._instruction
        return obs

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        """Start an episode; ``seed`` (else the constructor's seed first, then a seeded stream) fixes it.

        An explicit ``seed`` also reseeds the stream that later ``reset()`` calls without one draw
        from, as gymnasium expects (``reset(seed=s)`` then ``reset()`` is reproducible)."""
        explicit = seed is not None
        if seed is None:
            seed = self._seed if self._first_reset else int(self._next_seed_rng.integers(2**31 - 1))
        if not isinstance(seed, (int, np.integer)) or isinstance(seed, bool) or seed < 0:
            raise MetaWorldError(f"seed: expected a non-negative int, got {seed!r}")
        seed = int(seed)
        if explicit:
            self._next_seed_rng = np.random.default_rng(seed)
        self._first_reset = False
        super().reset(seed=seed)
        self._episode_seed = seed
        self._sim.seed(seed)  # MetaWorld's np_random: object and goal placement
        raw, _ = self._sim.reset()
        self._raw = np.asarray(raw, np.float64)  # (39,)
        self._instruction = sample_instruction(self.task_name, np.random.default_rng([seed, _task_salt(self.task_name)]))
        self._t = 0
        self._done = False
        self._last_success = False
        info = {"success": False, "is_success": False, "seed": seed, "task_name": self.task_name,
                "instruction": self._instruction}
        return self._observation(), info

    def _check_action(self, action) -> np.ndarray:
        try:
            a = np.asarray(action, dtype=np.float64)
        except (TypeError, ValueError):
            raise MetaWorldError(f"action: expected 4 numbers (dx, dy, dz, gripper), got {action!r}") from None
        if a.shape != (4,):
            raise MetaWorldError(f"action: wrong shape {a.shape}; expected (4,) = (dx, dy, dz, gripper) in [-1, 1]")
        if not np.isfinite(a).all():
            raise MetaWorldError(f"action: contains NaN or inf at index {int(np.flatnonzero(~np.isfinite(a))[0])}: {a}")
        return np.clip(a, -1.0, 1.0).astype(np.float32)

    def step(self, action):
        """Apply one 4-D action; returns (obs, reward, terminated, truncated, info with "success")."""
        if self._raw is None:
            raise RuntimeError("step() before reset(): call reset() to start an episode")
        if self._done:
            raise RuntimeError(f"step() after the episode ended (at step {self._t}, "
                               f"{'success' if self._last_success else 'time limit'}); call reset() first")
        a = self._check_action(action)
        raw, reward, _, _, info = self._sim.step(a)
        self._raw = np.asarray(raw, np.float64)
        self._t += 1
        success = bool(info.get("success", 0.0))
        self._last_success = success
        terminated = success and self.terminate_on_success
        truncated = (not terminated) and self._t >= self.max_steps
        self._done = terminated or truncated
        out = {k: float(v) for k, v in info.items() if np.isscalar(v)}
        out["success"] = out["is_success"] = success
        return self._observation(), float(reward), terminated, truncated, out

    def close(self) -> None:
        """Release the renderer's GL context and the simulator."""
        if self._renderer is not None:
            try:
                self._renderer.close()
            finally:
                self._renderer = None
        if self._sim is not None:
            self._sim.close()

    def __del__(self):
        try:
            if self._renderer is not None:
                self._renderer.close()
                self._renderer = None
        except Exception:
            pass


_LIVE_ENVS: "weakref.WeakSet[MetaWorldEnv]" = weakref.WeakSet()
_ATEXIT_REGISTERED = False


def _close_live_envs() -> None:
    """Free GL contexts before interpreter teardown (EGL errors otherwise)."""
    for env in list(_LIVE_ENVS):
        try:
            env.close()
        except Exception:
            pass


def _track(env: "MetaWorldEnv") -> None:
    """Remember an env with a renderer; the exit hook is registered after the GL backend's own
    (atexit runs last-registered first), so contexts are freed before the display is terminated."""
    global _ATEXIT_REGISTERED
    _LIVE_ENVS.add(env)
    if not _ATEXIT_REGISTERED:
        atexit.register(_close_live_envs)
        _ATEXIT_REGISTERED = True


_CHARSET = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 ,.?!'-")


class MetaWorldExpert:
    """MetaWorld's shipped scripted policy for a task, reading the env's privileged 39-D observation."""

    def __init__(self, task: str):
        """The expert for ``task`` (any name :func:`canonical_task` accepts)."""
        from metaworld.policies import ENV_POLICY_MAP

        self.task_name = canonical_task(task)
        self.policy = ENV_POLICY_MAP[self.task_name]()

    def reset(self) -> None:
        """Start an episode (MetaWorld's experts are stateless)."""

    def act(self, obs: dict, env: MetaWorldEnv) -> np.ndarray:
        """The expert's action for the current step: float32 (4,) in [-1, 1]."""
        sim_env = getattr(env, "unwrapped", env)
        if not isinstance(sim_env, MetaWorldEnv):
            raise TypeError(f"env: expected a MetaWorldEnv, got {type(sim_env).__name__}")
        if sim_env.task_name != self.task_name:
            raise MetaWorldError(f"expert for {self.task_name!r} used on env {sim_env.task_name!r}")
        import warnings

        with warnings.catch_warnings():  # the experts warn when their gains exceed the clip range
            warnings.simplefilter("ignore")
            a = self.policy.get_action(sim_env.raw_observation)
        return np.clip(np.asarray(a, np.float32), -1.0, 1.0)  # (4,)


def make_metaworld_env(task: str, seed: int = 0, cameras: Sequence[str] | None = None, image_size=(128, 128),
                       **kw) -> MetaWorldEnv:
    """Build a :class:`MetaWorldEnv` (keyword options: max_steps, state, terminate_on_success)."""
    return MetaWorldEnv(task, seed=seed, cameras=cameras, image_size=image_size, **kw)
