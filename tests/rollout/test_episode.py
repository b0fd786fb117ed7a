"""The episode loop: observation history, ends (success, env end, max_steps), observers, robots, and the
scripted expert run through the loop matching the expert run directly."""
import numpy as np
import pytest

from vlastack.envs import registry
from vlastack.rollout.collect import run_expert_episode
from vlastack.rollout.episode import ObservationHistory, RobotEnv, run_episode
from vlastack.rollout.executors import RecedingHorizon
from vlastack.rollout.policy_adapters import ExpertPolicy
from vlastack.types import STATE, ActionChunk, ContractError, image_key


def _frame(t: int) -> dict:
    return {image_key("cam"): np.full((4, 5, 3), t, np.uint8), STATE: np.array([t, -t], np.float32), "task": "go"}


class LineEnv:
    """State t after t steps; succeeds at step ``win`` (if set), truncates at ``horizon``."""

    def __init__(self, win=None, horizon=1000, terminate_at=None):
        self.win, self.horizon, self.terminate_at = win, horizon, terminate_at
        self.actions, self.seeds = [], []

    def reset(self, *, seed=None, options=None):
        self.t = 0
        self.seeds.append(seed)
        return _frame(0), {"success": False}

    def step(self, a):
        self.actions.append(np.asarray(a).copy())
        self.t += 1
        ok = self.win is not None and self.t >= self.win
        term = ok or (self.terminate_at is not None and self.t >= self.terminate_at)
        return _frame(self.t), 0.0, term, (not term and self.t >= self.horizon), {"success": ok}


class EchoPolicy:
    """Chunk of H actions equal to the newest state's first entry; records observations and resets."""

    def __init__(self, horizon=2):
        self.horizon, self.seen, self.resets = horizon, [], []

    def reset(self, seed=None):
        self.resets.append(seed)

    def sample_actions(self, obs, **sampling):
        self.seen.append((obs, dict(sampling)))
        t = float(obs.state[0, -1, 0])
        return ActionChunk(np.full((1, self.horizon, 2), t, np.float32))


def test_observation_history_pads_then_slides():
    h = ObservationHistory(n_obs=3)
    h.reset(_frame(0))
    o = h.observation()
    assert o.images["cam"].shape == (1, 3, 4, 5, 3) and o.images["cam"].dtype == np.uint8
    assert o.state.shape == (1, 3, 2) and o.state[0, :, 0].tolist() == [0, 0, 0] and o.task == ["go"]
    for t in (1, 2, 3):
        h.push(_frame(t))
    o = h.observation()
    assert o.state[0, :, 0].tolist() == [1, 2, 3] and o.images["cam"][0, :, 0, 0, 0].tolist() == [1, 2, 3]
    with pytest.raises(ContractError, match="missing cameras"):
        ObservationHistory(1, cameras=["left"]).reset(_frame(0))
    with pytest.raises(ContractError, match="instruction"):
        ObservationHistory(1).reset({STATE: np.zeros(2, np.float32)})
    with pytest.raises(ValueError, match="n_obs"):
        ObservationHistory(0)


def test_run_episode_ends_and_bookkeeping():
    env, pol = LineEnv(win=5), EchoPolicy(horizon=2)
    seen_steps = []
    res = run_episode(env, pol, RecedingHorizon(2), max_steps=100, seed=7, n_obs=2, sampling={"k": 3},
                      observers=[lambda t, o, i: seen_steps.append(t)])
    assert (res.success, res.steps, res.reason, res.instruction, res.seed) == (True, 5, "success", "go", 7)
    assert env.seeds == [7] and pol.resets == [7] and seen_steps == [0, 1, 2, 3, 4, 5]
    assert res.policy_calls == 3 and [s for _, s in pol.seen] == [{"k": 3}] * 3
    # the chunk from step t's state t runs at steps t, t+1: actions 0 0 2 2 4
    assert [float(a[0]) for a in env.actions] == [0, 0, 2, 2, 4]
    assert pol.seen[1][0].state[0, :, 0].tolist() == [1, 2]  # history of 2 frames at step 2
    assert run_episode(LineEnv(), EchoPolicy(), max_steps=4).reason == "max_steps"
    assert run_episode(LineEnv(horizon=3), EchoPolicy(), max_steps=10).reason == "env time limit"
    r = run_episode(LineEnv(terminate_at=2), EchoPolicy(), max_steps=10)
    assert (r.success, r.steps, r.reason) == (False, 2, "terminated without success")
    with pytest.raises(ValueError, match="max_steps"):
        run_episode(LineEnv(), EchoPolicy(), max_steps=0)
    with pytest.raises(TypeError, match="neither an env"):
        run_episode(object(), EchoPolicy())


def test_robot_runs_through_the_same_loop():
    class Robot:
        def __init__(self):
            self.t, self.sent = 0, []

        def get_observation(self):
            return {STATE: np.array([self.t, 0], np.float32)}

        def send_action(self, a):
            self.sent.append(a)
            self.t += 1

    robot = Robot()
    res = run_episode(robot, EchoPolicy(horizon=3), max_steps=6, instruction="wave", rate_hz=500)
    assert res.steps == 6 and not res.success and res.instruction == "wave" and len(robot.sent) == 6
    assert res.wall_s >= 6 / 500
    with pytest.raises(ContractError, match="instruction"):
        run_episode(Robot(), EchoPolicy(), max_steps=1)
    with pytest.raises(TypeError, match="Robot protocol"):
        RobotEnv(object())


def test_expert_policy_through_the_loop_matches_the_expert_run_directly():
    env = registry.make_env("metaworld", "reach-v3", seed=0, cameras=["corner"], image_size=(32, 32))
    try:
        expert = registry.make_expert("metaworld", "reach-v3", env)
        for seed in (3, 4):
            direct = run_expert_episode(env, expert, seed, max_steps=200)
            looped = run_episode(env, ExpertPolicy(expert, env), RecedingHorizon(8), max_steps=200, seed=seed)
            assert looped.success == direct["success"] and looped.steps == direct["steps"]
            assert looped.instruction == direct["instruction"] and looped.policy_calls == looped.steps
        with pytest.raises(ValueError, match="no sampling options"):
            run_episode(env, ExpertPolicy(expert, env), max_steps=2, seed=0, sampling={"vision_steps": 8})
    finally:
        env.close()
