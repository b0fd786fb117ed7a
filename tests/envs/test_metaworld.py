"""MetaWorld adapter: observation contract, seeds, upright cameras, experts, bad input; the env registry."""
import numpy as np
import pytest

from vlastack.envs import metaworld as mw
from vlastack.envs import registry
from vlastack.types import ACTION, STATE, TASK, DatasetSpec, image_key

SMALL = (48, 48)


@pytest.fixture(scope="module")
def env():
    e = mw.make_metaworld_env("pick-place-v3", seed=3, image_size=SMALL)
    yield e
    e.close()


def _run_expert(env, seed, max_steps):
    expert = registry.make_expert("metaworld", env.task_name, env)
    obs, info = env.reset(seed=seed)
    expert.reset()
    for t in range(max_steps):
        obs, _, term, trunc, info = env.step(expert.act(obs, env))
        if term or trunc:
            break
    return info["success"], t + 1


def test_observation_contract(env):
    obs, info = env.reset(seed=3)
    spec = env.data_spec
    assert isinstance(spec, DatasetSpec)
    assert spec.cameras == ["corner", "behindGripper"]
    assert spec.state_dim == 21 and spec.action_dim == 4
    assert spec.features[STATE].names[:4] == ("hand_x", "hand_y", "hand_z", "gripper")
    assert spec.action_space.layout == (("position", 0, 3), ("gripper", 3, 4))
    assert spec.fps == pytest.approx(80.0)
    assert set(obs) == {image_key("corner"), image_key("behindGripper"), STATE, TASK}
    for k, f in spec.features.items():
        if k != ACTION:
            f.check(obs[k], leading=0)  # shape and dtype per the spec
    assert obs[image_key("corner")].shape == (*SMALL, 3) and obs[image_key("corner")].dtype == np.uint8
    assert obs[STATE].dtype == np.float32
    # state = MetaWorld's current-step hand/gripper/objects + goal, in that order
    raw = env.raw_observation
    np.testing.assert_allclose(obs[STATE], np.concatenate([raw[:18], raw[36:39]]).astype(np.float32))
    assert isinstance(obs[TASK], str) and obs[TASK] in mw.instructions("pick-place-v3")
    assert info["success"] is False and info["seed"] == 3
    assert env.observation_space.contains(obs)
    obs2, r, term, trunc, info = env.step(np.zeros(4, np.float32))
    assert isinstance(info["success"], bool) and isinstance(r, float)
    assert obs2[TASK] == obs[TASK]


def test_state_layouts():
    e = mw.make_metaworld_env("reach-v3", cameras=["topview"], image_size=(16, 16), state="proprio")
    try:
        obs, _ = e.reset(seed=0)
        assert obs[STATE].shape == (4,) and e.data_spec.state_dim == 4
        assert 0.0 <= obs[STATE][3] <= 1.0  # gripper opening
    finally:
        e.close()


def test_images_are_not_noise(env):
    obs, _ = env.reset(seed=5)
    for cam in env.cameras:
        img = obs[image_key(cam)].astype(np.float32)
        assert img.std() > 10, f"{cam} is nearly constant"
        # a rendered scene is smooth: neighbouring pixels differ far less than shuffled ones
        neighbour = np.abs(np.diff(img, axis=1)).mean()
        shuffled = np.random.default_rng(0).permutation(img.reshape(-1, 3)).reshape(img.shape)
        assert neighbour < 0.5 * np.abs(np.diff(shuffled, axis=1)).mean(), f"{cam} looks like noise"


def test_seed_determinism():
    a = mw.make_metaworld_env("push-v3", image_size=(32, 32))
    b = mw.make_metaworld_env("push-v3", image_size=(32, 32))
    try:
        oa, _ = a.reset(seed=11)
        ob, _ = b.reset(seed=11)
        for k in oa:
            assert np.array_equal(oa[k], ob[k]) if k != TASK else oa[k] == ob[k], k
        act = np.array([0.3, -0.2, 0.1, 0.5], np.float32)
        for _ in range(3):
            oa, *_ = a.step(act)
            ob, *_ = b.step(act)
        assert np.array_equal(oa[STATE], ob[STATE])
        assert np.array_equal(oa[image_key("corner")], ob[image_key("corner")])
        oc, _ = a.reset(seed=12)  # another seed: another object and goal placement
        assert not np.allclose(oc[STATE][4:], ob[STATE][4:])
        od, _ = a.reset(seed=11)  # and back
        assert np.array_equal(od[STATE], b.reset(seed=11)[0][STATE])
    finally:
        a.close()
        b.close()


def test_instructions_paraphrased_and_seeded():
    for task in mw.list_tasks("MT50"):
        choices = mw.instructions(task)
        assert len(set(choices)) >= 6 and all(c.strip() for c in choices), task
    e = mw.make_metaworld_env("drawer-open-v3", cameras=["topview"], image_size=(16, 16))
    try:
        seen = {e.reset(seed=s)[0][TASK] for s in range(12)}
        assert len(seen) >= 4  # seeds draw different paraphrases
        assert e.reset(seed=7)[0][TASK] == e.reset(seed=7)[0][TASK]
        assert all("drawer" in s for s in seen)
    finally:
        e.close()


def _project(env, camera, point):
    """Row and column of a world point in MuJoCo's raw render of ``camera`` (row 0 at the top)."""
    m, d = env.sim.model, env.sim.data
    cid = m.camera(camera).id
    R = d.cam_xmat[cid].reshape(3, 3)  # columns: camera x (right), y (up), z (backward)
    p = R.T @ (np.asarray(point) - d.cam_xpos[cid])
    h, w = env.image_size
    f = (h / 2) / np.tan(np.deg2rad(m.cam_fovy[cid]) / 2)
    return h / 2 - f * p[1] / -p[2], w / 2 + f * p[0] / -p[2]


def test_corner_camera_is_upright():
    import mujoco

    e = mw.make_metaworld_env("reach-v3", cameras=["corner", "behindGripper"], image_size=(128, 128))
    try:
        e.reset(seed=0)
        m, d = e.sim.model, e.sim.data
        raw = mujoco.Renderer(m, 128, 128)
        raw.scene.flags[mujoco.mjtRndFlag.mjRND_SHADOW] = 0
        raw.scene.flags[mujoco.mjtRndFlag.mjRND_REFLECTION] = 0
        raw.update_scene(d, camera="corner")
        corner_raw = raw.render().copy()
        raw.enable_segmentation_rendering()
        raw.update_scene(d, camera="corner")
        seg = raw.render()[..., 0].copy()  # geom id per pixel
        raw.disable_segmentation_rendering()
        raw.update_scene(d, camera="behindGripper")
        behind_raw = raw.render().copy()
        raw.close()
        # the env's corner frame is MuJoCo's rotated by 180 degrees; the hand camera is untouched
        assert np.array_equal(e.render_camera("corner"), corner_raw[::-1, ::-1])
        assert np.array_equal(e.render_camera("behindGripper"), behind_raw)
        # projection sanity: the hand projects onto hand/finger pixels of the raw segmentation
        hand = d.body("hand").xpos.copy()
        r, c = (int(round(x)) for x in _project(e, "corner", hand))
        hand_bodies = {m.body(n).id for n in ("hand", "rightclaw", "leftclaw", "rightpad", "leftpad", "right_hand", "right_l6")}
        window = seg[max(r - 3, 0): r + 4, max(c - 3, 0): c + 4]
        assert {int(m.geom_bodyid[g]) for g in window.ravel() if g >= 0} & hand_bodies
        # MuJoCo's corner camera is upside down: a higher point lands lower in its raw frame ...
        r_low, _ = _project(e, "corner", hand)
        r_high, _ = _project(e, "corner", hand + np.array([0, 0, 0.15]))
        assert r_high > r_low
        # ... so after the 180-degree turn (row -> H-1-row) up in the world is up in the image
        assert (127 - r_high) < (127 - r_low)
    finally:
        e.close()


@pytest.mark.parametrize("task,horizon", [("reach-v3", 120), ("drawer-close-v3", 150)])
def test_expert_succeeds_quickly(task, horizon):
    e = registry.make_env("metaworld", task, seed=0, cameras=["corner"], image_size=(16, 16))
    try:
        for seed in (0, 1):
            ok, steps = _run_expert(e, seed, horizon)
            assert ok, f"{task} seed {seed}: no success in {horizon} steps"
            assert steps < horizon
    finally:
        e.close()


def test_bad_input():
    with pytest.raises(ValueError, match="unknown MetaWorld task 'pick-plate-v3'.*pick-place-v3"):
        mw.make_metaworld_env("pick-plate-v3")
    with pytest.raises(ValueError, match="unknown camera 'wrist'.*corner"):
        mw.make_metaworld_env("reach-v3", cameras=["corner", "wrist"])
    with pytest.raises(ValueError, match="state.*'pose'.*proprio"):
        mw.make_metaworld_env("reach-v3", state="pose")
    e = mw.make_metaworld_env("reach", cameras=["topview"], image_size=(16, 16), max_steps=2)
    try:
        assert e.task_name == "reach-v3"  # the version suffix may be left out
        with pytest.raises(RuntimeError, match="before reset"):
            e.step(np.zeros(4))
        e.reset(seed=0)
        with pytest.raises(ValueError, match=r"wrong shape \(3,\).*\(4,\)"):
            e.step(np.zeros(3))
        with pytest.raises(ValueError, match=r"wrong shape \(1, 4\)"):
            e.step(np.zeros((1, 4)))
        with pytest.raises(ValueError, match="NaN or inf at index 2"):
            e.step(np.array([0, 0, np.nan, 0]))
        with pytest.raises(ValueError, match="not rendered by this env.*topview"):
            e.render_camera("corner")
        _, _, term, trunc, _ = e.step(np.zeros(4))
        assert not term and not trunc
        _, _, term, trunc, _ = e.step(np.zeros(4))
        assert trunc and not term
        with pytest.raises(RuntimeError, match="after the episode ended.*time limit.*reset"):
            e.step(np.zeros(4))
        e.reset(seed=1)  # a reset starts over
        e.step(np.zeros(4))
        with pytest.raises(ValueError, match="seed"):
            e.reset(seed=-1)
    finally:
        e.close()


def test_task_lists():
    assert len(mw.list_tasks("MT10")) == 10 and len(mw.list_tasks("MT50")) == 50
    assert set(mw.list_tasks("MT10")) <= set(mw.list_tasks("MT50"))
    with pytest.raises(ValueError, match="MT10"):
        mw.list_tasks("MT45")


def test_registry():
    assert registry.list_tasks("metaworld") == mw.list_tasks("MT50")
    assert registry.resolve_tasks("metaworld", "MT10") == mw.list_tasks("MT10")
    assert registry.resolve_tasks("metaworld", ["reach", "reach-v3", "push-v3"]) == ["reach-v3", "push-v3"]
    with pytest.raises(ValueError, match="unknown MetaWorld task 'nope'"):
        registry.resolve_tasks("metaworld", ["reach-v3", "nope"])
    with pytest.raises(ValueError, match=r"suite: unknown 'libero'.*kitchen.*metaworld"):
        registry.make_env("libero", "x", seed=0)
    e = registry.make_env("metaworld", "door-open-v3", seed=0, cameras=["corner2"], image_size=(24, 32), max_steps=7)
    try:
        assert isinstance(e, mw.MetaWorldEnv) and e.max_steps == 7
        obs, _ = e.reset(seed=0)
        assert obs[image_key("corner2")].shape == (24, 32, 3)
        expert = registry.make_expert("metaworld", "door-open-v3", e)
        a = expert.act(obs, e)
        assert a.shape == (4,) and a.dtype == np.float32 and np.all(np.abs(a) <= 1)
        wrong = registry.make_expert("metaworld", "reach-v3", e)
        with pytest.raises(ValueError, match="expert for 'reach-v3' used on env 'door-open-v3'"):
            wrong.act(obs, e)
    finally:
        e.close()


def test_registry_kitchen_available_or_clear_error():
    try:
        tasks = registry.list_tasks("kitchen")
    except registry.SuiteNotAvailable as err:
        assert "kitchen suite not available" in str(err)
        with pytest.raises(registry.SuiteNotAvailable, match="kitchen suite not available"):
            registry.make_env("kitchen", "OpenDrawer", seed=0)
        return
    assert "OpenDrawer" in tasks
    with pytest.raises(ValueError, match="unknown kitchen task 'OpenDraw'"):
        registry.make_env("kitchen", "OpenDraw", seed=0)


@pytest.mark.slow
def test_every_expert_over_50_seeds():
    """MetaWorld's shipped experts on all 50 tasks, 50 seeds each, state only (no rendering)."""
    rates = {}
    for task in mw.list_tasks("MT50"):
        e = mw.make_metaworld_env(task, cameras=[], max_steps=500)
        try:
            rates[task] = np.mean([_run_expert(e, seed, 500)[0] for seed in range(50)])
        finally:
            e.close()
    print("\n" + "\n".join(f"{t:<28} {r:5.0%}" for t, r in rates.items()))
    print(f"{'mean':<28} {np.mean(list(rates.values())):5.1%}")
    assert np.mean(list(rates.values())) >= 0.9
    assert min(rates.values()) >= 0.8, {t: r for t, r in rates.items() if r < 0.8}


def test_object_quaternions_are_x_y_z_w_for_every_task():
    """MetaWorld writes scipy's x-y-z-w for some tasks and MuJoCo's w-x-y-z for others; our state holds x-y-z-w."""
    import inspect

    from metaworld.env_dict import ALL_V3_ENVIRONMENTS

    for name, cls in ALL_V3_ENVIRONMENTS.items():
        src = inspect.getsource(cls._get_quat_objects).split(":", 1)[1]
        w_first = "xquat" in src or "np.array([1.0, 0.0, 0.0, 0.0])" in src
        assert w_first == (name in mw.MUJOCO_QUAT_TASKS), name
        assert not (w_first and "as_quat" in src), f"{name} mixes orders"
    for task in ("drawer-open-v3", "pick-place-v3"):  # one of each kind, at a rotated object pose
        e = mw.make_metaworld_env(task, cameras=[], state="objects")
        try:
            obs, _ = e.reset(seed=0)
            raw = e.raw_observation
            quat = obs[STATE][7:11]
            expect = np.roll(raw[7:11], -1) if task in mw.MUJOCO_QUAT_TASKS else raw[7:11]
            np.testing.assert_allclose(quat, expect, atol=1e-6)
            assert abs(np.linalg.norm(quat) - 1) < 1e-4
            assert mw.STATE_LAYOUTS["objects"][7:11] == ("obj0_qx", "obj0_qy", "obj0_qz", "obj0_qw")
        finally:
            e.close()
