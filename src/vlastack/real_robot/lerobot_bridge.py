"""A bridge to any LeRobot robot (SO-100/101, Koch, ...) when ``lerobot`` is installed.

The LeRobot robot is built from its registered config type (``robot_type`` as in
``lerobot-record --robot.type=...``) inside the controller process, connected there, and driven
like any arm: its motors' ``<name>.pos`` features are the joints (in the units the robot reports:
degrees or LeRobot's normalised range, so the safety limits must be given in those units) and
an optional gripper motor is mapped to -1 open .. +1 closed. Cameras are not read through the
controller (too slow at servo rates): configure the LeRobot robot without cameras and attach
them client-side (:mod:`.cameras`). LeRobot robots have no kinematic chain here, so the bridge
runs in ``joint`` action mode without a workspace box.
"""

from __future__ import annotations

import importlib
import importlib.util
import time
from typing import Any, Mapping, Sequence

import numpy as np

from vlastack.real_robot.controller import ArmState

INSTALL_HINT = "the LeRobot bridge needs lerobot installed in this environment (pip install lerobot)"


def lerobot_available() -> bool:
    """Whether ``lerobot`` can be imported here."""
    return importlib.util.find_spec("lerobot") is not None


def _build_robot(robot_type: str, robot_kwargs: Mapping[str, Any]):
    try:
        from lerobot.robots import RobotConfig, make_robot_from_config
    except ImportError as e:
        raise ImportError(f"{INSTALL_HINT} ({e})") from None
    import pkgutil

    import lerobot.robots as robots_pkg

    for mod in pkgutil.iter_modules(getattr(robots_pkg, "__path__", [])):  # registers each robot's config type
        try:
            importlib.import_module(f"{robots_pkg.__name__}.{mod.name}")
        except Exception:  # noqa: BLE001 - a robot whose own SDK is missing cannot be chosen anyway
            pass
    try:
        cfg_cls = RobotConfig.get_choice_class(robot_type)
    except Exception as e:  # noqa: BLE001 - draccus' registry raises its own types
        raise ValueError(f"lerobot: unknown robot type {robot_type!r} ({e})") from None
    return make_robot_from_config(cfg_cls(**dict(robot_kwargs)))


class LeRobotDriver:
    """Drives a LeRobot robot's motors from the controller process (see the module docstring).

    Args:
        robot_type: the LeRobot config type name, e.g. ``so101_follower``.
        robot_kwargs: that config's fields (``port``, ``id``, ...; no cameras).
        joints: the motor names used as joints, in order (default: every ``.pos`` motor but the gripper).
        gripper: the gripper motor's name, or None.
        gripper_open, gripper_closed: the gripper motor's positions for -1 and +1.
        calibrate: passed to ``robot.connect(calibrate=...)``.
    """

    concurrent_io = False  # one motor bus: the controller never reads and writes it at once

    def __init__(self, robot_type: str, robot_kwargs: Mapping[str, Any] | None = None,
                 joints: Sequence[str] | None = None, gripper: str | None = "gripper",
                 gripper_open: float = 100.0, gripper_closed: float = 0.0, calibrate: bool = False):
        self.robot_type, self.robot_kwargs = robot_type, dict(robot_kwargs or {})
        self.joints = list(joints) if joints is not None else None
        self.gripper_name, self.g_open, self.g_closed = gripper, float(gripper_open), float(gripper_closed)
        if self.g_open == self.g_closed:
            raise ValueError("lerobot: gripper_open and gripper_closed must differ")
        self.calibrate = bool(calibrate)
        self.robot = None
        self.n_joints = len(self.joints) if self.joints is not None else None

    def connect(self) -> None:
        """Build and connect the LeRobot robot; resolve the joint list from its action features."""
        self.robot = _build_robot(self.robot_type, self.robot_kwargs)
        self.robot.connect(calibrate=self.calibrate)
        motors = [k[:-4] for k in self.robot.action_features if k.endswith(".pos")]
        if self.gripper_name is not None and self.gripper_name not in motors:
            raise ValueError(f"lerobot: gripper motor {self.gripper_name!r} not among {motors}; set gripper=null "
                             "or the right name")
        if self.joints is None:
            self.joints = [m for m in motors if m != self.gripper_name]
        unknown = [j for j in self.joints if j not in motors]
        if unknown:
            raise ValueError(f"lerobot: joints {unknown} are not motors of {self.robot_type}: {motors}")
        self.n_joints = len(self.joints)

    def _to_g(self, pos: float) -> float:
        return float(np.clip(-1.0 + 2.0 * (pos - self.g_open) / (self.g_closed - self.g_open), -1, 1))

    def _from_g(self, g: float) -> float:
        return self.g_open + (self.g_closed - self.g_open) * (float(g) + 1.0) / 2.0

    def read(self) -> ArmState:
        """Motor positions (the robot's units); velocities by finite difference."""
        obs = self.robot.get_observation()
        q = np.array([float(obs[f"{j}.pos"]) for j in self.joints])
        now = time.monotonic()
        prev = getattr(self, "_prev", None)
        dq = (q - prev[1]) / (now - prev[0]) if prev is not None and now > prev[0] else np.zeros_like(q)
        self._prev = (now, q)
        g = self._to_g(float(obs[f"{self.gripper_name}.pos"])) if self.gripper_name else -1.0
        return ArmState(q=q, dq=dq, gripper=g, t=now)

    def servo(self, q: np.ndarray, gripper: float, dt: float) -> None:
        """Send goal positions for every joint (and the gripper)."""
        action = {f"{j}.pos": float(x) for j, x in zip(self.joints, q)}
        if self.gripper_name:
            action[f"{self.gripper_name}.pos"] = self._from_g(gripper)
        self.robot.send_action(action)

    def estop(self) -> None:
        """Hold at the measured position (LeRobot has no e-stop of its own)."""
        st = self.read()
        self.servo(st.q, st.gripper, 0.0)

    def disconnect(self) -> None:
        """Disconnect the LeRobot robot (idempotent)."""
        if self.robot is not None:
            try:
                self.robot.disconnect()
            finally:
                self.robot = None
