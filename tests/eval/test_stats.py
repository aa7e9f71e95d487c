"""The reports' statistics: Wilson intervals and McNemar's exact test, against worked values."""

from __future__ import annotations

import pytest

from longvu.eval.stats import mcnemar, rate_text, wilson


def test_wilson_interval():
    lo, hi = wilson(81, 263)  # Wilson's textbook example: 0.2553 to 0.3662
    assert (round(lo, 4), round(hi, 4)) == (0.2553, 0.3662)
    assert wilson(0, 10)[0] == 0.0 and 0.27 < wilson(0, 10)[1] < 0.31  # no success: still not [0, 0]
    assert wilson(10, 10)[1] == 1.0 and 0.69 < wilson(10, 10)[0] < 0.73
    assert wilson(0, 0) == (0.0, 1.0)
    assert rate_text(30, 30).startswith("30/30 = 100.0% [88.")


def test_mcnemar_exact():
    right = [True] * 30
    mixed = [True] * 21 + [False] * 9
    r = mcnemar(right, mixed)
    assert (r["only_a"], r["only_b"]) == (9, 0) and r["p"] == pytest.approx(2 / 2**9)  # 0.0039
    assert mcnemar(mixed, mixed)["p"] == 1.0  # no discordant pair
    r = mcnemar([True, False, True, False], [False, True, False, True])  # 2 vs 2: no evidence either way
    assert r["p"] == 1.0
    with pytest.raises(ValueError):
        mcnemar([True], [True, False])
