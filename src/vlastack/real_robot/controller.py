"""The fixed-rate controller: interpolation between timestamped policy actions, safety, watchdog, e-stop.

Three layers:

- :class:`ControllerCore` — pure logic driven by explicit times (so tests can drive it tick by
  tick): timestamped targets arrive (``submit``) at 10-30 Hz and are turned into joint
  waypoints (inverse kinematics in ``ee`` mode); every control tick (``tick``) interpolates the
  joint trajectory linearly at the current time and passes the result through the
  :class:`~.safety.SafetyFilter`. Targets whose time has passed on arrival are dropped; a new
  target replaces every waypoint planned after it (Diffusion Policy's waypoint scheduling).
  The watchdog holds position (zero velocity) when no action has arrived for ``watchdog_s``.
  A measured position further than ``tracking_tol`` from the command (a stuck or pushed arm)
  holds at once: the command is re-anchored at the measured joints, the trajectory dropped and
  actions refused for ``tracking_fault_s``; an error that persists through that hold stops the
  controller, otherwise actions are taken again and plan from the measured state. A driver read
  stuck for more than ``read_timeout_s`` makes the state stale: the command holds until reads resume.
  Faults (watchdog trips, invalid actions, tracking errors, driver faults) are counted;
  ``max_faults`` of them within ``fault_window_s`` stop the controller: it holds and rejects
  actions until :meth:`ControllerCore.reset`. The e-stop freezes the command at once and latches.
- :func:`control_loop` — the servo loop around a core and an :class:`ArmDriver`: take the newest
  arm state, queued actions and requests, tick, send the command, publish the state, sleep to
  the next period (an e-stop is seen at the next tick). Driver reads run in their own thread
  (:class:`_Reader`), so a read that blocks never delays the e-stop, the watchdog or the hold;
  replies to requests (a ``log`` can be megabytes) are sent from another thread. The loop runs
  in its own spawned process (:class:`ControlledRobot`, the default; SIGTERM stops it like a
  client's disconnect: a last hold, then the driver's disconnect), or in a thread for drivers
  that must live in the caller's process (fakes in tests); the path from an action to the driver
  is the same either way and always goes through the filter.
- :class:`ControlledRobot` — the :class:`~.base.Robot` the rollout loop uses: it holds only the
  ends of the pipes to the controller (never the driver), reads the published state and the
  cameras, and sends timestamped actions.
"""

from __future__ import annotations

import contextlib
import importlib
import math
import multiprocessing as mp
import queue
import signal
import threading
import time
import traceback
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence, runtime_checkable

import numpy as np

from vlastack.real_robot.base import (
    ACTION_MODES,
    Camera,
    RobotError,
    StaleFrameError,
    action_dim,
    check_action_mode,
    raise_priority,
    robot_spec,
)
from vlastack.real_robot.kinematics import Chain, matrix_to_rotvec, rotvec_to_matrix
from vlastack.real_robot.safety import SafetyError, SafetyFilter, SafetyLimits
from vlastack.types import STATE, TASK, TIMESTAMP, ContractError, DatasetSpec, image_key

STATUSES = ("starting", "idle", "running", "holding", "stopped", "estop")
COUNTERS = ("ticks", "accepted", "stale", "invalid", "rejected", "watchdog", "tracking", "driver_faults",
            "ik_unreached", "rate_limited", "box_limited", "clipped", "overruns")


# ------------------------------------------------------------------------------------ config


@dataclass
class ControllerConfig:
    """How the controller runs.

    Args:
        rate_hz: servo rate (100-500 Hz typical; UR takes 125 or 500, Franka up to 1000).
        action_mode: ``ee`` (absolute TCP pose + gripper) or ``joint`` (absolute joints + gripper).
        watchdog_s: hold position when no action has arrived for this long.
        max_faults, fault_window_s: this many faults within the window stop the controller.
        max_horizon_s: actions targeted further ahead than this are invalid.
        max_waypoints: the trajectory keeps at most this many future waypoints.
        ik_tol: IK residual (m + 0.3 rad) above which a target counts as not reached.
        log_ticks: ticks kept in the controller's ring-buffer log.
        connect_timeout_s: how long ``connect`` waits for the driver.
        read_timeout_s: a driver read that has not returned after this long holds the command.
        tracking_fault_s: how long a tracking hold lasts; an error that persists through it stops.
    """

    rate_hz: float = 200.0
    action_mode: str = "ee"
    watchdog_s: float = 0.25
    max_faults: int = 3
    fault_window_s: float = 10.0
    max_horizon_s: float = 2.0
    max_waypoints: int = 64
    ik_tol: float = 0.01
    log_ticks: int = 30_000
    connect_timeout_s: float = 30.0
    read_timeout_s: float = 0.1
    tracking_fault_s: float = 0.1

    def __post_init__(self):
        check_action_mode(self.action_mode)
        if not (isinstance(self.rate_hz, (int, float)) and 1 <= self.rate_hz <= 2000):
            raise ValueError(f"controller.rate_hz: expected 1..2000 Hz, got {self.rate_hz!r}")
        for name in ("watchdog_s", "fault_window_s", "max_horizon_s", "ik_tol", "connect_timeout_s",
                     "read_timeout_s", "tracking_fault_s"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and v > 0):
                raise ValueError(f"controller.{name}: expected a positive number, got {v!r}")
        if self.watchdog_s < 2.0 / self.rate_hz:
            raise ValueError(f"controller.watchdog_s: {self.watchdog_s} s is shorter than two control periods "
                             f"({2.0 / self.rate_hz:.4f} s)")
        for name in ("max_faults", "max_waypoints", "log_ticks"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v < (2 if name == "max_waypoints" else 1):
                raise ValueError(f"controller.{name}: expected a positive int, got {v!r}")

    @property
    def dt(self) -> float:
        """Control period (s)."""
        return 1.0 / self.rate_hz


@dataclass
class Command:
    """One tick's output: joint command (n,), gripper command, the controller status."""

    q: np.ndarray
    gripper: float
    status: str


# ------------------------------------------------------------------------------------ core


class ControllerCore:
    """Interpolation, safety, watchdog, faults and e-stop, driven by explicit times (module docstring)."""

    def __init__(self, config: ControllerConfig, limits: SafetyLimits, chain: Chain | None, q0, g0: float,
                 now: float):
        if config.action_mode == "ee" and chain is None:
            raise SafetyError("action_mode 'ee' needs the arm's kinematic chain")
        self.cfg, self.limits, self.chain = config, limits, chain
        self.filter = SafetyFilter(limits, chain, config.dt)
        self.n = limits.n
        self.dim = action_dim(config.action_mode, self.n)
        self.counters = {k: 0 for k in COUNTERS}
        self.fault_log: deque = deque(maxlen=50)  # (time, message)
        self._fault_times: deque = deque()
        self.status = "starting"
        self._anchor(np.asarray(q0, float), g0, now)

    # -------------------------------------------------------------- state changes

    def _anchor(self, q: np.ndarray, g: float, now: float) -> None:
        self.limits.check_start(q, self.chain)
        self.q_cmd = q.astype(float).copy()
        self.g_cmd = float(np.clip(g if np.isfinite(g) else 0.0, -1, 1))
        self.traj: list[tuple[float, np.ndarray, float]] = [(now, self.q_cmd.copy(), self.g_cmd)]
        self.last_arrival: float | None = None
        self._tracking_since: float | None = None  # start of a tracking hold
        self.stale = False  # a driver read has been stuck for more than read_timeout_s
        self.status = "idle"

    def _stop(self, now: float, message: str) -> None:
        if self.status not in ("stopped", "estop"):
            self.status = "stopped"
            self.traj = [(now, self.q_cmd.copy(), self.g_cmd)]
            self.fault_log.append((now, f"{message}; reset to resume"))

    def fault(self, now: float, kind: str, message: str) -> None:
        """Record a fault; ``max_faults`` within ``fault_window_s`` stop the controller."""
        self.counters[kind] = self.counters.get(kind, 0) + 1
        self.fault_log.append((now, f"{kind}: {message}"))
        self._fault_times.append(now)
        while self._fault_times and now - self._fault_times[0] > self.cfg.fault_window_s:
            self._fault_times.popleft()
        if len(self._fault_times) >= self.cfg.max_faults:
            self._stop(now, f"stopped after {len(self._fault_times)} faults in {self.cfg.fault_window_s:g} s")

    def estop(self, now: float, reason: str = "e-stop") -> None:
        """Emergency stop: freeze the command now; latched until :meth:`reset`."""
        if self.status != "estop":
            self.fault_log.append((now, f"estop: {reason}"))
        self.status = "estop"
        self.traj = [(now, self.q_cmd.copy(), self.g_cmd)]

    def hold(self, now: float) -> None:
        """Drop the planned trajectory and hold the current command (not a fault)."""
        self.traj = [(now, self.q_cmd.copy(), self.g_cmd)]
        if self.status == "running":
            self.status = "idle"

    def reset(self, now: float, q_measured, g_measured: float) -> None:
        """Leave ``stopped`` / ``estop``: re-anchor at the measured position (checked against the limits)."""
        self._fault_times.clear()
        self._anchor(np.asarray(q_measured, float), g_measured, now)

    # -------------------------------------------------------------- actions

    def _target(self, a: np.ndarray) -> tuple[np.ndarray, float]:
        if self.cfg.action_mode == "joint":
            return a[:self.n].copy(), float(a[self.n])
        pos = a[:3]
        box = self.limits.box
        if box is not None:
            pos = np.clip(pos, box[0], box[1])
        q_seed = self.traj[-1][1]
        q, err = self.chain.ik(pos, rotvec_to_matrix(a[3:6]), q_seed)
        if err > self.cfg.ik_tol:
            self.counters["ik_unreached"] += 1
        return q, float(a[6])

    def submit(self, now: float, t: float, action: Any) -> str:
        """Take a target for time ``t``: returns accepted | stale | invalid | rejected (stopped, e-stop or
        a tracking hold, no fresh arm state)."""
        if self.status in ("stopped", "estop") or self._tracking_since is not None or self.stale:
            self.counters["rejected"] += 1
            return "rejected"
        try:
            a = np.asarray(action, float)
            t = float(t)
        except (TypeError, ValueError):
            self.fault(now, "invalid", f"action of type {type(action).__name__} is not a vector")
            return "invalid"
        if a.shape != (self.dim,) or not np.all(np.isfinite(a)) or not math.isfinite(t):
            what = f"shape {a.shape}, expected ({self.dim},)" if a.shape != (self.dim,) else "NaN/inf in action or time"
            self.fault(now, "invalid", what)
            return "invalid"
        if t <= now:
            self.counters["stale"] += 1
            return "stale"
        if t - now > self.cfg.max_horizon_s:
            self.fault(now, "invalid", f"target {t - now:.3f} s ahead (max_horizon_s={self.cfg.max_horizon_s})")
            return "invalid"
        try:
            q_t, g_t = self._target(a)
        except ValueError as e:  # e.g. a rotation vector whose angle overflows
            self.fault(now, "invalid", str(e))
            return "invalid"
        keep = [p for p in self.traj if now < p[0] < t][-(self.cfg.max_waypoints - 2):]
        self.traj = [(now, self.q_cmd.copy(), self.g_cmd), *keep, (t, q_t, g_t)]
        self.last_arrival = now
        if self.status in ("idle", "holding"):
            self.status = "running"
        self.counters["accepted"] += 1
        return "accepted"

    def _interp(self, now: float) -> tuple[np.ndarray, float]:
        pts = self.traj
        if now <= pts[0][0]:
            return pts[0][1], pts[0][2]
        for (t0, q0, g0), (t1, q1, g1) in zip(pts, pts[1:]):
            if now <= t1:
                s = (now - t0) / (t1 - t0)
                return q0 + s * (q1 - q0), g0 + s * (g1 - g0)
        return pts[-1][1], pts[-1][2]

    # -------------------------------------------------------------- the tick

    def _track(self, now: float, q_measured) -> None:
        """The tracking check against the command the arm was following (module docstring)."""
        q_m = np.asarray(q_measured, float)
        err = np.abs(q_m - self.q_cmd) if q_m.shape == self.q_cmd.shape else np.full(self.q_cmd.shape, np.inf)
        bad = bool(not np.all(np.isfinite(err)) or np.max(err) > self.limits.tracking_tol)
        if self._tracking_since is not None:  # holding after a tracking error
            if bad:
                self._tracking_since = None
                self._stop(now, f"tracking error persists while holding: measured joints "
                                f"{np.round(np.nan_to_num(err, nan=np.inf), 3).tolist()} rad from the hold")
            elif now - self._tracking_since >= self.cfg.tracking_fault_s:
                self._tracking_since = None  # actions are taken again, planned from the measured hold
            return
        if not bad or self.status in ("stopped", "estop"):
            return
        finite = q_m.shape == self.q_cmd.shape and bool(np.all(np.isfinite(q_m)))
        if finite:  # hold where the arm is: a command that does not push on whatever stopped it
            self.q_cmd = np.clip(q_m, self.limits.lower, self.limits.upper)
            self.traj = [(now, self.q_cmd.copy(), self.g_cmd)]
            self.status = "holding"
            self._tracking_since = now
        self.fault(now, "tracking", f"measured joints {np.round(np.nan_to_num(err, nan=np.inf), 3).tolist()} "
                                    f"rad from the command (tracking_tol={self.limits.tracking_tol}); holding")
        if not finite:
            self._stop(now, "the arm reports non-finite joints")

    def tick(self, now: float, q_measured=None, driver_fault: str | None = None, driver_estop: bool = False,
             state_age: float = 0.0) -> Command:
        """The safe command for time ``now`` (see the module docstring); ``state_age`` is how long the
        driver read in progress has been stuck (over ``read_timeout_s``: ``q_measured`` is not used and
        the command holds)."""
        c = self.counters
        c["ticks"] += 1
        if driver_estop and self.status != "estop":
            self.estop(now, driver_fault or "the arm reports an emergency stop")
        elif driver_fault:
            self.fault(now, "driver_faults", driver_fault)
        stale = state_age > self.cfg.read_timeout_s
        if stale:  # blind: hold the command until the arm reports again
            q_measured = None
            if not self.stale:
                self.fault(now, "driver_faults", f"no state from the arm for {state_age:.3f} s "
                                                 f"(read_timeout_s={self.cfg.read_timeout_s}); holding")
            if self.status == "running":
                self.status = "holding"
            self.traj = [(now, self.q_cmd.copy(), self.g_cmd)]
        self.stale = stale
        if q_measured is not None and self.status != "estop":
            self._track(now, q_measured)
        if self.status == "running" and self.last_arrival is not None and now - self.last_arrival > self.cfg.watchdog_s:
            self.fault(now, "watchdog", f"no action for {now - self.last_arrival:.3f} s; holding")
            if self.status == "running":
                self.status = "holding"
            self.traj = [(now, self.q_cmd.copy(), self.g_cmd)]
        if self.status == "running":
            q_des, g_des = self._interp(now)
        else:
            q_des, g_des = self.q_cmd, self.g_cmd
        if self.status == "estop":
            return Command(self.q_cmd.copy(), self.g_cmd, self.status)
        res = self.filter.apply(self.q_cmd, self.g_cmd, q_des, g_des)
        c["rate_limited"] += res.rate_limited
        c["box_limited"] += res.box_limited
        c["clipped"] += res.clipped
        if res.invalid:  # cannot happen for accepted targets; defence in depth
            self.fault(now, "invalid", "non-finite interpolated target")
        self.q_cmd, self.g_cmd = res.q, res.gripper
        return Command(self.q_cmd.copy(), self.g_cmd, self.status)


# ------------------------------------------------------------------------------------ drivers


@dataclass
class ArmState:
    """What a driver reads from the arm: joints (n,), velocities (n,), gripper in [-1, 1], time, faults."""

    q: np.ndarray
    dq: np.ndarray
    gripper: float
    t: float
    fault: str | None = None
    estop: bool = False


@runtime_checkable
class ArmDriver(Protocol):
    """The hardware side of the controller; only the controller process ever holds one."""

    n_joints: int

    def connect(self) -> None:
        """Open the connection to the arm."""

    def read(self) -> ArmState:
        """The arm's current state."""

    def servo(self, q: np.ndarray, gripper: float, dt: float) -> None:
        """Command joint positions ``q`` (n,) and the gripper for the next ``dt`` seconds."""

    def estop(self) -> None:
        """Stop the arm now (protective stop where the vendor has one)."""

    def disconnect(self) -> None:
        """Stop and release the connection (idempotent)."""


@dataclass
class DriverSpec:
    """How the controller process builds its driver: ``target`` = ``"module:Class"`` called with ``kwargs``."""

    target: str
    kwargs: dict = field(default_factory=dict)

    def build(self) -> ArmDriver:
        """Import and construct the driver."""
        mod, _, attr = self.target.partition(":")
        if not attr:
            raise ValueError(f"driver target {self.target!r}: expected 'module:Class'")
        factory = getattr(importlib.import_module(mod), attr)
        return factory(**self.kwargs)


# ------------------------------------------------------------------------------------ shared state


class StateLayout:
    """Offsets of the controller's published state in a shared float64 array."""

    def __init__(self, n: int):
        self.n = n
        names = [("seq", 1), ("t", 1), ("status", 1), ("last_arrival", 1), ("q", n), ("dq", n), ("gripper", 1),
                 ("q_cmd", n), ("g_cmd", 1), ("ee", 6), ("counters", len(COUNTERS))]
        self.slices: dict[str, slice] = {}
        i = 0
        for name, size in names:
            self.slices[name] = slice(i, i + size)
            i += size
        self.size = i


@dataclass
class ControllerState:
    """A snapshot of the controller: time, status, measured/commanded joints, TCP pose, counters."""

    t: float
    status: str
    q: np.ndarray
    dq: np.ndarray
    gripper: float
    q_cmd: np.ndarray
    g_cmd: float
    ee: np.ndarray  # (6,) measured TCP position + axis-angle
    last_arrival: float | None
    counters: dict[str, int]
    seq: int

    @classmethod
    def read(cls, arr, layout: StateLayout) -> "ControllerState":
        """Copy the shared array (under its lock) into a snapshot."""
        with arr.get_lock():
            v = np.frombuffer(arr.get_obj(), dtype=np.float64).copy()
        s = layout.slices
        la = float(v[s["last_arrival"]][0])
        return cls(t=float(v[s["t"]][0]), status=STATUSES[int(v[s["status"]][0])], q=v[s["q"]].copy(),
                   dq=v[s["dq"]].copy(), gripper=float(v[s["gripper"]][0]), q_cmd=v[s["q_cmd"]].copy(),
                   g_cmd=float(v[s["g_cmd"]][0]), ee=v[s["ee"]].copy(), last_arrival=None if math.isnan(la) else la,
                   counters={k: int(x) for k, x in zip(COUNTERS, v[s["counters"]])}, seq=int(v[s["seq"]][0]))

    def state_vector(self) -> np.ndarray:
        """The data contract's ``observation.state``: [q, gripper, ee position, ee axis-angle], float32."""
        return np.concatenate([self.q, [self.gripper], self.ee]).astype(np.float32)


class TickLog:
    """Ring buffer of the last ``size`` ticks: time, status code, commanded and measured joints, gripper."""

    def __init__(self, size: int, n: int):
        self.t = np.zeros(size)
        self.status = np.zeros(size, np.int8)
        self.q_cmd = np.zeros((size, n))
        self.q = np.zeros((size, n))
        self.g_cmd = np.zeros(size)
        self.count = 0

    def add(self, t: float, status: str, q_cmd: np.ndarray, q: np.ndarray, g_cmd: float) -> None:
        """Append one tick."""
        i = self.count % len(self.t)
        self.t[i], self.status[i], self.g_cmd[i] = t, STATUSES.index(status), g_cmd
        self.q_cmd[i], self.q[i] = q_cmd, q
        self.count += 1

    def raw(self) -> tuple[int, dict[str, np.ndarray]]:
        """A plain copy of the filled buffers (memcpy only: cheap enough for the servo loop) and the count."""
        n = min(self.count, len(self.t))
        return self.count, {"t": self.t[:n].copy(), "status": self.status[:n].copy(), "q_cmd": self.q_cmd[:n].copy(),
                            "q": self.q[:n].copy(), "g_cmd": self.g_cmd[:n].copy()}

    @staticmethod
    def ordered(count: int, bufs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The ticks of a :meth:`raw` copy in time order."""
        size = len(bufs["t"])
        if count <= size:
            return bufs
        i = count % size
        return {k: np.concatenate([v[i:], v[:i]]) for k, v in bufs.items()}

    def snapshot(self) -> dict[str, np.ndarray]:
        """The logged ticks in time order."""
        return self.ordered(*self.raw())


# ------------------------------------------------------------------------------------ the loop


@dataclass
class Channels:
    """The controller's ends of its connections: actions in, requests/replies, shared state, events."""

    actions: Any  # Connection: receives (t, action)
    requests: Any  # Connection: receives (name, args), sends replies
    state: Any  # mp.Array('d')
    estop: Any  # Event
    stop: Any  # Event


def _publish(arr, layout: StateLayout, seq: int, now: float, core: ControllerCore, st: ArmState,
             chain: Chain | None) -> None:
    s = layout.slices
    if chain is not None and np.all(np.isfinite(st.q)):
        p, R = chain.fk(st.q)
        ee = np.concatenate([p, matrix_to_rotvec(R)])
    else:
        ee = np.zeros(6)
    lock = arr.get_lock()
    if not lock.acquire(block=False):  # a reader holds it (perhaps descheduled): never wait; publish next tick
        return
    try:
        v = np.frombuffer(arr.get_obj(), dtype=np.float64)
        v[s["seq"]] = seq
        v[s["t"]] = now
        v[s["status"]] = STATUSES.index(core.status)
        v[s["last_arrival"]] = np.nan if core.last_arrival is None else core.last_arrival
        v[s["q"]] = st.q
        v[s["dq"]] = st.dq
        v[s["gripper"]] = st.gripper
        v[s["q_cmd"]] = core.q_cmd
        v[s["g_cmd"]] = core.g_cmd
        v[s["ee"]] = ee
        v[s["counters"]] = [core.counters[k] for k in COUNTERS]
    finally:
        lock.release()


class _DriverCalls:
    """The servo loop's side of the driver: ``servo`` / ``estop`` / ``recover`` calls.

    Drivers may be read from another thread (:class:`_Reader`) while these run. A driver whose
    reads and writes share one link that cannot take both at once (``concurrent_io = False``,
    e.g. a serial motor bus) gets a lock; a write that finds it taken (a read in progress) waits
    at most ``wait`` seconds, then is skipped this tick, so the loop never blocks on a read.
    """

    def __init__(self, driver: ArmDriver, wait: float = 0.0):
        self.driver, self.wait = driver, float(wait)
        self.lock = None if getattr(driver, "concurrent_io", True) else threading.Lock()

    @contextlib.contextmanager
    def held(self, wait: float):
        """The link's lock (when the driver needs one), waiting up to ``wait`` s; yields whether it is held."""
        if self.lock is None:
            yield True
            return
        got = self.lock.acquire(timeout=wait) if wait > 0 else self.lock.acquire(blocking=False)
        try:
            yield got
        finally:
            if got:
                self.lock.release()

    def read(self) -> ArmState:
        """One read (under the lock when the driver needs one)."""
        with self.held(3600.0):
            return self.driver.read()

    def servo(self, q: np.ndarray, gripper: float, dt: float) -> bool:
        """Send one command; False when the link was busy (nothing sent)."""
        with self.held(self.wait) as got:
            if got:
                self.driver.servo(q, gripper, dt)
            return got

    def estop(self) -> bool:
        """The driver's stop; False when the link was busy (try again next tick). The command is
        frozen by the controller regardless."""
        try:
            with self.held(self.wait) as got:
                if got:
                    self.driver.estop()
                return got
        except Exception:  # noqa: BLE001 - the command is frozen regardless; nothing more to do here
            traceback.print_exc()
            return True


class _Reader:
    """Reads the arm in its own thread: the servo loop asks for a read each tick and waits for it
    only briefly, so a driver read that blocks delays nothing but the freshness of the state."""

    def __init__(self, calls: _DriverCalls):
        self._calls = calls
        self._cond = threading.Condition()
        self._asked = self._done = 0
        self._latest: tuple[ArmState | None, str | None, float] = (None, None, -math.inf)
        self.reading_since: float | None = None  # monotonic start of the driver read in progress
        self._reading_k = 0  # the request that read serves
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="controller-reader", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._closed or self._asked > self._done)
                if self._closed:
                    return
                k = self._reading_k = self._asked
                self.reading_since = time.monotonic()
            try:
                st, err = self._calls.read(), None
            except Exception as e:  # noqa: BLE001 - a driver error is a fault; repeated, they stop us
                st, err = None, f"read failed: {type(e).__name__}: {e}"
            with self._cond:
                self._latest = (st, err, time.monotonic())
                self._done = k
                self.reading_since = None
                self._cond.notify_all()

    def ask(self) -> int:
        """Ask for a fresh read; returns its number."""
        with self._cond:
            self._asked += 1
            self._cond.notify_all()
            return self._asked

    def get(self, k: int, wait: float) -> tuple[ArmState | None, str | None, float, float, int]:
        """(newest state, read error, monotonic time it was read, how long the driver read in progress has
        taken so far in seconds and in reads asked meanwhile: 0, 0 when none is), waiting up to ``wait`` s
        for read ``k``. Both measures must grow for a read to count as stuck: a whole process that the
        machine did not schedule for a while asks for no reads meanwhile."""
        with self._cond:
            self._cond.wait_for(lambda: self._done >= k, timeout=wait)
            since = self.reading_since
            if since is None:
                return (*self._latest, 0.0, 0)
            return (*self._latest, max(0.0, time.monotonic() - since), self._asked - self._reading_k)

    def fresh(self, max_stuck: float) -> ArmState:
        """The newest state unless the last read failed or the read in progress has been stuck for more than
        ``max_stuck`` s (never waits); raises :class:`RobotError` then."""
        with self._cond:
            st, err, t = self._latest
            since = self.reading_since
        now = time.monotonic()
        if st is None or err is not None or (since is not None and now - since > max_stuck):
            raise RobotError(f"no fresh state from the arm ({err or f'last read {now - t:.3f} s ago'}); "
                             "check its connection")
        return st

    def close(self, timeout: float = 1.0) -> None:
        """Stop the thread (a read still blocked in the driver is left to finish on its own)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
        self._thread.join(timeout)


class _Replier:
    """Sends request replies from its own thread, in order: a client slow to read a large ``log``
    reply (megabytes through a pipe) blocks this thread, never the servo loop."""

    def __init__(self, conn: Any):
        self._conn = conn
        self._q: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="controller-replies", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while True:
            item = self._q.get()
            if item is None:
                return
            kind, payload = item
            try:
                if callable(payload):
                    payload = payload()
                self._conn.send((kind, payload))
            except (OSError, EOFError, BrokenPipeError):
                return
            except Exception as e:  # noqa: BLE001 - e.g. an unpicklable payload
                try:
                    self._conn.send(("error", f"{type(e).__name__}: {e}"))
                except OSError:
                    return

    def send(self, kind: str, payload: Any) -> None:
        """Queue a reply; a callable payload is evaluated in the reply thread."""
        self._q.put((kind, payload))

    def close(self, timeout: float = 1.0) -> None:
        """Send what is queued (up to ``timeout``), then stop."""
        self._q.put(None)
        self._thread.join(timeout)


REQUESTS = ("log", "faults", "hold", "reset", "recover")


def _handle_request(name: str, args: tuple, core: ControllerCore, calls: _DriverCalls, reader: _Reader,
                    log: TickLog, ch: Channels, now: float) -> Any:
    if name == "log":
        count, bufs = log.raw()  # a plain copy here; ordering and pickling happen in the reply thread
        return lambda: TickLog.ordered(count, bufs)
    if name == "faults":
        return list(core.fault_log)
    if name == "hold":
        core.hold(now)
        return core.status
    if name in ("reset", "recover"):
        if ch.estop.is_set():
            raise RobotError(f"{name}: the e-stop is still engaged; clear it first")
        if name == "recover":
            recover = getattr(calls.driver, "recover", None)
            if not callable(recover):
                raise RobotError(f"recover: the {type(calls.driver).__name__} driver has no error recovery; "
                                 "use reset")
            if core.status == "running":
                raise RobotError("recover: the arm is moving; hold first")
            with calls.held(5.0):
                recover()
        st = reader.fresh(core.cfg.read_timeout_s)
        if st.estop:
            raise RobotError(f"{name}: the arm still reports an emergency stop")
        core.reset(now, st.q, st.gripper)
        return core.status
    raise RobotError(f"unknown controller request {name!r}; valid: {', '.join(REQUESTS)}")


def control_loop(driver_spec: DriverSpec, config: ControllerConfig, limits: SafetyLimits, chain: Chain | None,
                 ch: Channels, terminate: threading.Event | None = None) -> None:
    """Run the servo loop until ``ch.stop`` (or ``terminate``, set by a signal handler) is set (module
    docstring). Replies ("ready", info) or ("error", message) on the request connection once the driver
    is connected and checked."""
    driver = None
    try:
        driver = driver_spec.build()
        driver.connect()
        st = driver.read()
        core = ControllerCore(config, limits, chain, st.q, st.gripper, time.monotonic())
    except BaseException as e:  # noqa: BLE001 - reported to the client, then the process ends
        msg = f"{type(e).__name__}: {e}"
        if not isinstance(e, (SafetyError, RobotError, ImportError, ValueError)):
            msg += "\n" + traceback.format_exc(limit=4)
        ch.requests.send(("error", msg))
        if driver is not None:
            try:
                driver.disconnect()
            except Exception:  # noqa: BLE001
                pass
        return
    layout = StateLayout(limits.n)
    log = TickLog(config.log_ticks, limits.n)
    dt = config.dt
    seq = 0
    calls = _DriverCalls(driver, wait=0.25 * dt)
    reader = _Reader(calls)
    replies = _Replier(ch.requests)
    _publish(ch.state, layout, seq, time.monotonic(), core, st, chain)
    ch.requests.send(("ready", {"n_joints": limits.n, "rate_hz": config.rate_hz, "q": st.q.tolist()}))
    next_t = time.monotonic()
    estopped = False
    t_used = next_t  # when the newest read already used was taken
    try:
        while not ch.stop.is_set() and not (terminate is not None and terminate.is_set()):
            now = time.monotonic()
            k = reader.ask()
            if ch.estop.is_set() and core.status != "estop":  # before anything that may take time
                core.estop(now, "e-stop requested")
            if core.status == "estop" and not estopped:
                estopped = calls.estop()
            got, err, t_got, blocked, ticks = reader.get(k, 0.25 * dt)  # this tick's read, or the newest one
            stuck = blocked > config.read_timeout_s and ticks * dt > config.read_timeout_s
            if stuck and not core.stale:  # a starved reader thread, or a stuck read?
                got, err, t_got, blocked, ticks = reader.get(k, dt)  # a starved one finishes once it gets the CPU
                stuck = blocked > config.read_timeout_s and ticks * dt > config.read_timeout_s
            new = t_got > t_used
            if new:
                t_used = t_got
                if got is not None:
                    st = got
            fault = (err or st.fault) if new else None  # each read's fault counts once
            while ch.actions.poll():
                try:
                    t_target, action = ch.actions.recv()
                except (EOFError, OSError):
                    ch.stop.set()
                    break
                except Exception as e:  # noqa: BLE001 - an unpicklable or malformed message
                    core.fault(now, "invalid", f"unreadable action message ({type(e).__name__})")
                    continue
                core.submit(now, t_target, action)
            # a driver read stuck longer than read_timeout_s makes the state stale (not a starved thread)
            cmd = core.tick(now, st.q, fault, st.estop, state_age=blocked if stuck else 0.0)
            if cmd.status == "estop":
                if not estopped:
                    estopped = calls.estop()
            else:
                estopped = False
                try:
                    if not calls.servo(cmd.q, cmd.gripper, dt):
                        core.counters["overruns"] += 1  # the link was busy with a read: nothing sent
                except Exception as e:  # noqa: BLE001
                    core.fault(now, "driver_faults", f"servo failed: {type(e).__name__}: {e}")
            seq += 1
            log.add(now, cmd.status, cmd.q, st.q, cmd.gripper)
            _publish(ch.state, layout, seq, now, core, st, chain)
            while ch.requests.poll():
                try:
                    name, args = ch.requests.recv()
                except (EOFError, OSError):
                    ch.stop.set()
                    break
                try:
                    replies.send("ok", _handle_request(name, args, core, calls, reader, log, ch, now))
                except Exception as e:  # noqa: BLE001
                    replies.send("error", f"{type(e).__name__}: {e}")
            next_t += dt
            delay = next_t - time.monotonic()
            if delay > 0:
                # not ch.estop.wait(delay): each timed-out wait of a multiprocessing Event leaves a count
                # that the next set() walks through, so the e-stop would get slower the longer we run
                time.sleep(delay)
            elif delay < -dt:  # more than a period late: count it and restart the schedule
                core.counters["overruns"] += 1
                next_t = time.monotonic()
    finally:
        try:
            core.hold(time.monotonic())
            if core.status != "estop":
                with calls.held(1.0):  # a single-link driver's read may hold the link a moment
                    driver.servo(core.q_cmd, core.g_cmd, dt)
        except Exception:  # noqa: BLE001
            pass
        reader.close()
        replies.close()
        try:
            driver.disconnect()
        except Exception:  # noqa: BLE001
            traceback.print_exc()


def _process_main(driver_spec, config, limits, chain, ch) -> None:
    """Entry point of the spawned controller process."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C belongs to the client, which stops us cleanly
    # SIGTERM: a last hold and the driver's disconnect. A threading.Event, whose is_set() takes no lock:
    # setting ch.stop (a multiprocessing Event) here could deadlock on a lock the loop holds
    terminate = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: terminate.set())
    raise_priority()
    control_loop(driver_spec, config, limits, chain, ch, terminate)


@contextlib.contextmanager
def sigterm_as_interrupt():
    """Within the block, SIGTERM raises KeyboardInterrupt in the main thread, so ``kill``, systemd
    or ``docker stop`` get the same clean stop as Ctrl-C (the arm held, then disconnected).
    Outside the main thread it does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def _raise(signum, frame):
        raise KeyboardInterrupt(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, _raise)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


# ------------------------------------------------------------------------------------ the robot


def pipe_request(conn, name: str, args: tuple, timeout: float, robot: str, peer: str) -> Any:
    """Send ``(name, args)`` over a pipe to a serving process (``peer``) and return its ``("ok", payload)`` reply.

    Raises :class:`RobotError` prefixed with ``robot`` when no reply comes within ``timeout`` seconds
    or the reply is an error. Callers that share ``conn`` between threads hold their own lock around it.
    """
    conn.send((name, args))
    if not conn.poll(timeout):
        raise RobotError(f"{robot}: {peer} did not answer {name!r} within {timeout} s")
    kind, payload = conn.recv()
    if kind != "ok":
        raise RobotError(f"{robot}: {payload}")
    return payload


class ControlledRobot:
    """A :class:`~.base.Robot` whose arm is servoed by a controller process (module docstring).

    Args:
        driver: how the controller process builds the arm driver.
        chain: the arm's kinematics (workspace box, ``ee`` actions, TCP pose in the state).
        limits: the safety limits the controller enforces.
        config: controller settings.
        cameras: cameras read by :meth:`get_observation`.
        instruction: the ``task`` put in observations (None: left out).
        fps: the rate actions are meant to be sent at (default target time of an action: now + 1/fps).
        max_frame_age_s: a camera frame older than this raises :class:`~.base.StaleFrameError`.
        in_thread: run the control loop in a thread of this process instead of a spawned process
            (drivers that must live here, e.g. fakes in tests); the action path is the same.
    """

    def __init__(self, driver: DriverSpec, chain: Chain | None, limits: SafetyLimits,
                 config: ControllerConfig | None = None, cameras: Sequence[Camera] = (),
                 instruction: str | None = None, fps: float = 10.0, max_frame_age_s: float = 1.0,
                 in_thread: bool = False, name: str = "robot"):
        self.driver_spec, self.chain, self.limits = driver, chain, limits
        self.config = config or ControllerConfig()
        if chain is not None and chain.n != limits.n:
            raise SafetyError(f"{name}: limits for {limits.n} joints, chain {chain.name} has {chain.n}")
        self.cameras = list(cameras)
        names = [c.name for c in self.cameras]
        if len(set(names)) != len(names):
            raise ValueError(f"{name}: duplicate camera names {names}")
        self.instruction = instruction
        if not (isinstance(fps, (int, float)) and 0 < fps <= self.config.rate_hz):
            raise ValueError(f"{name}: fps must be in (0, controller rate {self.config.rate_hz}], got {fps!r}")
        self.fps = float(fps)
        self.max_frame_age_s = float(max_frame_age_s)
        self.in_thread = bool(in_thread)
        self.name = name
        self.n = limits.n
        self.dim = action_dim(self.config.action_mode, self.n)
        self._layout = StateLayout(self.n)
        self._worker = None
        self._send_lock = threading.Lock()
        self._req_lock = threading.Lock()
        self._last_index: dict[str, int] = {}
        self.frozen_reads = 0  # camera reads that returned the same frame as the previous read

    # -------------------------------------------------------------- description

    @property
    def joint_names(self) -> tuple[str, ...]:
        """Joint names (from the chain, else j1..jn)."""
        return self.chain.joint_names if self.chain is not None else tuple(f"j{i + 1}" for i in range(self.n))

    @property
    def spec(self) -> DatasetSpec:
        """The :class:`DatasetSpec` of this robot's observations and actions."""
        return robot_spec(self.joint_names, self.config.action_mode,
                          {c.name: tuple(c.shape[:2]) for c in self.cameras}, self.fps)

    @property
    def is_connected(self) -> bool:
        """Whether the controller is running."""
        return self._worker is not None

    # -------------------------------------------------------------- lifecycle

    def connect(self) -> None:
        """Start the controller (process or thread), wait for its driver, open the cameras."""
        if self._worker is not None:
            return
        ctx = mp.get_context("spawn")
        a_recv, a_send = ctx.Pipe(duplex=False)
        r_ours, r_theirs = ctx.Pipe(duplex=True)
        state = ctx.Array("d", self._layout.size)
        ch = Channels(actions=a_recv, requests=r_theirs, state=state, estop=ctx.Event(), stop=ctx.Event())
        args = (self.driver_spec, self.config, self.limits, self.chain, ch)
        if self.in_thread:
            worker = threading.Thread(target=control_loop, args=args, name=f"{self.name}-controller", daemon=True)
        else:
            worker = ctx.Process(target=_process_main, args=args, name=f"{self.name}-controller", daemon=True)
        worker.start()
        self._ch, self._a_send, self._req, self._state = ch, a_send, r_ours, state
        self._worker = worker
        deadline = time.monotonic() + self.config.connect_timeout_s
        try:
            while not r_ours.poll(0.05):
                if not worker.is_alive():
                    self._cleanup()
                    raise RobotError(f"{self.name}: the controller exited before connecting to the arm")
                if time.monotonic() > deadline:
                    raise RobotError(f"{self.name}: the arm did not connect within {self.config.connect_timeout_s} s")
        except BaseException:  # a timeout, or Ctrl-C while waiting: stop the controller before leaving
            if self._worker is not None:
                self.disconnect()
            raise
        kind, info = r_ours.recv()
        if kind != "ready":
            self._join(5.0)
            self._cleanup()
            raise RobotError(f"{self.name}: cannot start the controller: {info}")
        self.info = info
        try:
            for cam in self.cameras:
                cam.connect()
        except BaseException:
            self.disconnect()
            raise

    def _join(self, timeout: float) -> None:
        w = self._worker
        w.join(timeout)
        if w.is_alive() and hasattr(w, "terminate"):
            w.terminate()
            w.join(2.0)

    def _cleanup(self) -> None:
        for conn in (self._a_send, self._req, self._ch.actions, self._ch.requests):
            try:
                conn.close()
            except OSError:
                pass
        self._worker = None

    def disconnect(self) -> None:
        """Hold, stop the controller (it hands the driver a last hold and disconnects), close cameras."""
        if self._worker is None:
            return
        try:
            self._ch.stop.set()
            self._join(5.0)
        finally:
            self._cleanup()
            for cam in self.cameras:
                try:
                    cam.disconnect()
                except Exception:  # noqa: BLE001
                    pass

    def __enter__(self) -> "ControlledRobot":
        self.connect()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.disconnect()

    def _require(self) -> None:
        if self._worker is None:
            raise RobotError(f"{self.name}: not connected; call connect() or use it as a context manager")
        if not self._worker.is_alive():
            code = getattr(self._worker, "exitcode", None)
            raise RobotError(f"{self.name}: the controller stopped unexpectedly (exit code {code})")

    # -------------------------------------------------------------- state and observations

    def state(self) -> ControllerState:
        """The controller's latest published state."""
        self._require()
        return ControllerState.read(self._state, self._layout)

    @property
    def status(self) -> str:
        """starting | idle | running | holding | stopped | estop."""
        return self.state().status

    def read_cameras(self, now: float | None = None) -> dict[str, Any]:
        """The newest frame of every camera; raises :class:`StaleFrameError` for one older than allowed."""
        now = time.monotonic() if now is None else now
        frames = {}
        for cam in self.cameras:
            f = cam.read()
            if f.age(now) > self.max_frame_age_s:
                raise StaleFrameError(f"{self.name}: camera {cam.name!r} frame is {f.age(now):.3f} s old "
                                      f"(max_frame_age_s={self.max_frame_age_s}); frozen or disconnected")
            if self._last_index.get(cam.name) == f.index:
                self.frozen_reads += 1
            self._last_index[cam.name] = f.index
            frames[cam.name] = f
        return frames

    def fresh_state(self, max_age_s: float) -> tuple[ControllerState, float]:
        """(the controller's state, the time it was checked): published within ``max_age_s``, else RobotError.
        A stale read is read again once: the stall may have been this process's, not the controller's."""
        for attempt in range(2):
            st = self.state()
            now = time.monotonic()
            if now - st.t <= max_age_s:
                return st, now
            if attempt == 0:
                time.sleep(2 * self.config.dt)
        raise RobotError(f"{self.name}: the controller has not published for {now - st.t:.3f} s")

    def get_observation(self) -> dict[str, Any]:
        """Flat observation: state, camera images, ``timestamp`` (oldest source's capture time), task."""
        st, now = self.fresh_state(max(0.5, 20 * self.config.dt))
        frames = self.read_cameras(now)
        obs: dict[str, Any] = {STATE: st.state_vector()}
        for cam, f in frames.items():
            obs[image_key(cam)] = f.image
        obs[TIMESTAMP] = min([st.t] + [f.timestamp for f in frames.values()])
        if self.instruction:
            obs[TASK] = self.instruction
        return obs

    # -------------------------------------------------------------- commands

    def send_action(self, action: np.ndarray, t: float | None = None) -> None:
        """Queue ``action`` (``dim``,) as the target for monotonic time ``t`` (default: now + 1/fps).

        Only the shape is checked here; everything else (NaN, limits, staleness) is the controller's."""
        self._require()
        a = np.asarray(action, np.float32)
        if a.shape != (self.dim,):
            raise ContractError(f"action: expected shape ({self.dim},) for action_mode "
                                f"{self.config.action_mode!r} with {self.n} joints, got {a.shape}")
        t = time.monotonic() + 1.0 / self.fps if t is None else float(t)
        with self._send_lock:
            self._a_send.send((t, a))

    def request(self, name: str, *args: Any, timeout: float = 5.0) -> Any:
        """Ask the controller: ``log``, ``faults``, ``hold``, ``reset`` or ``recover``."""
        self._require()
        with self._req_lock:
            return pipe_request(self._req, name, args, timeout, self.name, "the controller")

    def estop(self) -> None:
        """Emergency stop: the controller freezes the command within a tick and latches."""
        self._require()
        self._ch.estop.set()

    def clear_estop(self) -> str:
        """Release the e-stop and re-anchor at the measured position; returns the new status."""
        self._ch.estop.clear()
        return self.request("reset")

    def reset_faults(self) -> str:
        """Leave ``stopped`` after repeated faults (re-anchored at the measured position)."""
        return self.request("reset")

    def hold(self) -> str:
        """Drop the planned trajectory and hold (not a fault)."""
        return self.request("hold")

    def recover(self) -> str:
        """The operator's error recovery: the driver clears the arm's errors (e.g. Franka reflexes after a
        collision; never done automatically), then the controller re-anchors at the measured position."""
        return self.request("recover", timeout=10.0)

    def log(self) -> dict[str, np.ndarray]:
        """The controller's tick log (t, status, q_cmd, q, g_cmd), oldest first."""
        return self.request("log")

    def faults(self) -> list[tuple[float, str]]:
        """The controller's recent faults and e-stops (time, message)."""
        return self.request("faults")


def tick_jitter(t: np.ndarray, rate_hz: float) -> dict[str, float]:
    """Control-period jitter of logged tick times: p50 / p99 / max of |interval - period| in ms."""
    d = np.abs(np.diff(np.asarray(t, float)) - 1.0 / rate_hz) * 1e3
    if d.size == 0:
        return {"p50_ms": float("nan"), "p99_ms": float("nan"), "max_ms": float("nan")}
    return {"p50_ms": float(np.percentile(d, 50)), "p99_ms": float(np.percentile(d, 99)), "max_ms": float(d.max())}


__all__ = ["ACTION_MODES", "ArmDriver", "ArmState", "Command", "ControlledRobot", "ControllerConfig", "ControllerCore",
           "ControllerState", "DriverSpec", "REQUESTS", "STATUSES", "control_loop", "sigterm_as_interrupt",
           "tick_jitter"]
