"""Success-rate statistics: the Wilson score interval and per-group summaries of episode results.

The Wilson interval (Wilson 1927) stays inside [0, 1] and keeps sensible width at 0/n and n/n,
where the normal ("Wald") interval collapses to a point. For ``k`` successes in ``n`` trials and
``z`` the two-sided normal quantile (1.96 for 95%)::

    p = k / n
    centre = (p + z^2 / (2n)) / (1 + z^2 / n)
    half   = z / (1 + z^2 / n) * sqrt(p (1 - p) / n + z^2 / (4 n^2))

computed by scipy (``binomtest(k, n).proportion_ci(method="wilson")``).
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping


def wilson_interval(successes: int, trials: int, confidence: float = 0.95) -> tuple[float, float]:
    """The Wilson score interval (low, high) of a success rate; (0.0, 1.0) when ``trials`` is 0."""
    if isinstance(successes, bool) or isinstance(trials, bool) or int(successes) != successes \
            or int(trials) != trials:
        raise ValueError(f"successes and trials must be integers, got {successes!r} / {trials!r}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    k, n = int(successes), int(trials)
    if n < 0 or k < 0 or k > n:
        raise ValueError(f"need 0 <= successes <= trials, got {k} / {n}")
    if n == 0:
        return 0.0, 1.0
    from scipy.stats import binomtest

    ci = binomtest(k, n).proportion_ci(confidence_level=confidence, method="wilson")
    return float(ci.low), float(ci.high)


def success_summary(episodes: Iterable[Mapping[str, Any]], confidence: float = 0.95) -> dict[str, Any]:
    """{successes, episodes, success_rate, ci_low, ci_high, mean_steps} of episode records with ``success``."""
    eps = list(episodes)
    n = len(eps)
    k = sum(bool(e["success"]) for e in eps)
    low, high = wilson_interval(k, n, confidence)
    steps = [int(e["steps"]) for e in eps if "steps" in e]
    return {"successes": k, "episodes": n, "success_rate": (k / n) if n else 0.0,
            "ci_low": low, "ci_high": high, "confidence": confidence,
            "mean_steps": (sum(steps) / len(steps)) if steps else 0.0}
