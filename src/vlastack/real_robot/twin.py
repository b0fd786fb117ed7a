"""The MuJoCo digital twin: a Franka Panda and a drawer cabinet, simulated in real time in its own process.

The twin stands in for hardware. It runs as a separate spawned process that steps MuJoCo's
physics to follow the wall clock (``physics_dt`` steps, caught up every loop iteration),
renders its cameras at ``camera_fps`` and publishes state and frames through shared memory.
The controller process drives it through :class:`TwinDriver` exactly as it would drive a real
arm (joint position targets for position actuators with gravity compensation), and the client
reads its cameras through :class:`TwinCamera`. Faults of real setups can be injected:

- ``cmd_latency_s`` / ``cmd_jitter_s``: commands take effect ``latency + U(0, jitter)`` after
  they were sent (order kept);
- ``drop_prob``: a command is lost with this probability;
- ``obs_latency_s``: state and frames are published this much after they were measured;
- ``freeze_prob`` / ``freeze_s``: after a frame, a camera stops updating for ``freeze_s`` with
  this probability (its timestamp stays old: a frozen frame is detectable);
- a hardware e-stop (:meth:`TwinRobot.twin_estop`), reported by the driver like a real arm's.

The model: the Panda's joint layout is built from :data:`~.kinematics.PANDA` (the numbers the
controller's kinematics use) with robosuite's shipped Panda link meshes as visuals when
robosuite is installed (capsules otherwise), a two-finger gripper authored here, a table and a
cabinet whose drawer has a bar handle. The task: "open the drawer" — success when the drawer is
out by ``success_open_m``. :class:`TwinScriptedPolicy` solves it by hooking the closed fingers
behind the handle bar and pulling, closed-loop on the observed tool position.

This module never imports :mod:`vlastack.envs`; the kitchen envs are a separate simulator.
"""

from __future__ import annotations

import importlib.util
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from vlastack.real_robot.base import Frame, RobotError
from vlastack.real_robot.controller import ArmState, ControllerConfig, DriverSpec
from vlastack.real_robot.faults import (FAULT_RANGES, DelayedCommands, DelayedObservations, InjectedFaults,
                                       check_ranges)
from vlastack.real_robot.kinematics import PANDA, matrix_to_rotvec
from vlastack.real_robot.safety import SafetyLimits
from vlastack.real_robot.simproc import SimulatedRobot, send_reply, serve_requests, start_sim_process
from vlastack.types import ActionChunk, Observation, quat_to_mujoco

TASKS = {"drawer": "open the drawer"}
FINGER_OPEN = 0.04  # m per finger at fully open
#: the twin's default workspace box (m, base frame): above the table, in front of the robot
WORKSPACE = {"workspace_lower": [0.25, -0.35, 0.06], "workspace_upper": [0.78, 0.35, 0.6]}


# ------------------------------------------------------------------------------------ config


@dataclass
class TwinConfig(InjectedFaults):
    """The twin's scene, cameras, timing and injected faults (see the module docstring)."""

    task: str = "drawer"
    cameras: tuple[str, ...] = ("front", "wrist")
    image_size: tuple[int, int] = (64, 64)
    camera_fps: float = 20.0
    physics_dt: float = 0.002
    success_open_m: float = 0.08
    q_home: tuple[float, ...] = PANDA.home
    meshes: bool = True

    def __post_init__(self):
        if self.task not in TASKS:
            raise ValueError(f"twin.task: unknown {self.task!r}; valid choices: {sorted(TASKS)}")
        self.cameras = (self.cameras,) if isinstance(self.cameras, str) else tuple(self.cameras)
        bad = [c for c in self.cameras if c not in CAMERAS]
        if bad or not self.cameras:
            raise ValueError(f"twin.cameras: unknown {bad or self.cameras!r}; valid choices: {sorted(CAMERAS)}")
        self.image_size = tuple(int(s) for s in self.image_size)
        if len(self.image_size) != 2 or not all(8 <= s <= 1024 for s in self.image_size):
            raise ValueError(f"twin.image_size: expected [height, width] in 8..1024, got {self.image_size!r}")
        check_ranges("twin", asdict(self), {"camera_fps": (1, 120), "physics_dt": (1e-4, 0.01), **FAULT_RANGES,
                                            "success_open_m": (0.01, 0.19)})
        self.q_home = tuple(float(x) for x in self.q_home)
        if len(self.q_home) != PANDA.n:
            raise ValueError(f"twin.q_home: expected {PANDA.n} joint positions, got {len(self.q_home)}")

    @property
    def instruction(self) -> str:
        """The task's language instruction."""
        return TASKS[self.task]


# ------------------------------------------------------------------------------------ model

#: cameras: name -> MJCF attributes (the wrist camera hangs on the hand, like robosuite's eye_in_hand)
def _lookat(pos, target) -> str:
    """MJCF attributes of a camera at ``pos`` looking at ``target`` with world z up."""
    pos, target = np.asarray(pos, float), np.asarray(target, float)
    z = pos - target
    z /= np.linalg.norm(z)
    x = np.cross([0.0, 0.0, 1.0], z)
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    return f'pos="{_f(pos)}" xyaxes="{_f(x)} {_f(y)}"'


def _f(v: Sequence[float]) -> str:
    return " ".join(f"{float(x):.6g}" for x in v)


CAMERAS = {"front": _lookat((0.0, -0.85, 0.65), (0.48, 0.0, 0.14)) + ' fovy="55"',
           "wrist": 'pos="0.05 0 0" quat="0 0.707108 0.707108 0" fovy="75"'}

# robosuite's Panda link inertials (mass, diagonal inertia)
_INERTIA = [(4, 0.4, (0, 0, 0.05)), (3, 0.3, (0, 0, -0.07)), (3, 0.3, (0, -0.1, 0)), (2, 0.2, (0.04, 0, -0.05)),
            (2, 0.2, (-0.04, 0.05, 0)), (2, 0.2, (0, 0, -0.15)), (1.5, 0.1, (0.06, 0, 0)), (0.5, 0.05, (0, 0, 0.08))]
_KP = (600, 600, 500, 500, 250, 150, 60)
_KV = (60, 60, 50, 50, 20, 12, 6)
_TORQUE = (87, 87, 87, 87, 12, 12, 12)


def _panda_mesh_dir() -> Path | None:
    spec = importlib.util.find_spec("robosuite")
    if spec is None or not spec.submodule_search_locations:
        return None
    p = Path(list(spec.submodule_search_locations)[0]) / "models" / "assets" / "robots" / "panda" / "meshes"
    return p if (p / "link0.stl").is_file() else None


def build_mjcf(cfg: TwinConfig) -> str:
    """The twin's MJCF: table, Panda (from :data:`PANDA`), gripper, cameras, drawer cabinet."""
    mesh_dir = _panda_mesh_dir() if cfg.meshes else None
    assets = ""
    if mesh_dir is not None:
        assets = "".join(f'<mesh name="link{i}" file="{mesh_dir / f"link{i}.stl"}"/>' for i in range(8))

    def visual(i: int) -> str:
        if mesh_dir is not None:
            return f'<geom type="mesh" mesh="link{i}" class="robot"/>'
        return '<geom type="capsule" fromto="0 0 0 0 0 -0.1" size="0.05" class="robot"/>'

    m0, d0, c0 = _INERTIA[0]
    body = (f'<body name="link0" pos="0 0 0"><inertial pos="{_f(c0)}" mass="{m0}" diaginertia="{d0} {d0} {d0}"/>'
            f'{visual(0)}')
    close = "</body>"
    for i in range(PANDA.n):
        m, d, c = _INERTIA[i + 1]
        quat = _f(quat_to_mujoco(PANDA.quats[i]))  # MJCF writes w first
        body += (f'<body name="link{i + 1}" pos="{_f(PANDA.offsets[i])}" quat="{quat}" gravcomp="1">'
                 f'<inertial pos="{_f(c)}" mass="{m}" diaginertia="{d} {d} {d}"/>'
                 f'<joint name="{PANDA.joint_names[i]}" axis="0 0 1" range="{PANDA.lower[i]} {PANDA.upper[i]}" '
                 f'damping="0.1" armature="0.05"/>{visual(i + 1)}')
        close += "</body>"
    # the hand: robosuite's right_hand frame, then fingers sliding along the hand's y axis
    hand_pos = (0, 0, 0.1065)
    tcp_z = PANDA.tool_pos[2] - 0.1065
    cams = "".join(f'<camera name="{c}" {CAMERAS[c]}/>' for c in cfg.cameras if c == "wrist")
    body += (f'<body name="hand" pos="{_f(hand_pos)}" quat="{_f(quat_to_mujoco(PANDA.tool_quat))}" gravcomp="1">'
             f'<inertial pos="0 0 0.05" mass="0.7" diaginertia="0.003 0.003 0.003"/>'
             f'<geom type="box" size="0.03 0.09 0.025" pos="0 0 0.035" class="robot" rgba="0.9 0.9 0.9 1"/>'
             f'{cams}<site name="tcp" pos="0 0 {tcp_z:.5f}" size="0.006" rgba="1 0 0 1" group="3"/>'
             + "".join(
                 f'<body name="finger_{side}" pos="0 0 {tcp_z - 0.027:.5f}" gravcomp="1">'
                 f'<inertial pos="0 0 0" mass="0.05" diaginertia="1e-5 1e-5 1e-5"/>'
                 f'<joint name="finger_{side}" type="slide" axis="0 {sign} 0" range="0 {FINGER_OPEN}" damping="2"/>'
                 f'<geom type="box" size="0.008 0.006 0.03" pos="0 {sign * 0.006} 0" class="finger"/></body>'
                 for side, sign in (("left", 1), ("right", -1)))
             + "</body>")
    robot = body + close
    front_cam = "".join(f'<camera name="{c}" {CAMERAS[c]}/>' for c in cfg.cameras if c != "wrist")
    return f"""<mujoco model="vlastack_twin">
  <compiler angle="radian" autolimits="true"/>
  <option timestep="{cfg.physics_dt}" integrator="implicitfast" cone="elliptic"/>
  <visual><quality offsamples="0" shadowsize="0"/><global offwidth="1024" offheight="1024"/></visual>
  <default>
    <default class="robot"><geom contype="0" conaffinity="0" rgba="0.92 0.92 0.95 1"/></default>
    <default class="finger"><geom contype="1" conaffinity="1" friction="1 0.01 0.001" rgba="0.2 0.2 0.2 1"
      solref="0.004 1"/></default>
    <default class="shell"><geom type="box" contype="0" conaffinity="0" rgba="0.55 0.38 0.22 1"/></default>
  </default>
  <asset>{assets}
    <texture name="grid" type="2d" builtin="checker" rgb1=".75 .75 .72" rgb2=".68 .68 .65" width="64" height="64"/>
    <material name="table" texture="grid" texrepeat="6 6"/>
  </asset>
  <worldbody>
    <light pos="0.6 0 1.6" dir="0 0 -1" diffuse="0.9 0.9 0.9"/>
    <light pos="1.4 0.8 1.2" dir="-1 -0.6 -0.8" diffuse="0.35 0.35 0.35"/>
    <geom name="table" type="box" pos="0.45 0 -0.02" size="0.7 0.6 0.02" material="table"/>
    {front_cam}
    {robot}
    <body name="cabinet" pos="0.62 0 0">
      <geom class="shell" pos="0.16 0 0.222" size="0.16 0.17 0.008"/>
      <geom class="shell" pos="0.16 0.165 0.11" size="0.16 0.005 0.11"/>
      <geom class="shell" pos="0.16 -0.165 0.11" size="0.16 0.005 0.11"/>
      <geom class="shell" pos="0.315 0 0.11" size="0.005 0.17 0.11"/>
      <body name="drawer" pos="0 0 0">
        <joint name="drawer" type="slide" axis="-1 0 0" range="0 0.2" damping="4" frictionloss="0.3"/>
        <inertial pos="0.15 0 0.1" mass="1.0" diaginertia="0.01 0.01 0.01"/>
        <geom name="drawer_front" type="box" pos="0.006 0 0.12" size="0.006 0.155 0.08" rgba="0.72 0.52 0.3 1"/>
        <geom type="box" pos="0.15 0 0.045" size="0.14 0.15 0.005" class="shell"/>
        <geom name="handle" type="capsule" fromto="-0.045 -0.06 0.12 -0.045 0.06 0.12" size="0.006"
          rgba="0.8 0.8 0.85 1"/>
        <geom type="box" pos="-0.0225 0.06 0.12" size="0.0225 0.005 0.005" rgba="0.8 0.8 0.85 1"/>
        <geom type="box" pos="-0.0225 -0.06 0.12" size="0.0225 0.005 0.005" rgba="0.8 0.8 0.85 1"/>
      </body>
    </body>
  </worldbody>
  <actuator>
    {''.join(f'<position name="a{i + 1}" joint="{PANDA.joint_names[i]}" kp="{_KP[i]}" kv="{_KV[i]}" '
             f'forcerange="-{_TORQUE[i]} {_TORQUE[i]}" ctrlrange="{PANDA.lower[i]} {PANDA.upper[i]}"/>'
             for i in range(PANDA.n))}
    <position name="finger_left" joint="finger_left" kp="300" kv="10" forcerange="-40 40" ctrlrange="0 {FINGER_OPEN}"/>
    <position name="finger_right" joint="finger_right" kp="300" kv="10" forcerange="-40 40" ctrlrange="0 {FINGER_OPEN}"/>
  </actuator>
</mujoco>"""


def scene_layout(seed: int) -> dict[str, float]:
    """The cabinet's position for episode ``seed`` (front face x, lateral y): a few cm of variation."""
    rng = np.random.default_rng([int(seed), 7])
    return {"cabinet_x": 0.62 + float(rng.uniform(-0.02, 0.02)), "cabinet_y": float(rng.uniform(-0.06, 0.06))}


# ------------------------------------------------------------------------------------ shared memory


class _Slots:
    """Named slices of a shared float64 array."""

    def __init__(self, names: Sequence[tuple[str, int]]):
        self.slices, i = {}, 0
        for name, size in names:
            self.slices[name] = slice(i, i + size)
            i += size
        self.size = i


STATE_SLOTS = _Slots([("seq", 1), ("t", 1), ("sim_time", 1), ("q", 7), ("dq", 7), ("gripper", 1), ("drawer", 1),
                      ("success", 1), ("rtf", 1), ("dropped", 1), ("applied", 1), ("estop", 1), ("handle", 3),
                      ("frozen", 1), ("slips", 1)])
CMD_SLOTS = _Slots([("seq", 1), ("t_sent", 1), ("q", 7), ("gripper", 1)])
FRAME_META = 2  # timestamp, index


@dataclass
class TwinShared:
    """The shared arrays between the twin, the controller's driver and the client's cameras."""

    state: Any
    cmd: Any
    frames: dict[str, Any]
    metas: dict[str, Any]

    @classmethod
    def create(cls, ctx, cfg: TwinConfig) -> "TwinShared":
        """Allocate the arrays for ``cfg``'s cameras."""
        h, w = cfg.image_size
        return cls(state=ctx.Array("d", STATE_SLOTS.size), cmd=ctx.Array("d", CMD_SLOTS.size),
                   frames={c: ctx.Array("B", h * w * 3) for c in cfg.cameras},
                   metas={c: ctx.Array("d", FRAME_META) for c in cfg.cameras})


def _view(arr, dtype=np.float64) -> np.ndarray:
    return np.frombuffer(arr.get_obj(), dtype=dtype)


def read_slots(arr, slots: _Slots, block: bool = True) -> dict[str, np.ndarray] | None:
    """Copy a shared array under its lock into named pieces (``block=False``: None when the lock is held)."""
    lock = arr.get_lock()
    if not lock.acquire(block=block):
        return None
    try:
        v = _view(arr).copy()
    finally:
        lock.release()
    return {k: v[s] for k, s in slots.slices.items()}


# ------------------------------------------------------------------------------------ the twin process


class _Twin:
    """The simulation inside the twin process."""

    def __init__(self, cfg: TwinConfig, shared: TwinShared):
        import mujoco

        self.mj, self.cfg, self.sh = mujoco, cfg, shared
        self.model = mujoco.MjModel.from_xml_string(build_mjcf(cfg))
        self.data = mujoco.MjData(self.model)
        m = self.model
        self.qadr = [m.jnt_qposadr[m.joint(n).id] for n in PANDA.joint_names]
        self.vadr = [m.jnt_dofadr[m.joint(n).id] for n in PANDA.joint_names]
        self.fadr = [m.jnt_qposadr[m.joint(f"finger_{s}").id] for s in ("left", "right")]
        self.drawer_adr = m.jnt_qposadr[m.joint("drawer").id]
        self.cabinet = m.body("cabinet").id
        self.handle = m.geom("handle").id
        self.rng = np.random.default_rng(cfg.seed)
        self.renderer = mujoco.Renderer(m, *cfg.image_size)
        for flag in (mujoco.mjtRndFlag.mjRND_SHADOW, mujoco.mjtRndFlag.mjRND_REFLECTION):
            self.renderer.scene.flags[flag] = 0
        self.estop = False
        self.dropped = self.applied = self.frozen = self.slips = 0
        self.reset_scene(cfg.seed, home=True)

    def reset_scene(self, seed: int, home: bool) -> dict[str, float]:
        """Close the drawer and place the cabinet for ``seed``; ``home`` also puts the arm home."""
        lay = scene_layout(seed)
        self.model.body_pos[self.cabinet] = [lay["cabinet_x"], lay["cabinet_y"], 0.0]
        d = self.data
        d.qpos[self.drawer_adr] = 0.0
        d.qvel[self.model.jnt_dofadr[self.model.joint("drawer").id]] = 0.0
        if home:
            d.qvel[:] = 0.0
            d.qpos[self.qadr] = self.cfg.q_home
            d.ctrl[:PANDA.n] = self.cfg.q_home
            d.qpos[self.fadr] = 0.0
            d.ctrl[PANDA.n:] = 0.0
        self.mj.mj_forward(self.model, d)
        return lay

    def gripper(self) -> float:
        """Measured gripper in [-1 open, +1 closed]."""
        w = float(np.mean(self.data.qpos[self.fadr]))
        return 1.0 - 2.0 * w / FINGER_OPEN

    def apply(self, q: np.ndarray, g: float) -> None:
        """Set the position actuators' targets."""
        self.data.ctrl[:PANDA.n] = q
        w = FINGER_OPEN * (1.0 - float(np.clip(g, -1, 1))) / 2.0
        self.data.ctrl[PANDA.n:] = w
        self.applied += 1

    def snapshot(self, now: float, rtf: float) -> np.ndarray:
        """The state as published (STATE_SLOTS layout)."""
        d, s = self.data, STATE_SLOTS.slices
        v = np.zeros(STATE_SLOTS.size)
        v[s["t"]] = now
        v[s["sim_time"]] = d.time
        v[s["q"]] = d.qpos[self.qadr]
        v[s["dq"]] = d.qvel[self.vadr]
        v[s["gripper"]] = self.gripper()
        drawer = float(d.qpos[self.drawer_adr])
        v[s["drawer"]] = drawer
        v[s["success"]] = float(drawer >= self.cfg.success_open_m)
        v[s["rtf"]] = rtf
        v[s["dropped"]], v[s["applied"]] = self.dropped, self.applied
        v[s["estop"]] = float(self.estop)
        v[s["handle"]] = d.geom_xpos[self.handle]
        v[s["frozen"]], v[s["slips"]] = self.frozen, self.slips
        return v

    def render(self) -> dict[str, np.ndarray]:
        """One frame per camera, uint8 (H, W, 3)."""
        out = {}
        for cam in self.cfg.cameras:
            self.renderer.update_scene(self.data, cam)
            out[cam] = self.renderer.render().copy()
        return out

    def close(self) -> None:
        """Free the GL context."""
        try:
            self.renderer.close()
        except Exception:  # noqa: BLE001
            pass


def _publish_state(shared: TwinShared, v: np.ndarray, seq: int, block: bool = False) -> None:
    """Publish a state snapshot; unless ``block``, skipped when a reader holds the lock (the loop publishes
    again next iteration: the simulation never waits on a client process)."""
    lock = shared.state.get_lock()
    if not lock.acquire(block=block):
        return
    try:
        arr = _view(shared.state)
        arr[:] = v
        arr[STATE_SLOTS.slices["seq"]] = seq
    finally:
        lock.release()


def _publish_frame(shared: TwinShared, cam: str, image: np.ndarray, t: float, index: int) -> None:
    buf, meta = shared.frames[cam], shared.metas[cam]
    with buf.get_lock():
        _view(buf, np.uint8)[:] = image.reshape(-1)
        _view(meta)[:] = (t, index)


def take_command(cmd, last_seq: float, commands: DelayedCommands, accept: bool = True) -> float:
    """Queue the driver's newest joint command (``cmd``: :data:`CMD_SLOTS`) in ``commands`` as (q, gripper),
    unless already taken (its seq is ``last_seq``) or not ``accept`` ed; returns its seq."""
    with cmd.get_lock():
        c = _view(cmd).copy()
    cs = CMD_SLOTS.slices
    seq = float(c[cs["seq"]][0])
    if seq != last_seq and accept:
        commands.push(c[cs["t_sent"]][0], (c[cs["q"]].copy(), float(c[cs["gripper"]][0])))
    return seq


def _twin_main(cfg: TwinConfig, shared: TwinShared, conn, stop) -> None:
    """Entry point of the twin process: real-time physics, cameras, injected faults, requests."""
    start_sim_process()
    try:
        twin = _Twin(cfg, shared)
    except BaseException as e:  # noqa: BLE001 - reported to the client
        send_reply(conn, ("error", f"{type(e).__name__}: {e}"))
        return
    mj, model, data = twin.mj, twin.model, twin.data
    rng = np.random.default_rng([cfg.seed, 1])
    commands = DelayedCommands(cfg.cmd_latency_s, cfg.cmd_jitter_s, cfg.drop_prob, rng)
    observed = DelayedObservations(cfg.cameras, cfg.obs_latency_s, cfg.freeze_prob, cfg.freeze_s, rng)
    last_seq, seq = 0.0, 0
    t0 = time.monotonic()
    sim0 = data.time
    next_frame = t0
    rtf_t, rtf_sim = t0, data.time
    rtf = 1.0
    _publish_state(shared, twin.snapshot(t0, rtf), 1, block=True)
    for cam, img in twin.render().items():
        _publish_frame(shared, cam, img, t0, 0)

    def publish_state(v: np.ndarray, block: bool = False) -> None:
        nonlocal seq
        seq += 1
        _publish_state(shared, v, seq, block)

    def estop(on: bool) -> bool:
        twin.estop = on
        commands.clear()
        return True

    def set_drawer(opening: float) -> bool:
        data.qpos[twin.drawer_adr] = float(opening)
        mj.mj_forward(model, data)
        return True

    def reset_scene(seed: int) -> dict[str, float]:
        layout = twin.reset_scene(int(seed), home=False)
        observed.states.clear()  # the new scene is what the client sees next (not a stale "success")
        publish_state(twin.snapshot(time.monotonic(), rtf), block=True)
        return layout

    handlers = {"estop": lambda: estop(True), "release_estop": lambda: estop(False), "reset_scene": reset_scene,
                "set_drawer": set_drawer}
    ready = send_reply(conn, ("ready", {"layout": scene_layout(cfg.seed), "meshes": _panda_mesh_dir() is not None}))
    try:
        while ready and not stop.is_set():
            now = time.monotonic()
            # commands from the controller's driver (the hardware e-stop ignores them)
            last_seq = take_command(shared.cmd, last_seq, commands, accept=not twin.estop)
            twin.dropped = commands.dropped
            for q, g in commands.due(now):
                twin.apply(q, g)
            # physics up to the wall clock (slip if more than 0.1 s behind: counted)
            target = sim0 + (now - t0)
            steps = 0
            while data.time < target and steps < 100:
                mj.mj_step(model, data)
                steps += 1
            if target - data.time > 0.1:
                t0 += target - data.time
                twin.slips += 1
            if now - rtf_t > 0.5:
                rtf = (data.time - rtf_sim) / (now - rtf_t)
                rtf_t, rtf_sim = now, data.time
            # state and cameras, published after the observation latency
            twin.frozen = observed.frozen
            observed.add_state(now, twin.snapshot(now, rtf))
            if now >= next_frame:
                observed.add_frames(now, twin.render())
                next_frame = max(next_frame + 1.0 / cfg.camera_fps, now)
            observed.publish(now, publish_state, lambda cam, img, t, idx: _publish_frame(shared, cam, img, t, idx))
            if not serve_requests(conn, handlers, "twin"):
                break  # the client process is gone
            time.sleep(0.0005)
    finally:
        twin.close()


# ------------------------------------------------------------------------------------ driver and cameras


class TwinDriver:
    """The controller's driver for the twin: reads the published state, writes joint targets.

    ``slots``: the layout of the state array (the kitchen robot's driver reads its own)."""

    n_joints = PANDA.n
    slots = STATE_SLOTS

    def __init__(self, state, cmd, timeout_s: float = 10.0):
        self.state, self.cmd, self.timeout_s = state, cmd, float(timeout_s)
        self._seq = 0

    def connect(self) -> None:
        """Wait for the twin's first published state."""
        deadline = time.monotonic() + self.timeout_s
        while read_slots(self.state, self.slots)["seq"][0] < 1:
            if time.monotonic() > deadline:
                raise RobotError("twin: no state published; is the twin process running?")
            time.sleep(0.01)
        self._last = read_slots(self.state, self.slots)

    def read(self) -> ArmState:
        """The twin's (possibly delayed) joint state, gripper and e-stop (the last one read while a client
        holds the state's lock: the controller never waits on another process)."""
        s = read_slots(self.state, self.slots, block=False) or self._last
        self._last = s
        estop = bool(s["estop"][0])
        return ArmState(q=s["q"], dq=s["dq"], gripper=float(s["gripper"][0]), t=float(s["t"][0]),
                        fault="twin hardware e-stop" if estop else None, estop=estop)

    def servo(self, q: np.ndarray, gripper: float, dt: float) -> None:
        """Publish a joint target (the twin applies it after the injected latency, or drops it)."""
        self._seq += 1
        cs = CMD_SLOTS.slices
        with self.cmd.get_lock():
            v = _view(self.cmd)
            v[cs["t_sent"]] = time.monotonic()
            v[cs["q"]] = q
            v[cs["gripper"]] = gripper
            v[cs["seq"]] = self._seq

    def estop(self) -> None:
        """Nothing to send: the twin's position actuators hold the last applied target."""

    def disconnect(self) -> None:
        """Nothing to release."""


class TwinCamera:
    """A twin camera: reads the newest published frame (shared memory) with its capture time and index."""

    def __init__(self, name: str, image_size: tuple[int, int]):
        self.name = name
        self.shape = (int(image_size[0]), int(image_size[1]), 3)
        self._buf = self._meta = None

    def attach(self, buf, meta) -> None:
        """Bind to the twin's shared frame buffer (done by :meth:`TwinRobot.connect`)."""
        self._buf, self._meta = buf, meta

    def connect(self) -> None:
        """Check it is attached."""
        if self._buf is None:
            raise RobotError(f"twin camera {self.name!r}: not attached to a running twin")

    def read(self) -> Frame:
        """The newest frame."""
        if self._buf is None:
            raise RobotError(f"twin camera {self.name!r}: not connected")
        with self._buf.get_lock():
            img = _view(self._buf, np.uint8).copy().reshape(self.shape)
            t, idx = _view(self._meta)
        return Frame(img, float(t), int(idx))

    def disconnect(self) -> None:
        """Detach."""
        self._buf = self._meta = None


# ------------------------------------------------------------------------------------ the robot


class TwinRobot(SimulatedRobot):
    """The digital twin as a :class:`~.base.Robot`: its own physics process plus the controller process.

    Args:
        twin: scene, cameras and injected faults.
        config: controller settings (rate, action mode, watchdog).
        safety: overrides of the default limits (:meth:`SafetyLimits.for_chain` keys); the
            twin's workspace box is the default box.
        instruction: the task string in observations (default: the twin task's instruction).
        fps: the rate actions are sent at.
        max_frame_age_s: older camera frames raise :class:`~.base.StaleFrameError`.
    """

    def __init__(self, twin: TwinConfig | None = None, config: ControllerConfig | None = None,
                 safety: dict | None = None, instruction: str | None = None, fps: float = 10.0,
                 max_frame_age_s: float = 1.0, connect_timeout_s: float = 60.0):
        self.twin = twin or TwinConfig()
        limits = SafetyLimits.for_chain(PANDA, {**WORKSPACE, **(safety or {})})
        cams = [TwinCamera(c, self.twin.image_size) for c in self.twin.cameras]
        super().__init__(DriverSpec("vlastack.real_robot.twin:TwinDriver"), PANDA, limits, config, cams,
                         instruction or self.twin.instruction, fps, max_frame_age_s, name="twin")
        self.connect_timeout_s = float(connect_timeout_s)

    def _sim_spec(self, ctx):
        """The twin process, its shared arrays and its driver."""
        return _twin_main, (self.twin,), TwinShared.create(ctx, self.twin), "vlastack.real_robot.twin:TwinDriver"

    @property
    def twin_info(self) -> dict:
        """What the twin process reported when it started (scene layout, meshes)."""
        return self.sim_info

    # -------------------------------------------------------------- twin-only

    def twin_request(self, name: str, *args: Any, timeout: float = 5.0) -> Any:
        """Ask the physics process: ``estop``, ``release_estop``, ``reset_scene`` (seed), ``set_drawer`` (m)."""
        return self.sim_request(name, *args, timeout=timeout)

    def task_state(self) -> dict[str, Any]:
        """Privileged scene state: drawer opening (m), success, handle position, real-time factor, fault counts."""
        self._require_sim()
        s = read_slots(self._shared.state, STATE_SLOTS)
        return {"drawer": float(s["drawer"][0]), "success": bool(s["success"][0]), "handle": s["handle"].copy(),
                "rtf": float(s["rtf"][0]), "dropped_commands": int(s["dropped"][0]),
                "applied_commands": int(s["applied"][0]), "frozen_frames": int(s["frozen"][0]),
                "slips": int(s["slips"][0]), "sim_time": float(s["sim_time"][0])}

    def task_success(self) -> bool:
        """Whether the drawer is open by ``success_open_m``."""
        return self.task_state()["success"]

    def twin_estop(self) -> None:
        """Press the twin's hardware e-stop (the driver reports it; the controller latches)."""
        self.twin_request("estop")

    def reset_scene(self, seed: int, timeout_s: float = 8.0) -> None:
        """Between episodes: drive the arm home through the controller, then close the drawer and re-place it."""
        st = self.state()
        if st.status in ("stopped", "estop"):
            raise RobotError(f"twin: cannot reset while {st.status}; clear it first")
        p, R = PANDA.fk(np.array(self.twin.q_home))
        home = np.r_[p, matrix_to_rotvec(R), 1.0].astype(np.float32)
        start = st.ee[:3]
        # a slow straight line up and back home, then wait until it is there
        lift = np.r_[start[:2], max(start[2], 0.25)]
        plan = [lift + (p - lift) * s for s in np.linspace(0, 1, 20)]
        t = time.monotonic()
        for k, x in enumerate([*np.linspace(start, lift, 8), *plan]):
            self.send_action(np.r_[x, home[3:]].astype(np.float32), t=t + 0.1 * (k + 1))
            time.sleep(0.1)
        deadline = time.monotonic() + timeout_s
        while np.linalg.norm(self.state().ee[:3] - p) > 0.01:
            if time.monotonic() > deadline:
                raise RobotError("twin: the arm did not get home for the scene reset")
            self.send_action(home)
            time.sleep(0.1)
        self.hold()
        self.twin_request("reset_scene", int(seed))


# ------------------------------------------------------------------------------------ scripted policy


class TwinScriptedPolicy:
    """Opens the twin's drawer: hook the closed fingers behind the handle bar, then pull.

    Closed loop: each chunk starts from the observed tool position and heads for the current
    waypoint at ``speed`` (m/s), one action per ``1 / fps`` s; a waypoint counts as reached when
    the observed tool is within ``tol``. It reads the handle position from the twin (privileged,
    like the kitchen's scripted experts). ``infer_delay_s`` + U(0, ``infer_jitter_s``) of sleep per
    call stand in for a network's inference time.
    """

    def __init__(self, robot: TwinRobot, horizon: int = 8, speed: float = 0.12, tol: float = 0.012,
                 infer_delay_s: float = 0.0, infer_jitter_s: float = 0.0, seed: int = 0):
        if robot.config.action_mode != "ee":
            raise ValueError("TwinScriptedPolicy sends ee actions; configure the twin with action_mode='ee'")
        self.robot, self.horizon, self.speed, self.tol = robot, int(horizon), float(speed), float(tol)
        self.infer_delay_s, self.infer_jitter_s = float(infer_delay_s), float(infer_jitter_s)
        self.dt = 1.0 / robot.fps
        p, R = PANDA.fk(np.array(robot.twin.q_home))
        self.rotvec = matrix_to_rotvec(R)
        self.rng = np.random.default_rng(seed)
        self.phase = 0

    def reset(self, seed: int | None = None) -> None:
        """Start from the first waypoint."""
        self.phase = 0
        if seed is not None:
            self.rng = np.random.default_rng(seed)

    def waypoints(self) -> list[np.ndarray]:
        """Above the gap behind the handle, down into it, then pulled back 16 cm."""
        h = self.robot.task_state()["handle"]  # bar centre (world)
        gap = np.array([h[0] + 0.0255, h[1], h[2]])  # between the bar and the drawer front
        return [gap + [0, 0, 0.10], gap - [0, 0, 0.012], gap - [0.16, 0, 0.012]]

    def sample_actions(self, obs: Observation, **sampling: Any) -> ActionChunk:
        """A chunk (1, H, 7) of absolute tool poses with the gripper closed."""
        if sampling:
            raise ValueError(f"the scripted twin policy takes no sampling options, got {sorted(sampling)}")
        delay = self.infer_delay_s + self.rng.uniform(0, self.infer_jitter_s)
        state = np.asarray(obs.state, float)
        state = state[0, -1] if state.ndim == 3 else state[0]
        p = state[PANDA.n + 1:PANDA.n + 4]  # observed tool position
        wps = self.waypoints()
        while self.phase < len(wps) - 1 and np.linalg.norm(p - wps[self.phase]) < self.tol:
            self.phase += 1
        target = wps[self.phase]
        step = self.speed * self.dt
        out = np.empty((1, self.horizon, 7), np.float32)
        x = p.copy()
        for j in range(self.horizon):
            d = target - x
            dist = float(np.linalg.norm(d))
            x = target.copy() if dist <= step else x + d * (step / dist)
            out[0, j] = np.r_[x, self.rotvec, 1.0]
        if delay > 0:
            time.sleep(delay)
        return ActionChunk(out)


def twin_config_dict(cfg: TwinConfig) -> dict[str, Any]:
    """JSON-ready form of a twin config."""
    d = asdict(cfg)
    d["cameras"], d["image_size"], d["q_home"] = list(cfg.cameras), list(cfg.image_size), list(cfg.q_home)
    return d
