"""Universal Robots driver over ``ur_rtde`` (``pip install vlastack[robot-ur]``).

Runs inside the controller process: every tick sends ``servoJ`` with the safety-filtered joint
command (the controller already interpolated and limited it), reads ``getActualQ`` /
``getActualQd``, and reports the arm's protective and emergency stops so the controller
latches its own e-stop. An optional gripper on a standard digital output is driven open/closed
by the sign of the gripper command (UR arms have no built-in gripper).
"""

from __future__ import annotations

import time

import numpy as np

from vlastack.real_robot.controller import ArmState
from vlastack.real_robot.kinematics import UR5E, Chain, get_chain

INSTALL_HINT = "Universal Robots need ur_rtde: pip install 'vlastack[robot-ur]' (or pip install ur_rtde)"


def _import_rtde():
    try:
        import rtde_control
        import rtde_receive
    except ImportError as e:
        raise ImportError(f"{INSTALL_HINT} ({e})") from None
    return rtde_control, rtde_receive


class URDriver:
    """``ur_rtde`` driver (see the module docstring).

    Args:
        host: the robot's IP address.
        chain: kinematic chain name (joint count); ``ur5e`` by default.
        lookahead_time: servoJ's lookahead (0.03-0.2 s): larger is smoother, slower to react.
        gain: servoJ's proportional gain (100-2000).
        gripper_digital_out: standard digital output pin of a simple gripper, or None.
        frequency: RTDE frequency (Hz) for the receive interface; -1 lets ur_rtde choose.
    """

    def __init__(self, host: str, chain: str = "ur5e", lookahead_time: float = 0.1, gain: float = 300.0,
                 gripper_digital_out: int | None = None, frequency: float = -1.0):
        if not host or not isinstance(host, str):
            raise ValueError(f"ur: host must be the robot's IP address, got {host!r}")
        if not 0.03 <= float(lookahead_time) <= 0.2:
            raise ValueError(f"ur: lookahead_time must be in [0.03, 0.2] s (servoJ's range), got {lookahead_time!r}")
        if not 100 <= float(gain) <= 2000:
            raise ValueError(f"ur: gain must be in [100, 2000] (servoJ's range), got {gain!r}")
        self.chain: Chain = get_chain(chain)
        self.n_joints = self.chain.n
        self.host, self.lookahead_time, self.gain = host, float(lookahead_time), float(gain)
        self.pin = gripper_digital_out
        self.frequency = float(frequency)
        self.rtde_c = self.rtde_r = self.rtde_io = None
        self._closed = None  # last gripper state sent
        self._g = -1.0

    def connect(self) -> None:
        """Open the receive, control (and IO) interfaces."""
        rtde_control, rtde_receive = _import_rtde()
        self.rtde_r = rtde_receive.RTDEReceiveInterface(self.host, self.frequency)
        self.rtde_c = rtde_control.RTDEControlInterface(self.host)
        if self.pin is not None:
            try:
                import rtde_io
            except ImportError as e:
                raise ImportError(f"{INSTALL_HINT} ({e})") from None
            self.rtde_io = rtde_io.RTDEIOInterface(self.host)
        if not self.rtde_c.isConnected():
            raise ConnectionError(f"ur: the control interface at {self.host} is not connected")

    def read(self) -> ArmState:
        """Joint positions and speeds; protective / emergency stops are reported as an e-stop."""
        q = np.asarray(self.rtde_r.getActualQ(), float)
        dq = np.asarray(self.rtde_r.getActualQd(), float)
        fault, estop = None, False
        if self.rtde_r.isEmergencyStopped():
            fault, estop = "UR emergency stop", True
        elif self.rtde_r.isProtectiveStopped():
            fault, estop = "UR protective stop", True
        return ArmState(q=q, dq=dq, gripper=self._g, t=time.monotonic(), fault=fault, estop=estop)

    def servo(self, q: np.ndarray, gripper: float, dt: float) -> None:
        """``servoJ`` to ``q`` over ``dt``; the gripper output follows the command's sign."""
        self.rtde_c.servoJ([float(x) for x in q], 0.5, 0.5, float(dt), self.lookahead_time, self.gain)
        closed = gripper > 0
        if self.rtde_io is not None and closed != self._closed:
            self.rtde_io.setStandardDigitalOut(int(self.pin), bool(closed))
            self._closed = closed
        self._g = 1.0 if closed else -1.0

    def estop(self) -> None:
        """Stop servoing (decelerate) right away."""
        if self.rtde_c is not None:
            self.rtde_c.servoStop(10.0)

    def disconnect(self) -> None:
        """Stop servoing and the control script, then close the interfaces (idempotent)."""
        if self.rtde_c is not None:
            try:
                self.rtde_c.servoStop(10.0)
                self.rtde_c.stopScript()
            finally:
                self.rtde_c.disconnect()
                self.rtde_c = None
        if self.rtde_r is not None:
            self.rtde_r.disconnect()
            self.rtde_r = None
        if self.rtde_io is not None:
            self.rtde_io.disconnect()
            self.rtde_io = None


__all__ = ["URDriver", "UR5E"]
