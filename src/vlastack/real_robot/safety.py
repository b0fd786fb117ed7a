"""Safety limits and the per-tick filter the controller applies to every command it sends.

The filter sits inside the controller process (:mod:`.controller`) between the interpolated
target and the driver; nothing reaches a driver without passing it. Given the previous
command ``q_prev`` (which satisfies every limit) and a desired ``q_des`` (anything at all: NaN,
inf, huge, a jump), :meth:`SafetyFilter.apply` returns a command that

1. is finite (a non-finite target holds the previous command),
2. lies inside the joint position limits (shrunk by ``margin``),
3. moves each joint by at most ``min(v_max * dt, max_step)`` this tick (the step is scaled as a
   whole, so the direction of motion is kept),
4. keeps the TCP inside the workspace box (by bisection along the step: the largest fraction
   of the step whose end point is inside), and
5. moves the gripper within [-1, 1] by at most ``gripper_step`` per tick.

By induction a command stream that starts inside the limits never leaves them; the controller
refuses to start an arm that is outside them (:meth:`SafetyLimits.check_start`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from vlastack.real_robot.kinematics import Chain


class SafetyError(RuntimeError):
    """A configuration or start state the controller refuses to run with; the message says why."""


def _vec(name: str, value: Any, n: int) -> np.ndarray:
    a = np.asarray(value, float)
    if a.ndim == 0:
        a = np.full(n, float(a))
    if a.shape != (n,) or not np.all(np.isfinite(a)):
        raise SafetyError(f"safety.{name}: expected {n} finite numbers, got {value!r}")
    return a


@dataclass
class SafetyLimits:
    """Every limit the controller enforces (see the module docstring).

    Args:
        q_lower, q_upper: joint position limits (rad), (n,).
        v_max: joint speed limits (rad/s), (n,) or one number.
        max_step: largest joint move per control tick (rad), (n,) or one number.
        margin: the position limits are shrunk by this much (rad) on both sides.
        workspace_lower, workspace_upper: the TCP's allowed box (m, base frame), or None for no box.
        gripper_step: largest gripper change per tick (the gripper command is in [-1, 1]).
        tracking_tol: a measured position this far (rad, any joint) from the command is a fault.
    """

    q_lower: Sequence[float]
    q_upper: Sequence[float]
    v_max: Sequence[float] | float
    max_step: Sequence[float] | float = 0.02
    margin: float = 0.02
    workspace_lower: Sequence[float] | None = None
    workspace_upper: Sequence[float] | None = None
    gripper_step: float = 0.05
    tracking_tol: float = 0.5
    _arrays: dict = field(default=None, init=False, repr=False, compare=False)

    def __post_init__(self):
        lo = np.asarray(self.q_lower, float)
        n = lo.shape[0] if lo.ndim == 1 else 0
        if n == 0:
            raise SafetyError(f"safety.q_lower: expected one limit per joint, got {self.q_lower!r}")
        lo, hi = _vec("q_lower", self.q_lower, n), _vec("q_upper", self.q_upper, n)
        if not (isinstance(self.margin, (int, float)) and math.isfinite(self.margin) and self.margin >= 0):
            raise SafetyError(f"safety.margin: expected a number >= 0 (rad), got {self.margin!r}")
        lo_m, hi_m = lo + self.margin, hi - self.margin
        if np.any(lo_m >= hi_m):
            raise SafetyError(f"safety: q_lower + margin must stay below q_upper - margin (joints "
                              f"{np.flatnonzero(lo_m >= hi_m).tolist()})")
        v = _vec("v_max", self.v_max, n)
        s = _vec("max_step", self.max_step, n)
        if np.any(v <= 0) or np.any(s <= 0):
            raise SafetyError("safety.v_max and safety.max_step must be positive")
        box = None
        if (self.workspace_lower is None) != (self.workspace_upper is None):
            raise SafetyError("safety: give both workspace_lower and workspace_upper (or neither)")
        if self.workspace_lower is not None:
            wl, wu = _vec("workspace_lower", self.workspace_lower, 3), _vec("workspace_upper", self.workspace_upper, 3)
            if np.any(wl >= wu):
                raise SafetyError(f"safety: workspace_lower {wl.tolist()} must be below workspace_upper {wu.tolist()}")
            box = (wl, wu)
        for name in ("gripper_step", "tracking_tol"):
            val = getattr(self, name)
            if not (isinstance(val, (int, float)) and math.isfinite(val) and val > 0):
                raise SafetyError(f"safety.{name}: expected a positive number, got {val!r}")
        self._arrays = {"lo": lo_m, "hi": hi_m, "v_max": v, "max_step": s, "box": box}

    @property
    def n(self) -> int:
        """Number of joints."""
        return len(self._arrays["lo"])

    @property
    def lower(self) -> np.ndarray:
        """Effective lower joint limits (with the margin), (n,)."""
        return self._arrays["lo"]

    @property
    def upper(self) -> np.ndarray:
        """Effective upper joint limits (with the margin), (n,)."""
        return self._arrays["hi"]

    @property
    def box(self) -> tuple[np.ndarray, np.ndarray] | None:
        """The workspace box (lower (3,), upper (3,)) or None."""
        return self._arrays["box"]

    def step_cap(self, dt: float) -> np.ndarray:
        """Largest per-joint move (n,) in one tick of ``dt`` seconds: ``min(v_max * dt, max_step)``."""
        return np.minimum(self._arrays["v_max"] * dt, self._arrays["max_step"])

    def in_box(self, p: np.ndarray) -> bool:
        """Whether TCP position ``p`` (3,) is inside the workspace box (always true without one)."""
        b = self.box
        return b is None or bool(np.all(p >= b[0]) and np.all(p <= b[1]))

    def check_start(self, q: np.ndarray, chain: Chain | None) -> None:
        """Raise :class:`SafetyError` unless ``q`` is finite, inside the joint limits and the box."""
        q = np.asarray(q, float)
        if q.shape != (self.n,) or not np.all(np.isfinite(q)):
            raise SafetyError(f"start: the arm reports {q.tolist()} (expected {self.n} finite joint positions)")
        bad = np.flatnonzero((q < self.lower) | (q > self.upper))
        if bad.size:
            raise SafetyError(f"start: joints {bad.tolist()} at {q[bad].round(4).tolist()} are outside the limits "
                              f"[{self.lower[bad].round(4).tolist()}, {self.upper[bad].round(4).tolist()}] "
                              "(margin included); jog the arm inside before connecting")
        if chain is not None and self.box is not None:
            p = chain.fk_pos(q)
            if not self.in_box(p):
                raise SafetyError(f"start: the tool at {p.round(4).tolist()} is outside the workspace box "
                                  f"{self.box[0].tolist()} .. {self.box[1].tolist()}; jog it inside before connecting")

    @classmethod
    def for_chain(cls, chain: Chain, overrides: Mapping[str, Any] | None = None) -> "SafetyLimits":
        """Limits from ``chain``'s joint limits and speeds, with ``overrides`` (config keys) applied.

        ``v_scale`` in ``overrides`` scales the chain's speed limits (default 0.5).
        """
        o = dict(overrides or {})
        scale = float(o.pop("v_scale", 0.5))
        if not 0 < scale <= 1:
            raise SafetyError(f"safety.v_scale: expected a fraction in (0, 1], got {scale!r}")
        known = {"q_lower", "q_upper", "v_max", "max_step", "margin", "workspace_lower", "workspace_upper",
                 "gripper_step", "tracking_tol"}
        unknown = sorted(set(o) - known)
        if unknown:
            raise SafetyError(f"safety: unknown keys {unknown}; valid: {sorted(known | {'v_scale'})}")
        base = {"q_lower": chain.lower, "q_upper": chain.upper, "v_max": [v * scale for v in chain.v_max]}
        base.update({k: v for k, v in o.items() if v is not None or k.startswith("workspace")})
        return cls(**base)


@dataclass
class FilterResult:
    """One filtered command and what the filter had to do to it."""

    q: np.ndarray
    gripper: float
    invalid: bool = False  # the target was not finite: the previous command was held
    clipped: bool = False  # joint position limits cut the target
    rate_limited: bool = False  # the per-tick step cap cut the move
    box_limited: bool = False  # the workspace box cut the move


class SafetyFilter:
    """Applies :class:`SafetyLimits` to each tick's command (module docstring); stateless."""

    def __init__(self, limits: SafetyLimits, chain: Chain | None, dt: float):
        if chain is not None and chain.n != limits.n:
            raise SafetyError(f"safety: limits for {limits.n} joints but the chain {chain.name} has {chain.n}")
        if limits.box is not None and chain is None:
            raise SafetyError("safety: a workspace box needs the arm's kinematic chain")
        if not (isinstance(dt, (int, float)) and 0 < dt < 1):
            raise SafetyError(f"safety: control period dt must be in (0, 1) s, got {dt!r}")
        self.limits, self.chain, self.dt = limits, chain, float(dt)
        self.cap = limits.step_cap(self.dt)  # (n,)

    def apply(self, q_prev: np.ndarray, g_prev: float, q_des: np.ndarray, g_des: float) -> FilterResult:
        """The safe command for this tick, from the previous command and the desired one."""
        lim = self.limits
        q_des = np.asarray(q_des, float)
        res = FilterResult(q=q_prev.copy(), gripper=float(g_prev))
        # gripper: finite, [-1, 1], rate-limited
        g = float(g_des) if np.isfinite(g_des) else float(g_prev)
        g = min(1.0, max(-1.0, g))
        res.gripper = float(np.clip(g, g_prev - lim.gripper_step, g_prev + lim.gripper_step))
        if q_des.shape != q_prev.shape or not np.all(np.isfinite(q_des)):
            res.invalid = True
            return res
        q = np.clip(q_des, lim.lower, lim.upper)
        res.clipped = bool(np.any(q != q_des))
        delta = q - q_prev  # (n,)
        mag = np.abs(delta)
        over = mag > self.cap
        if np.any(over):
            scale = float(np.min(self.cap[over] / mag[over]))
            delta = delta * scale
            res.rate_limited = True
        q = np.clip(q_prev + delta, lim.lower, lim.upper)
        if lim.box is not None and not lim.in_box(self.chain.fk_pos(q)):
            lo_f, hi_f = 0.0, 1.0  # q_prev + lo_f * delta is inside (q_prev is), + hi_f * delta is not
            for _ in range(14):
                mid = (lo_f + hi_f) / 2
                if lim.in_box(self.chain.fk_pos(q_prev + mid * delta)):
                    lo_f = mid
                else:
                    hi_f = mid
            q = np.clip(q_prev + lo_f * delta, lim.lower, lim.upper)
            res.box_limited = True
        res.q = q
        return res
