"""The intervals every evaluation reports (scripted baselines, `apo baseline`, trained policies), so that their
numbers can be compared directly.

score = 100 x mean reward with a 95% normal-approximation half-width (1.96 x sample std / sqrt n);
success rate = share of episodes with reward 1, with a 95% Wilson score interval: reported as its half-width
around the Wilson centre, so it stays inside [0, 1] at 0% or 100%, where the normal interval collapses to 0.
"""
from __future__ import annotations

import math

Z95 = 1.959964


def score_ci(rewards: list[float]) -> tuple[float, float]:
    """(100 x mean, 95% half-width) of rewards in [0, 1]."""
    n = len(rewards)
    mean = sum(rewards) / n
    var = sum((r - mean) ** 2 for r in rewards) / (n - 1) if n > 1 else 0.0
    return 100 * mean, 100 * Z95 * math.sqrt(var / n)


def wilson(successes: int, n: int) -> tuple[float, float]:
    """(centre, half-width) of the 95% Wilson score interval of a proportion."""
    p = successes / n
    denom = 1 + Z95 ** 2 / n
    centre = (p + Z95 ** 2 / (2 * n)) / denom
    half = Z95 * math.sqrt(p * (1 - p) / n + Z95 ** 2 / (4 * n * n)) / denom
    return centre, half
