"""Sign-off by the four leads: the run pauses until engineering, devops, security and product approve.

Each lead resumes the paused run with a typed form: the Prefect UI's Resume dialog, or
``architect-signoff sign`` from a terminal. The server checks the form's types; this module
checks who signs (the environment's approvers, each role once, one role per person). A refused
sign-off is logged and told in Slack, and the run pauses again under a new key. A rejection or
the timeout ends the wait with ``GateFailed`` and the flow rolls back.

Before every pause the flow saves a ledger (what is signed, what is missing, who may sign) as a
flow run input keyed by that pause. It lives and dies with the run, a stale one can never be
read for a newer pause, and the CLI validates against exactly what the flow will check.
"""

from __future__ import annotations

import threading
import time
from datetime import timedelta
from uuid import UUID

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey
from prefect.client.schemas.sorting import ArtifactSort
from prefect.context import get_run_context
from prefect.exceptions import FlowPauseTimeout, ObjectNotFound, PrefectHTTPStatusError
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput, create_flow_run_input
from prefect.settings import PREFECT_UI_URL
from prefect.states import Running
from pydantic import Field, ValidationError

from blocks.environment import Role, StagingEnvironment
from tasks.core.errors import GateFailed, InvalidInput
from tasks.gates.load.gate import LoadReport
from tasks.core.models import BuildResult, GateReport, utcnow
from tasks.notify import RunNotifier
from tasks.signoff.document import (Decision, GateSummary, Ledger, SignOff, SignOffRecord, describe, human_duration,
                                    run_link, slack_escape, who_signs)

STAGE = "sign-off"
ARTIFACT_KEY = "sign-off"
LEDGER_PREFIX = "sign-off-ledger"
POLL_INTERVAL_S = 1  # how soon a resume is noticed; Prefect's default of 10 s feels broken in the UI
REMINDERS = (0.5, 0.9)  # fractions of the timeout at which Slack is reminded


class SignOffInput(RunInput):
    """The form a lead fills to sign a release off (rendered by the Prefect UI on Resume)."""

    role: Role = Field(description="The role you sign for")
    name: str = Field(min_length=1, max_length=100, pattern=r"^[^\x00-\x1f\x7f]+$",
                      description="Your name, as the environment's approvers list it")
    decision: Decision = Field(description="approve, or reject to roll the release back")
    notes: str = Field("", max_length=2000, description="What you checked, or why you reject")


# -- validation, shared by the flow and the CLI ---------------------------------------------


def _norm(name: str) -> str:
    return " ".join(name.split()).casefold()


def refusal_reason(role: Role, name: str, approvers: dict[Role, list[str]], signed: list[SignOff]) -> str | None:
    """Why this sign-off must be refused, or None when it counts."""
    listed = approvers.get(role, [])
    if _norm(name) not in {_norm(n) for n in listed}:
        return f"{name!r} may not sign for {role.value} (the environment lists: {', '.join(listed) or 'nobody'})"
    for s in signed:
        if s.role == role:
            return f"{role.value} is already signed off by {s.name}; each role signs once"
        if _norm(s.name) == _norm(name):
            return f"{s.name} already signed for {s.role.value}; one person signs one role"
    return None


def canonical_name(role: Role, name: str, approvers: dict[Role, list[str]]) -> str:
    """The name as the environment spells it (validation ignores case and spacing)."""
    return next((n for n in approvers.get(role, []) if _norm(n) == _norm(name)), name.strip())


def signoff_required(environment: StagingEnvironment, skip: bool) -> bool:
    """Whether the run must wait for sign-off; only the sandbox may skip it."""
    if not skip:
        return True
    if environment.kind != "sandbox":
        raise InvalidInput(f"skip_signoff: sign-off may be skipped only in a sandbox environment, "
                           f"not in a {environment.kind} one", stage=STAGE)
    return False


# -- I/O: the ledger, the document, reading a paused run ------------------------------------


def ledger_key(pause_key: str) -> str:
    return f"{LEDGER_PREFIX}-{pause_key}"


@task(name="save-signoff-ledger", cache_policy=NO_CACHE)
def save_ledger(ledger: Ledger) -> None:
    """Store what this pause waits for, under a key only this pause uses."""
    get_run_logger().info("Prefect API: saving the sign-off ledger for pause %s", ledger.pause_key)
    create_flow_run_input(key=ledger_key(ledger.pause_key), value=ledger.model_dump(mode="json"),
                          flow_run_id=ledger.flow_run_id)


@task(name="publish-signoff-document", cache_policy=NO_CACHE)
def publish_signoff_document(record: SignOffRecord) -> UUID:
    """The filled sign-off document as the markdown artifact ``sign-off``."""
    get_run_logger().info("Prefect API: publishing the sign-off document (%s)", record.outcome)
    return create_markdown_artifact(markdown=record.document(), key=ARTIFACT_KEY,
                                    description=f"Sign-off of {record.version}: {record.outcome}")


def read_ledger(client: SyncPrefectClient, flow_run_id: UUID) -> Ledger | None:
    """The ledger of the run's current pause; None when the run is not waiting for sign-off."""
    state = client.read_flow_run(flow_run_id).state
    if state is None or not state.is_paused() or not state.state_details.pause_key:
        return None
    try:
        value = client.read_flow_run_input(flow_run_id=flow_run_id, key=ledger_key(state.state_details.pause_key))
    except (ObjectNotFound, PrefectHTTPStatusError) as exc:
        if isinstance(exc, PrefectHTTPStatusError) and exc.response.status_code != 404:
            raise
        return None
    return Ledger.model_validate_json(value)


@task(name="link-gate-reports", cache_policy=NO_CACHE)
def link_gates(reports: list[GateReport | GateSummary], artifact_keys: dict[str, str]) -> list[GateSummary]:
    """Each gate with a UI link to the report this run published under ``artifact_keys[stage]``."""
    flow_run_id = get_run_context().task_run.flow_run_id
    base = (PREFECT_UI_URL.value() or "").rstrip("/")
    summaries = [GateSummary.of(report) for report in reports]
    with get_client(sync_client=True) as client:
        for summary in summaries:
            if not (key := artifact_keys.get(summary.stage)) or not base:
                continue
            get_run_logger().info("Prefect API: looking up the %s artifact of this run", key)
            found = client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[key]),
                                               flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])),
                sort=ArtifactSort.CREATED_DESC, limit=1)
            summary.link = f"{base}/artifacts/artifact/{found[0].id}" if found else None
    return summaries


# -- the wait ---------------------------------------------------------------------------------


def collect_signoffs(
    environment: StagingEnvironment,
    release: BuildResult,
    gates: list[GateReport | GateSummary],
    figures: dict[str, str],
    timeout_s: float,
    notifier: RunNotifier | None = None,
    *,
    poll_interval_s: float = POLL_INTERVAL_S,
) -> SignOffRecord:
    """Pause the flow run until the four leads approve; call it from the flow itself.

    Raises GateFailed (stage "sign-off") on a rejection or when ``timeout_s`` passes; the run is
    Running again by then, so the flow can roll back. Publishes the sign-off document either way.
    """
    logger = get_run_logger()
    flow_run_id = get_run_context().flow_run.id
    approvers = {role: list(environment.approvers.get(role, [])) for role in Role}
    if timeout_s <= 0:
        raise InvalidInput(f"sign-off timeout must be positive, got {timeout_s}", stage=STAGE)
    if unstaffed := [r.value for r in Role if not approvers[r]]:
        raise InvalidInput(f"the environment names no approver for {', '.join(unstaffed)}", stage=STAGE)
    env_name = getattr(environment, "_block_document_name", None) or environment.kind
    record = SignOffRecord(environment=env_name, environment_kind=environment.kind, version=release.version,
                           commit=release.commit, digest=release.digest, outcome="waiting",
                           gates=[GateSummary.of(g) for g in gates], figures=figures)
    started = time.monotonic()
    deadline = utcnow() + timedelta(seconds=timeout_s)
    ledger = Ledger(flow_run_id=flow_run_id, pause_key="", environment=env_name, version=release.version,
                    commit=release.commit, digest=release.digest, approvers=approvers, deadline=deadline)
    _progress(notifier, ledger)
    if notifier:
        notifier.reply(f"⏸️ Waiting for sign-off from {who_signs(ledger, ledger.missing)} until "
                       f"{deadline:%Y-%m-%d %H:%M} UTC. {run_link(notifier)}")
    reminders = [threading.Timer(f * timeout_s, _remind, (ledger, f, timeout_s, notifier, logger)) for f in REMINDERS]
    for timer in reminders:
        timer.daemon = True
        timer.start()
    try:
        for attempt in range(1, 1000):  # bounded: every refusal costs a person one form
            remaining = timeout_s - (time.monotonic() - started)
            if not ledger.missing or remaining <= 0:
                break
            ledger.pause_key = f"sign-off-{attempt}"
            save_ledger(ledger)
            form = SignOffInput.with_initial_data(description=describe(ledger, record))
            logger.info("Waiting for sign-off %d/4 (pause %s, %.0f s left)", len(ledger.signed), ledger.pause_key, remaining)
            try:  # _sync: Prefect would hand back a coroutine if this thread ran an event loop
                entry = pause_flow_run(wait_for_input=form, timeout=remaining, poll_interval=poll_interval_s,
                                       key=ledger.pause_key, _sync=True)
            except FlowPauseTimeout:
                _resume_after_timeout(flow_run_id)
                break
            except ValidationError as exc:  # passed the server's JSON Schema check but not pydantic's
                reason, name, entry = f"the form did not validate: {exc.errors()[0]['msg']}", "?", None
            else:
                name = " ".join(entry.name.split())
                reason = refusal_reason(entry.role, name, approvers, ledger.signed)
            if reason:
                attempted = f"{name} for {entry.role.value} ({entry.decision})" if entry else "an invalid form"
                record.refused.append(f"{attempted}: {reason}")
                logger.warning("Sign-off refused (%s): %s; still waiting", attempted, reason)
                if notifier:
                    notifier.reply(slack_escape(f"⛔ Sign-off refused ({attempted}): {reason}. "
                                          f"Still waiting for {who_signs(ledger, ledger.missing)}."))
                continue
            signoff = SignOff(role=entry.role, name=canonical_name(entry.role, name, approvers),
                              decision=entry.decision, notes=entry.notes.strip())
            if signoff.decision == Decision.REJECT:
                record.signoffs = [*ledger.signed, signoff]
                notes = signoff.notes or "no notes"
                return _end(record, notifier, "rejected",
                            f"not signed off: rejected by {signoff.name} ({signoff.role.value}): {notes}")
            ledger.signed.append(signoff)
            logger.info("Signed off by %s (%s): %s", signoff.name, signoff.role.value, signoff.notes or "no notes")
            _progress(notifier, ledger)
    finally:
        for timer in reminders:
            timer.cancel()
    record.signoffs = list(ledger.signed)
    if ledger.missing:
        return _end(record, notifier, "timed out",
                    f"not signed off: timed out after {human_duration(timeout_s)} with {len(ledger.signed)}/4 signed "
                    f"(missing: {', '.join(r.value for r in ledger.missing)})")
    return _end(record, notifier, "approved", "")


def _resume_after_timeout(flow_run_id: UUID) -> None:
    """Take the run out of its expired pause so the flow can roll back and end it Failed.

    The server refuses every transition out of an expired pause (it turns them into Failed), so
    only a forced Running gets the run back; without it the rollback's tasks could not run.
    """
    with get_client(sync_client=True) as client:
        state = client.read_flow_run(flow_run_id).state
        if state is not None and state.is_running():
            return
        if state is None or state.is_cancelling() or state.is_cancelled():
            # Someone cancelled the paused run: never bring it back to life.
            raise GateFailed("not signed off: the run was cancelled while waiting for sign-off", stage=STAGE)
        client.set_flow_run_state(flow_run_id, Running(message="sign-off timed out; rolling back"), force=True)


def _end(record: SignOffRecord, notifier: RunNotifier | None, outcome: str, reason: str) -> SignOffRecord:
    record.outcome, record.reason, record.finished_at = outcome, reason, utcnow()
    publish_signoff_document(record)
    signed = ", ".join(f"{s.role.value} ({s.name})" for s in record.signoffs) or "nobody"
    if outcome == "approved":
        get_run_logger().info("Signed off by all four leads: %s", signed)
        if notifier:
            notifier.stage(STAGE, "passed", slack_escape(f"4/4 signed: {signed}"))
        return record
    get_run_logger().error("Sign-off ended: %s", reason)
    if notifier:
        notifier.stage(STAGE, "failed", slack_escape(reason))
    raise GateFailed(reason, stage=STAGE, result=record)


def _progress(notifier: RunNotifier | None, ledger: Ledger) -> None:
    if notifier is None:
        return
    signed = ", ".join(f"{s.role.value} ({s.name})" for s in ledger.signed) or "nobody yet"
    missing = ", ".join(r.value for r in ledger.missing)
    notifier.stage(STAGE, "waiting", slack_escape(f"awaiting sign-off {len(ledger.signed)}/4 — signed: {signed}; missing: {missing}"))


def _remind(ledger: Ledger, fraction: float, timeout_s: float, notifier: RunNotifier | None, logger) -> None:
    """One Slack reminder, from a timer thread: the flow itself is blocked in the pause."""
    signed, missing = list(ledger.signed), ledger.missing  # a copy: the flow may append meanwhile
    text = (f"⏰ Reminder: sign-off {len(signed)}/4, still missing {who_signs(ledger, missing)}; the release rolls back "
            f"in {human_duration(timeout_s * (1 - fraction))} ({ledger.deadline:%Y-%m-%d %H:%M} UTC) unless signed.")
    logger.info(text)
    if notifier:
        notifier.reply(f"{slack_escape(text)} {run_link(notifier)}")


# -- what the flow calls ----------------------------------------------------------------------

GATE_ARTIFACTS = {"health": "health-gate", "smoke": "smoke-gate", "load": "load-test-report", "metrics": "metrics-gate"}


def performance_figures(load: LoadReport) -> dict[str, str]:
    """The load test's numbers against the guide's targets, as the sign-off document shows them."""
    t = load.targets
    return {
        "P50 latency": f"{load.p50_ms:,.1f} ms (target < {t.p50_ms:,.0f} ms)",
        "P95 latency": f"{load.p95_ms:,.1f} ms (target < {t.p95_ms:,.0f} ms)",
        "P99 latency": f"{load.p99_ms:,.1f} ms (target < {t.p99_ms:,.0f} ms)",
        "Max latency": f"{load.max_ms:,.1f} ms (target < {t.max_ms:,.0f} ms)",
        "Throughput": f"{load.throughput_rps:,.0f} req/s (minimum {t.min_rps:,.0f} req/s)",
        "Error rate": f"{load.error_rate:.3%} (maximum {t.error_rate_max:.1%})",
    }


def sign_off_release(
    environment: StagingEnvironment,
    release: BuildResult,
    gates: list[GateReport],
    load: LoadReport,
    timeout_s: float,
    notifier: RunNotifier | None,
) -> SignOffRecord:
    """The sign-off stage: the gates linked to their reports, the figures, and the leads' wait."""
    load_gate = GateSummary(stage="load", verdict=str(load.verdict), summary=load.reason)
    linked = link_gates([*gates, load_gate], GATE_ARTIFACTS)
    return collect_signoffs(environment, release, linked, performance_figures(load), timeout_s, notifier)
