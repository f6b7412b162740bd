"""The load judge on made-up runs: every combination of saturated, missed and explained by lag,
the live release's last report as a baseline, and the data the run history keeps for the next one."""

from __future__ import annotations

import pytest

from blocks.environment import PerformanceTargets
from tasks.core.models import Verdict
from tasks.gates.load.judge import LoadBaseline, judge
from tasks.gates.load.report import data_markdown, headline, parse_data_markdown, report_markdown, results_table
from tests.support.load_runs import made_up_run

pytestmark = pytest.mark.unit

TARGETS = PerformanceTargets()  # p99 < 1000 ms, max < 2000 ms, min 100 req/s
# 2 % of the requests at SLOW ms: the P99 is SLOW, the P95 stays fast.
BEYOND_LAG, WITHIN_LAG, LAG = 1300.0, 1050.0, 45.0


@pytest.mark.parametrize(
    ("saturated", "slow_ms", "verdict", "says"),
    [
        (False, None, Verdict.PASS, "passed: light 100 req/s p99"),
        (False, BEYOND_LAG, Verdict.FAIL, "failed: light: p99 1,3"),
        # Kept up, so even a miss the lag could have explained is the service's.
        (False, WITHIN_LAG, Verdict.FAIL, "failed: light: p99 1,0"),
        (True, None, Verdict.PASS, "passed: light 100 req/s p99"),
        (True, BEYOND_LAG, Verdict.FAIL, "more than the saturated generator's lag can explain (90.0 ms)"),
        (True, WITHIN_LAG, Verdict.INCONCLUSIVE, "inconclusive: generator saturated"),
    ],
    ids=[
        "kept-up-no-miss",
        "kept-up-miss",
        "kept-up-small-miss",
        "saturated-no-miss",
        "saturated-miss-beyond-lag",
        "saturated-miss-within-lag",
    ],
)
def test_every_combination_of_saturated_missed_and_explained(saturated, slow_ms, verdict, says):
    run = made_up_run(
        lag_ms=LAG if saturated else 0.5, saturated=saturated, slow_share=0.02 if slow_ms else 0, slow_ms=slow_ms or 0
    )
    report = judge([run], TARGETS)
    assert report.verdict == verdict, report.reason
    assert says in report.reason
    if verdict == Verdict.FAIL:
        assert [f.metric for f in report.failed_targets] == ["p99"] and not report.explained_misses
    if verdict == Verdict.INCONCLUSIVE:
        assert report.failed_targets == [] and [f.metric for f in report.explained_misses] == ["p99"]
        assert "within what the saturated generator's lag can explain" in report.reason
    if saturated and verdict == Verdict.PASS:
        assert any("the pass stands" in w for w in report.warnings)


def test_a_clean_failing_profile_decides_even_when_another_profile_was_saturated():
    # The run: light (not saturated) measured P99 1.3 s; medium was saturated and its miss is within its lag.
    light = made_up_run("light", 100, slow_share=0.02, slow_ms=1309, lag_ms=3.6)
    medium = made_up_run("medium", 500, slow_share=0.02, slow_ms=1040, lag_ms=45, saturated=True, seed=8)
    report = judge([light, medium], TARGETS)
    assert report.verdict == Verdict.FAIL
    assert report.reason.startswith("failed: light: p99 1,3"), report.reason
    assert headline(report).startswith("# Load test failed: light: p99 1,3")
    assert [f.profile for f in report.explained_misses] == ["medium"]


@pytest.mark.parametrize(("errors", "verdict"), [({"500": 60}, Verdict.FAIL), ({"timeout": 60}, Verdict.INCONCLUSIVE)])
def test_a_saturated_generator_cannot_explain_the_service_s_own_error_statuses(errors, verdict):
    run = made_up_run(saturated=True, lag_ms=LAG, errors=errors)  # 6 % errors, 1 % allowed
    report = judge([run], TARGETS)
    assert report.verdict == verdict, report.reason
    if verdict == Verdict.FAIL:
        assert "6.00% answered as HTTP errors by the service: more than the limit" in report.reason
    else:
        assert "generator saturated" in report.reason and "may be the saturated generator's doing" in report.reason


def test_a_generator_that_did_not_offer_the_rate_and_too_few_requests_are_inconclusive():
    short = judge([made_up_run(saturated=True, shortfall=True, lag_ms=300)], TARGETS)
    assert short.verdict == Verdict.INCONCLUSIVE and "generator saturated" in short.reason
    thin = judge([made_up_run(rate=5, duration_s=10)], TARGETS)
    assert thin.verdict == Verdict.INCONCLUSIVE and "fewer than 100 requests" in thin.reason


def baseline_of(*runs) -> LoadBaseline:
    """What the run history keeps of a passing load test, read back."""
    report = judge(list(runs), TARGETS)
    assert report.verdict == Verdict.PASS, report.reason
    kept = parse_data_markdown(data_markdown(report), "deploy-v3.2.0-to-sandbox (3.2.0)", "3.2.0")
    assert kept is not None
    return kept


def test_a_release_clearly_slower_than_the_live_one_fails_on_the_baseline_though_inside_every_target():
    live = baseline_of(made_up_run(latency_ms=4, spread_ms=0.5))
    sluggish = made_up_run(latency_ms=40, spread_ms=3, seed=9)  # P95 ~45 ms: far inside the 500 ms target
    report = judge([sluggish], TARGETS, live)
    assert report.verdict == Verdict.FAIL, report.reason
    assert all(f.against == "baseline" for f in report.failed_targets)
    assert {f.metric for f in report.failed_targets} >= {"p50", "p95", "p99"}
    assert report.reason.startswith("failed: light: p50 ") and "for the live release" in report.reason
    [profile] = report.baseline.profiles
    assert profile.distribution is not None and profile.distribution.slower and profile.distribution.effect > 0.99
    assert "REGRESSION" in profile.rows[1].why and "Mann-Whitney U: candidate slower" in profile.rows[1].why
    # The table shows both releases side by side.
    [row] = results_table(report)
    assert row["live release p95 ms"] < 6 and row["p95 ms"] > 40 and row["vs live release"] == "fail"
    assert "Against the live release" in report.markdown() and "deploy\\-v3\\.2\\.0\\-to\\-sandbox" in report.markdown()


def test_the_same_release_measured_again_passes_the_baseline():
    live = baseline_of(made_up_run(latency_ms=4, spread_ms=0.5))
    report = judge([made_up_run(latency_ms=4.3, spread_ms=0.5, seed=11)], TARGETS, live)
    assert report.verdict == Verdict.PASS, report.reason
    assert report.baseline.verdict == Verdict.PASS and "vs deploy-v3.2.0-to-sandbox (3.2.0): pass" in report.summary()


def test_a_quantile_that_moved_while_the_distributions_are_the_same_is_noise():
    live = baseline_of(made_up_run(latency_ms=4, spread_ms=0.5))
    # Three requests out of a thousand at 60 ms: P99 barely moves, the distribution does not.
    noisy = made_up_run(latency_ms=4, spread_ms=0.5, slow_share=0.011, slow_ms=60, seed=12)
    report = judge([noisy], TARGETS, live)
    p99 = next(r for r in report.baseline.profiles[0].rows if r.name == "p99")
    assert p99.candidate > p99.baseline + 10
    assert p99.vs_baseline == Verdict.PASS and "cannot be told apart" in p99.why


def test_no_previous_report_leaves_the_targets_to_decide_and_says_so():
    report = judge([made_up_run()], TARGETS, None, "no earlier completed run to sandbox in the run history")
    assert report.verdict == Verdict.PASS
    assert report.baseline.verdict == Verdict.INCONCLUSIVE
    assert "no earlier completed run" in report.baseline.summary() and "the targets decide alone" in report.summary()
    assert any("not compared with the live release" in w for w in report.warnings)
    assert "No baseline" in report_markdown(report, "<svg/>")


def test_a_profile_the_live_release_never_ran_is_not_compared():
    live = baseline_of(made_up_run("light", 100))
    report = judge([made_up_run("medium", 500)], TARGETS, live)
    [profile] = report.baseline.profiles
    assert profile.verdict == Verdict.INCONCLUSIVE and "did not run medium at 500 req/s" in profile.rows[0].why


def test_only_a_passing_load_test_is_kept_as_a_baseline():
    failing = judge([made_up_run(slow_share=0.02, slow_ms=1300)], TARGETS)
    assert failing.verdict == Verdict.FAIL
    assert parse_data_markdown(data_markdown(failing), "x") is None
    assert parse_data_markdown("# not the data", "x") is None
    kept = baseline_of(made_up_run())
    assert kept.profiles[0].latency_buckets and kept.profiles[0].endpoints == ["static"]


def test_a_short_profile_s_p99_and_a_busy_machine_s_small_shift_are_not_regressions():
    # Measured on this sandbox: the same release again, 400 requests each, on a busier machine.
    live = baseline_of(made_up_run(duration_s=4, latency_ms=2.0, spread_ms=0.6))
    busy = made_up_run(duration_s=4, latency_ms=2.3, spread_ms=0.8, slow_share=0.008, slow_ms=44, seed=5)
    report = judge([busy], TARGETS, live)
    assert report.verdict == Verdict.PASS, report.reason
    [profile] = report.baseline.profiles
    p99 = next(r for r in profile.rows if r.name == "p99")
    assert p99.vs_baseline == Verdict.INCONCLUSIVE and "400 requests put 4 above the p99" in p99.why
    assert profile.distribution.p_value < 0.01 and not profile.distribution.slower  # significant, but small
