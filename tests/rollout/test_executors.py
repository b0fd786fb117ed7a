"""Chunk executors: exact action selection (receding horizon, temporal ensembling) and the async executor
(same actions as sync when inference keeps up, latency compensation, never blocking the loop)."""
import math
import time

import numpy as np
import pytest

from vlastack.rollout.episode import run_episode
from vlastack.rollout.executors import (AsyncExecutor, ExecutorError, RecedingHorizon, TemporalEnsemble,
                                        make_executor)
from vlastack.types import ActionChunk, Observation


def _obs(t: int) -> Observation:
    """A batch-of-one observation whose state carries the step index t."""
    return Observation(images={}, state=np.array([[[float(t)]]], np.float32), task=["x"])


class CountingPolicy:
    """Chunk k (0-based call count) holds actions 100 * k + j, j = 0 .. H-1; records the steps it planned at."""

    def __init__(self, horizon: int):
        self.horizon, self.calls, self.planned_at = horizon, 0, []

    def __call__(self, obs: Observation) -> np.ndarray:
        self.planned_at.append(int(obs.state[0, -1, 0]))
        k = self.calls
        self.calls += 1
        return (100.0 * k + np.arange(self.horizon, dtype=np.float32))[:, None]  # (H, 1)


class ClockPolicy:
    """Time-consistent: the chunk planned from the observation at step t holds t + j at index j.

    ``latency`` seconds of fake inference per call; the steps it planned at are recorded.
    """

    def __init__(self, horizon: int, latency: float = 0.0, fail_on_call: int | None = None):
        self.horizon, self.latency, self.fail_on_call = horizon, latency, fail_on_call
        self.planned_at: list[int] = []

    def __call__(self, obs: Observation) -> np.ndarray:
        if self.fail_on_call is not None and len(self.planned_at) == self.fail_on_call:
            raise RuntimeError("policy exploded")
        t = int(obs.state[0, -1, 0])
        self.planned_at.append(t)
        if self.latency:
            time.sleep(self.latency)
        return (t + np.arange(self.horizon, dtype=np.float32))[:, None]  # (H, 1)

    def sample_actions(self, obs, **_):
        return ActionChunk(self(obs)[None])  # (1, H, 1)


def _drive(executor, plan, steps: int, step_s: float = 0.0) -> tuple[list[float], list[float]]:
    """Run ``steps`` control steps; returns (actions, seconds each act() took)."""
    executor.reset(plan)
    actions, waits = [], []
    try:
        for t in range(steps):
            t0 = time.perf_counter()
            a = executor.act(t, _obs(t))
            waits.append(time.perf_counter() - t0)
            actions.append(float(a[0]))
            if step_s:
                time.sleep(step_s)
    finally:
        executor.close()
    return actions, waits


def test_receding_horizon_executes_first_n_then_replans():
    pol = CountingPolicy(horizon=5)
    acts, _ = _drive(RecedingHorizon(n_action_steps=3), pol, 8)
    assert acts == [0, 1, 2, 100, 101, 102, 200, 201]
    assert pol.planned_at == [0, 3, 6]
    # n larger than H runs the whole chunk; None runs the whole chunk too
    for n in (None, 9):
        pol = CountingPolicy(horizon=4)
        acts, _ = _drive(RecedingHorizon(n), pol, 6)
        assert acts == [0, 1, 2, 3, 100, 101] and pol.planned_at == [0, 4]


def test_temporal_ensemble_weights():
    m = 0.5
    pol = CountingPolicy(horizon=3)
    acts, _ = _drive(TemporalEnsemble(coeff=m), pol, 4)
    w = np.exp(-m * np.arange(3))
    assert acts[0] == pytest.approx(0.0)
    assert acts[1] == pytest.approx((1 * 1 + 100 * w[1]) / (1 + w[1]))  # chunk 0 index 1, chunk 1 index 0
    assert acts[2] == pytest.approx((2 * w[0] + 101 * w[1] + 200 * w[2]) / w.sum())
    # chunk 0 (planned at 0, H=3) no longer covers step 3: chunks 1..3, the oldest weighted 1
    assert acts[3] == pytest.approx((102 * w[0] + 201 * w[1] + 300 * w[2]) / w.sum())
    assert pol.planned_at == [0, 1, 2, 3]
    # coeff 0 is the plain mean; replanning every 2 steps plans at 0, 2, 4
    pol = CountingPolicy(horizon=4)
    acts, _ = _drive(TemporalEnsemble(coeff=0.0, replan_every=2), pol, 5)
    assert pol.planned_at == [0, 2, 4]
    assert acts == pytest.approx([0, 1, (2 + 100) / 2, (3 + 101) / 2, (102 + 200) / 2])


@pytest.mark.parametrize("n,prefetch", [(4, 1), (4, 2), (6, 3), (8, 1)])
def test_async_matches_sync_when_inference_keeps_up(n, prefetch):
    """Zero latency: the async executor's actions equal receding horizon's, though it plans earlier."""
    steps = 23
    sync_pol = ClockPolicy(horizon=16)
    sync, _ = _drive(RecedingHorizon(n), sync_pol, steps)
    ex = AsyncExecutor(n_action_steps=n, prefetch_steps=prefetch)
    async_pol = ClockPolicy(horizon=16)
    acts, _ = _drive(ex, async_pol, steps, step_s=0.004)  # a control period the thread easily beats
    assert acts == sync == list(range(steps))
    assert ex.stats["tail_steps"] == 0 and ex.stats["held_steps"] == 0
    # planned `prefetch + 1` steps before each window ran out, then skipped the stale actions
    assert async_pol.planned_at[:3] == [0, n - prefetch - 1, 2 * n - prefetch - 1]
    assert ex.stats["skipped_actions"] == (prefetch + 1) * (ex.stats["policy_calls"] - 1)


def test_async_never_blocks_and_compensates_latency():
    """Inference (0.25 s) is far slower than the control period (10 ms): act() returns at once, and every
    action is still the one planned for its step (the late chunk's stale actions are skipped)."""
    pol = ClockPolicy(horizon=64, latency=0.25)
    ex = AsyncExecutor(n_action_steps=4, prefetch_steps=1)
    t0 = time.perf_counter()
    acts, waits = _drive(ex, pol, 40, step_s=0.01)
    wall = time.perf_counter() - t0
    assert max(waits[1:]) < 0.05, f"act() blocked: {max(waits[1:]):.3f} s"
    assert waits[0] >= 0.25  # only the episode's first chunk is waited for
    assert wall < 0.25 + 40 * 0.01 + 0.3  # a synchronous loop would pay ~0.25 s every 4 steps
    assert acts == list(range(40))  # tails of late chunks hold exactly the planned actions
    assert ex.stats["tail_steps"] > 0 and ex.stats["held_steps"] == 0 and ex.stats["skipped_actions"] > 0
    assert 2 <= ex.stats["policy_calls"] <= 40 * 0.01 / 0.25 + 3


def test_async_holds_the_last_action_when_the_chunk_runs_out():
    pol = ClockPolicy(horizon=3, latency=0.2)
    ex = AsyncExecutor(n_action_steps=3, prefetch_steps=0)
    acts, waits = _drive(ex, pol, 8, step_s=0.005)
    assert acts[:3] == [0, 1, 2] and acts[3:] == [2.0] * 5  # held, never blocked
    assert ex.stats["held_steps"] == 5 and max(waits[1:]) < 0.05


def test_async_adaptive_prefetch_and_errors():
    pol = ClockPolicy(horizon=32, latency=0.06)
    ex = AsyncExecutor(n_action_steps=8, prefetch_steps=None)
    _drive(ex, pol, 30, step_s=0.01)
    assert ex.stats["prefetch_steps"] >= 3  # ~0.06 s / 0.01 s
    with pytest.raises(RuntimeError, match="policy exploded"):  # a background failure surfaces in the loop
        _drive(AsyncExecutor(n_action_steps=2, prefetch_steps=1), ClockPolicy(horizon=8, fail_on_call=1), 10,
               step_s=0.005)


def test_executors_in_the_episode_loop_and_bad_options():
    class Env:
        def reset(self, *, seed=None, options=None):
            self.t = 0
            return self._o(), {"success": False}

        def _o(self):
            return {"observation.state": np.array([self.t], np.float32), "task": "count"}

        def step(self, a):
            self.t += 1
            return self._o(), 0.0, False, False, {"success": self.t >= 10}

    res = run_episode(Env(), ClockPolicy(horizon=8), make_executor("async", n_action_steps=4, prefetch_steps=1),
                      max_steps=50, rate_hz=200)  # paced: the planning thread gets 5 ms per step
    assert res.success and res.steps == 10 and res.executor["name"] == "async" and res.policy_calls >= 3
    assert res.wall_s >= 10 / 200 and res.executor["held_steps"] == 0
    with pytest.raises(ExecutorError, match="valid choices"):
        make_executor("fancy")
    with pytest.raises(ExecutorError, match="valid options"):
        make_executor("receding", coeff=1.0)
    with pytest.raises(ExecutorError, match="n_action_steps"):
        RecedingHorizon(0)
    with pytest.raises(ExecutorError, match="NaN"):
        _drive(RecedingHorizon(), lambda o: np.full((2, 1), np.nan), 1)
    assert math.isclose(TemporalEnsemble().coeff, 0.01)


def test_eval_overrides_build_the_named_executor_through_vlastack_eval():
    """What the quickstart and bench/learning.py put on an eval command line reaches the executor: composed
    by eval's own Hydra config, the named executor with its knob; an executor without one knob is refused."""
    from vlastack.rollout.evaluate import compose_config, config_from_hydra, executor_kwargs
    from vlastack.rollout.executors import eval_overrides, make_executor

    base = ["policy=expert", "env=kitchen", "tasks=[OpenDrawer]", "out=unused"]
    for name, every, cls, knob in (("ensemble", 3, TemporalEnsemble, "replan_every"),
                                   ("receding", 8, RecedingHorizon, "n_action_steps")):
        cfg = config_from_hydra(compose_config([*base, *eval_overrides(name, every)]))
        ex = make_executor(cfg.executor, **executor_kwargs(cfg))
        assert type(ex) is cls and getattr(ex, knob) == every
    with pytest.raises(ExecutorError, match="expected one of"):
        eval_overrides("async", 4)


def test_executor_words_name_the_executor_and_its_knob():
    """Reports (the quickstart's, bench/learning.py's) say the executor the same way."""
    from vlastack.rollout.executors import executor_words

    assert executor_words("ensemble", 2) == "a chunk planned every 2 steps, temporally ensembled"
    assert executor_words("ensemble", 1) == "a chunk planned every 1 step, temporally ensembled"
    assert executor_words("receding", 8) == "8 actions run per chunk (receding horizon)"
    assert executor_words(None, None) == "all actions run per chunk (receding horizon)"
    assert executor_words("async", 16) == "16 actions run per chunk (async)"
