"""The load generator and the load judge against a local server whose latency and failures the
test controls: no sandbox."""

from __future__ import annotations

import random
import time

import pytest

from blocks.environment import PerformanceTargets
from tasks.core.models import Verdict
from tasks.gates.load.gate import judge, latency_chart_svg, report_markdown
from tasks.gates.load.generator import GeneratorConfig, SetupError, check_loopback, run_profile
from tasks.gates.load.model import API_MIX, LatencyHistogram, LoadProfile, profiles_from_targets, static_mix
from tests.support.controlled_server import Behaviour, ControlledServer

pytestmark = pytest.mark.unit


@pytest.fixture
def serve():
    servers = []

    def start(**behaviour) -> tuple[str, Behaviour]:
        b = Behaviour(**behaviour)
        server = ControlledServer(b)
        servers.append(server)
        return server.start(), b

    yield start
    for server in servers:
        server.stop()


def config(url: str, **kw) -> GeneratorConfig:
    # Tests that are not about saturation allow more send lag than a real run: this machine may be
    # crowded by other work while they run (the saturation tests set their own limits).
    kw.setdefault("max_send_lag_ms", 250)
    return GeneratorConfig(base_url=url, mix=kw.pop("mix", static_mix("/static-ok")), **kw)


def test_histogram_percentiles_match_sorted_samples_and_merge_by_counts():
    rng = random.Random(3)
    samples = [rng.lognormvariate(-4, 1) for _ in range(20_000)]
    whole, first, second = LatencyHistogram(), LatencyHistogram(), LatencyHistogram()
    for i, s in enumerate(samples):
        whole.record(s)
        (first if i % 3 else second).record(s)
    ordered = sorted(samples)
    for q in (50, 95, 99, 99.9):
        exact = ordered[int(len(ordered) * q / 100) - 1]
        assert exact <= whole.percentile(q) <= exact * 1.006
    merged = LatencyHistogram().merge(first).merge(second)
    assert merged.total == whole.total and merged.max_s == whole.max_s
    assert all(merged.percentile(q) == whole.percentile(q) for q in (50, 90, 99, 100))
    # the wrong way, averaging each part's percentile, would not be equal in general
    assert merged.percentile(99) == whole.percentile(99)


def test_profiles_come_from_the_targets():
    targets = PerformanceTargets(min_rps=50, target_rps=200, peak_rps=400)
    profiles = profiles_from_targets(targets, duration_s=5, warmup_s=1, sustained_s=30)
    assert [(p.rate_rps, p.duration_s) for p in profiles.values()] == [(50, 5), (200, 5), (400, 5), (200, 30)]


def test_only_loopback_targets():
    check_loopback("https://localhost:58443")
    check_loopback("http://127.0.0.1:9")
    for url in ("http://10.0.0.1/", "https://192.168.1.1", "http://8.8.8.8", "ftp://127.0.0.1"):
        with pytest.raises(ValueError):
            check_loopback(url)


def test_percentiles_of_a_server_with_known_delay(serve):
    url, b = serve(delay_s=0.050, jitter_s=0.006)
    run = run_profile(config(url), LoadProfile("known", 100, 3, 0.5))
    assert 290 <= run.requests <= 310 and run.error_count == 0
    assert 50 <= run.ms(50) < 80
    assert 55 <= run.ms(99) < 150
    assert run.latency.max_s * 1000 >= run.ms(99)
    assert 90 <= run.throughput_rps <= 110
    assert not run.saturation


def test_latency_is_measured_from_the_intended_send_time(serve):
    # Two connections only: during the 1 s stall the requests due then queue in the generator.
    # Measured from their intended send time, each of them carries what is left of the stall.
    url, b = serve(stall_at=150, stall_s=1.0)
    run = run_profile(config(url, connections=2), LoadProfile("stall", 100, 4, 0.5))
    assert run.latency.max_s >= 0.9
    assert run.latency.count_above(0.5) >= 40  # ~50 requests were due in the first half of the stall
    assert run.latency.count_above(0.1) >= 80
    assert run.ms(50) < 20  # the rest of the run was fast
    assert not run.saturation  # queueing behind a stalled server is the server's latency, not the generator's


def test_server_errors_are_counted(serve):
    url, b = serve(error_every=10)
    run = run_profile(config(url), LoadProfile("errors", 200, 3, 0.5))
    assert 0.08 <= run.error_rate <= 0.12
    assert set(run.errors) == {"500"}
    report = judge([run], PerformanceTargets())
    assert report.verdict == Verdict.FAIL
    [failed] = [f for f in report.failed_targets if f.metric == "error_rate"]
    assert failed.limit == 0.01 and 0.08 <= failed.observed <= 0.12


def test_a_failed_verdict_names_the_target_and_by_how_much(serve):
    url, b = serve(delay_s=0.150)
    run = run_profile(config(url), LoadProfile("slow", 50, 3, 0.5))
    report = judge(
        [run],
        PerformanceTargets(p50_ms=100, p95_ms=500, p99_ms=1000, max_ms=2000, min_rps=10, target_rps=50, peak_rps=50),
    )
    assert report.verdict == Verdict.FAIL
    assert [f.metric for f in report.failed_targets] == ["p50"]
    failed = report.failed_targets[0]
    assert failed.profile == "slow" and failed.limit == 100 and failed.observed >= 150
    assert "p50" in failed.message and "+5" in failed.message  # 150-16x ms over 100 ms: +50..+69%
    assert "p50" in report.reason


def test_a_saturated_generator_cannot_hide_a_miss_larger_than_its_own_lag(serve):
    url, b = serve(delay_s=0.150)  # fails p50 (100 ms); the generator is over its CPU budget
    run = run_profile(config(url, max_cpu_share=0.0001), LoadProfile("tiny-cpu", 100, 2, 0.5))
    assert any("of a core" in s for s in run.saturation)
    report = judge([run], PerformanceTargets())
    # The generator adds at most its worst lag twice (send, read): only a miss within that is not the service's.
    if run.ms(50) - 2 * run.lag.max_s * 1000 >= 100:
        assert report.verdict == Verdict.FAIL, report.reason
        assert "more than the saturated generator's lag can explain" in report.reason
    else:  # a machine so crowded that the generator's own delay could account for the miss
        assert report.verdict == Verdict.INCONCLUSIVE and "generator saturated" in report.reason


def test_an_absurd_rate_is_detected_and_the_run_stops_by_itself(serve):
    url, b = serve()
    started = time.monotonic()
    run = run_profile(config(url, timeout_s=1.0, connections=16), LoadProfile("absurd", 50_000, 1.0, 0.0))
    assert time.monotonic() - started < 30  # bounded: window 1 s + 1 s late cut + 1 s timeout + setup
    assert run.saturation
    assert any("sent" in s or "lag" in s for s in run.saturation)
    assert judge([run], PerformanceTargets()).verdict == Verdict.INCONCLUSIVE


def test_a_hanging_server_ends_in_timeouts_within_bounds(serve):
    url, b = serve(hang_after=5)
    started = time.monotonic()
    run = run_profile(config(url, timeout_s=1.0), LoadProfile("hang", 50, 2, 0.0))
    assert time.monotonic() - started < 30
    assert run.errors["timeout"] >= 90 and run.error_rate > 0.9


def test_the_api_mix_logs_in_once_per_process_and_sends_the_cookie(serve):
    url, b = serve()
    cfg = GeneratorConfig(base_url=url, mix=API_MIX, username="smoke", password="pw", max_send_lag_ms=250)
    run = run_profile(cfg, LoadProfile("api", 200, 2, 0.5), processes=2)
    assert run.error_count == 0 and b.unauthorised == 0
    assert b.paths.count("/api/v1/auth/login") == 2
    assert {name for name in run.by_endpoint} == {s.name for s in API_MIX}
    assert 380 <= run.requests <= 420 and len(run.processes) == 2
    assert abs(run.processes[0].due - run.processes[1].due) <= 1  # each process gets every other request


def test_a_refused_login_stops_before_any_load(serve):
    url, b = serve()
    with pytest.raises(SetupError, match="401"):
        run_profile(
            GeneratorConfig(base_url=url, mix=API_MIX, username="smoke", password="wrong"),
            LoadProfile("api", 100, 2, 0.5),
        )
    assert b.seen <= 2


def test_the_chart_is_an_svg_with_the_profiles_and_targets(serve):
    url, b = serve(delay_s=0.01, error_every=50)
    runs = [run_profile(config(url), LoadProfile(name, 100, 2, 0.2)) for name in ("light", "medium")]
    svg = latency_chart_svg(runs, PerformanceTargets())
    assert svg.startswith("<svg") and svg.endswith("</svg>")
    assert "light 100 req/s" in svg and "medium 100 req/s" in svg and "P99 target 1000" in svg
    assert svg.count("<polyline") == 6 and "errors</title>" in svg
    markdown = report_markdown(judge(runs, PerformanceTargets()), svg)
    assert "data:image/svg+xml;base64," in markdown


def environment(api_url: str, **overrides):
    from blocks.database import PostgresDatabase
    from blocks.docker.target import DockerTarget
    from blocks.environment import StagingEnvironment
    from blocks.registry import ImageRegistry

    fields = dict(
        kind="sandbox",
        app_repo="/nonexistent",
        api_url=api_url,
        target=DockerTarget(),
        registry=ImageRegistry(address="127.0.0.1:1"),
        database=PostgresDatabase(password="db-unused"),
        prometheus_url="http://127.0.0.1:1",
        smoke_password="pw",
        performance=PerformanceTargets(min_rps=50, target_rps=100, peak_rps=100),
    )
    return StagingEnvironment(**(fields | overrides))


def test_the_task_returns_a_report_for_each_profile(serve):
    from tasks.gates.load.gate import run_load_test

    url, b = serve(delay_s=0.002)
    report = run_load_test.fn(environment(url), profiles=["light", "medium"], duration_s=2, warmup_s=0.5)
    assert [p.name for p in report.profiles] == ["light", "medium"]
    assert [p.offered_rps for p in report.profiles] == [50, 100]
    assert report.requests == sum(p.requests for p in report.profiles) and 290 <= report.requests <= 310
    assert b.paths.count("/api/v1/auth/login") == 2  # one login per generator process, per profile
    assert report.error_rate == 0 and report.p50_ms >= 2
    assert report.verdict in (Verdict.PASS, Verdict.INCONCLUSIVE), report.reason


def test_the_task_refuses_bad_input_and_reports_a_refused_login_as_a_failure(serve):
    from tasks.core.errors import InvalidInput
    from tasks.gates.load.gate import run_load_test

    with pytest.raises(InvalidInput, match="loopback"):
        run_load_test.fn(environment("https://10.0.0.1"), profiles=["light"], duration_s=1)
    with pytest.raises(InvalidInput, match="unknown profiles"):
        run_load_test.fn(environment("http://127.0.0.1:9"), profiles=["enormous"])
    url, b = serve()
    report = run_load_test.fn(environment(url, smoke_password="wrong"), profiles=["light"], duration_s=1)
    assert report.verdict == Verdict.FAIL and report.failed_targets[0].metric == "setup"
    assert "401" in report.reason and "wrong" not in report.reason
