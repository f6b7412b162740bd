"""What every fault test needs: a sandbox service down and back, a fault fired at the right
moment of a running deploy, and the checks every fault must pass afterwards."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime

import docker
import httpx
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowFilter,
    FlowFilterName,
    FlowRunFilter,
    FlowRunFilterStartTime,
    TaskRunFilter,
    TaskRunFilterName,
)

from sandbox import config, postgres, services
from tests.conftest import api_health, serving_versions
from tests.test_staging_deploy import slack_thread_of

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


def task_started(prefix: str, after: datetime) -> Callable[[], bool]:
    """A condition: a deploy started after ``after`` has started the task ``prefix*``."""
    return lambda: bool(task_runs_named(prefix, after))


class Trigger(threading.Thread):
    """Do ``action`` (the fault) once ``condition()`` holds, polled from a background thread.

    Use as a context manager around the deploy; afterwards ``fired_at`` says whether (and when)
    the fault happened, and ``error`` holds anything the condition or the action raised.
    """

    def __init__(self, condition: Callable[[], bool], action: Callable[[], object],
                 timeout_s: float = 600, poll_s: float = 0.5):
        super().__init__(daemon=True)
        self.condition, self.action, self.timeout_s, self.poll_s = condition, action, timeout_s, poll_s
        self.abort = threading.Event()
        self.fired_at: float | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        deadline = time.monotonic() + self.timeout_s
        try:
            while not self.abort.is_set() and time.monotonic() < deadline:
                if self.condition():
                    self.fired_at = time.monotonic()
                    self.action()
                    return
                self.abort.wait(self.poll_s)
        except BaseException as exc:  # reported by the test, not lost in the thread
            self.error = exc

    def __enter__(self) -> "Trigger":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.abort.set()
        self.join(120)

    def assert_fired(self, what: str) -> None:
        assert self.error is None, f"the fault could not be made: {self.error!r}"
        assert self.fired_at is not None, f"the fault never happened: {what}"


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


