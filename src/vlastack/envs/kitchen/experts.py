"""Scripted experts: waypoint phases tracked by a P-controller on the end-effector pose.

An expert reads privileged simulator state (fixture joints and sites, object poses) through
the env's ``scene`` and emits the same 7-D actions a policy would. Its plan is a list of
:class:`Phase` objects, each with a target pose (a function of the scene, re-evaluated every
step so it follows moving doors and objects), a gripper command and an exit test.

Usage::

    env = make_kitchen_env("OpenDrawer", seed=0)
    expert = make_expert(env)
    obs, info = env.reset(seed=0)
    expert.reset()
    while True:
        obs, r, terminated, truncated, info = env.step(expert.act(env))
        if terminated or truncated:
            break
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from .fixtures import rot_z

POS_SCALE = 0.05  # metres per unit action (OSC output_max)
ROT_SCALE = 0.5  # radians per unit action
OPEN, CLOSE = -1.0, 1.0

# grip-site orientations (columns: site x = finger closing axis, site y, site z = finger direction)
R_DOWN = np.array([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, -1.0]])  # fingers down, closing along y
R_FWD_H = np.array([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])  # fingers +x, closing along y
R_FWD_V = np.array([[0.0, 0.0, 1.0], [0.0, -1.0, 0.0], [1.0, 0.0, 0.0]])  # fingers +x, closing along z


def rotvec(mat: np.ndarray) -> np.ndarray:
    """Axis-angle vector of a rotation matrix."""
    import mujoco

    q = np.zeros(4)
    mujoco.mju_mat2Quat(q, np.ascontiguousarray(mat, dtype=np.float64).reshape(9))
    v = np.zeros(3)
    mujoco.mju_quat2Vel(v, q, 1.0)
    return v


def yawed(base: np.ndarray, yaw: float) -> np.ndarray:
    """``base`` orientation turned about world z by ``yaw`` radians."""
    return rot_z(yaw) @ base


def down_yaw_for(obj_yaw: float, current_yaw: float = 0.0) -> float:
    """Gripper yaw (relative to :data:`R_DOWN`) that closes the fingers across an elongated
    object's local y axis, choosing the symmetric solution nearest ``current_yaw``."""
    # R_DOWN closes along world y; an object at yaw 0 has its thin axis along world y too
    cands = obj_yaw + np.pi * np.arange(-2, 3)
    return float(cands[np.argmin(np.abs(cands - current_yaw))])


def pose_action(scene, pos, mat, gripper: float, speed: float = 1.0, rot_speed: float = 1.0) -> np.ndarray:
    """A 7-D action moving the grip site toward (``pos``, ``mat``): P-control, clipped."""
    dp = (np.asarray(pos) - scene.eef_pos) / POS_SCALE
    n = np.max(np.abs(dp))
    if n > speed:
        dp *= speed / n
    dr = rotvec(np.asarray(mat) @ scene.eef_mat.T) / ROT_SCALE
    n = np.max(np.abs(dr))
    if n > rot_speed:
        dr *= rot_speed / n
    return np.concatenate([dp, dr, [gripper]])


Target = Callable[[object], tuple]


@dataclass
class Phase:
    """One step of a plan: drive toward ``target(scene) -> (pos, mat)`` with a gripper command.

    The phase ends when the pose is within ``tol`` metres and ``rot_tol`` radians (after at
    least ``min_steps``), when ``until(scene)`` holds, or after ``max_steps``.
    """

    name: str
    target: Target
    gripper: float
    tol: float = 0.01
    rot_tol: float = 0.08
    min_steps: int = 0
    max_steps: int = 60
    speed: float = 1.0
    rot_speed: float = 1.0
    until: Callable[[object], bool] | None = None
    wait_pose: bool = True  # False: only ``until`` / the step counts end the phase

    def finished(self, scene, steps: int) -> bool:
        """Whether to move on to the next phase."""
        if steps >= self.max_steps:
            return True
        if steps < self.min_steps:
            return False
        if self.until is not None and self.until(scene):
            return True
        if not self.wait_pose:
            return False
        pos, mat = self.target(scene)
        return (np.linalg.norm(np.asarray(pos) - scene.eef_pos) < self.tol
                and np.linalg.norm(rotvec(np.asarray(mat) @ scene.eef_mat.T)) < self.rot_tol)


def hold(name: str, gripper: float, steps: int) -> Phase:
    """Stay where the grip site is when the phase starts, commanding the gripper for ``steps``."""
    memo: dict = {}

    def target(scene):
        if "pose" not in memo:
            memo["pose"] = (scene.eef_pos, scene.eef_mat)
        return memo["pose"]

    return Phase(name, target, gripper, min_steps=steps, max_steps=steps, wait_pose=False)


def approach(name: str, target: Target, gripper: float, clear_z: float, tol: float = 0.015) -> list[Phase]:
    """Rise to ``clear_z`` where the grip site is, then travel level to above ``target``'s xy.

    Keeps the hand above fixtures (door tops, counter appliances) while it changes places.
    """
    memo: dict = {}

    def rise(scene):
        pos, mat = target(scene)
        if "xy" not in memo:
            memo["xy"] = scene.eef_pos[:2].copy()
        return np.array([*memo["xy"], max(clear_z, memo.get("z0", scene.eef_pos[2]))]), mat

    def level(scene):
        pos, mat = target(scene)
        return np.array([pos[0], pos[1], max(clear_z, pos[2])]), mat

    return [Phase(name + "_rise", rise, gripper, tol=0.03, max_steps=40),
            Phase(name + "_over", level, gripper, tol=tol, max_steps=80)]


def fixed(pos, mat) -> Target:
    """A constant target."""
    pos, mat = np.asarray(pos, float), np.asarray(mat, float)
    return lambda scene: (pos, mat)


class ScriptedExpert:
    """Runs a task's plan (a list of phases) step by step; idles when the plan is done.

    ``act`` takes the env (or, for an expert made with ``env``, an observation, which it
    ignores in favour of the privileged state of its bound env).
    """

    def __init__(self, plan_fn: Callable[[object], list[Phase]], env=None):
        self.plan_fn = plan_fn
        self.env = env
        self.reset()

    def reset(self) -> None:
        """Forget the current plan; the next ``act`` plans for the env's current episode."""
        self.phases: list[Phase] | None = None
        self.index = 0
        self.steps = 0
        self._episode = None

    @property
    def phase(self) -> str:
        """Name of the running phase (``"done"`` after the last)."""
        if self.phases is None:
            return "unplanned"
        return self.phases[self.index].name if self.index < len(self.phases) else "done"

    def _resolve(self, env_or_obs):
        env = env_or_obs if env_or_obs is not None else self.env
        if isinstance(env, dict):
            env = self.env
        if env is None or not hasattr(getattr(env, "unwrapped", env), "scene"):
            raise TypeError("the kitchen expert reads privileged simulator state: pass the KitchenEnv to act(), "
                            "or make the expert with make_expert(env) and pass observations")
        return env.unwrapped

    def act(self, env_or_obs=None) -> np.ndarray:
        """The next 7-D action (float32)."""
        env = self._resolve(env_or_obs)
        scene = env.scene
        key = (id(env), env.episode_seed, env._steps == 0)
        if self.phases is None or (env._steps == 0 and self._episode != key):
            self.phases = self.plan_fn(scene)
            self.index, self.steps = 0, 0
        self._episode = key
        while self.index < len(self.phases) and self.phases[self.index].finished(scene, self.steps):
            self.index += 1
            self.steps = 0
        if self.index >= len(self.phases):
            last = self.phases[-1] if self.phases else None
            g = last.gripper if last is not None else OPEN
            return np.array([0, 0, 0, 0, 0, 0, g], dtype=np.float32)
        ph = self.phases[self.index]
        pos, mat = ph.target(scene)
        self.steps += 1
        return pose_action(scene, pos, mat, ph.gripper, speed=ph.speed, rot_speed=ph.rot_speed).astype(np.float32)


# ============================================================================ plans
HOOK_DEPTH = 0.006  # the grip site goes this far below a handle bar's centre to hook it


def plan_open_drawer(scene) -> list[Phase]:
    """Hook the bar handle from above with closed fingers, pull straight back, lift off."""
    fx = scene.main_fixture
    travel = fx.joint_range("slide")[1]
    start = fx.site("hook")

    def hook(s, dz):
        return s.main_fixture.site("hook") + np.array([0.0, 0.0, dz])

    return [
        Phase("above", lambda s: (hook(s, 0.08), R_DOWN), CLOSE, tol=0.015, max_steps=80),
        Phase("descend", lambda s: (hook(s, -HOOK_DEPTH), R_DOWN), CLOSE, tol=0.006, max_steps=40, speed=0.4),
        Phase("pull", fixed(start + [-(travel + 0.03), 0, -HOOK_DEPTH], R_DOWN), CLOSE, speed=0.35, max_steps=80,
              until=lambda s: s.main_fixture.opening > 0.97),
        Phase("lift", lambda s: (hook(s, 0.1), R_DOWN), CLOSE, tol=0.02, max_steps=30),
    ]


def plan_close_drawer(scene) -> list[Phase]:
    """Put the closed fingertips behind the bar handle, against the drawer front, and push it in."""
    fx = scene.main_fixture
    closed = fx.site("hook") + np.array([fx.qpos("slide"), 0.0, 0.0])

    def hook(s, dz):
        return s.main_fixture.site("hook") + np.array([0.0, 0.0, dz])

    return [
        Phase("above", lambda s: (hook(s, 0.08), R_DOWN), CLOSE, tol=0.015, max_steps=80),
        Phase("descend", lambda s: (hook(s, -HOOK_DEPTH), R_DOWN), CLOSE, tol=0.006, max_steps=40, speed=0.4),
        Phase("push", fixed(closed + [0.03, 0, -HOOK_DEPTH], R_DOWN), CLOSE, speed=0.35, max_steps=80,
              until=lambda s: s.main_fixture.qpos("slide") < 0.003),
        Phase("lift", lambda s: (hook(s, 0.1), R_DOWN), CLOSE, tol=0.02, max_steps=30),
    ]


def _door_site_local(fx, door, site: str) -> np.ndarray:
    suffix = door.handle[len("handle"):]  # "" or "_left" / "_right"
    return fx.site_local(site + suffix)


def door_open_phases(scene, door, goal: float = 1.55) -> list[Phase]:
    """Hook a door's bar handle from above and walk it along its arc to ``goal`` radians.

    The hand turns with the door so the fingers' thin side stays across the gap behind the bar.
    """
    fx = scene.main_fixture
    hook_local = _door_site_local(fx, door, "hook") + np.array([0.0, 0.0, -HOOK_DEPTH])

    def at(angle, dz=0.0):
        return fx.door_point(door, angle, hook_local) + np.array([0.0, 0.0, dz]), yawed(R_DOWN, door.axis_sign * angle)

    def swing(s):
        return at(min(fx.qpos(door.joint) + 0.3, goal + 0.1))

    top = fx.pos[2] + fx.footprint[2]
    return [
        *approach("above_" + door.joint, lambda s: at(fx.qpos(door.joint), 0.06), CLOSE, top + 0.06),
        Phase("hook_" + door.joint, lambda s: at(fx.qpos(door.joint)), CLOSE, tol=0.006, max_steps=40, speed=0.4),
        Phase("swing_" + door.joint, swing, CLOSE, speed=0.4, max_steps=120, wait_pose=False,
              until=lambda s: fx.qpos(door.joint) > goal),
        Phase("lift_" + door.joint, lambda s: at(fx.qpos(door.joint), 0.1), CLOSE, tol=0.02, max_steps=30),
    ]


def door_close_phases(scene, door) -> list[Phase]:
    """Put the closed fingertips against the outside of a door's handle bar and push it shut."""
    fx = scene.main_fixture
    bar = _door_site_local(fx, door, "handle")
    push_local = bar + np.array([-0.022, 0.0, 0.0])  # outside the bar (radius 0.008) and the pads

    def at(angle, dz=0.0):
        return fx.door_point(door, angle, push_local) + np.array([0.0, 0.0, dz]), yawed(R_DOWN, door.axis_sign * angle)

    def push(s):
        return at(max(fx.qpos(door.joint) - 0.3, -0.15))

    top = fx.pos[2] + fx.footprint[2]
    return [
        *approach("above_" + door.joint, lambda s: at(fx.qpos(door.joint), 0.06), CLOSE, top + 0.07),
        Phase("lower_" + door.joint, lambda s: at(fx.qpos(door.joint)), CLOSE, tol=0.006, max_steps=40, speed=0.4),
        Phase("push_" + door.joint, push, CLOSE, speed=0.4, max_steps=120, wait_pose=False,
              until=lambda s: fx.qpos(door.joint) < 0.02),
        Phase("lift_" + door.joint, lambda s: (s.eef_pos + [0.0, 0.0, 0.05], s.eef_mat), CLOSE, min_steps=6,
              max_steps=6, wait_pose=False),
    ]


def plan_open_doors(scene) -> list[Phase]:
    """Open each door of the main fixture in turn."""
    return [ph for door in scene.main_fixture.doors[::-1] for ph in door_open_phases(scene, door)]


def plan_close_doors(scene) -> list[Phase]:
    """Close each door of the main fixture in turn."""
    return [ph for door in scene.main_fixture.doors for ph in door_close_phases(scene, door)]


def plan_knob(scene) -> list[Phase]:
    """Grasp the burner's knob fin from above, twist it to on (1.3 rad) or off (against its stop)."""
    stove = scene.main_fixture
    joint = "knob_" + scene.episode_meta["burner_id"]
    turn_on = scene.task.turn_on
    goal = 1.3 if turn_on else -0.2
    start = stove.qpos(joint)  # the fin's thin side turns with the knob; so does the grasp yaw
    top = stove.pos[2] + stove.top_height

    def knob(dz=0.0):
        return stove.site(joint) + np.array([0.0, 0.0, dz])

    done = (lambda s: stove.qpos(joint) > 1.2) if turn_on else (lambda s: stove.qpos(joint) < 0.03)
    return [
        *approach("above", lambda s: (knob(0.08), yawed(R_DOWN, start)), OPEN, top + 0.12),
        Phase("descend", lambda s: (knob(), yawed(R_DOWN, start)), OPEN, tol=0.005, max_steps=40, speed=0.4),
        hold("grasp", CLOSE, 8),
        Phase("twist", lambda s: (knob(), yawed(R_DOWN, goal)), CLOSE, max_steps=40, rot_speed=0.35,
              wait_pose=False, until=done),
        hold("release", OPEN, 6),
        Phase("lift", lambda s: (knob(0.1), s.eef_mat), OPEN, tol=0.02, max_steps=30),
    ]


def arc_push_phases(scene, body: str, joint: str, radius: float, height: float, goal: float,
                    clear_z: float, contact: float = 0.028) -> list[Phase]:
    """Push a lever that swings about a vertical axis (its arm points -x at angle 0) from
    its side until its joint passes ``goal``: closed fingers beside the arm at ``radius``,
    thin side forward, following the arc."""
    fx = scene.main_fixture
    start = fx.qpos(joint)
    sign = 1.0 if goal > start else -1.0
    # the closed fingers look the same turned by pi: take the yaw branch that keeps the middle of
    # the sweep near the neutral yaw, so the last arm joint stays inside its limits
    branch = np.pi * np.round((np.pi / 2 - (start + goal) / 2) / np.pi)

    def pusher(angle, dz=0.0):
        pivot = fx.body_xpos(body)
        arm = rot_z(angle) @ np.array([-1.0, 0.0, 0.0])
        tangent = rot_z(angle) @ np.array([0.0, -1.0, 0.0])  # direction the arm moves as the angle grows
        p = pivot + radius * arm - sign * contact * tangent
        return np.array([p[0], p[1], pivot[2] + height + dz]), yawed(R_DOWN, angle - np.pi / 2 + branch)

    def push(s):
        return pusher(fx.qpos(joint) + sign * 0.35)

    passed = (lambda s: fx.qpos(joint) > goal) if sign > 0 else (lambda s: fx.qpos(joint) < goal)
    return [
        *approach("above", lambda s: pusher(fx.qpos(joint), 0.06), CLOSE, clear_z),
        Phase("lower", lambda s: pusher(fx.qpos(joint)), CLOSE, tol=0.006, max_steps=40, speed=0.4),
        Phase("push", push, CLOSE, speed=0.35, max_steps=80, wait_pose=False, until=passed),
        Phase("lift", lambda s: (s.eef_pos + [0.0, 0.0, 0.06], s.eef_mat), CLOSE, min_steps=5, max_steps=5,
              wait_pose=False),
    ]


def plan_faucet(scene) -> list[Phase]:
    """Push the faucet lever's tip sideways: on to 0.9 rad, off against its stop."""
    sink = scene.main_fixture
    goal = 0.9 if scene.task.turn_on else 0.02
    # travel above the spout's arm (0.15 m above its pivot), which the hand would otherwise sweep along
    return arc_push_phases(scene, "lever", "handle", 0.09, 0.014, goal,
                           clear_z=sink.body_xpos("spout")[2] + 0.2)


def plan_spout(scene) -> list[Phase]:
    """Push the spout's arm sideways past 0.8 rad toward the instructed side."""
    goal = 0.8 if scene.episode_meta["side"] == "right" else -0.8
    return arc_push_phases(scene, "spout", "spout", 0.14, 0.15, goal,
                           clear_z=scene.main_fixture.body_xpos("spout")[2] + 0.23)


def plan_coffee_button(scene) -> list[Phase]:
    """Press the button on top of the coffee machine with the closed fingertips."""
    cm = scene.main_fixture

    def button(dz=0.0):
        return cm.site("button") + np.array([0.0, 0.0, dz]), R_DOWN

    return [
        *approach("above", lambda s: button(0.05), CLOSE, cm.site("button")[2] + 0.05),
        Phase("press", lambda s: button(-0.016), CLOSE, speed=0.3, max_steps=80, wait_pose=False,
              until=lambda s: cm.on and cm.qpos("button") > cm.press_depth + 0.001),
        Phase("lift", lambda s: button(0.06), CLOSE, tol=0.02, max_steps=20),
    ]


def plan_microwave_button(scene) -> list[Phase]:
    """Press the start (or stop) button on the microwave's front panel, moving +x."""
    mw = scene.main_fixture
    site = "start_button" if scene.task.turn_on else "stop_button"
    goal = scene.task.turn_on

    def front(dx):
        return mw.site(site) + np.array([dx, 0.0, 0.0]), R_DOWN

    top = mw.pos[2] + mw.footprint[2]
    return [
        *approach("above", lambda s: front(-0.045), CLOSE, top + 0.08),
        Phase("lower", lambda s: front(-0.045), CLOSE, tol=0.006, max_steps=40, speed=0.5),
        Phase("press", lambda s: front(0.016), CLOSE, speed=0.3, max_steps=40, wait_pose=False,
              until=lambda s: mw.on == goal),
        Phase("back", lambda s: front(-0.06), CLOSE, tol=0.015, max_steps=20),
    ]


def grasp_offset(obj) -> float:
    """Height of the grip site above an object's bottom for a top-down grasp: mid-height for
    short objects, near the top for tall ones (the hand must stay above the object)."""
    h = obj.height
    return float(max(0.015, min(h / 2, 0.06), h - 0.025))


def grasp_rot(obj) -> np.ndarray:
    """Grip-site orientation for grasping ``obj`` from above: fingers down, closing across the
    object's thin side."""
    return yawed(R_DOWN, grasp_yaw(obj))


def grasp_yaw(obj) -> float:
    """Top-down grasp yaw: across the object's local y axis (its thin side; a mug's handle
    stays out of the fingers), on the branch in [-pi/2, pi/2)."""
    if obj.category.round and obj.category.name != "mug":
        return 0.0
    return float((obj.yaw + np.pi / 2) % np.pi - np.pi / 2)


def pick_phases(scene, region, obj, carry: float) -> list[Phase]:
    """Grasp ``obj`` in ``region`` (from above, or through the front of an enclosed one) and
    bring it up to ``carry`` (a world height for the grip site)."""
    off, rot = grasp_offset(obj), grasp_rot(obj)

    def at_obj(dz):
        return lambda s: (np.array([*obj.pos[:2], obj.bottom_z + off + dz]), rot)

    if not region.enclosed:
        return [
            *approach("reach", at_obj(0.1), OPEN, carry),
            Phase("descend", at_obj(0.0), OPEN, tol=0.005, max_steps=50, speed=0.4),
            hold("grasp", CLOSE, 10),
            Phase("lift", lambda s: (np.array([*s.eef_pos[:2], carry]), rot), CLOSE, tol=0.02, max_steps=50),
        ]
    front = region.front_x(scene)
    y = obj.pos[1]
    z_in = obj.bottom_z + off + 0.025
    return [
        *approach("reach", fixed((front - 0.1, y, z_in), rot), OPEN, z_in + 0.1),
        Phase("lower", fixed((front - 0.1, y, z_in), rot), OPEN, tol=0.01, max_steps=40, speed=0.5),
        Phase("enter", at_obj(0.025), OPEN, tol=0.008, max_steps=50, speed=0.4),
        Phase("descend", at_obj(0.0), OPEN, tol=0.005, max_steps=30, speed=0.3),
        hold("grasp", CLOSE, 10),
        Phase("raise", lambda s: (np.array([*s.eef_pos[:2], z_in]), rot), CLOSE, tol=0.01, max_steps=20),
        Phase("exit", fixed((front - 0.12, y, z_in), rot), CLOSE, tol=0.015, max_steps=50, speed=0.5),
        Phase("up", fixed((front - 0.12, y, carry), rot), CLOSE, tol=0.02, max_steps=40),
    ]


def place_phases(scene, region, obj, carry: float) -> list[Phase]:
    """Carry the held ``obj`` to ``region``'s drop point, set it down, let go and back off."""
    off, rot = grasp_offset(obj), grasp_rot(obj)
    drop = region.drop(scene)
    z_set = region.surface(scene) + off + 0.01
    if not region.enclosed:
        return [
            Phase("carry", fixed((*drop, carry), rot), CLOSE, tol=0.015, max_steps=80),
            Phase("set", fixed((*drop, z_set), rot), CLOSE, tol=0.006, max_steps=50, speed=0.35),
            hold("release", OPEN, 8),
            Phase("retreat", fixed((*drop, z_set + 0.12), rot), OPEN, tol=0.02, max_steps=30),
        ]
    front = region.front_x(scene)
    z_in = z_set + 0.02
    return [
        Phase("carry", fixed((front - 0.1, drop[1], max(carry, z_in)), rot), CLOSE, tol=0.015, max_steps=80),
        Phase("lower", fixed((front - 0.1, drop[1], z_in), rot), CLOSE, tol=0.01, max_steps=40, speed=0.5),
        Phase("enter", fixed((*drop, z_in), rot), CLOSE, tol=0.008, max_steps=50, speed=0.4),
        Phase("set", fixed((*drop, z_set), rot), CLOSE, tol=0.006, max_steps=30, speed=0.3),
        hold("release", OPEN, 8),
        Phase("exit", fixed((front - 0.12, drop[1], z_in), rot), OPEN, tol=0.015, max_steps=50, speed=0.5),
        Phase("up", fixed((front - 0.12, drop[1], z_in + 0.1), rot), OPEN, tol=0.02, max_steps=30),
    ]


def plan_pnp(scene) -> list[Phase]:
    """Pick the episode's object from the task's source region and place it in its target."""
    task, obj = scene.task, scene.active_object
    surfaces = [task.source.surface(scene), task.target.surface(scene)]
    rims = [scene.main_fixture.pos[2] + scene.main_fixture.footprint[2]] if not any(
        r.enclosed for r in (task.source, task.target)) else []
    carry = max(surfaces + rims) + grasp_offset(obj) + 0.12
    return pick_phases(scene, task.source, obj, carry) + place_phases(scene, task.target, obj, carry)


PLANS: dict[str, Callable[[object], list[Phase]]] = {
    "PnPCounterToCab": plan_pnp,
    "PnPCabToCounter": plan_pnp,
    "PnPCounterToSink": plan_pnp,
    "PnPSinkToCounter": plan_pnp,
    "PnPCounterToMicrowave": plan_pnp,
    "PnPMicrowaveToCounter": plan_pnp,
    "PnPCounterToStove": plan_pnp,
    "PnPStoveToCounter": plan_pnp,
    "CoffeeSetupMug": plan_pnp,
    "CoffeeServeMug": plan_pnp,
    "TurnOnStove": plan_knob,
    "TurnOffStove": plan_knob,
    "TurnOnSinkFaucet": plan_faucet,
    "TurnOffSinkFaucet": plan_faucet,
    "TurnSinkSpout": plan_spout,
    "CoffeePressButton": plan_coffee_button,
    "TurnOnMicrowave": plan_microwave_button,
    "TurnOffMicrowave": plan_microwave_button,
    "OpenSingleDoor": plan_open_doors,
    "CloseSingleDoor": plan_close_doors,
    "OpenDoubleDoor": plan_open_doors,
    "CloseDoubleDoor": plan_close_doors,
    "OpenDrawer": plan_open_drawer,
    "CloseDrawer": plan_close_drawer,
}


def make_expert(env) -> ScriptedExpert:
    """The scripted expert for ``env``'s task, bound to ``env``."""
    name = env.unwrapped.task_name
    if name not in PLANS:
        raise ValueError(f"no scripted expert for task {name!r}; experts exist for: {', '.join(sorted(PLANS))}")
    return ScriptedExpert(PLANS[name], env)


def run_expert_episode(env, expert, seed: int) -> tuple[bool, int]:
    """Reset ``env`` with ``seed`` and run ``expert`` until the episode ends; returns (success, steps)."""
    env.reset(seed=seed)
    expert.reset()
    info, n = {"success": False}, 0
    for n in range(1, env.horizon + 1):
        _, _, terminated, truncated, info = env.step(expert.act(env))
        if terminated or truncated:
            break
    return bool(info["success"]), n
