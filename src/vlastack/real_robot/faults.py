"""Faults of real setups, injected into simulated robots (the twin, the kitchen robot).

- :class:`DelayedCommands`: commands take effect ``latency + U(0, jitter)`` after they were
  sent, in the order sent; each is lost with probability ``drop_prob``.
- :class:`DelayedObservations`: state and camera frames are published ``obs_latency_s`` after
  they were measured; after a frame, a camera stops updating for ``freeze_s`` with probability
  ``freeze_prob`` (its timestamp stays old, so a frozen frame is detectable).

Both are driven by explicit monotonic times, from the simulation's own loop.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Mapping

import numpy as np

#: fault settings and their valid ranges (seconds, probabilities)
FAULT_RANGES = {"cmd_latency_s": (0, 1), "cmd_jitter_s": (0, 1), "drop_prob": (0, 0.9), "obs_latency_s": (0, 1),
                "freeze_prob": (0, 1), "freeze_s": (0, 10)}


def check_ranges(owner: str, values: Mapping[str, Any], ranges: Mapping[str, tuple[float, float]]) -> None:
    """Raise ValueError naming ``owner.name`` for any value outside its [lo, hi] range."""
    for name, (lo, hi) in ranges.items():
        v = values[name]
        if isinstance(v, bool) or not (isinstance(v, (int, float)) and lo <= v <= hi):
            raise ValueError(f"{owner}.{name}: expected a number in [{lo}, {hi}], got {v!r}")


@dataclass
class InjectedFaults:
    """The fault settings a simulated robot's config shares (module docstring); ``seed`` seeds their draws."""

    cmd_latency_s: float = 0.0
    cmd_jitter_s: float = 0.0
    drop_prob: float = 0.0
    obs_latency_s: float = 0.0
    freeze_prob: float = 0.0
    freeze_s: float = 0.3
    seed: int = 0


class DelayedCommands:
    """Commands applied after latency + jitter (order kept), some dropped (module docstring)."""

    def __init__(self, latency_s: float, jitter_s: float, drop_prob: float, rng: np.random.Generator):
        self.latency_s, self.jitter_s, self.drop_prob, self.rng = latency_s, jitter_s, drop_prob, rng
        self.pending: deque = deque()  # (apply_at, command)
        self.last_apply = 0.0
        self.dropped = 0

    def push(self, t_sent: float, command: Any) -> bool:
        """Queue ``command`` sent at ``t_sent``; False when it was dropped."""
        if self.rng.random() < self.drop_prob:
            self.dropped += 1
            return False
        at = t_sent + self.latency_s + self.rng.uniform(0, self.jitter_s)
        self.last_apply = max(at, self.last_apply)
        self.pending.append((self.last_apply, command))
        return True

    def due(self, now: float) -> list[Any]:
        """The commands whose time has come, oldest first."""
        out = []
        while self.pending and self.pending[0][0] <= now:
            out.append(self.pending.popleft()[1])
        return out

    def clear(self) -> None:
        """Forget every pending command (e-stop, scene reset)."""
        self.pending.clear()


class DelayedObservations:
    """State snapshots and camera frames published after ``obs_latency_s``, frames sometimes frozen."""

    def __init__(self, cameras: Iterable[str], obs_latency_s: float, freeze_prob: float, freeze_s: float,
                 rng: np.random.Generator):
        self.latency, self.freeze_prob, self.freeze_s, self.rng = obs_latency_s, freeze_prob, freeze_s, rng
        self.states: deque = deque()  # (t, snapshot)
        self.frames: deque = deque()  # (t, index, {cam: image})
        self.freeze_until = {c: -1.0 for c in cameras}
        self.frozen = 0
        self.frame_index = 0

    def add_state(self, t: float, snapshot: np.ndarray) -> None:
        """A state measured at ``t``."""
        self.states.append((t, snapshot))

    def add_frames(self, t: float, images: Mapping[str, np.ndarray]) -> None:
        """Camera images captured at ``t``."""
        self.frame_index += 1
        self.frames.append((t, self.frame_index, dict(images)))

    def publish(self, now: float, state_fn: Callable[[np.ndarray], None],
                frame_fn: Callable[[str, np.ndarray, float, int], None]) -> None:
        """Hand what is old enough to ``state_fn(snapshot)`` (the newest) and ``frame_fn(cam, image, t, index)``."""
        while len(self.states) > 1 and self.states[1][0] <= now - self.latency:
            self.states.popleft()
        if self.states and self.states[0][0] <= now - self.latency:
            state_fn(self.states[0][1])
        while self.frames and self.frames[0][0] <= now - self.latency:
            t_cap, idx, imgs = self.frames.popleft()
            for cam, img in imgs.items():
                if t_cap < self.freeze_until[cam]:
                    self.frozen += 1
                    continue
                frame_fn(cam, img, t_cap, idx)
                if self.rng.random() < self.freeze_prob:
                    self.freeze_until[cam] = t_cap + self.freeze_s
