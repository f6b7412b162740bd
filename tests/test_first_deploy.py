"""A first deploy (the target has never run the app) that fails a gate, or that the leads reject,
is removed: no replica of it is left, and the report and the run's message say so."""

from __future__ import annotations

import pytest
from pydantic import AnyHttpUrl

from tasks.core.escaping import for_markdown
from tests.support.deploys import GOOD, deploy
from tests.support.first_deploy import BackgroundDeploy, app_containers, artifacts_of_run, rollback_runs_of

pytestmark = pytest.mark.sandbox

REMOVED = "no earlier release: removed the release (3 replicas), nothing left serving"


def test_a_first_deploy_that_fails_a_gate_is_removed(fresh_docker_environment, database_at_schema_2):
    # The health gate asks the load balancer too: one that answers nowhere fails it, after the rollout.
    name = fresh_docker_environment(api_url=AnyHttpUrl("https://localhost:18269"), health_timeout_s=3)
    target = fresh_docker_environment.target

    state = deploy(*GOOD, environment=name)

    assert state.is_failed()
    assert state.message.startswith("health failed:"), state.message
    assert REMOVED in state.message, state.message
    assert app_containers(target) == [], "a container of the failed first release is left"
    assert target.current_revision() is None and target.replica_urls() == []
    [rollback] = rollback_runs_of(state.state_details.flow_run_id)
    report = artifacts_of_run(rollback.id)
    assert for_markdown(REMOVED) in report["rollback-report"].data
    assert for_markdown("removed 3 replica container(s)") in report["rollback-report"].data
    removal = report["rollback-removal"].data
    assert "replicas left" in removal and "serves nothing" in removal


def test_a_first_deploy_the_leads_reject_is_removed(
    fresh_docker_environment, database_at_schema_2, deployed_good_release
):
    name = fresh_docker_environment()
    target = fresh_docker_environment.target
    run = BackgroundDeploy(*GOOD, environment=name)
    run.wait_paused()
    assert len(target.replica_urls()) == 3, "the release is live while the leads look at it"

    state = run.reject(notes="first deploy, not yet")

    assert state.is_failed()
    assert state.message.startswith("sign-off failed: not signed off: rejected by Sam Security (security)")
    assert REMOVED in state.message, state.message
    assert "database kept (no migration was applied since the backup" in state.message, state.message
    assert app_containers(target) == []
    [rollback] = rollback_runs_of(state.state_details.flow_run_id)
    assert for_markdown(REMOVED) in artifacts_of_run(rollback.id)["rollback-report"].data
