"""Franka (Panda / FR3) driver over ``franky-control`` (``pip install vlastack[robot-franka]``).

Runs inside the controller process. Each tick replaces franky's running motion with an
asynchronous joint waypoint motion to the safety-filtered command (franky preempts the previous
motion and plans a smooth, limit-respecting path with Ruckig), reads the joint state, and drives
the gripper when the command changes between open and closed. Motion errors raised by franky
(reflexes, collisions) become driver faults, and the arm stays in its error state: recovery is
the operator's action, never automatic (a collision reflex must not be cleared at 200 Hz by the
servo loop). Recover with ``robot.recover()`` (the controller's ``recover`` request, which then
re-anchors at the measured joints) or at start with ``driver.recover_on_connect=true``.
"""

from __future__ import annotations

import time

import numpy as np

from vlastack.real_robot.controller import ArmState
from vlastack.real_robot.kinematics import get_chain

INSTALL_HINT = "Franka arms need franky: pip install 'vlastack[robot-franka]' (or pip install franky-control)"
MAX_WIDTH = 0.08  # Franka Hand, fully open (m)


def _import_franky():
    try:
        import franky
    except ImportError as e:
        raise ImportError(f"{INSTALL_HINT} ({e})") from None
    return franky


class FrankaDriver:
    """franky driver (see the module docstring).

    Args:
        host: the robot's FCI IP address.
        relative_dynamics_factor: franky's velocity/acceleration/jerk scale in (0, 1].
        gripper: whether a Franka Hand is attached.
        gripper_speed: m/s for gripper moves.
        recover_on_connect: clear the arm's errors when connecting (the operator's choice at start).
    """

    def __init__(self, host: str, relative_dynamics_factor: float = 0.1, gripper: bool = True,
                 gripper_speed: float = 0.05, chain: str = "panda", recover_on_connect: bool = False):
        if not isinstance(recover_on_connect, bool):
            raise ValueError(f"franka: recover_on_connect must be true or false, got {recover_on_connect!r}")
        if not host or not isinstance(host, str):
            raise ValueError(f"franka: host must be the robot's FCI IP address, got {host!r}")
        if not 0 < float(relative_dynamics_factor) <= 1:
            raise ValueError(f"franka: relative_dynamics_factor must be in (0, 1], got {relative_dynamics_factor!r}")
        self.chain = get_chain(chain)
        self.n_joints = self.chain.n
        self.host, self.factor = host, float(relative_dynamics_factor)
        self.use_gripper, self.gripper_speed = bool(gripper), float(gripper_speed)
        self.recover_on_connect = recover_on_connect
        self.robot = self.gripper = self.franky = None
        self._closed = None
        self._fault: str | None = None

    def connect(self) -> None:
        """Connect (clearing errors only with ``recover_on_connect``), set the dynamics factor, open the gripper."""
        self.franky = _import_franky()
        self.robot = self.franky.Robot(self.host)
        if self.recover_on_connect:
            self.robot.recover_from_errors()
        self.robot.relative_dynamics_factor = self.factor
        if self.use_gripper:
            self.gripper = self.franky.Gripper(self.host)

    def read(self) -> ArmState:
        """Joint positions / velocities and the gripper width (as -1 open .. +1 closed)."""
        js = self.robot.current_joint_state
        g = 1.0 - 2.0 * float(self.gripper.width) / MAX_WIDTH if self.gripper is not None else -1.0
        fault, self._fault = self._fault, None
        return ArmState(q=np.asarray(js.position, float), dq=np.asarray(js.velocity, float),
                        gripper=float(np.clip(g, -1, 1)), t=time.monotonic(), fault=fault)

    def servo(self, q: np.ndarray, gripper: float, dt: float) -> None:
        """Preempt the running motion with one to ``q``; move the gripper on open/close changes."""
        fr = self.franky
        motion = fr.JointWaypointMotion([fr.JointWaypoint([float(x) for x in q])])
        try:
            self.robot.move(motion, asynchronous=True)
        except Exception as e:  # noqa: BLE001 - franky raises the previous motion's error here
            self._fault = f"franky: {type(e).__name__}: {e} (recover with robot.recover() once the cause is cleared)"
        closed = gripper > 0
        if self.gripper is not None and closed != self._closed:
            self.gripper.move_async(0.0 if closed else MAX_WIDTH, self.gripper_speed)
            self._closed = closed

    def recover(self) -> None:
        """The operator's recovery: clear the arm's errors (franky's ``recover_from_errors``)."""
        self.robot.recover_from_errors()
        self._fault = None

    def estop(self) -> None:
        """Hold: preempt with a motion to the current position."""
        if self.robot is not None:
            q = self.robot.current_joint_state.position
            self.robot.move(self.franky.JointWaypointMotion([self.franky.JointWaypoint(list(q))]), asynchronous=True)

    def disconnect(self) -> None:
        """Wait for the last (hold) motion and drop the connections (idempotent)."""
        if self.robot is not None:
            try:
                self.robot.join_motion()
            finally:
                self.robot = self.gripper = None
