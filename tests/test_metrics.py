"""The intervals of every reported evaluation (webshop/metrics.py), against values computed by hand."""
from __future__ import annotations

import math

import pytest

from webshop.metrics import Z95, score_ci, wilson


def test_score_ci_is_the_normal_interval_of_the_mean():
    score, half = score_ci([0.0, 1.0, 0.5, 0.5])
    sd = math.sqrt(((0.5 ** 2) * 2) / 3)
    assert score == pytest.approx(50.0) and half == pytest.approx(100 * Z95 * sd / 2)
    assert score_ci([0.3]) == (pytest.approx(30.0), 0.0)


@pytest.mark.parametrize("successes,n,low,high", [
    (0, 50, 0.0, 0.07135),        # z^2 / (n + z^2): the interval does not collapse at 0%
    (50, 50, 0.92865, 1.0),
    (5, 10, 0.23659, 0.76341),
    (2, 100, 0.00550, 0.07001),
])
def test_wilson_interval(successes, n, low, high):
    centre, half = wilson(successes, n)
    assert centre - half == pytest.approx(low, abs=1e-4) and centre + half == pytest.approx(high, abs=1e-4)


def test_baselines_report_the_same_intervals(generated_shop):
    from webshop.policies import POLICIES, evaluate, run_policy

    goals = list(generated_shop.goals.split("test"))[:20]
    s = evaluate(generated_shop, "rule", goals, 15)
    results = run_policy(generated_shop, POLICIES["rule"], goals, 15)
    score, half = score_ci([r.reward for r in results])
    centre, whalf = wilson(sum(r.success for r in results), len(results))
    assert (s["score"], s["score_ci95"]) == (round(score, 2), round(half, 2))
    assert (s["success_centre"], s["success_ci95"]) == (round(centre, 4), round(whalf, 4))
