"""gymnasium fit: registered ids, ``gymnasium.make``, ``check_env`` on the kitchen and MetaWorld envs,
``AsyncVectorEnv`` over two kitchen envs, ``data_spec`` beside gymnasium's own ``spec``.

Kitchen envs are built at 32x32 with two cameras; the fast tests check one kitchen task and one
MetaWorld task through ``gymnasium.make`` (so with the alternative-render and close checks that
need a spec); every kitchen task, in its own scene and in each task-group scene that holds it,
is checked in the slow tests.
"""
import subprocess
import sys
import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.envs.registration import EnvSpec
from gymnasium.utils.env_checker import check_env

import vlastack.envs  # noqa: F401  (registers the ids)
from vlastack.envs.gym_ids import gym_ids, kitchen_id, metaworld_id
from vlastack.envs.kitchen import TASKS, make_kitchen_env
from vlastack.envs.kitchen.groups import GROUP_SPECS
from vlastack.types import STATE, TASK, DatasetSpec, image_key

KW = dict(image_size=32, cameras=["left", "wrist"])
#: gymnasium's warnings that are expected: the state Box is unbounded; a directly built env has no spec
EXPECTED_WARNINGS = ("observation space minimum value is -infinity", "observation space maximum value is infinity",
                     "Not able to test alternative render modes due to the environment not having a spec")


def _check(env) -> None:
    """``check_env`` with every warning caught; fails on any warning gymnasium raises but the expected ones."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        check_env(env)
    other = [str(w.message) for w in caught if not any(e in str(w.message) for e in EXPECTED_WARNINGS)]
    assert not other, other


def test_every_task_has_an_id():
    kitchen, mw = gym_ids("kitchen"), gym_ids("metaworld")
    assert kitchen == [f"vlastack/Kitchen-{t}-v0" for t in TASKS] and len(kitchen) == len(TASKS) == 24
    from metaworld.env_dict import ALL_V3_ENVIRONMENTS

    assert sorted(mw) == sorted(f"vlastack/MetaWorld-{t.removesuffix('-v3')}-v0" for t in ALL_V3_ENVIRONMENTS)
    assert len(mw) == 50
    for env_id in kitchen + mw:
        assert isinstance(gym.spec(env_id), EnvSpec)
    assert gym.spec("vlastack/Kitchen-OpenDrawer-v0").kwargs == {"task": "OpenDrawer"}
    assert gym.spec("vlastack/MetaWorld-pick-place-v0").kwargs == {"task": "pick-place-v3"}
    assert kitchen_id("OpenDrawer") == "vlastack/Kitchen-OpenDrawer-v0"
    assert metaworld_id("pick-place-v3") == metaworld_id("pick-place") == "vlastack/MetaWorld-pick-place-v0"
    with pytest.raises(ValueError, match="unknown kitchen task 'OpenDrawers'; valid tasks: .*OpenDrawer"):
        kitchen_id("OpenDrawers")
    with pytest.raises(ValueError, match="unknown MetaWorld task"):
        metaworld_id("pick-place-v2")
    with pytest.raises(ValueError, match="valid choices"):
        gym_ids("robocasa")


def test_make_without_importing_vlastack():
    """The ``module:id`` form registers the ids itself (a fresh interpreter; MetaWorld without cameras)."""
    code = ("import gymnasium as gym; env = gym.make('vlastack.envs:vlastack/MetaWorld-reach-v0', cameras=[]); "
            "obs, info = env.reset(seed=1); print(env.spec.id, obs['observation.state'].shape, info['is_success'])")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.strip().splitlines()[-1] == "vlastack/MetaWorld-reach-v0 (21,) False"


def test_make_kitchen_and_check_env():
    """Through ``gymnasium.make`` (so check_env also remakes the env per render mode and closes one
    twice). PnPCounterToSink: its tinted objects (can / bottle / mug) must keep their colours across
    resets, or check_env's step determinism fails."""
    env = gym.make("vlastack/Kitchen-PnPCounterToSink-v0", seed=0, **KW)
    try:
        base = env.unwrapped
        assert isinstance(base.spec, EnvSpec) and base.spec.id == "vlastack/Kitchen-PnPCounterToSink-v0"
        assert isinstance(base.data_spec, DatasetSpec) and base.data_spec.cameras == ["left", "wrist"]
        assert base.metadata["render_fps"] == base.data_spec.fps == 20.0 and base.render_mode == "rgb_array"
        obs, info = env.reset(seed=4)
        assert obs[image_key("left")].shape == (32, 32, 3) and obs[STATE].shape == (16,)
        assert info["is_success"] is info["success"] is False
        obs, _, _, _, info = env.step(np.zeros(7, np.float32))
        assert info["is_success"] is info["success"]
        assert env.render().shape == (32, 64, 3)  # both cameras side by side
        _check(base)
    finally:
        env.close()


def test_render_mode():
    with pytest.raises(ValueError, match="unknown render_mode 'human'; valid: None, 'rgb_array'"):
        make_kitchen_env("OpenDrawer", render_mode="human", **KW)


def test_metaworld_make_and_check_env():
    env = gym.make("vlastack/MetaWorld-pick-place-v0", image_size=32)  # an int: square, as for the kitchen
    try:
        base = env.unwrapped
        assert base.spec.id == "vlastack/MetaWorld-pick-place-v0" and isinstance(base.data_spec, DatasetSpec)
        assert base.metadata["render_fps"] == pytest.approx(base.data_spec.fps) == pytest.approx(80.0)
        _check(base)
        _, info = env.reset(seed=2)
        assert info["is_success"] is False
        _, _, _, _, info = env.step(np.zeros(4, np.float32))
        assert info["is_success"] is info["success"]
        env.unwrapped.render_mode = None
        assert env.unwrapped.render() is None
    finally:
        env.close()


def test_async_vector_env_steps_and_resets():
    """Two kitchen envs in two processes. ``shared_memory=False``: gymnasium 1.4 reads Text
    observations (the instruction) out of shared memory once only, so they would stay stale."""
    envs = gym.make_vec("vlastack/Kitchen-OpenDrawer-v0", num_envs=2, vectorization_mode="async",
                        vector_kwargs={"context": "spawn", "shared_memory": False}, **KW)
    try:
        obs, info = envs.reset(seed=[5, 6])
        assert obs[image_key("left")].shape == (2, 32, 32, 3) and obs[STATE].shape == (2, 16)
        assert list(obs[TASK]) == list(info["instruction"]) and all(t.strip() for t in obs[TASK])
        assert list(info["episode_seed"]) == [5, 6]
        first = obs[STATE].copy()
        assert not np.array_equal(first[0], first[1])  # different seeds, different arm jitter
        envs.action_space.seed(0)
        for _ in range(3):
            obs, reward, term, trunc, info = envs.step(envs.action_space.sample())
        assert reward.shape == term.shape == trunc.shape == (2,)
        assert info["is_success"].dtype == bool and list(info["step"]) == [3, 3]
        assert not np.array_equal(obs[STATE], first)
        again, info = envs.reset(seed=[5, 6])
        np.testing.assert_array_equal(again[STATE], first)  # same seeds, same start in each process
        np.testing.assert_array_equal(info["step"], [0, 0])
    finally:
        envs.close()


@pytest.mark.slow
@pytest.mark.parametrize("task", list(TASKS))
def test_check_env_every_kitchen_task(task):
    env = make_kitchen_env(task, seed=0, **KW)
    try:
        _check(env)
    finally:
        env.close()


@pytest.mark.slow
@pytest.mark.parametrize("group,task", [(g, t) for g, spec in GROUP_SPECS.items() for t in spec.tasks])
def test_check_env_every_group_scene_task(group, task):
    """The shared task-group scenes through gymnasium.make's ``scene`` / ``group`` kwargs."""
    env = gym.make(f"vlastack/Kitchen-{task}-v0", scene="group", group=group, seed=0, **KW)
    try:
        assert env.unwrapped.group == group
        _check(env.unwrapped)
    finally:
        env.close()
