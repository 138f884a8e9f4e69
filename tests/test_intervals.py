"""study/intervals.py: the mean, sample sd and Student's t interval over seeds, and paired differences."""

import numpy as np
import pytest

from study.intervals import difference_words, paired_difference, spread_text, summary, t_975


def test_t_quantiles_are_students_and_fall_back_to_the_wider_listed_one():
    assert t_975(1) == 12.706 and t_975(4) == 2.776 and t_975(29) == 2.060  # 29 falls back to 25's
    assert t_975(10_000) == 1.960


def test_summary_is_the_textbook_interval():
    # 1..5: mean 3, sd sqrt(2.5), half-width t(4) * sd / sqrt(5) = 2.776 * 1.5811 / 2.2361 = 1.9629
    got = summary([1, 2, 3, 4, 5])
    assert got["mean"] == 3 and got["sd"] == pytest.approx(np.sqrt(2.5))
    assert (got["low"], got["high"]) == (pytest.approx(1.0371, abs=1e-4), pytest.approx(4.9629, abs=1e-4))
    assert summary([0.5])["sd"] is None and "one seed" in spread_text([0.5])


def test_a_paired_difference_is_real_only_when_its_interval_excludes_zero():
    base = np.array([0.90, 0.92, 0.95, 0.91, 0.93])
    consistent = paired_difference(base + np.array([0.010, 0.012, 0.011, 0.009, 0.010]), base)
    assert consistent["real"] and consistent["low"] > 0
    # Large between-seed spread, but the same small gain on every seed: pairing sees it, two separate means would not.
    assert summary(base + 0.01)["low"] < summary(base)["high"]
    mixed = paired_difference(base + np.array([0.01, -0.01, 0.005, -0.006, 0.002]), base)
    assert not mixed["real"] and mixed["low"] < 0 < mixed["high"]
    assert difference_words(mixed).startswith("no difference at this precision")
    with pytest.raises(ValueError, match="one of each per seed"):
        paired_difference([1, 2], [1])
