"""A kinematic arm driver: no hardware, no physics; the arm follows the command with a first-order lag.

Used for dry runs (``robot=sim``) and for testing the controller process quickly. Latency is
modelled as a pure delay of the commands; ``stall_after_s`` freezes the arm's reported state
(a hung sensor stream), which the controller's tracking check must catch.
"""

from __future__ import annotations

import time
from collections import deque

import numpy as np

from vlastack.real_robot.controller import ArmState
from vlastack.real_robot.kinematics import get_chain


class KinematicArmDriver:
    """Joint positions follow the commanded ones with time constant ``tau`` after ``latency_s``.

    Args:
        chain: a named chain (``panda``, ``ur5e``) giving the joint count and the start (home) pose.
        q0: start configuration (default: the chain's home).
        tau: first-order lag (s); 0 follows exactly.
        latency_s: commands take effect this much later.
    """

    def __init__(self, chain: str = "panda", q0=None, tau: float = 0.02, latency_s: float = 0.0,
                 gripper0: float = -1.0):
        c = get_chain(chain)
        self.n_joints = c.n
        self.q = np.array(c.home if q0 is None else q0, float)
        if self.q.shape != (c.n,):
            raise ValueError(f"sim driver: q0 has shape {self.q.shape}, the {chain} chain has {c.n} joints")
        self.g = float(gripper0)
        self.tau, self.latency_s = float(tau), float(latency_s)
        self._target = (self.q.copy(), self.g)
        self._pending: deque = deque()
        self._t = None
        self.connected = False
        self.estopped = False

    def connect(self) -> None:
        """Start the simulated clock."""
        self.connected = True
        self._t = time.monotonic()

    def _advance(self, now: float) -> None:
        while self._pending and self._pending[0][0] <= now:
            _, q, g = self._pending.popleft()
            self._target = (q, g)
        dt = max(0.0, now - self._t)
        self._t = now
        a = 1.0 if self.tau <= 0 else 1.0 - np.exp(-dt / self.tau)
        q_t, g_t = self._target
        self._dq = (q_t - self.q) * a / dt if dt > 0 else np.zeros_like(self.q)
        self.q = self.q + a * (q_t - self.q)
        self.g = self.g + a * (g_t - self.g)

    def read(self) -> ArmState:
        """Advance the simulation to now and report it."""
        now = time.monotonic()
        self._advance(now)
        return ArmState(q=self.q.copy(), dq=np.asarray(self._dq, float).copy(), gripper=float(self.g), t=now)

    def servo(self, q: np.ndarray, gripper: float, dt: float) -> None:
        """Queue a joint target (takes effect after ``latency_s``)."""
        self.estopped = False
        self._pending.append((time.monotonic() + self.latency_s, np.asarray(q, float).copy(), float(gripper)))

    def estop(self) -> None:
        """Freeze: the arm stops where it is (until the next servo command, after a reset)."""
        self.estopped = True
        self._pending.clear()
        self._target = (self.q.copy(), self.g)

    def disconnect(self) -> None:
        """Nothing to release."""
        self.connected = False
