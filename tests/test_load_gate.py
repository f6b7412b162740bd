"""The load gate as the pipeline runs it: a Prefect task in a flow, against the sandbox's nginx and API.

Runs report to the sandbox's Prefect server (conftest sets PREFECT_API_URL), so their artifacts
are read back from it, as a person would see them in the UI.
"""

from __future__ import annotations

import base64
import re

import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

from blocks.environment import StagingEnvironment
from tasks.gates.load.gate import LoadReport, run_load_test
from tasks.core.models import Verdict

pytestmark = pytest.mark.sandbox


@flow(name="load-gate-check", persist_result=False)
def load_gate_check(environment_name: str, path: str | None, duration_s: float) -> LoadReport:
    environment = StagingEnvironment.load(environment_name)
    return run_load_test(environment, profiles=["light"], duration_s=duration_s, warmup_s=1.0, path=path)


def artifacts_of(flow_run_id) -> dict[str, object]:
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
    return {a.key: a for a in found if a.key}


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
