"""Normalizer: the three modes, round trips, loud failures on bad statistics, state-dict travel."""
import numpy as np
import pytest
import torch

from vlastack.policies.normalizer import Normalizer

STATS = {"action": {"mean": [1.0, -2.0], "std": [2.0, 0.5], "min": [-3.0, -4.0], "max": [5.0, 0.0],
                    "q01": [-2.0, -3.0], "q99": [4.0, -1.0]},
         "observation.state": {"mean": np.array([0.5]), "std": np.array([4.0]), "min": [0.0], "max": [1.0],
                               "q01": [0.0], "q99": [1.0]}}


@pytest.mark.parametrize("mode,lo,hi", [("min_max", [-3.0, -4.0], [5.0, 0.0]), ("q01_q99", [-2.0, -3.0], [4.0, -1.0])])
def test_bounds_map_to_unit_interval(mode, lo, hi):
    n = Normalizer({"action": 2}, {"action": mode}, stats=STATS)
    out = n.normalize("action", torch.tensor([lo, hi]))
    assert torch.allclose(out, torch.tensor([[-1.0, -1.0], [1.0, 1.0]]))
    x = torch.randn(4, 3, 2) * 5
    assert torch.allclose(n.unnormalize("action", n.normalize("action", x)), x, atol=1e-5)


def test_mean_std_and_identity():
    n = Normalizer({"action": 2, "observation.state": 1}, {"action": "mean_std", "observation.state": "identity"},
                   stats=STATS)
    assert torch.allclose(n.normalize("action", torch.tensor([3.0, -1.5])), torch.tensor([1.0, 1.0]))
    x = torch.randn(2, 1)
    assert torch.equal(n.normalize("observation.state", x), x)


def test_clip_only_for_bounded_modes():
    n = Normalizer({"action": 2}, {"action": "q01_q99"}, stats=STATS, clip=True)
    assert n.normalize("action", torch.tensor([100.0, -100.0])).abs().max() == 1.0


def test_bad_statistics_fail_loudly():
    with pytest.raises(ValueError, match="not finite at dims \\[1\\]"):
        Normalizer({"action": 2}, {"action": "mean_std"}, stats={"action": {"mean": [0, 0], "std": [1, float("inf")]}})
    with pytest.raises(ValueError, match="constant dims \\[0\\].*norm_on_constant"):
        Normalizer({"action": 2}, {"action": "mean_std"}, stats={"action": {"mean": [0, 0], "std": [0.0, 1]}})
    with pytest.raises(ValueError, match="no statistics for 'action'"):
        Normalizer({"action": 2}, {"action": "min_max"}, stats={"observation.state": STATS["observation.state"]})
    with pytest.raises(ValueError, match="lack 'q01'"):
        Normalizer({"action": 2}, {"action": "q01_q99"}, stats={"action": {"mean": [0, 0]}})
    with pytest.raises(ValueError, match="has 3 values, expected 2"):
        Normalizer({"action": 2}, {"action": "min_max"}, stats={"action": {"min": [0, 0, 0], "max": [1, 1, 1]}})
    with pytest.raises(ValueError, match="not one of"):
        Normalizer({"action": 2}, {"action": "zscore"})
    with pytest.raises(ValueError, match="no mode"):
        Normalizer({"action": 2}, {})


def test_constant_dims_unit_option_warns_and_centres():
    with pytest.warns(UserWarning, match="constant dims"):
        n = Normalizer({"action": 2}, {"action": "min_max"}, on_constant="unit",
                       stats={"action": {"min": [1.0, 0.0], "max": [1.0, 2.0]}})
    assert torch.allclose(n.normalize("action", torch.tensor([1.5, 2.0])), torch.tensor([0.5, 1.0]))


def test_unfitted_and_shape_errors_and_state_dict_round_trip():
    n = Normalizer({"action": 2}, {"action": "min_max"})
    with pytest.raises(RuntimeError, match="no statistics"):
        n.normalize("action", torch.zeros(2))
    fitted = Normalizer({"action": 2}, {"action": "min_max"}, stats=STATS)
    n.load_state_dict(fitted.state_dict())
    x = torch.randn(3, 2)
    assert torch.equal(n.normalize("action", x), fitted.normalize("action", x))
    with pytest.raises(ValueError, match="expected last dimension 2"):
        n.normalize("action", torch.zeros(3, 7))
    with pytest.raises(KeyError, match="unknown key"):
        n.normalize("observation.state", torch.zeros(1))
