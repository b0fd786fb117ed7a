"""Arm drivers for controller tests, importable by ``DriverSpec("fake_drivers:...")`` (pytest puts this
folder on ``sys.path``, and spawned controller processes inherit it). Each injects one fault."""
import json
import os
import time

import numpy as np

from vlastack.real_robot.controller import ArmState
from vlastack.real_robot.kinematics import PANDA
from vlastack.real_robot.twin import TwinDriver


class WorldDriver:
    """A Panda that follows each command at once, driven by a namespace shared with the test (in-thread
    controllers only): ``world.stuck`` freezes the arm, ``world.block_until`` (monotonic s) makes reads
    block until then; e-stop calls are timed in ``world.estops``."""

    n_joints = PANDA.n

    def __init__(self, world):
        self.w = world
        self.q = np.array(PANDA.home, float)
        for k, v in {"stuck": False, "block_until": 0.0, "estops": [], "reads": 0, "servos": 0}.items():
            if not hasattr(world, k):
                setattr(world, k, v)

    def connect(self) -> None:
        """Nothing to open."""

    def read(self) -> ArmState:
        """The arm's joints, after blocking while ``world.block_until`` is ahead."""
        delay = self.w.block_until - time.monotonic()
        if delay > 0:
            time.sleep(delay)
        self.w.reads += 1
        return ArmState(q=self.q.copy(), dq=np.zeros(self.n_joints), gripper=-1.0, t=time.monotonic())

    def servo(self, q, gripper, dt) -> None:
        """Move there at once unless stuck."""
        self.w.servos += 1
        if not self.w.stuck:
            self.q = np.asarray(q, float).copy()

    def estop(self) -> None:
        """Record when the controller asked for the stop."""
        self.w.estops.append(time.monotonic())

    def disconnect(self) -> None:
        """Nothing to release."""


class RecordingDriver:
    """A Panda that follows each command, for spawned controllers: ``disconnect`` writes the number of
    commands, the last one and the process id to the JSON file ``path`` (what a kill would lose)."""

    n_joints = PANDA.n

    def __init__(self, path):
        self.path = path
        self.q = np.array(PANDA.home, float)
        self.servos = 0

    def connect(self) -> None:
        """Nothing to open."""

    def read(self) -> ArmState:
        """The last commanded joints."""
        return ArmState(q=self.q.copy(), dq=np.zeros(self.n_joints), gripper=-1.0, t=time.monotonic())

    def servo(self, q, gripper, dt) -> None:
        """Follow."""
        self.servos += 1
        self.q = np.asarray(q, float).copy()

    def estop(self) -> None:
        """Nothing to do."""

    def disconnect(self) -> None:
        """Write the record."""
        with open(self.path, "w") as f:
            json.dump({"servos": self.servos, "last": self.q.tolist(), "pid": os.getpid(), "disconnected": True}, f)


class BlockingTwinDriver(TwinDriver):
    """The twin's driver whose next read blocks ``block_s`` (a shared double, s) once ``block`` (an Event)
    is set; it records when the controller asked for the e-stop in ``estop_t`` (a shared double)."""

    def __init__(self, state, cmd, block, estop_t, block_s):
        super().__init__(state, cmd)
        self.block, self.estop_t, self.block_s = block, estop_t, block_s

    def read(self) -> ArmState:
        """Block once when asked (``block_s.value`` seconds), then read the twin."""
        if self.block.is_set():
            self.block.clear()
            time.sleep(self.block_s.value)
        return super().read()

    def estop(self) -> None:
        """Record the time."""
        self.estop_t.value = time.monotonic()
        super().estop()


class SerialWorldDriver(WorldDriver):
    """:class:`WorldDriver` on one link that cannot read and write at once (like a motor bus)."""

    concurrent_io = False
