"""The baseline judgment's two tools: a tolerance per measurement, and Mann-Whitney U over grouped samples."""

from __future__ import annotations

import math
import random

import pytest
from pydantic import ValidationError

from blocks.environment import BaselineTolerance, PerformanceTargets
from tasks.core.models import Verdict
from tasks.gates.baseline import judge_against_baseline, mann_whitney

pytestmark = pytest.mark.unit


def grouped(samples) -> dict[float, int]:
    counts: dict[float, int] = {}
    for s in samples:
        counts[s] = counts.get(s, 0) + 1
    return counts


def test_a_regression_must_exceed_both_margins():
    p95 = BaselineTolerance(relative=0.20, absolute=5)
    assert p95.allowed(4) == 9  # a small baseline: the absolute margin decides
    assert p95.allowed(400) == 480  # a large one: the relative margin decides
    assert p95.describe("ms") == "+20% and +5 ms"
    assert BaselineTolerance(relative=0, absolute=0.002).describe("ratio") == "+0.2 points"
    defaults = PerformanceTargets().baseline
    assert (defaults.p95_ms.relative, defaults.p95_ms.absolute, defaults.error_rate.absolute) == (0.2, 5, 0.002)
    for bad in ({"relative": -0.1, "absolute": 1}, {"relative": 0.1, "absolute": math.inf}, {"relative": 0.1}):
        with pytest.raises(ValidationError):
            BaselineTolerance(**bad)
    with pytest.raises(ValidationError, match="extra"):
        PerformanceTargets(baseline={"p95_ms": {"relative": 0.1, "absolute": 1}, "p95": {}})


def test_mann_whitney_from_counts_equals_the_textbook_test_on_every_request():
    # The numbers scipy.stats.mannwhitneyu(candidate, baseline, alternative="greater", method="asymptotic")
    # gives for the same samples expanded request by request (computed once, kept here).
    rng = random.Random(1)
    baseline = grouped(round(rng.lognormvariate(1, 0.5), 1) for _ in range(300))
    candidate = grouped(round(rng.lognormvariate(1.1, 0.5), 1) for _ in range(200))
    test = mann_whitney(baseline, candidate)
    assert test.u == 30695.0 and test.p_value == pytest.approx(0.3303570433770351, rel=1e-9)
    assert not test.slower
    # Prometheus-like buckets: heavy ties, a real shift.
    test = mann_whitney({0.005: 900, 0.01: 80, 0.025: 20}, {0.005: 850, 0.01: 100, 0.025: 45, 0.05: 5})
    assert test.u == 526050.0 and test.p_value == pytest.approx(0.00021963938421951418, rel=1e-9)
    # Significant, but a candidate request is slower only 53 % of the time: a busy machine does that.
    assert test.effect == pytest.approx(0.52605) and not test.slower
    assert "a shift too small to count (under 71%)" in test.describe()
    large = mann_whitney({0.005: 900, 0.01: 80, 0.025: 20}, {0.005: 100, 0.05: 900})
    assert large.slower and large.effect > 0.9 and "candidate slower" in large.describe()


def test_mann_whitney_needs_samples_and_sees_no_difference_in_identical_buckets():
    assert mann_whitney({1.0: 49}, {1.0: 500}) is None
    same = mann_whitney({0.005: 600}, {0.005: 700})
    assert same.p_value == 1.0 and same.effect == 0.5 and not same.slower
    faster = mann_whitney({0.05: 500}, {0.005: 500})
    assert faster.p_value > 0.99 and faster.effect == 0 and "not slower" in faster.describe()


def test_the_judgment_names_the_rule_and_the_distribution_decides_a_noisy_quantile():
    p95 = BaselineTolerance(relative=0.2, absolute=5)
    verdict, why = judge_against_baseline(4.0, 8.5, p95, "ms")
    assert verdict == Verdict.PASS and "at most 9.0 ms" in why
    slower = mann_whitney({0.004: 500}, {0.04: 500})
    verdict, why = judge_against_baseline(4.0, 45.0, p95, "ms", slower)
    assert (
        verdict == Verdict.FAIL
        and why.startswith("REGRESSION: 45.0 ms exceeds at most 9.0 ms")
        and "candidate slower" in why
    )
    same = mann_whitney({0.004: 500}, {0.004: 500})
    assert judge_against_baseline(4.0, 45.0, p95, "ms", same)[0] == Verdict.PASS
    assert judge_against_baseline(4.0, 45.0, p95, "ms", explained_ms=50)[0] == Verdict.INCONCLUSIVE
    verdict, why = judge_against_baseline(None, 45.0, p95, "ms", baseline_missing="no baseline: first deploy")
    assert verdict == Verdict.INCONCLUSIVE and why == "no baseline: first deploy"
    points = BaselineTolerance(relative=0, absolute=0.002)
    assert judge_against_baseline(0.001, 0.0035, points, "ratio")[0] == Verdict.FAIL
    assert judge_against_baseline(0.001, 0.0029, points, "ratio")[0] == Verdict.PASS
