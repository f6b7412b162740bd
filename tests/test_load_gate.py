"""The load gate as the pipeline runs it: a Prefect task in a flow, against the sandbox's nginx and API.

Runs report to the sandbox's Prefect server (conftest sets PREFECT_API_URL), so their artifacts
are read back from it, as a person would see them in the UI.
"""

from __future__ import annotations

import base64
import json
import re

import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

from blocks.environment import StagingEnvironment
from tasks.core.models import Verdict
from tasks.gates.load.gate import LoadReport, run_load_test

pytestmark = pytest.mark.sandbox


@flow(name="load-gate-check", persist_result=False)
def load_gate_check(environment_name: str, path: str | None, duration_s: float) -> LoadReport:
    environment = StagingEnvironment.load(environment_name)
    return run_load_test(environment, profiles=["light"], duration_s=duration_s, warmup_s=1.0, path=path)


def artifacts_of(flow_run_id) -> dict[str, object]:
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    return {a.key: a for a in found if a.key}


def _rows(artifact) -> list[dict]:
    return json.loads(artifact.data) if isinstance(artifact.data, str) else artifact.data


def check_trustworthy(report: LoadReport) -> None:
    """A crowded machine may saturate the generator: then the gate must say so, not pass or fail."""
    if report.verdict == Verdict.INCONCLUSIVE:
        assert "generator saturated" in report.reason and report.profiles[0].saturation


def test_static_endpoint_through_the_flow_with_artifacts(sandbox_env):
    state = load_gate_check("sandbox", "/static-ok", 4.0, return_state=True)
    report: LoadReport = state.result()
    [light] = report.profiles
    assert light.offered_rps == sandbox_env.performance.min_rps
    assert abs(light.requests - 4 * light.offered_rps) <= 2
    assert light.error_rate == 0 and light.errors == {}
    assert 0 < light.p50_ms <= light.p99_ms <= light.max_ms < 1000
    assert light.endpoints[0].name == "static" and light.endpoints[0].requests == light.requests
    check_trustworthy(report)
    if report.verdict != Verdict.INCONCLUSIVE:
        assert report.verdict == Verdict.PASS and report.failed_targets == []

    artifacts = artifacts_of(state.state_details.flow_run_id)
    assert {"load-test-progress", "load-test-results", "load-test-report"} <= set(artifacts)
    assert artifacts["load-test-progress"].data == 100
    rows = artifacts["load-test-results"].data
    assert "light" in str(rows) and "p99 ms" in str(rows)
    markdown = artifacts["load-test-report"].data
    image = re.search(r"data:image/svg\+xml;base64,([A-Za-z0-9+/=]+)\)", markdown).group(1)
    svg = base64.b64decode(image).decode()
    assert svg.startswith("<svg") and "light 100 req/s" in svg
    assert sandbox_env.smoke_password.get_secret_value() not in markdown + str(rows)


def test_the_api_mix_against_the_deployed_app(sandbox_env, deployed_good_release):
    state = load_gate_check("sandbox", None, 4.0, return_state=True)
    report: LoadReport = state.result()
    [light] = report.profiles
    assert {e.name for e in light.endpoints} >= {"health", "list events", "get event", "create event"}
    assert light.errors.get("401", 0) == 0  # the one login per process worked for every authenticated call
    assert light.error_rate < sandbox_env.performance.error_rate_max
    check_trustworthy(report)
    assert report.verdict in (Verdict.PASS, Verdict.INCONCLUSIVE), report.reason


def test_the_next_run_compares_itself_with_the_last_passing_one_from_the_run_history(sandbox_env):
    first = load_gate_check("sandbox", "/static-ok", 4.0, return_state=True)
    kept: LoadReport = first.result()
    check_trustworthy(kept)
    artifacts = artifacts_of(first.state_details.flow_run_id)
    assert "load-test-data" in artifacts and '"format":1' in artifacts["load-test-data"].data
    second = load_gate_check("sandbox", "/static-ok", 4.0, return_state=True)
    report: LoadReport = second.result()
    check_trustworthy(report)
    with get_client(sync_client=True) as client:
        first_name = client.read_flow_run(first.state_details.flow_run_id).name
    if kept.verdict == Verdict.PASS:  # only a passing load test is a baseline
        assert report.baseline.source == first_name, report.baseline.summary()
        [light] = report.baseline.profiles
        assert {r.name for r in light.rows} == {"p50", "p95", "p99", "error rate"}
        assert all(r.baseline is not None for r in light.rows)
        [row] = _rows(artifacts_of(second.state_details.flow_run_id)["load-test-results"])
        assert row["live release p95 ms"] != "" and row["vs live release"] in ("pass", "fail", "inconclusive")
    else:
        assert report.baseline.source != first_name
