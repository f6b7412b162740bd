"""What the Prefect server and the Slack stand-in recorded of a deploy run: its task runs, its Slack thread."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowFilter,
    FlowFilterName,
    FlowRunFilter,
    FlowRunFilterId,
    FlowRunFilterStartTime,
    TaskRunFilter,
    TaskRunFilterName,
)


def task_runs_of(state) -> list:
    """The task runs of the flow run that ended in ``state``."""
    with get_client(sync_client=True) as client:
        return client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id]))
        )


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


def slack_thread_of(messages: list[dict], state) -> tuple[list[dict], list[dict], list[dict]]:
    """The run's own Slack message (posts, updates) and the replies in its thread.

    Direct messages ("D…" channels, such as a lead's sign-off code) name the run too, but are not its message.
    """
    run_id = str(state.state_details.flow_run_id)
    posts = [
        m
        for m in messages
        if m["kind"] == "chat.postMessage"
        and not m.get("thread_ts")
        and not str(m.get("channel", "")).startswith("D")
        and run_id in m["text"]
    ]
    timestamps = {m["ts"] for m in posts}
    updates = [m for m in messages if m["kind"] == "chat.update" and m["ts"] in timestamps]
    replies = [m for m in messages if m.get("thread_ts") in timestamps]
    return posts, updates, replies


def assert_slack_told(messages: list[dict], state, *texts: str) -> None:
    """One message for the run, its last version the outcome, the reason in its thread."""
    posts, updates, replies = slack_thread_of(messages, state)
    assert len(posts) == 1, f"one Slack message per run, got {len(posts)}"
    final = (updates or posts)[-1]["text"]
    assert "failed" in final, final
    thread = "\n".join(m["text"] for m in replies)
    for text in texts:
        assert text.lower() in thread.lower(), thread


def wait_for_paused_deploy(after: datetime, timeout_s: float = 600, ended: Callable[[], str | None] = lambda: None):
    """The id of the staging-deploy run started after ``after`` once it pauses for sign-off.
    ``ended`` says why the deploy is over (None while it goes on), to stop waiting for a pause that cannot come."""
    deadline = time.monotonic() + timeout_s
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            runs = client.read_flow_runs(
                flow_filter=FlowFilter(name=FlowFilterName(any_=["staging-deploy"])),
                flow_run_filter=FlowRunFilter(start_time=FlowRunFilterStartTime(after_=after)),
            )
            if paused := [r for r in runs if r.state and r.state.is_paused()]:
                return paused[0].id
            if (why := ended()) is not None:
                raise AssertionError(f"the deploy ended before its sign-off: {why}")
            time.sleep(1)
    raise AssertionError("the deploy never paused for sign-off")
