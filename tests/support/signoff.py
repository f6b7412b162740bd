"""A small flow that waits for sign-off, run in a background thread, and the means to play its leads.

The tests resume it from outside, as leads would, each with a proof: Slack's buttons through the
stand-in (which signs its requests to the sign-off receiver as Slack does), the Prefect UI's form
with the one-time code the run sent by DM, or ``architect-signoff``'s SSH signature, made with
the sandbox leads' keys (.sandbox/signoff/leads/). Forgers use the raw Prefect API.

``SIGNOFF_TEST_SLACK_URL`` and ``SIGNOFF_TEST_RECEIVER_URL`` point the tests at another Slack
stand-in and receiver (e.g. newer ones beside a sandbox still running older ones); by default
they are the sandbox's.
"""

from __future__ import annotations

import contextlib
import contextvars
import os
import re
import threading
import time
import uuid
from pathlib import Path

import httpx
from prefect import flow, get_run_logger
from prefect.artifacts import create_markdown_artifact
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

from blocks.approvers import Approver, Role
from blocks.environment import StagingEnvironment
from blocks.slack import SlackChannel
from sandbox import config
from sandbox.environment_block import SANDBOX_LEADS, ensure_lead_keys, lead_key, receiver_public_key, sandbox_approvers
from tasks.core.errors import GateFailed
from tasks.core.models import BuildResult
from tasks.notify import RunNotifier, flow_run_url
from tasks.signoff.approval import ARTIFACT_KEY, collect_signoffs, link_gates, read_ledger
from tasks.signoff.document import GateSummary, Ledger
from tasks.signoff.ssh import sign_statement
from tasks.signoff.statement import Statement

FLOW_NAME = "signoff-test"
LEADS = {role.value: name for role, (name, _, _) in SANDBOX_LEADS.items()}
SLACK_IDS = {role.value: user for role, (_, user, _) in SANDBOX_LEADS.items()}
KEYS = {role.value: lead_key(slug) for role, (_, _, slug) in SANDBOX_LEADS.items()}
STANDIN_URL = os.environ.get("SIGNOFF_TEST_SLACK_URL", f"http://{config.HOST}:{config.SLACK_PORT}").rstrip("/")
STANDIN_CONTROL = f"{STANDIN_URL}/_standin"
RECEIVER_URL = os.environ.get("SIGNOFF_TEST_RECEIVER_URL", config.SIGNOFF_RECEIVER_URL).rstrip("/")
INTERACTIONS_URL = f"{RECEIVER_URL}/slack/interactions"
RELEASE = BuildResult(
    version="3.2.0",
    git_ref="v3.2.0",
    commit="3f5e0c1d9a8b7c6d5e4f3a2b1c0d9e8f7a6b5c4d",
    image="127.0.0.1:55000/architect-api:3.2.0",
    digest="127.0.0.1:55000/architect-api@sha256:" + "9c1e" * 16,
    build_time="2024-02-17T10:00:00Z",
)
GATES = [
    GateSummary(
        stage=stage,
        verdict="pass",
        summary=f"{stage}: {n}/{n} checks passed",
        link=f"{config.PREFECT_API_URL.removesuffix('/api')}/artifacts/key/{stage}",
    )
    for stage, n in [("health", 3), ("smoke", 24), ("load", 4), ("metrics", 6)]
]
FIGURES = {
    "P95 latency": "182 ms (target < 500 ms)",
    "Throughput": "530 rps (target ≥ 500 rps)",
    "Error rate": "0.02 % (target < 0.1 %)",
}
CODE = re.compile(r"`([0-9A-Z]{5}-[0-9A-Z]{5})`")


def signoff_environment(environment_copy, approvers: dict[Role, list[Approver]] | None = None, **changes) -> str:
    """A copy of the sandbox environment with verifiable leads, the receiver's key and the stand-in; its name."""
    ensure_lead_keys()
    secrets = config.ensure_secrets()
    slack = SlackChannel(
        bot_token=secrets["slack_bot_token"], channel="#staging-deploys", api_url=f"{STANDIN_URL}/api/"
    )
    return environment_copy(
        approvers=approvers or sandbox_approvers(),
        signoff_receiver_key=receiver_public_key(secrets),
        slack=slack,
        **changes,
    )


def edit_environment(name: str, **changes) -> None:
    """Change a saved environment block in place, as anyone who reaches the Prefect API could."""
    env = StagingEnvironment.load(name)
    for field, value in changes.items():
        setattr(env, field, value)
    env.save(name, overwrite=True)


@flow(name=FLOW_NAME, flow_run_name="signoff-test-{label}")
def signoff_test_flow(label: str, timeout_s: float, environment: str = "sandbox", reports: bool = False) -> State:
    """Stands in for staging-deploy from the metrics gate on: sign-off, then done or 'roll back'.
    With ``reports``, each gate has a real report (a markdown artifact ``<stage>-report``) the leads see."""
    env = StagingEnvironment.load(environment)  # the run's policy is this, as loaded now, at its start
    run_id = str(get_run_context().flow_run.id)
    notifier = RunNotifier(
        slack=env.slack,
        title=f"Sign-off test {label}",
        run_url=flow_run_url(run_id),
        logger=get_run_logger(),
        stage_names=["metrics", "sign-off"],
    )
    notifier.stage("metrics", "passed")
    gates = GATES
    if reports:
        for gate in GATES:
            create_markdown_artifact(markdown=f"# {gate.summary}", key=f"{gate.stage}-report")
        gates = link_gates(GATES, {g.stage: f"{g.stage}-report" for g in GATES})
    try:
        record = collect_signoffs(env, RELEASE, gates, FIGURES, timeout_s, notifier)
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

    def __init__(self, timeout_s: float = 120, environment: str = "sandbox", reports: bool = False):
        self.label = uuid.uuid4().hex[:10]
        self.title = f"Sign-off test {self.label}"
        self.environment = environment
        self.state: State | None = None
        self.error: BaseException | None = None
        # The thread keeps the test's Prefect settings (no heartbeats) by running in a copy of its context.
        ctx = contextvars.copy_context()
        self._thread = threading.Thread(target=ctx.run, args=(self._run, timeout_s, environment, reports), daemon=True)
        self.id = None

    def _run(self, timeout_s: float, environment: str, reports: bool) -> None:
        try:
            self.state = signoff_test_flow(self.label, timeout_s, environment, reports, return_state=True)
        except BaseException as exc:  # surfaced by result()
            self.error = exc

    def start(self, within_s: float = 60) -> SignoffRun:
        self._thread.start()
        deadline = time.monotonic() + within_s
        with get_client(sync_client=True) as client:
            while time.monotonic() < deadline and self.id is None:
                runs = client.read_flow_runs(
                    flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[f"signoff-test-{self.label}"]))
                )
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
                time.sleep(0.1)
        raise AssertionError(f"the run did not pause (after {after_key}) within {within_s} s")

    def pause_key(self) -> str | None:
        with get_client(sync_client=True) as client:
            state = client.read_flow_run(self.id).state
        return state.state_details.pause_key if state.is_paused() else None

    def ledger(self) -> Ledger | None:
        with get_client(sync_client=True) as client:
            return read_ledger(client, self.id)

    # -- proofs ------------------------------------------------------------------------------

    def statement(
        self, role: str, decision: str = "approve", notes: str = "", *, run_id=None, digest: str | None = None
    ) -> Statement:
        """The statement a lead signs now (or a forger's variant of it)."""
        ledger = self.ledger()
        return Statement.of(run_id or self.id, role, decision, digest or ledger.digest, ledger.evidence_sha256, notes)

    def ssh_signature(
        self, role: str, decision: str = "approve", notes: str = "", key: Path | None = None, **variant
    ) -> str:
        return sign_statement(key or KEYS[role], self.statement(role, decision, notes, **variant).text())

    def code(self, role: str, user: str | None = None, within_s: float = 10) -> str:
        """The one-time code this run sent ``role``'s lead by Slack DM."""
        user = user or SLACK_IDS[role]
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline:
            for m in standin_messages():
                if (
                    m.get("kind") == "chat.postMessage"
                    and m.get("channel_requested") == user
                    and str(self.id) in (m.get("text") or "")
                    and f"*{role}*" in (m.get("text") or "")
                ):
                    return CODE.search(m["text"]).group(1)
            time.sleep(0.2)
        raise AssertionError(f"no one-time code reached {user} for {role} within {within_s} s")

    def resume(self, run_input: dict) -> None:
        resume_flow_run(self.id, run_input=run_input, _sync=True)

    def sign(
        self,
        role: str,
        decision: str = "approve",
        notes: str = "looks good",
        path: str = "terminal",
        expect_pause: bool = True,
        key: Path | None = None,
    ) -> str | None:
        """One sign-off with a proof (terminal: SSH signature; ui: the DM'd code; slack: the buttons);
        wait for the next pause (returned) unless the run should end."""
        key_now = self.wait_paused()
        if path == "slack":
            self.slack_sign(role, decision, notes)
        else:
            proof = self.ssh_signature(role, decision, notes, key=key) if path == "terminal" else self.code(role)
            self.resume({"role": role, "decision": decision, "notes": notes, "proof": proof})
        return self.wait_paused(after_key=key_now) if expect_pause else None

    # -- Slack, through the stand-in -------------------------------------------------------------

    def message(self) -> dict:
        """The run's Slack message as last posted or updated."""
        head = self.wait_for_slack("", within_s=15)
        versions = [
            m for m in self.slack() if m["ts"] == head["ts"] and m["kind"] in ("chat.postMessage", "chat.update")
        ]
        return versions[-1]

    def click(self, user: str, action: str = "approve") -> dict:
        """A Slack user presses Approve or Reject on the run's message; the stand-in's account of it."""
        message = self.wait_for_message_with_buttons()
        answer = httpx.post(
            f"{STANDIN_CONTROL}/click",
            timeout=15,
            json={"user": user, "ts": message["ts"], "action_id": f"signoff_{action}"},
        ).json()
        return answer

    def opened_view(self, user: str, after: float, within_s: float = 5) -> dict | None:
        """The modal the receiver opened for ``user`` after ``after`` (time.time()), if any."""
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline:
            views = [
                m
                for m in standin_messages()
                if m.get("kind") == "views.open"
                and m.get("user") == user
                and m.get("received_at", 0) >= after
                and str(self.id) in (m.get("view") or {}).get("private_metadata", "")
            ]
            if views:
                return views[-1]
            time.sleep(0.1)
        return None

    def submit(self, view_id: str, notes: str = "", role: str | None = None) -> dict:
        values = {"notes": notes, **({"role": role} if role else {})}
        return httpx.post(f"{STANDIN_CONTROL}/submit", json={"view_id": view_id, "values": values}, timeout=15).json()

    def slack_sign(self, role: str, decision: str = "approve", notes: str = "", user: str | None = None) -> dict:
        """Approve or Reject in Slack: the button, then the confirmation modal's submit."""
        user = user or SLACK_IDS[role]
        pressed = time.time()
        click = self.click(user, decision)
        assert click.get("ok"), click
        view = self.opened_view(user, pressed)
        assert view is not None, f"no confirmation modal opened for {user}: {click}"
        submitted = self.submit(view["view_id"], notes, role if '"role"' in str(view["view"]["blocks"]) else None)
        assert submitted.get("ok") and not submitted.get("view_open"), submitted
        return submitted

    def wait_for_message_with_buttons(self, within_s: float = 15) -> dict:
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline:
            message = self.message()
            if any(b.get("type") == "actions" for b in message.get("blocks") or []):
                return message
            time.sleep(0.2)
        raise AssertionError("the run's Slack message never showed the sign-off buttons")

    # -- outcomes --------------------------------------------------------------------------------

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
            artifacts = client.read_artifacts(
                artifact_filter=ArtifactFilter(
                    key=ArtifactFilterKey(any_=[ARTIFACT_KEY]), flow_run_id=ArtifactFilterFlowRunId(any_=[self.id])
                )
            )
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
        messages = standin_messages()
        heads = [
            m["ts"]
            for m in messages
            if m.get("kind") == "chat.postMessage"
            and not m.get("thread_ts")
            and (m.get("text") or "").startswith(f"*{self.title}*")
        ]
        return [m for m in messages if heads and (m.get("ts") == heads[0] or m.get("thread_ts") == heads[0])]

    def wait_for_slack(self, text: str, within_s: float = 15) -> dict:
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline:
            if hits := [m for m in self.slack() if text in (m.get("text") or "")]:
                return hits[0]
            time.sleep(0.2)
        raise AssertionError(f"no Slack message of the run contains {text!r} within {within_s} s")

    def close(self) -> None:
        """End a run a failed test left waiting: a lead whose role is unsigned rejects it (signed, of course)."""
        for role in LEADS:
            if self.id is None or not self._thread.is_alive() or not self.pause_key():
                break
            # It may move on meanwhile (or end): fine.
            with contextlib.suppress(RuntimeError, NotPausedError, FlowPauseTimeout, AttributeError):
                self.resume(
                    {
                        "role": role,
                        "decision": "reject",
                        "notes": "test cleanup",
                        "proof": self.ssh_signature(role, "reject", "test cleanup"),
                    }
                )
            self._thread.join(5)
        self._thread.join(30)


def signed_input(run_id, role: str, decision: str, notes: str = "") -> dict:
    """Run input for a paused run: ``role``'s sandbox lead signs, from the terminal, as architect-signoff does."""
    with get_client(sync_client=True) as client:
        ledger = read_ledger(client, run_id)
    assert ledger is not None, f"run {run_id} is not waiting for sign-off"
    statement = Statement.of(run_id, role, decision, ledger.digest, ledger.evidence_sha256, notes)
    return {"role": role, "decision": decision, "notes": notes, "proof": sign_statement(KEYS[role], statement.text())}


def standin_messages() -> list[dict]:
    return httpx.get(f"{STANDIN_CONTROL}/messages", timeout=5).json()
