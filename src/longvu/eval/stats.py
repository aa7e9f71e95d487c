"""The two statistics the reports print beside a rate: a Wilson interval, and McNemar's exact paired test.

Written here rather than taken from scipy/statsmodels: both are a few lines of closed form, and
the eval extra should not pull a scientific stack in for them.
"""

from __future__ import annotations

import math


def wilson(k: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """The Wilson score interval of ``k`` successes in ``n`` (95% for ``z`` 1.96), as fractions; (0, 1) for n 0."""
    if n <= 0:
        return 0.0, 1.0
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def mcnemar(a: list[bool], b: list[bool]) -> dict:
    """McNemar's exact test on paired outcomes (the same questions under two settings).

    Returns ``only_a`` / ``only_b`` (right under one setting only) and ``p``: the two-sided binomial
    probability of a split at least this uneven among the discordant pairs if both were equally good.
    """
    if len(a) != len(b):
        raise ValueError("paired outcomes need the same questions")
    only_a = sum(1 for x, y in zip(a, b) if x and not y)
    only_b = sum(1 for x, y in zip(a, b) if y and not x)
    n, k = only_a + only_b, min(only_a, only_b)
    tail = sum(math.comb(n, i) for i in range(k + 1)) / 2**n if n else 1.0
    return {"only_a": only_a, "only_b": only_b, "p": min(1.0, 2 * tail)}


def rate_text(k: int, n: int) -> str:
    """``k/n = 62.0% [52.2, 70.9]`` (the Wilson interval in percent)."""
    lo, hi = wilson(k, n)
    pct = 100.0 * k / n if n else 0.0
    return f"{k}/{n} = {pct:.1f}% [{100 * lo:.1f}, {100 * hi:.1f}]"
