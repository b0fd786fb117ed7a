"""The data contract: specs round-trip, fakes match their spec, bad specs fail clearly."""
import numpy as np
import pytest

from vlastack import types as T


def test_spec_round_trip():
    spec = T.DatasetSpec.robot(cameras=("left", "wrist"), image_size=(32, 48), state_dim=5, action_dim=7)
    again = T.DatasetSpec.from_dict(spec.to_dict())
    assert again == spec
    assert spec.cameras == ["left", "wrist"]
    assert spec.image_keys == ["observation.images.left", "observation.images.wrist"]
    assert (spec.state_dim, spec.action_dim, spec.action_space.dim) == (5, 7, 7)


def test_fake_batch_matches_spec():
    spec = T.DatasetSpec.robot(cameras=("left",), image_size=(16, 16))
    b = T.fake_batch(spec, batch_size=3, n_obs=2, horizon=8, future_offset=8, as_torch=False)
    assert b["observation.images.left"].shape == (3, 3, 16, 16, 3)  # n_obs + future frame
    assert b["observation.images.left"].dtype == np.uint8
    assert b["observation.state"].shape == (3, 2, spec.state_dim)
    assert b["action"].shape == (3, 8, 7) and b["action_is_pad"].shape == (3, 8)
    assert len(b["task"]) == 3
    for k in spec.features:
        spec.features[k].check(b[k], leading=2)
    img = b["observation.images.left"].astype(float)
    assert img.std() > 5  # not constant


def test_fake_observation_flat_round_trip():
    spec = T.DatasetSpec.robot(cameras=("left", "right"), image_size=(8, 8))
    obs = T.fake_observation(spec, batch_size=2)
    again = T.Observation.from_flat(obs.to_flat())
    assert set(again.images) == {"left", "right"} and again.batch_size == 2


@pytest.mark.parametrize("kw, msg", [
    (dict(key="observation.images.x", shape=(8, 8), dtype="uint8", kind="image"), "H x W x 3"),
    (dict(key="observation.images.x", shape=(8, 8, 3), dtype="float32", kind="image"), "uint8"),
    (dict(key="a", shape=(3,), dtype="float32", names=("x", "y"), kind="action"), "2 names"),
    (dict(key="a", shape=(3,), dtype="float32", kind="bogus"), "kind"),
])
def test_bad_feature_specs(kw, msg):
    with pytest.raises(T.ContractError, match=msg):
        T.FeatureSpec(**kw)


def test_check_names_key_and_problem():
    f = T.FeatureSpec("action", (7,), "float32", kind="action")
    with pytest.raises(T.ContractError, match="action: expected per-frame shape"):
        f.check(np.zeros((4, 6), np.float32))
    with pytest.raises(T.ContractError, match="action: expected dtype"):
        f.check(np.zeros((4, 7), np.float64))
    with pytest.raises(T.ContractError, match="missing 'task'"):
        T.Observation.from_flat({"observation.state": np.zeros(3)})
