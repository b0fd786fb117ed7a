"""Kitchen suite: determinism, the data contract, images, instructions, experts, bad input.

Small images (64x64) and a few short expert episodes keep this file fast; the 50-seed
expert table lives in ``bench/kitchen_experts.py``.
"""

import mujoco
import numpy as np
import pytest

from vlastack.envs.kitchen import (STATE_NAMES, TASKS, KitchenEnv, list_tasks, make_expert, make_kitchen_env,
                                   run_expert_episode)
from vlastack.types import ACTION, STATE, TASK, DatasetSpec, image_key

SIZE = 64


@pytest.fixture(scope="module")
def drawer_env():
    env = make_kitchen_env("OpenDrawer", seed=0, image_size=SIZE)
    yield env
    env.close()


def _run_expert(env, seed):
    return run_expert_episode(env, make_expert(env), seed)[0]


def test_observation_contract(drawer_env):
    obs, info = drawer_env.reset(seed=3)
    spec = drawer_env.data_spec
    assert isinstance(spec, DatasetSpec)
    assert spec.cameras == ["left", "right", "wrist"]
    for cam in ("left", "right", "wrist"):
        img = obs[image_key(cam)]
        assert img.shape == (SIZE, SIZE, 3) and img.dtype == np.uint8
        spec.features[image_key(cam)].check(img, leading=0)
    assert obs[STATE].shape == (16,) and obs[STATE].dtype == np.float32
    assert spec.features[STATE].names == STATE_NAMES
    assert spec.features[ACTION].shape == (7,) and spec.action_space.dim == 7
    assert drawer_env.observation_space.contains(obs)
    # state layout: eef position near the grip site, unit quaternion, finger and joint positions
    np.testing.assert_allclose(obs[STATE][:3], drawer_env.scene.eef_pos, atol=1e-6)
    assert abs(np.linalg.norm(obs[STATE][3:7]) - 1) < 1e-5
    np.testing.assert_allclose(obs[STATE][9:], drawer_env.scene.arm_qpos, atol=1e-6)
    assert isinstance(obs[TASK], str) and "drawer" in obs[TASK]
    assert info["success"] is False and info["instruction"] == obs[TASK]


def test_seed_determinism(drawer_env):
    a, _ = drawer_env.reset(seed=7)
    for _ in range(3):
        a_next = drawer_env.step(np.array([0.3, -0.2, 0.1, 0, 0, 0.2, 1.0]))[0]
    b, _ = drawer_env.reset(seed=7)
    for _ in range(3):
        b_next = drawer_env.step(np.array([0.3, -0.2, 0.1, 0, 0, 0.2, 1.0]))[0]
    for k in a:
        if k == TASK:
            assert a[k] == b[k]
        else:
            np.testing.assert_array_equal(a[k], b[k])
            np.testing.assert_array_equal(a_next[k], b_next[k])
    c, _ = drawer_env.reset(seed=8)
    assert not np.array_equal(a[STATE], c[STATE])  # arm jitter differs
    assert not np.array_equal(a[image_key("left")], c[image_key("left")])  # layout / colours differ


def test_seeds_vary_scene(drawer_env):
    fixture_pos, instructions = set(), set()
    for seed in range(6):
        obs, _ = drawer_env.reset(seed=seed)
        fixture_pos.add(tuple(np.round(drawer_env.scene.main_fixture.pos, 4)))
        instructions.add(obs[TASK])
    assert len(fixture_pos) == 6
    assert len(instructions) >= 2


def _neighbour_correlation(img):
    g = img.astype(np.float64).mean(-1)
    a, b = g[:, :-1].ravel(), g[:, 1:].ravel()
    return np.corrcoef(a, b)[0, 1]


def test_images_are_scenes_not_noise(drawer_env):
    obs, _ = drawer_env.reset(seed=1)
    for cam in ("left", "right", "wrist"):
        img = obs[image_key(cam)]
        assert img.std() > 10, f"{cam} image is nearly constant"
        assert _neighbour_correlation(img) > 0.6, f"{cam} image has no spatial structure"
    noise = np.random.default_rng(0).integers(0, 256, (SIZE, SIZE, 3))
    assert _neighbour_correlation(noise) < 0.2  # the check above can fail


def test_images_are_upright(drawer_env):
    drawer_env.reset(seed=2)
    scene = drawer_env.scene
    seg = scene.render_image("left", SIZE, SIZE, segmentation=True)
    m = scene.sim.model._model
    rows = np.arange(SIZE)[:, None].repeat(SIZE, 1)
    floor = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_GEOM, "floor")
    upper = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_GEOM, "upper_cab")
    assert (seg == floor).any() and (seg == upper).any()
    assert rows[seg == floor].mean() > rows[seg == upper].mean() + SIZE / 4  # floor below, wall cabinets above


@pytest.mark.parametrize("task,seeds", [("CloseDrawer", (0, 1)), ("TurnOnMicrowave", (0,)),
                                        ("CoffeePressButton", (0,))])
def test_expert_succeeds(task, seeds):
    env = make_kitchen_env(task, cameras=(), image_size=SIZE)
    try:
        assert all(_run_expert(env, seed) for seed in seeds)
    finally:
        env.close()


def test_on_indicators_follow_the_knobs():
    env = make_kitchen_env("TurnOffStove", cameras=(), image_size=SIZE)
    try:
        obs, info = env.reset(seed=5)
        stove, burner = env.scene.main_fixture, env.scene.episode_meta["burner_id"]
        m = env.scene.sim.model._model
        gid = mujoco.mj_name2id(m, mujoco.mjtObj.mjOBJ_GEOM, f"stove_burner_{burner}")
        assert burner.replace("_", " ") in obs[TASK]
        assert stove.burner_on(burner) and m.geom_rgba[gid, 0] > 0.9  # lit: red-orange
        stove.set_qpos(f"knob_{burner}", 0.0)
        env.step(np.zeros(7))
        assert not stove.burner_on(burner) and m.geom_rgba[gid, 0] < 0.5
        assert env.scene._check_success()
    finally:
        env.close()


def test_success_ends_episode_and_step_after_end_raises(drawer_env):
    assert _run_expert(drawer_env, 4)
    with pytest.raises(RuntimeError, match="episode has ended.*terminated.*reset"):
        drawer_env.step(np.zeros(7))


def test_horizon_truncates(drawer_env):
    drawer_env.reset(seed=0)
    drawer_env.horizon = 2
    try:
        assert drawer_env.step(np.zeros(7))[3] is False
        assert drawer_env.step(np.zeros(7))[3] is True
        with pytest.raises(RuntimeError, match="horizon of 2 steps"):
            drawer_env.step(np.zeros(7))
    finally:
        drawer_env.horizon = drawer_env.task.horizon


def test_bad_actions(drawer_env):
    drawer_env.reset(seed=0)
    with pytest.raises(ValueError, match=r"shape \(7,\).*got shape \(6,\)"):
        drawer_env.step(np.zeros(6))
    with pytest.raises(ValueError, match="NaN.*index \\[2\\]"):
        drawer_env.step(np.array([0, 0, np.nan, 0, 0, 0, 0]))
    drawer_env.step(np.zeros(7))  # a bad action does not end the episode


def test_arm_render_modes(drawer_env):
    """External cameras draw the arm's low-poly hulls (or its detailed meshes); the wrist camera neither."""
    from vlastack.envs.kitchen.scene import ARM_GROUP, ARM_HULL_GROUP

    drawer_env.reset(seed=0)
    scene = drawer_env.scene
    groups = scene.sim.model._model.geom_group

    def seen(camera):
        ids = np.unique(scene.render_image(camera, SIZE, SIZE, segmentation=True))
        return set(groups[ids[ids >= 0]].tolist())

    assert scene.arm_render == "hulls"
    assert ARM_HULL_GROUP in seen("left") and ARM_GROUP not in seen("left")
    assert not {ARM_GROUP, ARM_HULL_GROUP} & seen("wrist")
    scene.arm_render = "meshes"
    try:
        assert ARM_GROUP in seen("left") and ARM_HULL_GROUP not in seen("left")
    finally:
        scene.arm_render = "hulls"
    with pytest.raises(ValueError, match="unknown arm_render 'wire'.*hulls, meshes"):
        KitchenEnv("OpenDrawer", cameras=(), arm_render="wire")


def test_bad_names():
    with pytest.raises(ValueError, match="unknown kitchen task 'OpenFridge'.*OpenDrawer"):
        KitchenEnv("OpenFridge")
    with pytest.raises(ValueError, match=r"unknown camera.*\['top'\].*left, right, wrist"):
        KitchenEnv("OpenDrawer", cameras=("left", "top"))
    with pytest.raises(ValueError, match="image_size"):
        KitchenEnv("OpenDrawer", image_size=(64,))
    with pytest.raises(ValueError, match="unknown task group"):
        list_tasks("garden")


def test_registry_covers_groups():
    names = list_tasks()
    assert set(names) <= set(TASKS)
    assert "OpenDrawer" in list_tasks("drawers")


def test_placed_objects_count_in_every_resting_pose_their_shape_allows():
    """A cube on any face and a ball or lemon any way up are placed; a can or mug lying on its side is not."""
    from types import SimpleNamespace

    from scipy.spatial.transform import Rotation

    from vlastack.envs.kitchen.objects import CATEGORIES
    from vlastack.envs.kitchen.tasks import _upright

    def resting(category, rot):
        xmat = Rotation.from_euler("xyz", rot, degrees=True).as_matrix().reshape(1, 9)
        return _upright(SimpleNamespace(category=CATEGORIES[category], _d=SimpleNamespace(xmat=xmat), body_id=0))

    on_side, tilted, upright = (90, 0, 0), (0, 40, 0), (0, 0, 70)
    assert all(resting(c, upright) for c in ("cube", "ball", "lemon", "can", "mug", "bottle"))
    assert resting("cube", on_side) and resting("cube", (0, 90, 0)) and not resting("cube", tilted)
    assert resting("ball", tilted) and resting("lemon", on_side)
    assert not any(resting(c, on_side) for c in ("can", "mug", "bottle", "milk", "bread"))
