"""A kitchen task as a real-time robot: ``vlastack deploy robot=kitchen robot.kitchen.task=OpenDrawer``.

The kitchen env of ``vlastack eval`` (:func:`~vlastack.envs.kitchen.make_kitchen_env`; extra
``robot.kitchen.env`` options such as a shared ``scene`` pass through) runs in its own spawned
process, stepped against the wall clock at the kitchen's 20 Hz, behind the
:class:`~vlastack.real_robot.base.Robot` protocol and the safe controller, as the digital twin
does (:mod:`vlastack.real_robot.twin`): the controller process servoes the arm through
:class:`KitchenDriver`, the client reads the cameras and the state from shared memory, and the
twin's faults can be injected (command latency and jitter, dropped commands, observation
latency, frozen frames: :mod:`vlastack.real_robot.faults`).

Observations are those of ``vlastack eval``: the same cameras and image size, the kitchen's
16-D ``observation.state`` (grip-site position and quaternion in the world frame, finger
positions, joint angles) and the episode's instruction. ``timestamp`` is the capture time of
the stalest source.

The action adapter (``robot.spec`` is the kitchen's action space, so a checkpoint trained on
kitchen demos runs unchanged) — frames, units, rates:

1. the policy sends the kitchen's action at 20 Hz: [0:3] a grip-site translation, 1.0 = 0.05 m,
   [3:6] a rotation (axis-angle, applied on the left), 1.0 = 0.5 rad, both in the robot base
   frame (its axes are the world's: the base sits at ``ROBOT_BASE`` unrotated), [6] the gripper
   (-1 open, +1 closed); components are clipped to [-1, 1] as the env does;
2. :meth:`KitchenRobot.send_action` turns it into the controller's ``ee`` action: the absolute
   tool pose (base frame, m and axis-angle) = the measured tool pose the controller last
   published (200 Hz) moved by that delta — robosuite's OSC "achieved" goal update — plus the
   gripper, targeted at send time + 1/20 s;
3. the controller (200 Hz) solves IK on the Panda chain (the kitchen's Panda: same joints),
   interpolates and applies its safety limits (workspace box, joint and speed limits, watchdog);
   :class:`KitchenDriver` publishes each joint command;
4. the kitchen process, at each 50 ms step, takes the newest command that the injected faults
   let through, computes the grip-site pose of those joints (MuJoCo forward kinematics on a
   scratch copy of the state) and steps the env with the OSC_POSE delta that moves the grip
   site there (:func:`~vlastack.envs.kitchen.experts.pose_action`, clipped to one step).

The kitchen's scripted expert runs inside the kitchen process (it reads privileged state);
:class:`KitchenScriptedPolicy` asks it for the action of the current state (``policy=scripted``).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any, Mapping

import numpy as np

from vlastack.real_robot.base import RobotError
from vlastack.real_robot.controller import ControllerConfig, DriverSpec
from vlastack.real_robot.faults import (FAULT_RANGES, DelayedCommands, DelayedObservations, InjectedFaults,
                                       check_ranges)
from vlastack.real_robot.kinematics import PANDA, matrix_to_rotvec, rotvec_to_matrix
from vlastack.real_robot.registry import RobotConfigError
from vlastack.real_robot.safety import SafetyLimits
from vlastack.real_robot.simproc import SimulatedRobot, send_reply, serve_requests, start_sim_process
from vlastack.real_robot.twin import (CMD_SLOTS, STATE_SLOTS, TwinCamera, TwinDriver, _publish_frame, _publish_state,
                                      _Slots, read_slots, take_command)
from vlastack.types import ACTION, STATE, TASK, TIMESTAMP, ActionChunk, DatasetSpec, FeatureSpec, Observation, image_key

FPS = 20.0  # the kitchen's control rate (OSC_POSE, 25 physics steps of 2 ms)
POS_SCALE, ROT_SCALE = 0.05, 0.5  # m and rad per unit of the kitchen's action
BASE = np.array([-0.5, 0.0, 0.912])  # the arm's base in the world (vlastack.envs.kitchen.scene.ROBOT_BASE)
#: default workspace box (m, base frame): what the experts of every task reach, plus margin
WORKSPACE = {"workspace_lower": [-0.15, -0.75, -0.45], "workspace_upper": [1.05, 0.75, 0.75]}
#: controller defaults: the watchdog allows for a simulation that renders its cameras on a shared CPU
CONTROLLER = {"rate_hz": 200.0, "action_mode": "ee", "watchdog_s": 0.5}
FINGER_OPEN = 0.04  # m per finger, fully open
N_STATE = 16
SLOTS = _Slots([("seq", 1), ("t", 1), ("q", 7), ("dq", 7), ("gripper", 1), ("estop", 1), ("success", 1),
                ("rtf", 1), ("dropped", 1), ("applied", 1), ("frozen", 1), ("slips", 1), ("steps", 1),
                ("obs_state", N_STATE)])
assert SLOTS.slices["seq"] == STATE_SLOTS.slices["seq"]


# ------------------------------------------------------------------------------------ config


@dataclass
class KitchenRobotConfig(InjectedFaults):
    """The kitchen task, its cameras and the injected faults (see the module docstring)."""

    task: str = "OpenDrawer"
    cameras: tuple[str, ...] = ("left", "right", "wrist")
    image_size: tuple[int, int] = (128, 128)
    camera_fps: float = 20.0
    env: dict = field(default_factory=dict)

    def __post_init__(self):
        from vlastack.envs.kitchen import DEFAULT_CAMERAS, list_tasks

        tasks = list_tasks()
        if self.task not in tasks:
            raise ValueError(f"kitchen.task: unknown {self.task!r}; valid choices: {tasks}")
        self.cameras = (self.cameras,) if isinstance(self.cameras, str) else tuple(self.cameras)
        bad = [c for c in self.cameras if c not in DEFAULT_CAMERAS]
        if bad or len(set(self.cameras)) != len(self.cameras):
            raise ValueError(f"kitchen.cameras: unknown or repeated {bad or list(self.cameras)}; valid choices: "
                             f"{list(DEFAULT_CAMERAS)} (or none: [])")
        self.image_size = (int(self.image_size), int(self.image_size)) if isinstance(self.image_size, int) \
            else tuple(int(s) for s in self.image_size)
        if len(self.image_size) != 2 or not all(16 <= s <= 1024 for s in self.image_size):
            raise ValueError(f"kitchen.image_size: expected [height, width] in 16..1024, got {self.image_size!r}")
        check_ranges("kitchen", asdict(self), {"camera_fps": (1, FPS), **FAULT_RANGES})
        if not isinstance(self.env, Mapping):
            raise ValueError(f"kitchen.env: expected a dict of make_kitchen_env options, got {self.env!r}")
        reserved = sorted(set(self.env) & {"task", "seed", "cameras", "image_size", "horizon", "terminate_on_success"})
        if reserved:
            raise ValueError(f"kitchen.env: {reserved} are set by the kitchen robot (kitchen.task, kitchen.cameras, ...)")
        self.env = dict(self.env)


def kitchen_spec(cameras, image_size) -> DatasetSpec:
    """The data contract of the kitchen robot: that of the kitchen env (cameras, 16-D state, 7-D delta action)."""
    from vlastack.envs.kitchen.env import ACTION_NAMES, ACTION_SPACE, STATE_NAMES, STATE_UNITS

    h, w = image_size
    feats = {image_key(c): FeatureSpec(image_key(c), (h, w, 3), "uint8", ("height", "width", "channel"), "pixel",
                                       "image") for c in cameras}
    feats[STATE] = FeatureSpec(STATE, (N_STATE,), "float32", STATE_NAMES, STATE_UNITS, "state")
    feats[ACTION] = FeatureSpec(ACTION, (7,), "float32", ACTION_NAMES,
                                "normalised [-1, 1]: 0.05 m, 0.5 rad per unit; gripper -1 open +1 closed", "action")
    return DatasetSpec(feats, FPS, ACTION_SPACE)


# ------------------------------------------------------------------------------------ the kitchen process


class _Shared:
    """Shared arrays: state (:data:`SLOTS`), the driver's command (twin layout), one buffer per camera."""

    def __init__(self, ctx, cfg: KitchenRobotConfig):
        h, w = cfg.image_size
        self.state = ctx.Array("d", SLOTS.size)
        self.cmd = ctx.Array("d", CMD_SLOTS.size)
        self.frames = {c: ctx.Array("B", h * w * 3) for c in cfg.cameras}
        self.metas = {c: ctx.Array("d", 2) for c in cfg.cameras}


class _Kitchen:
    """The env inside the kitchen process, with the joint-target -> OSC_POSE adapter (module docstring, 4)."""

    def __init__(self, cfg: KitchenRobotConfig):
        import mujoco

        from vlastack.envs.kitchen import make_expert, make_kitchen_env

        self.mj, self.cfg = mujoco, cfg
        self.env = make_kitchen_env(cfg.task, seed=cfg.seed, cameras=cfg.cameras, image_size=cfg.image_size,
                                    horizon=10**9, terminate_on_success=False, **cfg.env)
        self.scene = self.env.scene
        self.env.reset(seed=cfg.seed)
        self.scene.step(np.r_[np.zeros(6), -1.0])  # the first step is slow (0.4-2 s): taken before going live
        self.expert = make_expert(self.env)
        self.scratch = None
        self.qvel_idx = np.array(self.scene.robots[0]._ref_joint_vel_indexes)
        self.estop = self.paused = False
        self.applied = self.slips = self.steps = 0
        self.success = False

    def reset(self, seed: int) -> str:
        """Start the episode of ``seed`` (the arm too is put at its start); returns its instruction."""
        self.env.reset(seed=int(seed))
        self.expert.reset()
        self.scratch = self.mj.MjData(self.scene.sim.model._model)
        self.target: tuple[np.ndarray, float] | None = None
        self.success = bool(self.scene._check_success())
        self.steps = 0
        return self.env.instruction

    def gripper(self) -> float:
        """Measured gripper in [-1 open, +1 closed] from the finger positions."""
        g = self.scene.gripper_qpos
        width = float(abs(g[0] - g[1])) / 2.0
        return float(np.clip(1.0 - 2.0 * width / FINGER_OPEN, -1.0, 1.0))

    def osc_action(self) -> np.ndarray:
        """The kitchen action moving the grip site to the commanded joints' pose (hold when none yet)."""
        from vlastack.envs.kitchen.experts import pose_action

        if self.target is None:
            return np.r_[np.zeros(6), self.gripper()]
        q, g = self.target
        sc, d = self.scene, self.scratch
        d.qpos[:] = sc.sim.data._data.qpos
        d.qpos[sc._arm_qpos_idx] = q
        self.mj.mj_kinematics(sc.sim.model._model, d)
        pos, mat = d.site_xpos[sc._eef_site].copy(), d.site_xmat[sc._eef_site].reshape(3, 3).copy()
        return np.clip(pose_action(sc, pos, mat, float(np.clip(g, -1, 1))), -1.0, 1.0)

    def step(self) -> None:
        """One 50 ms control step of the env toward the commanded pose."""
        self.scene.step(self.osc_action())
        self.steps += 1
        self.success = self.success or bool(self.scene._check_success())

    def snapshot(self, now: float, rtf: float, commands: DelayedCommands, frozen: int) -> np.ndarray:
        """The state as published (:data:`SLOTS`)."""
        s = SLOTS.slices
        v = np.zeros(SLOTS.size)
        v[s["t"]] = now
        v[s["q"]] = self.scene.arm_qpos
        v[s["dq"]] = self.scene.sim.data._data.qvel[self.qvel_idx]
        v[s["gripper"]] = self.gripper()
        v[s["estop"]] = float(self.estop)
        v[s["success"]] = float(self.success)
        v[s["rtf"]] = rtf
        v[s["dropped"]], v[s["applied"]], v[s["frozen"]] = commands.dropped, self.applied, frozen
        v[s["slips"]], v[s["steps"]] = self.slips, self.steps
        v[s["obs_state"]] = self.env.state_vector()
        return v

    def render(self) -> dict[str, np.ndarray]:
        """One frame per camera, uint8 (H, W, 3), as the env's observations show them."""
        h, w = self.cfg.image_size
        return {c: self.scene.render_image(c, h, w) for c in self.cfg.cameras}


def _kitchen_main(cfg: KitchenRobotConfig, shared: _Shared, conn, stop) -> None:
    """Entry point of the kitchen process: 20 Hz steps against the wall clock, cameras, faults, requests."""
    start_sim_process()
    try:
        import torch

        torch.set_num_threads(1)
    except ImportError:  # pragma: no cover
        pass
    try:
        from vlastack.rollout.common import quiet_simulator_logs

        quiet_simulator_logs("kitchen")
        k = _Kitchen(cfg)
        instruction = k.reset(cfg.seed)
    except BaseException as e:  # noqa: BLE001 - reported to the client
        send_reply(conn, ("error", f"{type(e).__name__}: {e}"))
        return
    rng = np.random.default_rng([cfg.seed, 1])
    commands = DelayedCommands(cfg.cmd_latency_s, cfg.cmd_jitter_s, cfg.drop_prob, rng)
    observed = DelayedObservations(cfg.cameras, cfg.obs_latency_s, cfg.freeze_prob, cfg.freeze_s, rng)
    seq, last_cmd = 0, 0.0
    period = 1.0 / FPS

    def publish_state(v: np.ndarray, block: bool = False) -> None:
        nonlocal seq
        seq += 1
        _publish_state(shared, v, seq, block)  # (the twin's: both layouts start with seq)

    def publish_frame(cam: str, img: np.ndarray, t: float, idx: int) -> None:
        _publish_frame(shared, cam, img, t, idx)

    def estop(on: bool) -> bool:
        k.estop = on
        commands.clear()
        return True

    def reset_scene(seed: int) -> str:  # commands are ignored until "resume"
        nonlocal next_step
        commands.clear()
        k.paused = True
        instruction = k.reset(int(seed))
        now = time.monotonic()
        observed.states.clear()
        observed.frames.clear()
        publish_state(k.snapshot(now, rtf, commands, observed.frozen), block=True)
        for cam, img in k.render().items():
            publish_frame(cam, img, now, observed.frame_index)
        next_step = now + period
        return instruction

    def resume() -> bool:
        commands.clear()
        k.paused = False
        return True

    handlers = {"estop": lambda: estop(True), "release_estop": lambda: estop(False), "reset_scene": reset_scene,
                "resume": resume, "expert_action": lambda: np.asarray(k.expert.act(k.env), np.float32)}
    t0 = time.monotonic()
    publish_state(k.snapshot(t0, 1.0, commands, 0), block=True)
    for cam, img in k.render().items():
        publish_frame(cam, img, t0, 0)
    ready = send_reply(conn, ("ready", {"instruction": instruction}))
    next_step, next_frame = t0 + period, t0
    rtf_t, rtf_steps, rtf = t0, 0, 1.0
    try:
        while ready and not stop.is_set():
            now = time.monotonic()
            last_cmd = take_command(shared.cmd, last_cmd, commands, accept=not (k.estop or k.paused))
            for cmd in commands.due(now):
                k.target = cmd
                k.applied += 1
            if now >= next_step:
                if not k.estop:
                    k.step()
                next_step += period
                if now - next_step > 0.1:  # more than two steps behind the wall clock: counted, schedule restarted
                    k.slips += 1
                    next_step = now + period
                if now - rtf_t > 1.0:
                    rtf = (k.steps - rtf_steps) * period / (now - rtf_t)
                    rtf_t, rtf_steps = now, k.steps
                observed.add_state(now, k.snapshot(now, rtf, commands, observed.frozen))
                if now >= next_frame:
                    observed.add_frames(now, k.render())
                    next_frame = max(next_frame + 1.0 / cfg.camera_fps, now)
            observed.publish(now, publish_state, publish_frame)
            if not serve_requests(conn, handlers, "kitchen"):
                break  # the client process is gone
            time.sleep(max(0.0, min(0.002, next_step - time.monotonic())))
    finally:
        k.env.close()


# ------------------------------------------------------------------------------------ driver and robot


class KitchenDriver(TwinDriver):
    """The controller's driver for the kitchen robot: reads its published joints, writes joint targets."""

    slots = SLOTS


class KitchenRobot(SimulatedRobot):
    """A kitchen task as a :class:`~vlastack.real_robot.base.Robot` (module docstring).

    Args:
        kitchen: task, cameras, faults, env options.
        config: controller settings (``ee`` action mode: the adapter sends tool poses).
        safety: overrides of the default limits (:meth:`SafetyLimits.for_chain` keys); the
            default workspace box is :data:`WORKSPACE`.
        instruction: the task string in observations (default: the episode's own).
        max_frame_age_s: older camera frames raise :class:`~vlastack.real_robot.base.StaleFrameError`.
    """

    resets_every_episode = True  # deploy resets the scene to the episode's seed before each episode

    def __init__(self, kitchen: KitchenRobotConfig | None = None, config: ControllerConfig | None = None,
                 safety: Mapping[str, Any] | None = None, instruction: str | None = None,
                 max_frame_age_s: float = 1.0, connect_timeout_s: float = 120.0):
        self.kitchen = kitchen or KitchenRobotConfig()
        config = config or ControllerConfig()
        if config.action_mode != "ee":
            raise RobotConfigError("robot (kitchen): controller.action_mode must be 'ee' (the action adapter sends "
                                   "tool poses)")
        limits = SafetyLimits.for_chain(PANDA, {**WORKSPACE, "v_scale": 1.0, "max_step": 0.02, **dict(safety or {})})
        cams = [TwinCamera(c, self.kitchen.image_size) for c in self.kitchen.cameras]
        super().__init__(DriverSpec("vlastack.rollout.kitchen_robot:KitchenDriver"), PANDA, limits, config, cams,
                         instruction, FPS, max_frame_age_s, name="kitchen")
        self.fixed_instruction = instruction
        self.connect_timeout_s = float(connect_timeout_s)

    @property
    def spec(self) -> DatasetSpec:
        """The kitchen env's contract: cameras, 16-D state, 7-D delta actions at 20 fps."""
        return kitchen_spec(self.kitchen.cameras, self.kitchen.image_size)

    # -------------------------------------------------------------- lifecycle

    def _sim_spec(self, ctx):
        """The kitchen process, its shared arrays and its driver."""
        return _kitchen_main, (self.kitchen,), _Shared(ctx, self.kitchen), "vlastack.rollout.kitchen_robot:KitchenDriver"

    def connect(self) -> None:
        """Start the kitchen process and the controller; the task's instruction comes from the kitchen."""
        super().connect()
        self.instruction = self.fixed_instruction or self.sim_info["instruction"]

    # -------------------------------------------------------------- observations and actions

    def _published(self) -> dict[str, np.ndarray]:
        self._require_sim()
        return read_slots(self._shared.state, SLOTS)

    def get_observation(self) -> dict[str, Any]:
        """The kitchen's observation: cameras, 16-D state, ``timestamp`` (stalest source), task."""
        self.fresh_state(max(self.max_frame_age_s, 20 * self.config.dt))  # the controller is alive and publishing
        now = time.monotonic()
        s = self._published()
        frames = self.read_cameras(now)
        obs: dict[str, Any] = {image_key(c): f.image for c, f in frames.items()}
        obs[STATE] = s["obs_state"].astype(np.float32)
        obs[TIMESTAMP] = min([float(s["t"][0])] + [f.timestamp for f in frames.values()])
        if self.instruction:
            obs[TASK] = self.instruction
        return obs

    def send_action(self, action: np.ndarray, t: float | None = None) -> None:
        """Send a kitchen action (7,): converted to the controller's absolute tool pose (module docstring, 2)."""
        a = np.asarray(action, np.float64)
        if a.shape != (7,):
            raise ValueError(f"kitchen: expected a 7-D action [d_pos(3), d_rot(3), gripper], got shape {a.shape}")
        super().send_action(ee_target(self.state().ee, a).astype(np.float32), t)

    # -------------------------------------------------------------- simulation-only

    def task_state(self) -> dict[str, Any]:
        """Success so far, real-time factor, fault counts, env steps."""
        s = self._published()
        return {"success": bool(s["success"][0]), "rtf": float(s["rtf"][0]), "dropped_commands": int(s["dropped"][0]),
                "applied_commands": int(s["applied"][0]), "frozen_frames": int(s["frozen"][0]),
                "slips": int(s["slips"][0]), "steps": int(s["steps"][0])}

    def task_success(self) -> bool:
        """Whether the task has succeeded in this episode."""
        return self.task_state()["success"]

    def reset_scene(self, seed: int) -> str:
        """Start the episode of ``seed``: the env (arm included) is reset, then the controller re-anchored there."""
        st = self.state()
        if st.status == "estop":
            raise RobotError("kitchen: cannot reset while e-stopped; clear it first")
        self.hold()
        instruction = self.sim_request("reset_scene", int(seed), timeout=30.0)  # the arm holds its new start
        q_new = self._published()["q"]
        deadline = time.monotonic() + 5.0
        while np.max(np.abs(self.state().q - q_new)) > 1e-6:  # the controller reads the new arm
            if time.monotonic() > deadline:
                raise RobotError("kitchen: the controller did not see the reset arm")
            time.sleep(0.005)
        self.reset_faults()  # re-anchor the controller there
        self.sim_request("resume")
        self.instruction = self.fixed_instruction or instruction
        return self.instruction

    def scripted_policy(self, **options: Any) -> "KitchenScriptedPolicy":
        """The task's scripted expert, run in the simulation process."""
        return KitchenScriptedPolicy(self, **options)


def ee_target(ee: np.ndarray, action: np.ndarray) -> np.ndarray:
    """The controller's ``ee`` action for a kitchen action at the measured tool pose ``ee`` (6,) (base frame)."""
    a = np.clip(np.asarray(action, np.float64), -1.0, 1.0)
    pos = ee[:3] + a[:3] * POS_SCALE
    rot = rotvec_to_matrix(a[3:6] * ROT_SCALE) @ rotvec_to_matrix(ee[3:6])
    return np.r_[pos, matrix_to_rotvec(rot), a[6]]


class KitchenScriptedPolicy:
    """The kitchen's scripted expert as a policy: each chunk is its action for the current state (1, 1, 7).

    ``infer_delay_s`` of sleep per call stands in for a network's inference time.
    """

    def __init__(self, robot: KitchenRobot, infer_delay_s: float = 0.0):
        self.robot, self.infer_delay_s = robot, float(infer_delay_s)

    def sample_actions(self, obs: Observation, **sampling: Any) -> ActionChunk:
        """The expert's action now (it reads the simulation, not ``obs``)."""
        if sampling:
            raise ValueError(f"the scripted kitchen policy takes no sampling options, got {sorted(sampling)}")
        a = self.robot.sim_request("expert_action", timeout=30.0)
        if self.infer_delay_s:
            time.sleep(self.infer_delay_s)
        return ActionChunk(np.asarray(a, np.float32)[None, None])  # (1, 1, 7)


_KEYS = {"type", "fps", "controller", "safety", "max_frame_age_s"}


def make_kitchen_robot(cfg: Mapping[str, Any], instruction: str | None = None) -> KitchenRobot:
    """The kitchen robot of a ``robot=kitchen`` config (``configs/robot/kitchen.yaml``): the common robot keys
    plus the :class:`KitchenRobotConfig` fields (``task``, ``cameras``, faults, ``env``) at the top level."""
    cfg = dict(cfg)
    fields = set(KitchenRobotConfig.__dataclass_fields__)
    unknown = sorted(set(cfg) - _KEYS - fields)
    if unknown:
        raise RobotConfigError(f"robot (kitchen): unknown keys {unknown}; valid: {sorted(_KEYS | fields)}")
    if float(cfg.get("fps", FPS)) != FPS:
        raise RobotConfigError(f"robot (kitchen): fps is the kitchen's own {FPS:g} Hz, got {cfg['fps']!r}")
    try:
        kitchen = KitchenRobotConfig(**{k: v for k, v in cfg.items() if k in fields})
        controller = ControllerConfig(**{**CONTROLLER, **dict(cfg.get("controller") or {})})
    except (TypeError, ValueError) as e:
        raise RobotConfigError(f"robot: {e}") from None
    return KitchenRobot(kitchen, controller, dict(cfg.get("safety") or {}), instruction,
                        float(cfg.get("max_frame_age_s", 1.0)))
