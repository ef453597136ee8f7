"""Paired statistics for comparing two models case by case (the same cases, two sets of scores)."""

from __future__ import annotations

import math
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field

import numpy as np
from scipy import stats


@dataclass(frozen=True)
class PairedStats:
    """Paired differences ``b - a`` of one metric over the cases scored by both runs.

    Attributes:
        n: number of paired cases with finite values in both runs.
        mean_difference: mean of ``b - a``.
        ci_low: lower end of the t-based confidence interval of the mean difference (nan when n < 2).
        ci_high: upper end.
        median_difference: median of ``b - a``.
        wilcoxon_p: two-sided Wilcoxon signed-rank p-value (``scipy.stats.wilcoxon``); nan when n < 2 or every
            difference is zero.
        worse: cases where ``b`` is worse than ``a`` by more than the threshold, worst first.
        dropped: cases present in only one run or with a non-finite value (e.g. HD95 of an empty structure).
        confidence: the interval's confidence level.
    """

    n: int
    mean_difference: float
    ci_low: float
    ci_high: float
    median_difference: float
    wilcoxon_p: float
    worse: list[str] = field(default_factory=list)
    dropped: list[str] = field(default_factory=list)
    confidence: float = 0.95

    def as_dict(self) -> dict[str, object]:
        return asdict(self)


def paired_stats(
    a: Mapping[str, float],
    b: Mapping[str, float],
    *,
    higher_is_better: bool = True,
    worse_threshold: float = 0.05,
    confidence: float = 0.95,
) -> PairedStats:
    """Compare per-case scores of run ``a`` (reference) and run ``b``.

    Args:
        a: case -> score of the reference run (e.g. Dice of one label).
        b: case -> score of the other run.
        higher_is_better: False for distances (HD95 in mm): then "worse" means ``b - a > threshold``.
        worse_threshold: how much worse a case must get to be listed, in the metric's unit (>= 0).
        confidence: level of the t-based confidence interval, in (0, 1).

    Returns:
        The paired statistics; with no paired case every number is nan and ``n`` is 0.
    """
    if not 0 < confidence < 1:
        raise ValueError(f"confidence must be in (0, 1), got {confidence!r}")
    if not worse_threshold >= 0:
        raise ValueError(f"worse_threshold must be >= 0, got {worse_threshold!r}")
    cases = sorted(set(a) | set(b))
    paired = [c for c in cases if c in a and c in b and math.isfinite(a[c]) and math.isfinite(b[c])]
    dropped = [c for c in cases if c not in paired]
    diff = np.array([b[c] - a[c] for c in paired], dtype=np.float64)
    n = len(paired)
    nan = float("nan")
    if n == 0:
        return PairedStats(0, nan, nan, nan, nan, nan, [], dropped, confidence)
    mean = float(diff.mean())
    ci_low = ci_high = p_value = nan
    if n >= 2:
        sem = float(diff.std(ddof=1)) / math.sqrt(n)
        half = float(stats.t.ppf(0.5 + confidence / 2, df=n - 1)) * sem
        ci_low, ci_high = mean - half, mean + half
        if np.any(diff != 0):
            with warnings.catch_warnings():
                # scipy warns about ties and small n; the p-value is still valid
                warnings.simplefilter("ignore")
                p_value = float(stats.wilcoxon(diff, zero_method="wilcox", alternative="two-sided").pvalue)
    sign = 1.0 if higher_is_better else -1.0
    loss = {c: -sign * d for c, d in zip(paired, diff, strict=True)}
    worse = sorted((c for c in paired if loss[c] > worse_threshold), key=lambda c: -loss[c])
    return PairedStats(n, mean, ci_low, ci_high, float(np.median(diff)), p_value, worse, dropped, confidence)
