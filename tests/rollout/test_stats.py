"""The Wilson interval (scipy) gives the numbers of the closed-form formula it replaced."""
import math
from statistics import NormalDist

import pytest

from vlastack.rollout.stats import success_summary, wilson_interval


def _wilson_formula(k: int, n: int, confidence: float) -> tuple[float, float]:
    """The hand-written interval vlastack used before scipy (the reference)."""
    z = NormalDist().inv_cdf(0.5 + confidence / 2.0)
    p = k / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z / denom * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return (0.0 if k == 0 else max(0.0, centre - half)), (1.0 if k == n else min(1.0, centre + half))


@pytest.mark.parametrize("confidence", [0.8, 0.9, 0.95, 0.99])
def test_wilson_interval_matches_the_closed_form(confidence):
    for n in range(1, 31):
        for k in range(n + 1):
            assert wilson_interval(k, n, confidence) == pytest.approx(_wilson_formula(k, n, confidence), abs=1e-12)


def test_wilson_interval_edges_and_errors():
    assert wilson_interval(17, 20) == pytest.approx((0.6395811352592431, 0.9476312541037835), abs=1e-12)
    assert wilson_interval(0, 0) == (0.0, 1.0)
    assert wilson_interval(0, 5)[0] == 0.0 and wilson_interval(5, 5)[1] == 1.0
    with pytest.raises(ValueError, match="need 0 <= successes <= trials"):
        wilson_interval(6, 5)
    with pytest.raises(ValueError, match="must be integers"):
        wilson_interval(1.5, 5)
    with pytest.raises(ValueError, match="confidence must be in \\(0, 1\\)"):
        wilson_interval(1, 5, confidence=1.0)
    s = success_summary([{"success": True, "steps": 10}, {"success": False, "steps": 30}])
    assert (s["successes"], s["episodes"], s["mean_steps"]) == (1, 2, 20.0)
    assert (s["ci_low"], s["ci_high"]) == pytest.approx(_wilson_formula(1, 2, 0.95), abs=1e-12)
