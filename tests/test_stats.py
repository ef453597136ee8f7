"""Paired per-case statistics: mean difference, t interval, Wilcoxon p-value, worse cases."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from pipeline.evaluation.stats import paired_stats


def test_matches_scipy_on_random_pairs():
    rng = np.random.default_rng(0)
    a = {f"c{i}": float(v) for i, v in enumerate(rng.uniform(0.6, 0.9, 15))}
    b = {k: v + float(rng.normal(0.03, 0.02)) for k, v in a.items()}
    result = paired_stats(a, b)
    diff = np.array([b[k] - a[k] for k in sorted(a)])
    assert result.n == 15 and result.mean_difference == pytest.approx(diff.mean())
    low, high = stats.t.interval(0.95, 14, loc=diff.mean(), scale=stats.sem(diff))
    assert (result.ci_low, result.ci_high) == pytest.approx((low, high))
    assert result.wilcoxon_p == pytest.approx(stats.wilcoxon(diff).pvalue)
    assert result.wilcoxon_p < 0.01


def test_worse_cases_for_higher_and_lower_is_better():
    a = {"x": 0.9, "y": 0.8, "z": 0.7, "w": 0.5}
    b = {"x": 0.6, "y": 0.78, "z": 0.9, "w": 0.4}
    assert paired_stats(a, b, worse_threshold=0.05).worse == ["x", "w"]  # worst first
    hd_a = {"x": 2.0, "y": 3.0}
    hd_b = {"x": 5.0, "y": 1.0}
    assert paired_stats(hd_a, hd_b, higher_is_better=False, worse_threshold=1.0).worse == ["x"]


def test_unpaired_and_nan_cases_are_dropped():
    result = paired_stats({"a": 1.0, "b": math.nan, "c": 0.5}, {"a": 0.9, "b": 0.7, "d": 0.1})
    assert result.n == 1 and result.dropped == ["b", "c", "d"]
    assert (
        result.mean_difference == pytest.approx(-0.1)
        and math.isnan(result.ci_low)
        and math.isnan(result.wilcoxon_p)
    )
    empty = paired_stats({}, {})
    assert empty.n == 0 and math.isnan(empty.mean_difference)


def test_identical_runs_have_zero_difference_and_no_p_value():
    a = {"a": 0.5, "b": 0.6, "c": 0.7}
    result = paired_stats(a, dict(a))
    assert (
        result.mean_difference == 0 and result.ci_low == result.ci_high == 0 and math.isnan(result.wilcoxon_p)
    )


@pytest.mark.parametrize(
    ("kwargs", "match"), [({"confidence": 1.0}, "confidence"), ({"worse_threshold": -1}, "worse")]
)
def test_bad_arguments_are_refused(kwargs, match):
    with pytest.raises(ValueError, match=match):
        paired_stats({"a": 1.0}, {"a": 1.0}, **kwargs)
