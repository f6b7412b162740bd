"""Sign-off by the four leads: the run pauses until engineering, devops, security and product approve.

A sign-off counts only with a proof this flow verifies itself, in the paused run's process, against
the policy it froze when the run started (tasks/signoff/proofs.py): Slack's buttons (a receipt of
the sign-off receiver), the Prefect UI's Resume form (a one-time code the run sent the lead by
Slack DM) or ``architect-signoff sign`` (an SSH signature over the statement). Whatever arrives
through the unauthenticated Prefect API is a claim until then. A refusal is logged and told in
the run's Slack thread, never repeating the proof, and the run pauses again under a new key. A
rejection or the timeout ends the wait with ``GateFailed`` and the flow rolls back.

Before every pause the flow saves a ledger (what is signed, the evidence hash, what is missing,
the frozen policy) as a flow run input keyed by that pause, for the CLI and the receiver. It is
a convenience for them: the flow checks against its own memory, never against the ledger.
"""

from __future__ import annotations

import contextvars
import secrets
import threading
import time
from collections.abc import Callable
from datetime import timedelta
from uuid import UUID

from prefect import get_run_logger, task
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterId, ArtifactFilterKey
from prefect.client.schemas.sorting import ArtifactSort
from prefect.context import get_run_context
from prefect.exceptions import FlowPauseTimeout, ObjectNotFound, PrefectHTTPStatusError
from prefect.flow_runs import pause_flow_run
from prefect.input import RunInput, create_flow_run_input
from prefect.settings import PREFECT_UI_URL
from prefect.states import Running
from pydantic import Field, ValidationError

from blocks.approvers import Approver, Role
from blocks.environment import StagingEnvironment
from tasks.core.artifacts import markdown_artifact
from tasks.core.errors import GateFailed, InvalidInput
from tasks.core.migration_review import MigrationReview
from tasks.core.models import BuildResult, GateReport, utcnow
from tasks.core.stages import Stage
from tasks.gates.load.gate import LoadReport
from tasks.gates.metrics.report import MetricsReport
from tasks.notify import RunNotifier
from tasks.signoff.document import (
    NO_BASELINE,
    GateSummary,
    Ledger,
    ReleaseContext,
    SignOff,
    SignOffRecord,
    describe,
    human_duration,
    run_link,
    slack_escape,
    who_signs,
)
from tasks.signoff.messages import code_message, waiting_blocks
from tasks.signoff.policy import SignOffPolicy, freeze_policy, signoff_required  # noqa: F401  (the flow's import)
from tasks.signoff.proofs import ProofChecker, ProofRefused, VerifiedProof, notes_refusal
from tasks.signoff.statement import Decision, Evidence, ReportHash, canonical_json, sha256_hex

STAGE = Stage.SIGN_OFF
ARTIFACT_KEY = "sign-off"
LEDGER_PREFIX = "sign-off-ledger"
POLL_INTERVAL_S = 0.5  # how soon a resume is noticed: a lead's click shows in Slack within about a second
GUARD_INTERVAL_S = 2.0  # how often the wait asks its guard (the release watch) whether the release is still fine
REMINDERS = (0.5, 0.9)  # fractions of the timeout at which Slack is reminded


class SignOffInput(RunInput):
    """The form a lead fills to sign a release off (rendered by the Prefect UI on Resume)."""

    role: Role = Field(description="The role you sign for")
    decision: Decision = Field(description="approve, or reject to roll the release back")
    proof: str = Field(
        max_length=8000,
        description=(
            "The one-time code this run sent you by Slack direct message (Slack's buttons and "
            "architect-signoff fill this in themselves). A name is not proof."
        ),
    )
    notes: str = Field("", max_length=2000, description="What you checked, or why you reject")


# -- the rules, shared by the flow, the CLI and the receiver ------------------------------------


def _norm(name: str) -> str:
    return " ".join(name.split()).casefold()


def lead_named(policy: SignOffPolicy, role: Role, name: str) -> Approver | None:
    return next((lead for lead in policy.leads(role) if _norm(lead.name) == _norm(name)), None)


def refusal_reason(role: Role, lead: Approver, policy: SignOffPolicy, signed: list[SignOff]) -> str | None:
    """Why this (verified) lead may not sign ``role`` now, or None when the sign-off counts."""
    if lead not in policy.leads(role):
        listed = ", ".join(policy.names(role)) or "nobody"
        return f"{lead.name!r} may not sign for {role.value} (the environment lists: {listed})"
    for s in signed:
        if s.role == role:
            return f"{role.value} is already signed off by {s.name}; each role signs once"
        earlier = lead_named(policy, s.role, s.name)
        if _norm(s.name) == _norm(lead.name) or (earlier is not None and earlier.same_person(lead)):
            return f"{s.name} already signed for {s.role.value}; one person signs one role"
    return None


# -- I/O: the ledger, the document, the reports, reading a paused run -------------------------


def ledger_key(pause_key: str) -> str:
    return f"{LEDGER_PREFIX}-{pause_key}"


@task(name="save-signoff-ledger", cache_policy=NO_CACHE)
def save_ledger(ledger: Ledger) -> None:
    """Store what this pause waits for, under a key only this pause uses."""
    get_run_logger().info("Prefect API: saving the sign-off ledger for pause %s", ledger.pause_key)
    create_flow_run_input(
        key=ledger_key(ledger.pause_key), value=ledger.model_dump(mode="json"), flow_run_id=ledger.flow_run_id
    )


@task(name="publish-signoff-document", cache_policy=NO_CACHE)
def publish_signoff_document(record: SignOffRecord) -> UUID:
    """The filled sign-off document as the markdown artifact ``sign-off``."""
    get_run_logger().info("Prefect API: publishing the sign-off document (%s)", record.outcome)
    return markdown_artifact(
        markdown=record.document(), key=ARTIFACT_KEY, description=f"Sign-off of {record.version}: {record.outcome}"
    )


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


def _summary_sha256(summary: GateSummary) -> str:
    return sha256_hex(canonical_json({"stage": summary.stage, "verdict": summary.verdict, "summary": summary.summary}))


@task(name="link-gate-reports", cache_policy=NO_CACHE)
def link_gates(reports: list[GateReport | GateSummary], artifact_keys: dict[str, str]) -> list[GateSummary]:
    """Each gate with a UI link to the report this run published under ``artifact_keys[stage]``,
    and the SHA-256 of that report as the leads will see it."""
    flow_run_id = get_run_context().task_run.flow_run_id
    base = (PREFECT_UI_URL.value() or "").rstrip("/")
    summaries = [GateSummary.of(report) for report in reports]
    with get_client(sync_client=True) as client:
        for summary in summaries:
            summary.report_sha256 = _summary_sha256(summary)
            if not (key := artifact_keys.get(summary.stage)):
                continue
            get_run_logger().info("Prefect API: looking up the %s artifact of this run", key)
            found = client.read_artifacts(
                artifact_filter=ArtifactFilter(
                    key=ArtifactFilterKey(any_=[key]), flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])
                ),
                sort=ArtifactSort.CREATED_DESC,
                limit=1,
            )
            if found:
                summary.artifact_id = found[0].id
                summary.report_sha256 = sha256_hex(canonical_json(found[0].data))
                summary.link = f"{base}/artifacts/artifact/{found[0].id}" if base else None
    return summaries


def reports_changed(gates: list[GateSummary]) -> list[str]:
    """The gates whose report (an artifact anyone with API access may edit) differs from when it was shown."""
    linked = {g.artifact_id: g for g in gates if g.artifact_id}
    if not linked:
        return []
    with get_client(sync_client=True) as client:
        found = {
            a.id: a
            for a in client.read_artifacts(artifact_filter=ArtifactFilter(id=ArtifactFilterId(any_=list(linked))))
        }
    return [
        g.stage
        for artifact_id, g in linked.items()
        if artifact_id not in found or sha256_hex(canonical_json(found[artifact_id].data)) != g.report_sha256
    ]


def evidence_of(release: BuildResult, gates: list[GateSummary], context: ReleaseContext | None = None) -> Evidence:
    for gate in gates:
        gate.report_sha256 = gate.report_sha256 or _summary_sha256(gate)
    return Evidence(
        version=release.version,
        commit=release.commit,
        digest=release.digest,
        reports=[ReportHash(stage=g.stage, verdict=g.verdict, sha256=g.report_sha256) for g in gates],
        context=Evidence.hash_texts(context.texts()) if context else {},
    )


def release_context(
    gates: list[GateReport], load: LoadReport | None, migrations: MigrationReview | None
) -> ReleaseContext:
    """The comparisons with the live release and the migrations' review, rendered now as plain text."""
    context = ReleaseContext()
    metrics = next((g for g in gates if isinstance(g, MetricsReport)), None)
    tables = []
    if metrics is not None and metrics.baseline.comparisons:
        context.metrics_baseline = metrics.baseline.summary()
        tables.append(metrics.baseline.markdown())
    if load is not None:
        context.load_baseline = (
            load.baseline.summary() if load.baseline.source or load.baseline.missing_reason else NO_BASELINE
        )
        tables.append(load.baseline.markdown())
    context.against_live_markdown = "\n\n".join(tables)
    if migrations is not None:
        context.migrations, context.migrations_markdown = migrations.summary(), migrations.markdown()
    return context


# -- Slack: the message's blocks and the codes' direct messages --------------------------------


def _send_codes(environment: StagingEnvironment, codes: list[tuple[str, str]], logger) -> None:
    """Direct messages in the background: Slack never slows or fails the run."""
    if environment.slack is None or not codes:
        return

    def send() -> None:
        client = environment.slack.get_client()
        for user_id, text in codes:
            try:
                client.chat_postMessage(channel=user_id, text=text)
                logger.info("Slack: sent a one-time sign-off code to %s (direct message)", user_id)
            except Exception as exc:  # the buttons and the terminal still work
                logger.warning("Slack: the one-time code to %s was not delivered (%s)", user_id, type(exc).__name__)

    threading.Thread(target=send, name="signoff-codes", daemon=True).start()


def _progress(notifier: RunNotifier | None, ledger: Ledger, gates: list[GateSummary]) -> None:
    if notifier is None:
        return
    signed = ", ".join(f"{s.role.value} ({s.name})" for s in ledger.signed) or "nobody yet"
    missing = ", ".join(r.value for r in ledger.missing)
    notifier.stage(
        STAGE,
        "waiting",
        slack_escape(f"awaiting sign-off {len(ledger.signed)}/4 — signed: {signed}; missing: {missing}"),
    )
    notifier.attach_blocks(waiting_blocks(ledger, gates, notifier.run_url))


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
    policy: SignOffPolicy | None = None,
    context: ReleaseContext | None = None,
    guard: Callable[[], None] | None = None,
) -> SignOffRecord:
    """Pause the flow run until the four leads approve with verified proof; call it from the flow itself.

    ``policy`` is the one the run froze when it started (``freeze_policy``); without it, the
    environment the run loaded then. Raises GateFailed (stage "sign-off") on a rejection or when
    ``timeout_s`` passes; the run is Running again by then, so the flow can roll back. Publishes
    the sign-off document either way. ``guard`` (the release watch's check) is called every
    ``GUARD_INTERVAL_S`` while paused and once more before approving; when it raises, the wait
    ends the same way, with its reason.
    """
    logger = get_run_logger()
    flow_run_id = get_run_context().flow_run.id
    policy = policy or freeze_policy(environment)
    if timeout_s <= 0:
        raise InvalidInput(f"sign-off timeout must be positive, got {timeout_s}", stage=STAGE)
    if unstaffed := policy.unstaffed():
        raise InvalidInput(
            f"the environment lists no lead with a Slack user id or SSH key for "
            f"{', '.join(r.value for r in unstaffed)}",
            stage=STAGE,
        )
    summaries = [GateSummary.of(g) for g in gates]
    context = context or ReleaseContext()
    evidence = evidence_of(release, summaries, context)
    record = SignOffRecord(
        environment=policy.environment,
        environment_kind=environment.kind,
        version=release.version,
        commit=release.commit,
        digest=release.digest,
        outcome="waiting",
        gates=summaries,
        figures=figures,
        context=context,
        policy_sha256=policy.sha256(),
        evidence_sha256=evidence.sha256(),
    )
    started = time.monotonic()
    deadline = utcnow() + timedelta(seconds=timeout_s)
    ledger = Ledger(
        flow_run_id=flow_run_id,
        pause_key="",
        environment=policy.environment,
        version=release.version,
        commit=release.commit,
        digest=release.digest,
        approvers={r: policy.names(r) for r in Role},
        deadline=deadline,
        evidence=evidence,
        evidence_sha256=record.evidence_sha256,
        policy=policy,
        policy_sha256=record.policy_sha256,
        context=context,
    )
    checker = ProofChecker(run_id=flow_run_id, policy=policy, digest=release.digest)
    run_url = notifier.run_url if notifier else None
    _send_codes(
        environment,
        [
            (lead.slack_user_id, code_message(checker.codes.issue(role, lead), role, ledger, run_url))
            for role in Role
            for lead in policy.leads(role)
            if lead.slack_user_id
        ],
        logger,
    )
    logger.info("Sign-off policy sha256:%s, evidence sha256:%s", record.policy_sha256, record.evidence_sha256)
    _progress(notifier, ledger, summaries)
    if notifier:
        notifier.reply(
            f"⏸️ Waiting for sign-off from {slack_escape(who_signs(ledger, ledger.missing))} until "
            f"{deadline:%Y-%m-%d %H:%M} UTC. {run_link(notifier)}"
        )
    reminders = [threading.Timer(f * timeout_s, _remind, (ledger, f, timeout_s, notifier, logger)) for f in REMINDERS]
    for timer in reminders:
        timer.daemon = True
        timer.start()
    try:
        for attempt in range(1, 1000):  # bounded: every refusal costs a person one form
            remaining = timeout_s - (time.monotonic() - started)
            if not ledger.missing or remaining <= 0:
                break
            # Unguessable: nobody can plant a ledger (or an answer) for a pause that has not begun.
            ledger.pause_key = f"sign-off-{attempt}-{secrets.token_hex(4)}"
            ledger.slack_message = notifier.message if notifier else None
            save_ledger(ledger)
            form = SignOffInput.with_initial_data(description=describe(ledger, record))
            logger.info(
                "Waiting for sign-off %d/4 (pause %s, %.0f s left)", len(ledger.signed), ledger.pause_key, remaining
            )
            try:
                entry, failed = _watched_pause(form, remaining, poll_interval_s, ledger.pause_key, guard, flow_run_id)
            except FlowPauseTimeout:
                _resume_after_timeout(flow_run_id)
                break
            except ValidationError as exc:  # passed the server's JSON Schema check but not pydantic's
                _refuse(
                    record,
                    ledger,
                    notifier,
                    logger,
                    "an invalid form",
                    f"the form did not validate: {exc.errors()[0]['msg']}",
                )
                continue
            if failed is not None:
                record.signoffs = list(ledger.signed)
                return _end(record, notifier, "aborted", f"not signed off: {_guard_reason(failed)}")
            _check_evidence(record, ledger, summaries, notifier, logger)
            verified, reason = _verify(entry, checker, ledger, policy)
            if reason:
                who = f" by {verified.lead.name}" if verified else ""
                _refuse(record, ledger, notifier, logger, f"{entry.decision} for {entry.role.value}{who}", reason)
                continue
            signoff = SignOff(
                role=entry.role,
                name=verified.lead.name,
                decision=entry.decision,
                notes=entry.notes.strip(),
                path=verified.path,
                identity=verified.identity,
                statement_sha256=verified.statement.sha256(),
            )
            if signoff.decision == Decision.REJECT:
                record.signoffs = [*ledger.signed, signoff]
                notes = signoff.notes or "no notes"
                return _end(
                    record,
                    notifier,
                    "rejected",
                    f"not signed off: rejected by {signoff.name} ({signoff.role.value}): {notes}",
                )
            ledger.signed.append(signoff)
            logger.info(
                "Signed off by %s (%s) via %s as %s: %s",
                signoff.name,
                signoff.role.value,
                signoff.path,
                signoff.identity,
                signoff.notes or "no notes",
            )
            if ledger.missing:  # the fourth is told by _end, without the buttons
                _progress(notifier, ledger, summaries)
    finally:
        for timer in reminders:
            timer.cancel()
    record.signoffs = list(ledger.signed)
    if ledger.missing:
        return _end(
            record,
            notifier,
            "timed out",
            f"not signed off: timed out after {human_duration(timeout_s)} with {len(ledger.signed)}/4 signed "
            f"(missing: {', '.join(r.value for r in ledger.missing)})",
        )
    if (failed := _guard_failure(guard)) is not None:  # signed, but the release went bad meanwhile
        return _end(record, notifier, "aborted", f"not signed off: {_guard_reason(failed)}")
    return _end(record, notifier, "approved", "")


# -- the guard: the release watched while the leads look at it -------------------------------


def _guard_failure(guard: Callable[[], None] | None) -> Exception | None:
    if guard is None:
        return None
    try:
        guard()
    except Exception as exc:  # whatever the guard raises ends the wait; the flow rolls back
        return exc
    return None


def _guard_reason(failure: Exception) -> str:
    return f"the release went bad while waiting for sign-off: {failure}"


def _watched_pause(
    form, timeout_s: float, poll_interval_s: float, key: str, guard: Callable[[], None] | None, flow_run_id: UUID
) -> tuple[SignOffInput | None, Exception | None]:
    """One pause, with ``guard`` asked every few seconds meanwhile: (the entry, None) when a lead
    resumed it, (None, what the guard raised) when the guard failed first. Prefect's pause blocks
    in its own poll loop, so a thread asks the guard and, once it fails, takes the run out of the
    pause (a forced Running, as after the timeout); what the pause then reads is ignored."""
    if (failed := _guard_failure(guard)) is not None:
        return None, failed
    with _PauseGuard(guard, flow_run_id) as watch:
        try:  # _sync: Prefect would hand back a coroutine if this thread ran an event loop
            entry = pause_flow_run(
                wait_for_input=form, timeout=timeout_s, poll_interval=poll_interval_s, key=key, _sync=True
            )
        except Exception:
            if watch.failure is None:
                raise
            return None, watch.failure
    return (None, watch.failure) if watch.failure is not None else (entry, None)


class _PauseGuard:
    """A thread that calls ``guard`` every ``GUARD_INTERVAL_S`` while the run is paused. On its first
    failure it keeps the run out of the pause (forcing Running whenever it finds it Paused, for
    the pause may not have begun yet) until the pause returns; a cancelled run is left alone."""

    def __init__(self, guard: Callable[[], None] | None, flow_run_id: UUID, interval_s: float = GUARD_INTERVAL_S):
        self.guard, self.flow_run_id, self.interval_s = guard, flow_run_id, interval_s
        self.failure: Exception | None = None
        self._done = threading.Event()
        # The run's context (its Prefect settings and client) in the thread too.
        self._thread = threading.Thread(
            target=contextvars.copy_context().run, args=(self._run,), name="signoff-guard", daemon=True
        )

    def __enter__(self) -> _PauseGuard:
        if self.guard is not None:
            self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._done.set()
        if self._thread.is_alive():
            self._thread.join(timeout=30)

    def _run(self) -> None:
        # Once failed, as often as the pause itself polls: it may be proposed only now.
        while not self._done.wait(self.interval_s if self.failure is None else POLL_INTERVAL_S):
            if self.failure is None:
                self.failure = _guard_failure(self.guard)
            if self.failure is not None:
                try:
                    _end_pause(self.flow_run_id, f"{self.failure}"[:200])
                except Exception as exc:  # the API away a moment: try again on the next round
                    get_run_logger().warning("Could not end the sign-off pause yet: %s", type(exc).__name__)


def _end_pause(flow_run_id: UUID, why: str) -> None:
    """Take a paused run out of its pause so the flow can roll back; never one being cancelled."""
    with get_client(sync_client=True) as client:
        state = client.read_flow_run(flow_run_id).state
        if state is None or not state.is_paused():
            return
        client.set_flow_run_state(flow_run_id, Running(message=f"release went bad: {why}; rolling back"), force=True)


def _verify(
    entry: SignOffInput, checker: ProofChecker, ledger: Ledger, policy: SignOffPolicy
) -> tuple[VerifiedProof | None, str | None]:
    """(the verified proof, why it does not count); the notes first, so a code is not spent on them."""
    if reason := notes_refusal(entry.notes):
        return None, reason
    try:
        verified = checker.verify(entry.role, entry.decision, entry.notes, entry.proof, ledger.evidence_sha256)
    except ProofRefused as exc:
        return None, str(exc)
    return verified, refusal_reason(entry.role, verified.lead, policy, ledger.signed)


def _refuse(
    record: SignOffRecord, ledger: Ledger, notifier: RunNotifier | None, logger, attempted: str, reason: str
) -> None:
    record.refused.append(f"{attempted}: {reason}")
    logger.warning("Sign-off refused (%s): %s; still waiting", attempted, reason)
    if notifier:
        notifier.reply(
            slack_escape(
                f"⛔ Sign-off refused ({attempted}): {reason}. Still waiting for {who_signs(ledger, ledger.missing)}."
            )
        )


def _check_evidence(
    record: SignOffRecord, ledger: Ledger, gates: list[GateSummary], notifier: RunNotifier | None, logger
) -> None:
    """A report edited after the leads saw it voids every signature over it; they sign the new one."""
    if not (changed := reports_changed(gates)):
        return
    with get_client(sync_client=True) as client:
        for gate in gates:
            if gate.stage in changed and gate.artifact_id:
                found = client.read_artifacts(
                    artifact_filter=ArtifactFilter(id=ArtifactFilterId(any_=[gate.artifact_id]))
                )
                gate.report_sha256 = sha256_hex(canonical_json(found[0].data)) if found else "(report deleted)"
    voided = [f"{s.role.value} ({s.name})" for s in ledger.signed]
    ledger.evidence = evidence_of(_release_of(ledger), gates, ledger.context)
    ledger.evidence_sha256 = record.evidence_sha256 = ledger.evidence.sha256()
    ledger.signed.clear()
    reason = (
        f"the {', '.join(changed)} report changed after it was shown; signatures over the old evidence no longer "
        f"count ({', '.join(voided) or 'none yet'}); new evidence sha256:{ledger.evidence_sha256[:16]}…"
    )
    record.refused.append(f"evidence changed: {reason}")
    logger.warning("Sign-off evidence changed: %s", reason)
    if notifier:
        notifier.reply(slack_escape(f"⚠️ {reason}. Sign again, please."))
        _progress(notifier, ledger, gates)


def _release_of(ledger: Ledger) -> BuildResult:
    return BuildResult.model_construct(version=ledger.version, commit=ledger.commit, digest=ledger.digest)


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
    if notifier:
        notifier.attach_blocks(None)  # no buttons on a decided sign-off
    if outcome == "approved":
        get_run_logger().info("Signed off by all four leads: %s", signed)
        if notifier:
            notifier.stage(STAGE, "passed", slack_escape(f"4/4 signed: {signed}"))
        return record
    get_run_logger().error("Sign-off ended: %s", reason)
    if notifier:
        notifier.stage(STAGE, "failed", slack_escape(reason))
    raise GateFailed(reason, stage=STAGE, result=record)


def _remind(ledger: Ledger, fraction: float, timeout_s: float, notifier: RunNotifier | None, logger) -> None:
    """One Slack reminder, from a timer thread: the flow itself is blocked in the pause."""
    signed, missing = list(ledger.signed), ledger.missing  # a copy: the flow may append meanwhile
    text = (
        f"⏰ Reminder: sign-off {len(signed)}/4, still missing {who_signs(ledger, missing)}; "
        f"the release rolls back in {human_duration(timeout_s * (1 - fraction))} "
        f"({ledger.deadline:%Y-%m-%d %H:%M} UTC) unless signed."
    )
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
    *,
    policy: SignOffPolicy | None = None,
    guard: Callable[[], None] | None = None,
) -> SignOffRecord:
    """The sign-off stage: the gates linked to their reports, the figures, and the leads' wait.

    Pass ``policy`` as frozen by ``freeze_policy`` when the run started; without it, the policy
    of ``environment`` (the block as the run loaded it at its start). ``guard`` (the release
    watch's check) ends the wait when it raises (see ``collect_signoffs``).
    """
    load_gate = GateSummary(stage=Stage.LOAD, verdict=str(load.verdict), summary=load.reason)
    linked = link_gates([*gates, load_gate], GATE_ARTIFACTS)
    context = release_context(gates, load, release.migrations)
    return collect_signoffs(
        environment,
        release,
        linked,
        performance_figures(load),
        timeout_s,
        notifier,
        policy=policy,
        context=context,
        guard=guard,
    )
