"""The metrics gate: a tiny fake Prometheus for crafted answers (unit), and the sandbox's real one (sandbox)."""

from __future__ import annotations

import json
import threading
import time
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest

from blocks.database import PostgresDatabase
from blocks.docker.target import DockerTarget
from blocks.environment import BaselineTolerance, PerformanceTargets, StagingEnvironment
from blocks.registry import ImageRegistry
from tasks.core.models import Verdict
from tasks.gates.metrics import (
    GUIDE_ALERTS,
    MetricCheck,
    check_metrics,
    effective_window,
    guide_checks,
    parse_duration,
    resolve,
)

SANDBOX_PROMETHEUS = "http://127.0.0.1:59090"


def vector(*series: tuple[dict, str]) -> dict:
    return {
        "status": "success",
        "data": {"resultType": "vector", "result": [{"metric": m, "value": [1.0, v]} for m, v in series]},
    }


class FakePrometheus:
    """Answers /api/v1/query from ``answers`` (substring of the query -> body or callable) and /api/v1/rules.
    A query at a past instant (``time=``, the baseline's) is answered from ``answers_before`` first."""

    def __init__(self):
        self.answers: dict[str, object] = {}
        self.answers_before: dict[str, object] = {}
        self.instants: list[str] = []
        self.rules = list(GUIDE_ALERTS)
        self.queries: list[str] = []
        fake = self

        class Handler(BaseHTTPRequestHandler):
            disable_nagle_algorithm = True

            def log_message(self, *args):
                pass

            def do_GET(self):
                url = urlsplit(self.path)
                status, body = 200, vector()
                if url.path == "/api/v1/rules":
                    body = {
                        "status": "success",
                        "data": {
                            "groups": [
                                {"name": "api_alerts", "rules": [{"name": n, "type": "alerting"} for n in fake.rules]}
                            ]
                        },
                    }
                else:
                    query = parse_qs(url.query)["query"][0]
                    fake.queries.append(query)
                    at = parse_qs(url.query).get("time", [None])[0]
                    if at:
                        fake.instants.append(at)
                    table = (
                        {
                            **fake.answers_before,
                            **{k: v for k, v in fake.answers.items() if k not in fake.answers_before},
                        }
                        if at
                        else fake.answers
                    )
                    for key, answer in table.items():
                        if key in query:
                            answer = answer() if callable(answer) else answer
                            status, body = answer if isinstance(answer, tuple) else (200, answer)
                            break
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        threading.Thread(target=self.server.serve_forever, args=(0.05,), daemon=True).start()

    def close(self):
        self.server.shutdown()
        self.server.server_close()


def environment(prometheus_url: str) -> StagingEnvironment:
    return StagingEnvironment(
        app_repo="/nonexistent",
        api_url="https://localhost:1",
        target=DockerTarget(),
        registry=ImageRegistry(address="127.0.0.1:1"),
        database=PostgresDatabase(password="unused"),
        prometheus_url=prometheus_url,
        smoke_password="unused",
    )


@pytest.fixture
def prom():
    fake = FakePrometheus()
    yield fake
    fake.close()


P95 = MetricCheck(
    name="P95 latency",
    query="histogram_quantile(0.95, sum by (le) (rate(h_bucket[{window}])))",
    op="<",
    threshold=500,
    scale=1000,
    unit="ms",
    samples_query="sum(increase(h_count[{window}]))",
    min_samples=50,
)


def run(prom, checks, **kw):
    return check_metrics.fn(
        environment(prom.url), checks=checks, **({"inconclusive_retry_s": 0.3, "retry_interval_s": 0.1} | kw)
    )


@pytest.mark.unit
def test_value_below_threshold_passes(prom):
    prom.answers = {"h_count": vector(({}, "1200")), "histogram_quantile": vector(({}, "0.120"))}
    report = run(prom, [P95])
    check = report.checks[0]
    assert check.verdict == Verdict.PASS and report.verdict == Verdict.PASS
    assert check.detail == "120ms < 500ms (1200 samples in 300s)"
    assert check.request == "histogram_quantile(0.95, sum by (le) (rate(h_bucket[300s])))"


@pytest.mark.unit
def test_value_above_threshold_fails_with_numbers(prom):
    prom.answers = {"h_count": vector(({}, "1200")), "histogram_quantile": vector(({}, "0.8"))}
    check = run(prom, [P95]).checks[0]
    assert check.verdict == Verdict.FAIL and check.detail == "800ms breaks < 500ms (1200 samples in 300s)"


@pytest.mark.unit
def test_nan_is_inconclusive_then_fails_never_passes(prom):
    prom.answers = {"h_count": vector(({}, "1200")), "histogram_quantile": vector(({}, "NaN"))}
    report = run(prom, [P95])
    check = report.checks[0]
    assert check.verdict == Verdict.FAIL and report.verdict == Verdict.FAIL
    assert check.detail.startswith("inconclusive after") and "NaN" in check.detail
    assert sum("histogram_quantile" in q for q in prom.queries) >= 2  # it was asked again


@pytest.mark.unit
def test_too_few_samples_is_inconclusive(prom):
    prom.answers = {"h_count": vector(({}, "7")), "histogram_quantile": vector(({}, "0.1"))}
    check = run(prom, [P95]).checks[0]
    assert check.verdict == Verdict.FAIL and "too few samples: 7 < 50" in check.detail


@pytest.mark.unit
def test_empty_result_fails_as_no_data(prom):
    check = run(prom, [MetricCheck(name="x", query="nothing_here", op=">=", threshold=1)]).checks[0]
    assert check.verdict == Verdict.FAIL and check.detail.endswith("no data for nothing_here")


@pytest.mark.unit
def test_data_arriving_during_the_retry_window_passes(prom):
    calls = {"n": 0}

    def late():
        calls["n"] += 1
        return vector() if calls["n"] < 3 else vector(({}, "1"))

    prom.answers = {"pg_up": late}
    check = run(
        prom, [MetricCheck(name="db", query="min(pg_up)", op=">=", threshold=1)], inconclusive_retry_s=5
    ).checks[0]
    assert check.verdict == Verdict.PASS and calls["n"] == 3


@pytest.mark.unit
def test_worst_series_decides_and_is_named(prom):
    prom.answers = {"pg_up": vector(({"instance": "a"}, "1"), ({"instance": "b"}, "0"))}
    check = run(prom, [MetricCheck(name="db", query="pg_up", op=">=", threshold=1)]).checks[0]
    assert check.verdict == Verdict.FAIL and "{instance=b}" in check.detail


@pytest.mark.unit
def test_rejected_query_fails_at_once(prom):
    prom.answers = {"bad": (400, {"status": "error", "errorType": "bad_data", "error": "parse error"})}
    check = run(prom, [MetricCheck(name="x", query="bad(", op="<", threshold=1)], inconclusive_retry_s=5).checks[0]
    assert check.verdict == Verdict.FAIL and "rejected" in check.detail and "parse error" in check.detail
    assert len(prom.queries) == 1  # not retried


@pytest.mark.unit
def test_unreachable_prometheus_fails():
    report = check_metrics.fn(environment("http://127.0.0.1:9"), checks=[P95], inconclusive_retry_s=0)
    check = report.checks[0]
    assert check.verdict == Verdict.FAIL and "inconclusive" in check.detail and "ConnectError" in check.detail


@pytest.mark.unit
def test_firing_guide_alert_fails_pending_is_only_noted(prom):
    alerts = next(c for c in guide_checks(PerformanceTargets()) if c.name == "no guide alert firing")
    prom.answers = {"ALERTS{alertname": vector(({"alertname": "HighLatency", "alertstate": "pending"}, "1"))}
    check = run(prom, [alerts]).checks[0]
    assert (
        check.verdict == Verdict.PASS
        and "guide alerts now: {alertname=HighLatency, alertstate=pending}" in check.detail
    )
    prom.answers['alertstate="firing"'] = vector(({"alertname": "DatabaseDown"}, "1"))
    check = run(prom, [alerts]).checks[0]
    assert check.verdict == Verdict.FAIL and "DatabaseDown" in check.detail


@pytest.mark.unit
def test_only_alerts_active_since_the_deploy_count():
    alerts = next(c for c in guide_checks(PerformanceTargets()) if c.name == "no guide alert firing")
    query = resolve(alerts.query, "60s", 1_700_000_000)
    assert "ALERTS_FOR_STATE" in query and ">= 1700000000" in query and 'alertstate="firing"' in query


@pytest.mark.unit
def test_alert_check_is_inconclusive_when_rules_are_not_loaded(prom):
    prom.rules = ["HighErrorRate"]
    alerts = next(c for c in guide_checks(PerformanceTargets()) if c.name == "no guide alert firing")
    check = run(prom, [alerts]).checks[0]
    assert check.verdict == Verdict.FAIL and "not loaded" in check.detail and "CacheDown" in check.detail


@pytest.mark.unit
def test_guide_checks_take_thresholds_from_the_environment():
    targets = PerformanceTargets(p95_ms=300, error_rate_max=0.02, db_connections_max=0.5)
    by_name = {c.name: c.threshold for c in guide_checks(targets)}
    assert by_name["P95 latency"] == 300 and by_name["5xx error rate"] == 0.02
    assert by_name["database connections"] == 0.5


@pytest.mark.unit
def test_window_is_cut_at_the_deploy():
    now = datetime(2025, 1, 1, 12, 0, tzinfo=UTC)
    assert effective_window("5m", None, now) == "300s"
    assert effective_window("5m", now - timedelta(seconds=95.7), now) == "95s"
    assert effective_window("5m", now - timedelta(hours=1), now) == "300s"
    assert parse_duration("1h30m") == 5400
    with pytest.raises(ValueError):
        parse_duration("5 minutes")


# --------------------------------------------------------------------------- against the baseline

P95_VS_BASELINE = P95.model_copy(
    update={
        "tolerance": BaselineTolerance(relative=0.2, absolute=5),
        "tolerance_unit": "ms",
        "distribution_query": "sum by (le) (increase(h_bucket[{window}]))",
    }
)


def buckets(**cumulative: float) -> dict:
    """A ``sum by (le)`` answer: le (as le_0_005 -> "0.005", inf -> "+Inf") -> cumulative count."""
    return vector(
        *(
            ({"le": "+Inf" if k == "inf" else k.removeprefix("le_").replace("_", ".")}, str(v))
            for k, v in cumulative.items()
        )
    )


@pytest.mark.unit
def test_a_release_slower_than_the_one_before_the_deploy_fails_though_inside_its_threshold(prom):
    prom.answers = {
        "h_count": vector(({}, "1200")),
        "histogram_quantile": vector(({}, "0.045")),
        "increase(h_bucket": buckets(le_0_005=30, le_0_01=60, le_0_05=1200, inf=1200),
    }
    prom.answers_before = {
        "histogram_quantile": vector(({}, "0.004")),
        "increase(h_bucket": buckets(le_0_005=950, le_0_01=1000, le_0_05=1000, inf=1000),
    }
    since = datetime.now(UTC) - timedelta(seconds=60)
    report = run(prom, [P95_VS_BASELINE], since=since)
    [check] = report.checks
    assert report.verdict == Verdict.FAIL and check.verdict == Verdict.FAIL
    assert check.detail.startswith(
        "45ms < 500ms (1200 samples in 60s); vs baseline: fail: REGRESSION: 45.0 ms "
        "exceeds at most 9.0 ms (+20% and +5 ms over 4.0 ms)"
    )
    assert "Mann-Whitney U: candidate slower" in check.detail
    [comparison] = report.baseline.comparisons
    assert comparison.absolute == Verdict.PASS and comparison.vs_baseline == Verdict.FAIL
    assert comparison.distribution.baseline_n == 1000 and comparison.distribution.candidate_n == 1200
    assert f"{since.timestamp():.3f}" in prom.instants  # the baseline is read at the deploy
    assert any("[300s]" in q for q in prom.queries)  # over the gate's whole window, ending there
    assert report.baseline.summary() == "vs baseline: regression in P95 latency"
    markdown = report.markdown()
    assert "| P95 latency | 4\\.0 ms | 45\\.0 ms | \\+41\\.0 ms \\(\\+1025%\\) |" in markdown


@pytest.mark.unit
def test_no_traffic_before_the_deploy_leaves_the_baseline_inconclusive_and_the_threshold_decides(prom):
    prom.answers = {"h_count": vector(({}, "1200")), "histogram_quantile": vector(({}, "0.045"))}
    prom.answers_before = {"h_count": vector(({}, "7"))}
    report = run(prom, [P95_VS_BASELINE], since=datetime.now(UTC) - timedelta(seconds=60))
    [check] = report.checks
    assert report.verdict == Verdict.PASS and check.verdict == Verdict.PASS
    assert (
        "vs baseline: inconclusive: no baseline in the 300s before the deploy: too few samples: 7 < 50" in check.detail
    )
    assert report.baseline.verdict == Verdict.INCONCLUSIVE
    assert "inconclusive for P95 latency (no baseline); the thresholds decided" in report.baseline.summary()


@pytest.mark.unit
def test_a_window_that_held_a_failed_release_too_is_no_baseline(prom):
    # Before the deploy: the live 3.2.0 and a release that was rolled back minutes ago; now: the candidate.
    prom.answers = {
        "h_count": vector(({}, "1200")),
        "histogram_quantile": vector(({}, "0.045")),
        "app_build_info": vector(({"version": "3.3.0"}, "3")),
    }
    prom.answers_before = {
        "histogram_quantile": vector(({}, "0.004")),
        "app_build_info": vector(
            ({"version": "3.2.0"}, "3"), ({"version": "3.2.1-slow"}, "3"), ({"version": "3.3.0"}, "1")
        ),
    }
    report = run(prom, [P95_VS_BASELINE], since=datetime.now(UTC) - timedelta(seconds=60))
    [comparison] = report.baseline.comparisons
    assert report.verdict == Verdict.PASS and comparison.vs_baseline == Verdict.INCONCLUSIVE
    assert comparison.baseline == 4.0 and "more than one earlier release (3.2.0, 3.2.1-slow)" in comparison.why
    assert report.baseline.releases == ["3.2.0", "3.2.1-slow"]


@pytest.mark.unit
def test_within_its_tolerance_a_check_passes_both_judgments(prom):
    prom.answers = {"h_count": vector(({}, "1200")), "histogram_quantile": vector(({}, "0.0081"))}
    prom.answers_before = {"histogram_quantile": vector(({}, "0.0040"))}
    report = run(prom, [P95_VS_BASELINE], since=datetime.now(UTC) - timedelta(seconds=60))
    assert report.verdict == Verdict.PASS
    assert report.baseline.comparisons[0].vs_baseline == Verdict.PASS
    assert "distributions not compared" in report.checks[0].detail  # no bucket answers: said, not hidden


@pytest.mark.unit
def test_without_the_deploy_time_nothing_is_read_from_before(prom):
    prom.answers = {"h_count": vector(({}, "1200")), "histogram_quantile": vector(({}, "0.120"))}
    report = run(prom, [P95_VS_BASELINE])
    assert prom.instants == [] and report.checks[0].detail == "120ms < 500ms (1200 samples in 300s)"
    assert report.baseline.summary() == "vs baseline: not compared (the deploy time is not known)"


@pytest.mark.unit
def test_the_guide_checks_carry_the_environment_s_tolerances():
    targets = PerformanceTargets(baseline={"p95_ms": {"relative": 0.5, "absolute": 20}})
    by_name = {c.name: c for c in guide_checks(targets)}
    assert by_name["P95 latency"].tolerance == BaselineTolerance(relative=0.5, absolute=20)
    assert by_name["P95 latency"].distribution_query.startswith("sum by (le) (increase(")
    assert by_name["5xx error rate"].tolerance.absolute == 0.002 and by_name["5xx error rate"].tolerance_unit == "ratio"
    assert by_name["database up"].tolerance is None and by_name["no guide alert firing"].tolerance is None


# --------------------------------------------------------------------------- the sandbox's Prometheus


@pytest.fixture
def real_prom(sandbox_up):
    httpx.get(f"{SANDBOX_PROMETHEUS}/-/ready", timeout=5).raise_for_status()  # a sandbox test needs it up
    return environment(SANDBOX_PROMETHEUS)


@pytest.mark.sandbox
def test_real_prometheus_no_data_is_inconclusive_then_fails(real_prom):
    missing = MetricCheck(
        name="missing", query="sum(rate(architect_metric_that_does_not_exist[{window}]))", op="<", threshold=1
    )
    report = check_metrics.fn(real_prom, checks=[missing], inconclusive_retry_s=3, retry_interval_s=1)
    assert report.verdict == Verdict.FAIL
    assert report.checks[0].detail.startswith("inconclusive after") and "no data for" in report.checks[0].detail


@pytest.mark.sandbox
def test_real_prometheus_exporters_up(real_prom):
    checks = [c for c in guide_checks(PerformanceTargets()) if c.name in ("database up", "cache up")]
    report = check_metrics.fn(real_prom, window="1m", checks=checks, inconclusive_retry_s=10, retry_interval_s=2)
    assert report.verdict == Verdict.PASS, report.summary()


@pytest.mark.sandbox
def test_real_prometheus_accepts_every_guide_query(real_prom):
    """Syntax and rules against the real server; values depend on traffic, so only rejections fail here."""
    report = check_metrics.fn(real_prom, window="1m", inconclusive_retry_s=0)
    assert len(report.checks) == 6
    for check in report.checks:
        assert "rejected" not in check.detail and "not loaded" not in check.detail, check.detail


@pytest.mark.sandbox
@pytest.mark.usefixtures("deployed_good_release")
def test_real_prometheus_good_release_passes(sandbox_env):
    with httpx.Client(base_url=str(sandbox_env.api_url), verify=sandbox_env.ssl_context(), timeout=5) as client:
        for _ in range(100):  # bounded traffic so the rate checks have samples
            client.get("/health").raise_for_status()
    report = check_metrics.fn(sandbox_env, window="2m", inconclusive_retry_s=60)
    assert report.verdict == Verdict.PASS, report.summary()


@pytest.mark.sandbox
def test_metrics_task_publishes_its_table(prom, sandbox_up):
    """As a real task in a flow (the sandbox's Prefect server): the table shows query, value, threshold, samples."""
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    prom.answers = {"h_count": vector(({}, "1200")), "histogram_quantile": vector(({}, "0.8"))}

    @flow
    def gate():
        return check_metrics(environment(prom.url), checks=[P95], inconclusive_retry_s=0)

    state = gate(return_state=True)
    assert state.result().verdict == Verdict.FAIL
    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id]))
        )
    [artifact] = artifacts
    rows = json.loads(artifact.data) if isinstance(artifact.data, str) else artifact.data
    assert artifact.key == "metrics-gate"
    assert rows == [
        {
            "check": "P95 latency",
            "query": P95.query.replace("{window}", "300s"),
            "value": "800ms",
            "threshold": "< 500ms",
            "samples": 1200,
            "verdict": "fail",
            "detail": "800ms breaks < 500ms (1200 samples in 300s)",
        }
    ]


@pytest.mark.sandbox
def test_metrics_table_shows_both_judgments_with_a_deploy_time(prom, sandbox_up):
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    prom.answers = {"h_count": vector(({}, "1200")), "histogram_quantile": vector(({}, "0.045"))}
    prom.answers_before = {"histogram_quantile": vector(({}, "0.004"))}
    since = datetime.now(UTC) - timedelta(seconds=60)

    @flow
    def gate():
        return check_metrics(environment(prom.url), checks=[P95_VS_BASELINE], inconclusive_retry_s=0, since=since)

    state = gate(return_state=True)
    assert state.result().verdict == Verdict.FAIL
    with get_client(sync_client=True) as client:
        [artifact] = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id]))
        )
    [row] = json.loads(artifact.data) if isinstance(artifact.data, str) else artifact.data
    assert (row["value"], row["baseline"], row["delta"], row["tolerance"]) == (
        "45ms",
        "4.0 ms",
        "+41.0 ms (+1025%)",
        "+20% and +5 ms",
    )
    assert (row["vs threshold"], row["vs baseline"], row["verdict"]) == ("pass", "fail", "fail")
    assert row["why"].startswith("REGRESSION: 45.0 ms exceeds at most 9.0 ms")
    assert "regression in P95 latency" in artifact.description


@pytest.mark.sandbox
@pytest.mark.usefixtures("deployed_good_release")
def test_real_prometheus_compares_the_release_with_its_own_traffic_before_the_deploy(sandbox_env):
    def traffic():
        with httpx.Client(base_url=str(sandbox_env.api_url), verify=sandbox_env.ssl_context(), timeout=5) as client:
            # Bounded: enough samples on each side of the "deploy" for P95's tail (10 above it needs 200).
            for _ in range(300):
                client.get("/health").raise_for_status()

    traffic()
    time.sleep(5)  # two scrapes (every 2 s) hold it before the instant the baseline ends at
    since = datetime.now(UTC)
    time.sleep(3)
    traffic()
    time.sleep(5)  # and two scrapes hold the candidate's side (CI once judged 112 of its 300)
    report = check_metrics.fn(sandbox_env, window="2m", since=since, inconclusive_retry_s=60)
    p95 = next(c for c in report.baseline.comparisons if c.name == "P95 latency")
    assert p95.baseline is not None and p95.candidate is not None, p95.why
    if len(report.baseline.releases) > 1:  # other tests' deploys served in the window too: no clean baseline
        assert p95.vs_baseline == Verdict.INCONCLUSIVE and "more than one earlier release" in p95.why
    else:
        assert p95.vs_baseline == Verdict.PASS, p95.why
    assert p95.absolute == Verdict.PASS, p95.absolute_detail
