"""Teleoperation through the safe controller, recording each demo straight into a Zarr trajectory store.

An :class:`InputDevice` turns a human's input into :class:`TeleopCommand` s: a twist (linear m/s,
angular rad/s, base frame), an optional gripper command and events (``done``, ``fail``,
``discard``, ``estop``, ``quit``). Two devices are provided, both behind that interface:

- :class:`KeyboardDevice` (``pynput``): keys held move the tool (w/s x, a/d y, r/f z; u/o, i/k,
  j/l rotate about x, y, z), space toggles the gripper, enter = done, backspace = discard,
  ``f1`` = fail, esc = e-stop, q = quit;
- :class:`SpaceMouseDevice` (``pyspacemouse``, a HID 6-DoF reader): the puck's six axes (with a
  dead zone) scaled to the twist, left button toggles the gripper, right button = done.

:class:`TeleopSession` integrates the twist into an absolute tool pose target (kept inside the
workspace box), sends it through ``robot.send_action`` — the same controller, safety layer and
watchdog as a policy — at the robot's ``fps``, and records every step's observation with the
action sent from it. When the demo ends it is appended to the store in one atomic
``append_episode`` with its instruction (``done`` -> success, ``fail`` -> stored as failed,
``discard`` / ``estop`` / ``quit`` -> not stored).
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import numpy as np

from vlastack.real_robot.base import RobotError
from vlastack.real_robot.kinematics import matrix_to_rotvec, rotvec_to_matrix
from vlastack.types import ACTION

EVENTS = ("done", "fail", "discard", "estop", "quit")


@dataclass
class TeleopCommand:
    """One read of an input device: twist (6,) = (vx, vy, vz, wx, wy, wz), gripper (-1/+1 or None), events."""

    twist: np.ndarray = field(default_factory=lambda: np.zeros(6))
    gripper: float | None = None
    events: frozenset = frozenset()


@runtime_checkable
class InputDevice(Protocol):
    """A teleoperation input: ``open()``, ``read() -> TeleopCommand`` (non-blocking), ``close()``."""

    def open(self) -> None:
        """Start listening."""

    def read(self) -> TeleopCommand:
        """The current command (held keys / puck deflection) and the events since the last read."""

    def close(self) -> None:
        """Stop listening."""


# ------------------------------------------------------------------------------------ keyboard

#: key -> (twist index, sign)
KEY_AXES = {"w": (0, 1), "s": (0, -1), "a": (1, 1), "d": (1, -1), "r": (2, 1), "f": (2, -1),
            "u": (3, 1), "o": (3, -1), "i": (4, 1), "k": (4, -1), "j": (5, 1), "l": (5, -1)}
KEY_EVENTS = {"enter": "done", "backspace": "discard", "f1": "fail", "esc": "estop", "q": "quit"}


class KeyboardDevice:
    """Keyboard teleop via ``pynput`` (see the module docstring for the key map)."""

    def __init__(self, linear_speed: float = 0.08, angular_speed: float = 0.4):
        self.linear_speed, self.angular_speed = float(linear_speed), float(angular_speed)
        self._held: set[str] = set()
        self._events: set[str] = set()
        self._gripper = -1.0
        self._toggled = False
        self._lock = threading.Lock()
        self._listener = None

    @staticmethod
    def _name(key: Any) -> str | None:
        char = getattr(key, "char", None)
        if char:
            return char.lower()
        name = getattr(key, "name", None)
        return name.lower() if name else None

    def on_press(self, key: Any) -> None:
        """pynput callback."""
        name = self._name(key)
        with self._lock:
            if name in KEY_AXES:
                self._held.add(name)
            elif name == "space":
                self._gripper = -self._gripper
                self._toggled = True
            elif name in KEY_EVENTS:
                self._events.add(KEY_EVENTS[name])

    def on_release(self, key: Any) -> None:
        """pynput callback."""
        with self._lock:
            self._held.discard(self._name(key))

    def open(self) -> None:
        """Start the pynput listener (needs a display or uinput access)."""
        try:
            from pynput import keyboard
        except Exception as e:  # noqa: BLE001 - pynput raises ImportError or its own errors without a display
            raise RobotError(f"keyboard teleop needs pynput with a display (pip install 'vlastack[teleop]'): {e}") from None
        self._listener = keyboard.Listener(on_press=self.on_press, on_release=self.on_release)
        self._listener.start()

    def read(self) -> TeleopCommand:
        """Twist from the held keys; gripper only when it was toggled since the last read."""
        with self._lock:
            twist = np.zeros(6)
            for name in self._held:
                i, sign = KEY_AXES[name]
                twist[i] += sign * (self.linear_speed if i < 3 else self.angular_speed)
            events, self._events = frozenset(self._events), set()
            gripper = self._gripper if self._toggled else None
            self._toggled = False
        return TeleopCommand(twist, gripper, events)

    def close(self) -> None:
        """Stop the listener."""
        if self._listener is not None:
            self._listener.stop()
            self._listener = None


# ------------------------------------------------------------------------------------ SpaceMouse


class SpaceMouseDevice:
    """3Dconnexion SpaceMouse via ``pyspacemouse`` (HID): six axes in [-1, 1] -> twist.

    Args:
        linear_speed, angular_speed: twist at full deflection (m/s, rad/s).
        deadzone: deflections below this are zero.
        axes: puck axis name -> (twist index, sign); the default maps the puck's x/y/z to the
            tool's x/y/z and roll/pitch/yaw to rotations about x/y/z.
        device: pyspacemouse device name (None: the first one found).
    """

    DEFAULT_AXES = {"y": (0, 1), "x": (1, -1), "z": (2, 1), "roll": (3, 1), "pitch": (4, 1), "yaw": (5, -1)}

    def __init__(self, linear_speed: float = 0.1, angular_speed: float = 0.5, deadzone: float = 0.1,
                 axes: dict[str, tuple[int, int]] | None = None, device: str | None = None):
        self.linear_speed, self.angular_speed, self.deadzone = float(linear_speed), float(angular_speed), float(deadzone)
        self.axes = dict(axes or self.DEFAULT_AXES)
        self.device = device
        self._gripper = -1.0
        self._buttons = (0, 0)
        self._sm = None

    def open(self) -> None:
        """Open the HID device."""
        try:
            import pyspacemouse
        except Exception as e:  # noqa: BLE001
            raise RobotError(f"SpaceMouse teleop needs pyspacemouse (pip install 'vlastack[teleop]'): {e}") from None
        if not pyspacemouse.open(device=self.device):
            raise RobotError("SpaceMouse: no device found (check the USB connection and hidraw permissions)")
        self._sm = pyspacemouse

    def read(self) -> TeleopCommand:
        """Twist from the puck; left button toggles the gripper, right button is ``done`` (on press)."""
        if self._sm is None:
            raise RobotError("SpaceMouse: not open")
        s = self._sm.read()
        twist = np.zeros(6)
        for axis, (i, sign) in self.axes.items():
            v = float(getattr(s, axis))
            if abs(v) < self.deadzone:
                continue
            v = np.sign(v) * (abs(v) - self.deadzone) / (1 - self.deadzone)  # rescaled past the dead zone
            twist[i] += sign * v * (self.linear_speed if i < 3 else self.angular_speed)
        buttons = tuple(int(b) for b in (list(s.buttons) + [0, 0])[:2])
        pressed = [b and not p for b, p in zip(buttons, self._buttons)]
        self._buttons = buttons
        gripper = None
        if pressed[0]:
            self._gripper = -self._gripper
            gripper = self._gripper
        return TeleopCommand(twist, gripper, frozenset({"done"} if pressed[1] else ()))

    def close(self) -> None:
        """Close the HID device."""
        if self._sm is not None:
            self._sm.close()
            self._sm = None


# ------------------------------------------------------------------------------------ recording


@dataclass
class DemoResult:
    """What one teleop demo did: how it ended, its length, the store index (None: not stored)."""

    outcome: str
    steps: int
    episode_index: int | None
    frames: dict[str, np.ndarray] | None = None


class TeleopSession:
    """Teleoperate ``robot`` with ``device`` and record demos into ``store`` (see the module docstring).

    The robot must be connected and in ``ee`` or ``joint`` action mode (joint mode solves IK
    here, with the robot's chain). ``store`` is a writable :class:`~vlastack.datasets.store.TrajectoryStore`
    whose spec matches ``robot.spec`` (create it with ``TrajectoryStore.create(path, robot.spec)``).
    """

    def __init__(self, robot: Any, device: InputDevice, store: Any, instruction: str, max_steps: int = 2000,
                 source: str = "teleop"):
        if not instruction or not instruction.strip():
            raise ValueError("teleop: every demo needs its instruction (task=...)")
        if robot.chain is None:
            raise ValueError("teleop: the robot needs a kinematic chain (tool-pose teleoperation)")
        want = robot.spec
        have = store.spec
        if set(want.features) != set(have.features) or any(
                want.features[k].shape != have.features[k].shape for k in want.features):
            raise ValueError(f"teleop: the store's features {sorted(have.features)} do not match the robot's "
                             f"{sorted(want.features)}; create the store with robot.spec")
        self.robot, self.device, self.store = robot, device, store
        self.instruction, self.max_steps, self.source = instruction, int(max_steps), source
        self.keys = [k for k in want.features if k != ACTION]

    def _action(self, p: np.ndarray, R: np.ndarray, g: float, q_seed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self.robot.config.action_mode == "ee":
            return np.r_[p, matrix_to_rotvec(R), g].astype(np.float32), q_seed
        q, _ = self.robot.chain.ik(p, R, q_seed)
        return np.r_[q, g].astype(np.float32), q

    def record(self, keep_frames: bool = False) -> DemoResult:
        """Run one demo until an event ends it (or ``max_steps``); store it unless discarded."""
        robot, chain = self.robot, self.robot.chain
        dt = 1.0 / robot.fps
        st = robot.state()
        if st.status in ("stopped", "estop"):
            raise RobotError(f"teleop: the controller is {st.status}; reset it before recording")
        p, R = chain.fk(st.q_cmd)
        q_seed, g = st.q_cmd.copy(), float(np.sign(st.g_cmd) or -1.0)
        box = robot.limits.box
        frames: dict[str, list] = {k: [] for k in [*self.keys, ACTION]}
        outcome, steps = "max_steps", 0
        next_t = time.monotonic()
        while steps < self.max_steps:
            obs = robot.get_observation()
            cmd = self.device.read()
            if "estop" in cmd.events:
                robot.estop()
                outcome = "estop"
                break
            ended = [e for e in ("discard", "quit", "fail", "done") if e in cmd.events]
            if ended:
                outcome = ended[0]
                break
            tw = np.asarray(cmd.twist, float)
            p = p + tw[:3] * dt
            if box is not None:
                p = np.clip(p, box[0], box[1])
            R = rotvec_to_matrix(tw[3:] * dt) @ R
            if cmd.gripper is not None:
                g = float(np.clip(cmd.gripper, -1, 1))
            action, q_seed = self._action(p, R, g, q_seed)
            robot.send_action(action, t=time.monotonic() + dt)
            for k in self.keys:
                frames[k].append(np.asarray(obs[k]))
            frames[ACTION].append(action)
            steps += 1
            next_t += dt
            time.sleep(max(0.0, next_t - time.monotonic()))
        if outcome != "estop":
            robot.hold()
        index = None
        arrays = {k: np.stack(v) for k, v in frames.items()} if steps else None
        if steps and outcome in ("done", "fail", "max_steps"):
            index = self.store.append_episode(arrays, task=self.instruction, success=outcome == "done",
                                              source=self.source,
                                              meta={"outcome": outcome, "fps": robot.fps, "robot": robot.name,
                                                    "device": type(self.device).__name__})
        return DemoResult(outcome, steps, index, arrays if keep_frames else None)


__all__ = ["DemoResult", "EVENTS", "InputDevice", "KeyboardDevice", "SpaceMouseDevice", "TeleopCommand", "TeleopSession"]
