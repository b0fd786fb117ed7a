"""Chunk executors: how a policy's action chunks become one action per control step.

A policy predicts a chunk of H actions from the observation at step t (index j of the chunk
is meant for step t + j). An executor is a strategy object that decides when to ask for a new
chunk and which action to send at each step. The episode loop (:func:`~.episode.run_episode`)
calls ``reset(plan)`` at the start of an episode, ``act(step, obs)`` once per control step and
``close()`` at the end; ``plan(obs)`` returns one chunk as a float array (H, D_a).

- :class:`RecedingHorizon` — plan, execute actions 0 .. n-1 of the chunk, plan again from the
  observation after them (Diffusion Policy's "execute n of H"). ``n_action_steps=None``: all H.
- :class:`TemporalEnsemble` — plan every step (or every ``replan_every`` steps) and send, for
  step t, the weighted mean of every stored chunk's action for t with ACT's exponential weights
  ``w_i = exp(-coeff * i)``, ``i = 0`` the oldest chunk (smooth on real robots; it has cut
  success in simulation, see NOTES.md "Chunk execution").
- :class:`AsyncExecutor` — latency-aware asynchronous execution: the next chunk is computed in
  a background thread while the current one runs, from the observation ``prefetch_steps`` steps
  before the current chunk runs out; when it arrives, the actions meant for steps already past
  are skipped (latency compensation). ``act`` never waits for inference (except for the very
  first chunk of an episode): if the next chunk is late, the current chunk's actions beyond n
  (its tail, planned for exactly those steps) are used, then the last action is held.

``make_executor(name, **options)`` builds one by name (``receding``, ``ensemble``, ``async``).
"""

from __future__ import annotations

import math
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, ClassVar

import numpy as np

from vlastack.types import Observation

#: a policy bound for one episode: observation (batch of 1, history stacked) -> chunk (H, D_a)
PlanFn = Callable[[Observation], np.ndarray]


class ExecutorError(ValueError):
    """Bad executor options or a malformed chunk; the message names the problem."""


def check_chunk(chunk: Any) -> np.ndarray:
    """A chunk as float32 (H, D_a); raises :class:`ExecutorError` on any other shape or NaN."""
    a = np.asarray(chunk, dtype=np.float32)
    if a.ndim != 2 or a.shape[0] < 1 or a.shape[1] < 1:
        raise ExecutorError(f"a chunk must be (H, D_a) with H, D_a >= 1, got shape {a.shape}")
    if not np.all(np.isfinite(a)):
        raise ExecutorError(f"the policy returned a chunk with NaN/inf at rows {sorted(set(np.argwhere(~np.isfinite(a))[:, 0].tolist()))}")
    return a


class ChunkExecutor:
    """Base of the executors: episode start/end and counters; subclasses implement :meth:`act`."""

    name: ClassVar[str] = ""

    def __init__(self) -> None:
        self._plan: PlanFn | None = None
        self.stats: dict[str, Any] = {}

    def reset(self, plan: PlanFn) -> None:
        """Start an episode whose chunks come from ``plan``."""
        self._plan = plan
        self.stats = {"policy_calls": 0, "inference_s": 0.0}

    def _call(self, obs: Observation) -> np.ndarray:
        if self._plan is None:
            raise ExecutorError(f"{type(self).__name__}.act() before reset(plan)")
        t0 = time.perf_counter()
        chunk = check_chunk(self._plan(obs))  # (H, D_a)
        self.stats["policy_calls"] += 1
        self.stats["inference_s"] += time.perf_counter() - t0
        return chunk

    def act(self, step: int, obs: Observation) -> np.ndarray:
        """The action (D_a,) to send at control step ``step`` (0-based) given the observation there."""
        raise NotImplementedError

    def close(self) -> None:
        """End the episode (frees background work where there is any)."""

    def describe(self) -> dict[str, Any]:
        """JSON-ready name and options."""
        return {"name": self.name}


def _check_n(n: int | None, what: str = "n_action_steps") -> int | None:
    if n is None:
        return None
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ExecutorError(f"{what}: expected an int >= 1 or None (the whole chunk), got {n!r}")
    return int(n)


class RecedingHorizon(ChunkExecutor):
    """Execute actions 0 .. n-1 of each chunk, then plan again (n = ``n_action_steps``, capped at H)."""

    name = "receding"

    def __init__(self, n_action_steps: int | None = None):
        super().__init__()
        self.n_action_steps = _check_n(n_action_steps)
        self._queue: list[np.ndarray] = []

    def reset(self, plan: PlanFn) -> None:
        """Start an episode: empty queue."""
        super().reset(plan)
        self._queue = []

    def act(self, step: int, obs: Observation) -> np.ndarray:
        """Pop the next queued action, planning a new chunk when the queue is empty."""
        if not self._queue:
            chunk = self._call(obs)  # (H, D_a)
            n = chunk.shape[0] if self.n_action_steps is None else min(self.n_action_steps, chunk.shape[0])
            self._queue = list(chunk[:n])
        return self._queue.pop(0)

    def describe(self) -> dict[str, Any]:
        """Name and n."""
        return {"name": self.name, "n_action_steps": self.n_action_steps}


class TemporalEnsemble(ChunkExecutor):
    """ACT's temporal ensembling: the weighted mean over every chunk's action for the current step.

    Chunks planned at steps s_0 < s_1 < ... that still cover step t (s_i <= t < s_i + H) each
    give an action ``chunk_i[t - s_i]``; the oldest gets weight 1, the i-th ``exp(-coeff * i)``.
    """

    name = "ensemble"

    def __init__(self, coeff: float = 0.01, replan_every: int = 1):
        super().__init__()
        if not isinstance(coeff, (int, float)) or isinstance(coeff, bool) or not math.isfinite(coeff):
            raise ExecutorError(f"coeff: expected a finite number (ACT uses 0.01), got {coeff!r}")
        self.coeff = float(coeff)
        self.replan_every = _check_n(replan_every, "replan_every") or 1
        self._chunks: list[tuple[int, np.ndarray]] = []  # (start step, (H, D_a)), oldest first

    def reset(self, plan: PlanFn) -> None:
        """Start an episode: no stored chunks."""
        super().reset(plan)
        self._chunks = []

    def act(self, step: int, obs: Observation) -> np.ndarray:
        """Plan when due, then blend every stored chunk's action for ``step``."""
        step = int(step)
        self._chunks = [(s, c) for s, c in self._chunks if s + c.shape[0] > step]  # drop expired
        if step % self.replan_every == 0 or not self._chunks:
            self._chunks.append((step, self._call(obs)))
        acts = np.stack([c[step - s] for s, c in self._chunks])  # (K, D_a), oldest first
        w = np.exp(-self.coeff * np.arange(len(acts)))  # (K,)
        return ((w[:, None] * acts).sum(0) / w.sum()).astype(np.float32)  # (D_a,)

    def describe(self) -> dict[str, Any]:
        """Name, coeff and replanning period."""
        return {"name": self.name, "coeff": self.coeff, "replan_every": self.replan_every}


class AsyncExecutor(ChunkExecutor):
    """Latency-aware asynchronous chunk execution (see the module docstring).

    Args:
        n_action_steps: actions of each chunk to run before switching to the next (None: all H).
        prefetch_steps: start the next inference when this many actions of the current chunk's
            n are left after the current step; ``None`` adapts it to the measured inference
            latency and control period (``ceil(latency / period)``, at least 1).
        max_wait_s: how long ``act`` may wait for a late chunk before falling back (0: never).

    ``stats`` adds ``tail_steps`` (late chunk: the current chunk's actions beyond n were used),
    ``held_steps`` (no planned action left: the last one repeated), ``skipped_actions`` (actions
    of arriving chunks meant for steps already past) and ``prefetch_steps`` (the last value used).
    """

    name = "async"

    def __init__(self, n_action_steps: int | None = None, prefetch_steps: int | None = None,
                 max_wait_s: float = 0.0):
        super().__init__()
        self.n_action_steps = _check_n(n_action_steps)
        if prefetch_steps is not None and (isinstance(prefetch_steps, bool) or not isinstance(prefetch_steps, int)
                                           or prefetch_steps < 0):
            raise ExecutorError(f"prefetch_steps: expected an int >= 0 or None (adaptive), got {prefetch_steps!r}")
        self.prefetch_steps = prefetch_steps
        if not isinstance(max_wait_s, (int, float)) or max_wait_s < 0:
            raise ExecutorError(f"max_wait_s: expected seconds >= 0, got {max_wait_s!r}")
        self.max_wait_s = float(max_wait_s)
        self._pool: ThreadPoolExecutor | None = None
        self._lock = threading.Lock()
        self._reset_episode_state()

    def _reset_episode_state(self) -> None:
        self._chunk: np.ndarray | None = None  # (H, D_a) being executed
        self._origin = 0  # the step whose observation produced _chunk (its index 0)
        self._end = 0  # absolute step where its n-action window ends (exclusive)
        self._future: Future | None = None
        self._future_origin = 0
        self._last: np.ndarray | None = None
        self._latency = None  # EMA of inference seconds
        self._period = None  # EMA of seconds between act() calls
        self._last_call_t: float | None = None

    # ------------------------------------------------------------------ lifecycle

    def reset(self, plan: PlanFn) -> None:
        """Start an episode: wait out any inference still running for the previous one."""
        self._drain()
        super().reset(plan)
        self.stats.update(tail_steps=0, held_steps=0, skipped_actions=0, prefetch_steps=self.prefetch_steps)
        self._reset_episode_state()
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="vlastack-async-plan")

    def _drain(self) -> None:
        if self._future is not None:
            try:
                self._future.result()
            except Exception:  # noqa: BLE001 - the episode it belonged to is over
                pass
            self._future = None

    def close(self) -> None:
        """Wait for running inference and stop the background thread."""
        self._drain()
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    # ------------------------------------------------------------------ planning

    def _timed_plan(self, obs: Observation) -> tuple[np.ndarray, float]:
        t0 = time.perf_counter()
        chunk = check_chunk(self._plan(obs))  # (H, D_a)
        return chunk, time.perf_counter() - t0

    def _record(self, seconds: float) -> None:
        with self._lock:
            self.stats["policy_calls"] += 1
            self.stats["inference_s"] += seconds
        self._latency = seconds if self._latency is None else 0.7 * self._latency + 0.3 * seconds

    def _window(self, chunk: np.ndarray, skip: int) -> int:
        n = chunk.shape[0] if self.n_action_steps is None else min(self.n_action_steps, chunk.shape[0])
        return min(skip + n, chunk.shape[0])  # window end as a chunk index

    def _adopt(self, chunk: np.ndarray, origin: int, step: int) -> None:
        skip = step - origin
        self.stats["skipped_actions"] += min(skip, chunk.shape[0])
        self._chunk, self._origin = chunk, origin
        self._end = origin + self._window(chunk, skip)

    def _lead(self) -> int:
        if self.prefetch_steps is not None:
            return self.prefetch_steps
        if self._latency is None or not self._period:
            return 1
        return max(1, math.ceil(self._latency / self._period))

    # ------------------------------------------------------------------ the step

    def act(self, step: int, obs: Observation) -> np.ndarray:
        """The action for ``step``; never waits for inference after the episode's first chunk."""
        if self._plan is None:
            raise ExecutorError("AsyncExecutor.act() before reset(plan)")
        step = int(step)
        now = time.perf_counter()
        if self._last_call_t is not None:
            dt = now - self._last_call_t
            self._period = dt if self._period is None else 0.7 * self._period + 0.3 * dt
        self._last_call_t = now
        if self._chunk is None and self._future is None:  # episode start: nothing to run yet
            chunk, secs = self._timed_plan(obs)
            self._record(secs)
            self._adopt(chunk, step, step)
        if step >= self._end and self._future is not None:  # window used up: take the next chunk if here
            fut = self._future
            if not fut.done() and self.max_wait_s > 0:
                try:
                    fut.result(timeout=self.max_wait_s)
                except Exception:  # noqa: BLE001 - a timeout leaves it running; errors surface below
                    pass
            if fut.done():
                self._future = None
                chunk, secs = fut.result()  # re-raises the policy's error here, in the loop
                self._record(secs)
                if step - self._future_origin < chunk.shape[0]:
                    self._adopt(chunk, self._future_origin, step)
                else:  # arrived too late to hold any action for now: count it, plan again below
                    self.stats["skipped_actions"] += chunk.shape[0]
        # the action for this step
        idx = step - self._origin
        if step < self._end:
            action = self._chunk[idx]
        elif idx < self._chunk.shape[0]:
            action = self._chunk[idx]
            self.stats["tail_steps"] += 1
        else:
            action = self._last if self._last is not None else self._chunk[-1]
            self.stats["held_steps"] += 1
        # start the next inference when the window is about to run out
        lead = self._lead()
        self.stats["prefetch_steps"] = lead
        if self._future is None and self._end - (step + 1) <= lead:
            self._future_origin = step
            self._future = self._pool.submit(self._timed_plan, obs)
        self._last = action
        return action

    def describe(self) -> dict[str, Any]:
        """Name and options."""
        return {"name": self.name, "n_action_steps": self.n_action_steps, "prefetch_steps": self.prefetch_steps,
                "max_wait_s": self.max_wait_s}


EXECUTORS: dict[str, type[ChunkExecutor]] = {c.name: c for c in (RecedingHorizon, TemporalEnsemble, AsyncExecutor)}


#: executors whose one knob :func:`eval_overrides` sets from the command line of a run script
EVAL_EXECUTORS = ("receding", "ensemble")


def eval_overrides(name: str, every: int) -> list[str]:
    """The ``vlastack eval`` overrides that pick executor ``name`` with its one knob: ``receding`` runs
    ``every`` actions of each chunk (``n_action_steps``), ``ensemble`` plans a chunk every ``every``
    steps (``executor_options.replan_every``). For scripts that build eval commands (the quickstart,
    ``bench/learning.py``)."""
    if name == "receding":
        return [f"n_action_steps={every}"]
    if name == "ensemble":
        return ["executor=ensemble", f"+executor_options.replan_every={every}"]
    raise ExecutorError(f"executor: expected one of {EVAL_EXECUTORS}, got {name!r}")


def executor_words(name: str | None, every: int | None) -> str:
    """An evaluation's executor in words, for reports: ``ensemble`` with ``every`` = its ``replan_every``
    ("a chunk planned every 2 steps, temporally ensembled"), else receding with ``every`` = its
    ``n_action_steps`` (None: the whole chunk)."""
    if name == "ensemble":
        every = every or 1
        return f"a chunk planned every {every} step{'s' if every != 1 else ''}, temporally ensembled"
    kind = name if name and name != "receding" else "receding horizon"
    return f"{every if every else 'all'} actions run per chunk ({kind})"


def make_executor(name: str, **options: Any) -> ChunkExecutor:
    """An executor by name (``receding``, ``ensemble``, ``async``) with its options."""
    if name not in EXECUTORS:
        raise ExecutorError(f"executor: unknown {name!r}; valid choices: {sorted(EXECUTORS)}")
    cls = EXECUTORS[name]
    try:
        return cls(**options)
    except TypeError as e:
        import inspect

        valid = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
        raise ExecutorError(f"executor {name!r}: {e}; valid options: {valid}") from None
