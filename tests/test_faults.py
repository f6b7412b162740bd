"""The fault matrix, first slice (issue 8): one outside system fails at a chosen stage of a real
deploy; the run must end in a clear state naming why, leave the last good release serving and
nothing of its own running, and say so in Slack.

Each test stops exactly one sandbox service through the sandbox's own API (by its PID file) and
brings it back in ``finally``, waiting until ``sandbox.services.status()`` is all healthy again,
so the tests after it see the sandbox as they expect.
"""

from __future__ import annotations

import contextvars
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone

import docker
import httpx
import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowFilter,
    FlowFilterName,
    FlowRunFilter,
    FlowRunFilterStartTime,
    TaskRunFilter,
    TaskRunFilterName,
)

from sandbox import config, daemons, postgres, services
from tests.conftest import GOOD, GOOD_WITH_MIGRATION, api_health, deploy, serving_versions
from tests.test_staging_deploy import slack_thread_of, task_runs_of

pytestmark = pytest.mark.sandbox

APP_LABEL, VERSION_LABEL, ONE_OFF_LABEL = "architect.app", "architect.version", "architect.one-off"


# -- the sandbox: one service down, then back ----------------------------------------------


def wait_until_healthy(timeout_s: float = 150) -> None:
    """Every status row healthy and the API answering 200 through the load balancer."""
    deadline = time.monotonic() + timeout_s
    sick: list = []
    while time.monotonic() < deadline:
        sick = [(r["service"], r["detail"]) for r in services.status() if not r["healthy"]]
        if not sick:
            try:
                if api_health()["status_code"] == 200:
                    return
                sick = [("api", "GET /health is not 200")]
            except (httpx.HTTPError, ValueError) as exc:
                sick = [("api", repr(exc))]
        time.sleep(2)
    raise AssertionError(f"the sandbox did not recover within {timeout_s} s: {sick}")


def start_postgres() -> None:
    """Primary back up; ensure_up also waits until the replica streams from it again."""
    postgres.ensure_up(config.load_secrets()["architect_db_password"])


@contextmanager
def restored(start: Callable[[], object]) -> Iterator[None]:
    """Whatever the test did to a service, start it again and wait for a healthy sandbox."""
    try:
        yield
    finally:
        start()
        wait_until_healthy()


def task_runs_named(prefix: str, after: datetime) -> list:
    """Task runs called ``prefix*`` of staging-deploy runs started after ``after``."""
    with get_client(sync_client=True) as client:
        return client.read_task_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=["staging-deploy"])),
            flow_run_filter=FlowRunFilter(start_time=FlowRunFilterStartTime(after_=after)),
            task_run_filter=TaskRunFilter(name=TaskRunFilterName(like_=prefix)),
        )


class StopWhenTaskStarts(threading.Thread):
    """Stop a service as soon as the running deploy starts the task ``prefix*``."""

    def __init__(self, prefix: str, stop: Callable[[], object], after: datetime, timeout_s: float = 600):
        super().__init__(daemon=True)
        self.prefix, self.stop_service, self.after, self.timeout_s = prefix, stop, after, timeout_s
        self.abort = threading.Event()
        self.stopped_at: float | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        deadline = time.monotonic() + self.timeout_s
        try:
            while not self.abort.is_set() and time.monotonic() < deadline:
                if task_runs_named(self.prefix, self.after):
                    self.stop_service()
                    self.stopped_at = time.monotonic()
                    return
                self.abort.wait(0.5)
        except BaseException as exc:  # reported by the test, not lost in the thread
            self.error = exc

    def finish(self) -> None:
        self.abort.set()
        self.join(60)


# -- what every fault must leave behind ------------------------------------------------------


def assert_only_good_replicas(sandbox_env, good: str) -> None:
    """The good release serves, and the only app containers are its replicas (no one-offs,
    no replica of the failed release, nothing stopped left behind)."""
    assert serving_versions(sandbox_env) == {good}
    client = docker.DockerClient(base_url=sandbox_env.target.docker_host, timeout=30)
    try:
        containers = client.containers.list(all=True, filters={"label": f"{APP_LABEL}=architect-api"})
        described = [(c.name, c.status, c.labels.get(VERSION_LABEL)) for c in containers]
    finally:
        client.close()
    assert not [c for c in containers if ONE_OFF_LABEL in c.labels], f"one-off containers left: {described}"
    assert {c.labels.get(VERSION_LABEL) for c in containers} == {good}, described
    assert all(c.status == "running" for c in containers), described
    assert len(containers) == sandbox_env.target.replicas, described


def assert_slack_told(messages: list[dict], state, *texts: str) -> None:
    """One message for the run, its last version the outcome, the reason in its thread."""
    posts, updates, replies = slack_thread_of(messages, state)
    assert len(posts) == 1, f"one Slack message per run, got {len(posts)}"
    final = (updates or posts)[-1]["text"]
    assert "failed" in final, final
    thread = "\n".join(m["text"] for m in replies)
    for text in texts:
        assert text.lower() in thread.lower(), thread


# -- the faults ------------------------------------------------------------------------------


def test_database_down_at_preflight_fails_it_and_changes_nothing(sandbox_env, deployed_good_release, slack_messages):
    """The PostgreSQL primary is down when a deploy starts: the run ends Failed with
    "preflight failed:" naming the database check, nothing is built or deployed (target
    history unchanged), the good release keeps serving, Slack has the reason."""
    revisions_before = sandbox_env.target.history()
    with restored(start_postgres):
        assert postgres.stop(postgres.PRIMARY), "the primary was not running"
        state = deploy(*GOOD_WITH_MIGRATION)
    print(f"final state: {state.type.value}: {state.message}")
    assert state.is_failed()
    assert state.message.startswith("preflight failed:"), state.message
    assert "database primary" in state.message and "nothing was changed" in state.message, state.message
    assert not [t for t in task_runs_of(state) if not t.name.startswith(("run_preflight", "check_database"))]
    assert sandbox_env.target.history() == revisions_before
    assert_only_good_replicas(sandbox_env, deployed_good_release)
    assert_slack_told(slack_messages(), state, "preflight failed", "database primary")


def test_registry_down_at_push_fails_the_build_and_changes_nothing(sandbox_env, deployed_good_release, slack_messages):
    """The registry goes down after preflight (when the Go tests start), so the push fails:
    the run ends Failed with "build failed:" naming the docker push, after push_image tried
    three times (two retries on TemporaryError); target history unchanged, good release serving."""
    revisions_before = sandbox_env.target.history()
    started = datetime.now(timezone.utc)
    stopper = StopWhenTaskStarts("run_go_tests", daemons.REGISTRY.stop, started)
    with restored(daemons.REGISTRY.ensure):
        stopper.start()
        try:
            state = deploy("v3.1.0", "3.1.1-nopush")
        finally:
            stopper.finish()
    print(f"final state: {state.type.value}: {state.message}")
    assert stopper.error is None, stopper.error
    assert stopper.stopped_at is not None, "the registry was never stopped: the build stage was not seen"
    assert state.is_failed()
    assert state.message.startswith("build failed: docker push failed"), state.message
    assert "nothing was changed" in state.message, state.message
    pushes = [t for t in task_runs_of(state) if t.name.startswith("push_image")]
    assert len(pushes) == 1 and pushes[0].run_count == 3, [(t.name, t.run_count) for t in pushes]
    assert not [t for t in task_runs_of(state) if t.name.startswith(("verify_image", "backup", "deploy_release"))]
    assert sandbox_env.target.history() == revisions_before
    assert_only_good_replicas(sandbox_env, deployed_good_release)
    assert_slack_told(slack_messages(), state, "build failed", "docker push failed")


def test_prometheus_down_at_the_metrics_gate_rolls_back(sandbox_env, deployed_good_release, slack_messages):
    """Prometheus goes down once the load test starts: the metrics gate cannot read anything,
    which is inconclusive, never a pass; the run ends Failed with "metrics failed:" saying
    inconclusive / unreachable, and the good release is rolled back to and serving."""
    started = datetime.now(timezone.utc)
    stopper = StopWhenTaskStarts("run_load_test", daemons.PROMETHEUS.stop, started)
    with restored(daemons.PROMETHEUS.ensure):
        stopper.start()
        try:
            state = deploy(*GOOD_WITH_MIGRATION)
        finally:
            stopper.finish()
    print(f"final state: {state.type.value}: {state.message}")
    assert stopper.error is None, stopper.error
    assert stopper.stopped_at is not None, "Prometheus was never stopped: the load stage was not seen"
    assert state.is_failed()
    assert state.message.startswith("metrics failed:"), state.message
    assert "inconclusive" in state.message and "unreachable" in state.message, state.message
    assert "rolled back to revision" in state.message and deployed_good_release in state.message, state.message
    assert ", healthy;" in state.message, state.message
    assert_only_good_replicas(sandbox_env, deployed_good_release)
    assert_slack_told(slack_messages(), state, "metrics failed", "rolled back to revision")


def test_a_nightly_run_colliding_with_a_manual_one_is_cancelled(sandbox_env, deployed_good_release, slack_messages):
    """A manual deploy holds the environment's lock; a nightly run (on_collision="cancel") that
    starts meanwhile ends Cancelled saying another deploy runs, runs no stage at all, and the
    manual one completes."""
    started = datetime.now(timezone.utc)
    outcome: dict = {}
    context = contextvars.copy_context()  # keeps the test's Prefect settings in the thread
    manual = threading.Thread(target=context.run, args=(lambda: outcome.update(state=deploy(*GOOD)),), daemon=True)
    manual.start()
    try:
        # The lock is taken before preflight: once its preflight task ran, the manual run holds it.
        deadline = time.monotonic() + 120
        while not task_runs_named("check_database", started) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert task_runs_named("check_database", started), "the manual deploy never got past the lock"
        nightly = deploy("main", None, on_collision="cancel")
    finally:
        manual.join(600)
    print(f"nightly: {nightly.type.value}: {nightly.message}")
    assert nightly.is_cancelled(), (nightly.type, nightly.message)
    assert "another deploy" in nightly.message and "on_collision=cancel" in nightly.message, nightly.message
    assert task_runs_of(nightly) == [], "a stage of the cancelled run ran"
    assert not manual.is_alive(), "the manual deploy did not finish"
    assert outcome["state"].is_completed(), outcome["state"].message
    assert_only_good_replicas(sandbox_env, GOOD[1])
    posts, updates, _ = slack_thread_of(slack_messages(), nightly)
    assert len(posts) == 1 and "another deploy" in (updates or posts)[-1]["text"], posts + updates
