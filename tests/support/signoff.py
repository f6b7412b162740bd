"""A small flow that waits for sign-off, run in a background thread, and the means to watch it.

The tests resume it from outside, as a lead would: through the Prefect API, the CLI or the UI.
"""

from __future__ import annotations

import contextvars
import threading
import time
import uuid

import httpx
from prefect import flow, get_run_logger
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    ArtifactFilterKey,
    FlowRunFilter,
    FlowRunFilterName,
    LogFilter,
    LogFilterFlowRunId,
)
from prefect.context import get_run_context
from prefect.exceptions import FlowPauseTimeout, NotPausedError
from prefect.flow_runs import resume_flow_run
from prefect.states import Completed, Failed, State

from blocks.environment import StagingEnvironment
from sandbox import config
from tasks.signoff.approval import ARTIFACT_KEY, collect_signoffs, read_ledger
from tasks.core.errors import GateFailed
from tasks.core.models import BuildResult
from tasks.notify import RunNotifier, flow_run_url
from tasks.signoff.document import GateSummary, Ledger

FLOW_NAME = "signoff-test"
LEADS = {"engineering": "Eve Engineer", "devops": "Dev Ops", "security": "Sam Security", "product": "Pat Product"}
RELEASE = BuildResult(
    version="3.2.0", git_ref="v3.2.0", commit="3f5e0c1d9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d",
    image="127.0.0.1:55000/architect-api:3.2.0",
    digest="127.0.0.1:55000/architect-api@sha256:" + "9c1e" * 16, build_time="2024-02-17T10:00:00Z",
)
GATES = [
    GateSummary(stage=stage, verdict="pass", summary=f"{stage}: {n}/{n} checks passed",
                link=f"{config.PREFECT_API_URL.removesuffix('/api')}/artifacts/key/{stage}")
    for stage, n in [("health", 3), ("smoke", 24), ("load", 4), ("metrics", 6)]
]
FIGURES = {"P95 latency": "182 ms (target < 500 ms)", "Throughput": "530 rps (target ≥ 500 rps)",
           "Error rate": "0.02 % (target < 0.1 %)"}


@flow(name=FLOW_NAME, flow_run_name="signoff-test-{label}")
def signoff_test_flow(label: str, timeout_s: float, environment: str = "sandbox") -> State:
    """Stands in for staging-deploy from the metrics gate on: sign-off, then done or 'roll back'."""
    env = StagingEnvironment.load(environment)
    run_id = str(get_run_context().flow_run.id)
    notifier = RunNotifier(slack=env.slack, title=f"Sign-off test {label}", run_url=flow_run_url(run_id),
                           logger=get_run_logger(), stage_names=["metrics", "sign-off"])
    notifier.stage("metrics", "passed")
    try:
        record = collect_signoffs(env, RELEASE, GATES, FIGURES, timeout_s, notifier)
    except GateFailed as exc:
        notifier.finish("❌ sign-off failed; rolled back")
        return Failed(message=f"{exc.stage} failed: {exc}")
    else:
        notifier.finish("✅ signed off")
        return Completed(message=f"signed off by {', '.join(s.name for s in record.signoffs)}")
    finally:
        notifier.close()


class SignoffRun:
    """One run of the test flow in a background thread; the test plays the leads."""

    def __init__(self, timeout_s: float = 120, environment: str = "sandbox"):
        self.label = uuid.uuid4().hex[:10]
        self.title = f"Sign-off test {self.label}"
        self.state: State | None = None
        self.error: BaseException | None = None
        # The thread keeps the test's Prefect settings (no heartbeats) by running in a copy of its context.
        ctx = contextvars.copy_context()
        self._thread = threading.Thread(target=ctx.run, args=(self._run, timeout_s, environment), daemon=True)
        self.id = None

    def _run(self, timeout_s: float, environment: str) -> None:
        try:
            self.state = signoff_test_flow(self.label, timeout_s, environment, return_state=True)
        except BaseException as exc:  # surfaced by result()
            self.error = exc

    def start(self, within_s: float = 60) -> SignoffRun:
        self._thread.start()
        deadline = time.monotonic() + within_s
        with get_client(sync_client=True) as client:
            while time.monotonic() < deadline and self.id is None:
                runs = client.read_flow_runs(
                    flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[f"signoff-test-{self.label}"])))
                self.id = runs[0].id if runs else None
                time.sleep(0.2)
        assert self.id is not None, f"the flow run of {self.label} never appeared"
        return self

    def wait_paused(self, after_key: str | None = None, within_s: float = 30) -> str:
        """Wait until the run is paused under a key other than ``after_key``; return that key."""
        deadline = time.monotonic() + within_s
        with get_client(sync_client=True) as client:
            while time.monotonic() < deadline:
                state = client.read_flow_run(self.id).state
                if state.is_paused() and state.state_details.pause_key != after_key:
                    return state.state_details.pause_key
                assert not state.is_final(), f"the run ended while a pause was expected: {state.name} {state.message}"
                time.sleep(0.2)
        raise AssertionError(f"the run did not pause (after {after_key}) within {within_s} s")

    def pause_key(self) -> str | None:
        with get_client(sync_client=True) as client:
            state = client.read_flow_run(self.id).state
        return state.state_details.pause_key if state.is_paused() else None

    def ledger(self) -> Ledger | None:
        with get_client(sync_client=True) as client:
            return read_ledger(client, self.id)

    def sign(self, role: str, name: str | None = None, decision: str = "approve", notes: str = "looks good",
             expect_pause: bool = True) -> str | None:
        """Resume the run with one sign-off; wait for the next pause (returned) unless the run should end."""
        key = self.wait_paused()
        resume_flow_run(self.id, run_input={"role": role, "name": name or LEADS[role], "decision": decision,
                                            "notes": notes}, _sync=True)
        return self.wait_paused(after_key=key) if expect_pause else None

    def result(self, within_s: float = 60) -> State:
        self._thread.join(within_s)
        assert not self._thread.is_alive(), f"the flow did not end within {within_s} s"
        if self.error:
            raise self.error
        return self.state

    def server_state(self) -> State:
        with get_client(sync_client=True) as client:
            return client.read_flow_run(self.id).state

    def states(self) -> list[State]:
        with get_client(sync_client=True) as client:
            return sorted(client.read_flow_run_states(self.id), key=lambda s: s.timestamp)

    def document(self) -> str:
        with get_client(sync_client=True) as client:
            artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=[ARTIFACT_KEY]), flow_run_id=ArtifactFilterFlowRunId(any_=[self.id])))
        assert artifacts, "no sign-off artifact"
        return max(artifacts, key=lambda a: a.created).data

    def wait_for_log(self, text: str, within_s: float = 20) -> str:
        """The first log line of the run containing ``text`` (logs reach the API in batches)."""
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline:
            with get_client(sync_client=True) as client:
                logs = client.read_logs(log_filter=LogFilter(flow_run_id=LogFilterFlowRunId(any_=[self.id])))
            if hits := [log.message for log in logs if text in log.message]:
                return hits[0]
            time.sleep(0.5)
        raise AssertionError(f"no log line of the run contains {text!r} within {within_s} s")

    def slack(self) -> list[dict]:
        """This run's Slack message (its updates) and thread replies, as the stand-in recorded them."""
        messages = httpx.get(f"{config.SLACK_CONTROL_URL}/messages", timeout=5).json()
        heads = [m["ts"] for m in messages if m.get("kind") == "chat.postMessage" and not m.get("thread_ts")
                 and (m.get("text") or "").startswith(f"*{self.title}*")]
        return [m for m in messages if heads and (m.get("ts") == heads[0] or m.get("thread_ts") == heads[0])]

    def wait_for_slack(self, text: str, within_s: float = 15) -> dict:
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline:
            if hits := [m for m in self.slack() if text in (m.get("text") or "")]:
                return hits[0]
            time.sleep(0.3)
        raise AssertionError(f"no Slack message of the run contains {text!r} within {within_s} s")

    def close(self) -> None:
        """End a run a failed test left waiting: a lead whose role is unsigned rejects it."""
        for role, name in LEADS.items():
            if self.id is None or not self._thread.is_alive() or not self.pause_key():
                break
            try:
                resume_flow_run(self.id, run_input={"role": role, "name": name, "decision": "reject",
                                                    "notes": "test cleanup"}, _sync=True)
            except (RuntimeError, NotPausedError, FlowPauseTimeout):  # it moved on meanwhile: fine
                pass
            self._thread.join(5)
        self._thread.join(30)
