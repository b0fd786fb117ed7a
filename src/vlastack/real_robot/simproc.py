"""Robots whose arm is a simulation in its own spawned process: the digital twin, the kitchen robot.

:class:`SimulatedRobot` is a :class:`~.controller.ControlledRobot` that, on ``connect``, first
starts the simulation process (``_sim_target(*args, conn, stop)``: it replies ``("ready", info)``
or ``("error", message)`` on ``conn`` once live, then serves ``(name, args)`` requests with
``("ok", reply)`` / ``("error", message)`` until ``stop`` is set or the client is gone: a parent
process that dies closes its pipe end, and the simulation then exits cleanly), then attaches the cameras to
its shared frame buffers and starts the controller process with a driver bound to the shared
state and command arrays. ``disconnect`` stops the controller (a last hold), then the simulation.
"""

from __future__ import annotations

import multiprocessing as mp
import os
import signal
import time
from typing import Any, Callable, Mapping

from vlastack.real_robot.base import RobotError, raise_priority
from vlastack.real_robot.controller import ControlledRobot, DriverSpec, pipe_request


class SimulatedRobot(ControlledRobot):
    """A controlled robot over a simulation process (module docstring). Subclasses implement :meth:`_sim_spec`."""

    connect_timeout_s = 60.0

    def _sim_spec(self, ctx) -> tuple[Callable, tuple, Any, str]:
        """(process target, its leading args, the shared arrays (``state``, ``cmd``, ``frames``, ``metas``),
        the driver's ``module:Class``)."""
        raise NotImplementedError

    def connect(self) -> None:
        """Start the simulation process, then the controller process, then attach the cameras."""
        if getattr(self, "_sim_proc", None) is not None:
            return
        ctx = mp.get_context("spawn")
        target, args, shared, driver = self._sim_spec(ctx)
        ours, theirs = ctx.Pipe()
        stop = ctx.Event()
        proc = ctx.Process(target=target, args=(*args, shared, theirs, stop), name=f"{self.name}-sim", daemon=True)
        proc.start()
        self._sim_proc, self._sim_conn, self._sim_stop, self._shared = proc, ours, stop, shared
        deadline = time.monotonic() + self.connect_timeout_s
        while not ours.poll(0.05):
            if not proc.is_alive() or time.monotonic() > deadline:
                self._stop_sim()
                raise RobotError(f"{self.name}: the simulation process did not start "
                                 f"({'exited' if not proc.is_alive() else 'timed out'})")
        kind, info = ours.recv()
        if kind != "ready":
            self._stop_sim()
            raise RobotError(f"{self.name}: cannot build the simulation: {info}")
        self.sim_info = info
        for cam in self.cameras:
            cam.attach(shared.frames[cam.name], shared.metas[cam.name])
        self.driver_spec = DriverSpec(driver, {"state": shared.state, "cmd": shared.cmd})
        try:
            super().connect()
        except BaseException:
            self._stop_sim()
            raise

    def _stop_sim(self) -> None:
        if getattr(self, "_sim_proc", None) is None:
            return
        self._sim_stop.set()
        self._sim_proc.join(10.0)
        if self._sim_proc.is_alive():
            self._sim_proc.terminate()
            self._sim_proc.join(2.0)
        self._sim_conn.close()
        self._sim_proc = None

    def disconnect(self) -> None:
        """Stop the controller (a last hold), then the simulation."""
        try:
            super().disconnect()
        finally:
            self._stop_sim()

    def _require_sim(self) -> None:
        if getattr(self, "_sim_proc", None) is None:
            raise RobotError(f"{self.name}: not connected")

    def sim_request(self, name: str, *args: Any, timeout: float = 5.0) -> Any:
        """Ask the simulation process; returns its reply, raises :class:`RobotError` with its error."""
        self._require_sim()
        return pipe_request(self._sim_conn, name, args, timeout, self.name, "the simulation process")


#: what a pipe raises once the process at its other end is gone
CLIENT_GONE = (EOFError, BrokenPipeError, ConnectionResetError)


def send_reply(conn, message: Any) -> bool:
    """In the simulation process: send ``message`` to the client; False when the client is gone (its
    process ended, e.g. killed), so that the simulation can stop without a traceback."""
    try:
        conn.send(message)
    except CLIENT_GONE:
        return False
    return True


def serve_requests(conn, handlers: Mapping[str, Callable[..., Any]], label: str) -> bool:
    """In the simulation process: answer every pending ``(name, args)`` request on ``conn`` with
    ``("ok", handlers[name](*args))``, or ``("error", message)`` (an unknown name lists the valid ones).

    Returns False when the client is gone (the pipe's other end closed: the parent process died);
    the simulation loop then ends and the process exits cleanly."""
    while True:
        try:
            if not conn.poll():
                return True
            name, args = conn.recv()
        except CLIENT_GONE:
            return False
        try:
            if name not in handlers:
                raise ValueError(f"unknown {label} request {name!r}; valid: {', '.join(handlers)}")
            reply = ("ok", handlers[name](*args))
        except Exception as e:  # noqa: BLE001 - reported to the client
            reply = ("error", f"{type(e).__name__}: {e}")
        if not send_reply(conn, reply):
            return False


def start_sim_process() -> None:
    """First thing in a simulation process: Ctrl-C is the client's, priority raised when permitted,
    offscreen rendering (``MUJOCO_GL=egl`` unless set)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    raise_priority()
    os.environ.setdefault("MUJOCO_GL", "egl")
    os.environ.setdefault("PYOPENGL_PLATFORM", os.environ["MUJOCO_GL"])
