"""Sign-off by the four leads (issues 6 and 14): the pause, the form, the proofs, the rules, the timeout, the CLI.

Sandbox tests run a small flow that calls ``collect_signoffs`` in a background thread against
the sandbox's Prefect server and play the leads from outside, each with a proof the flow
verifies: an SSH signature (the terminal), a one-time code sent by Slack DM (the UI's form) or
Slack's buttons through the stand-in and the sign-off receiver. tests/test_signoff_forgery.py
tries every forgery; this module covers the paths that work and the rules.
"""

from __future__ import annotations

import json
import time
import urllib.parse
import uuid
from datetime import UTC, datetime

import pytest
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import ArtifactUpdate
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, ArtifactFilterKey
from prefect.flow_runs import resume_flow_run
from prefect.input.run_input import keyset_from_base_key
from slack_sdk.signature import SignatureVerifier

from blocks.approvers import Approver, Role
from blocks.environment import StagingEnvironment
from deployments import signoff_cli
from deployments.signoff_receiver import Receiver, ReceiverConfig, Refused
from sandbox.environment_block import sandbox_approvers
from sandbox.slack_standin import slack_signature
from tasks.core.errors import InvalidInput
from tasks.signoff.approval import refusal_reason, signoff_required
from tasks.signoff.document import Decision, GateSummary, Ledger, SignOff, SignOffRecord, describe
from tasks.signoff.policy import ALLOW_SKIP_VARIABLE, SignOffPolicy
from tasks.signoff.receipts import new_private_key
from tasks.signoff.statement import Evidence, ReportHash, Statement
from tests.support.signoff import (
    FIGURES,
    FLOW_NAME,
    GATES,
    KEYS,
    LEADS,
    RELEASE,
    SLACK_IDS,
    SignoffRun,
    edit_environment,
    signoff_environment,
)

APPROVERS = {Role(role): [name] for role, name in LEADS.items()}


def lead(name: str, slack: str | None = None) -> Approver:
    return Approver(name=name, slack_user_id=slack)


POLICY = SignOffPolicy(
    environment="sandbox",
    approvers={
        Role.ENGINEERING: [lead("Eve Engineer", "U0EVE")],
        Role.DEVOPS: [lead("Dev Ops", "U0DEV"), lead("Eve Engineer", "U0EVE")],
        Role.SECURITY: [lead("Sam Security", "U0SAM")],
        Role.PRODUCT: [lead("Pat Product", "U0PAT")],
    },
)


@pytest.fixture
def signoff_env(sandbox_up, environment_copy):
    return signoff_environment(environment_copy)


@pytest.fixture
def signoff_run(signoff_env):
    """Start test flow runs that wait for sign-off; any left waiting are rejected at teardown."""
    runs: list[SignoffRun] = []

    def start(timeout_s: float = 120, environment: str | None = None, reports: bool = False) -> SignoffRun:
        run = SignoffRun(timeout_s, environment or signoff_env, reports)
        runs.append(run)
        run.start()
        run.wait_paused()
        return run

    yield start
    for run in runs:
        run.close()


# -- rules and rendering (no sandbox needed) ------------------------------------------------


@pytest.mark.unit
def test_only_the_sandbox_may_skip_signoff(monkeypatch):
    sandbox = StagingEnvironment.model_construct(kind="sandbox")
    sandbox._block_document_name = "sandbox"
    staging = StagingEnvironment.model_construct(kind="staging")
    staging._block_document_name = "staging"
    monkeypatch.setenv(ALLOW_SKIP_VARIABLE, "sandbox,test-*")
    assert signoff_required(staging, skip=False) and signoff_required(sandbox, skip=False)
    assert signoff_required(sandbox, skip=True) is False
    assert signoff_required("test-1234abcd", skip=True) is False
    with pytest.raises(InvalidInput, match="only in a sandbox"):
        signoff_required(staging, skip=True)
    # The block's own say counts for nothing: a staging block set to kind "sandbox" still waits.
    disguised = StagingEnvironment.model_construct(kind="sandbox")
    disguised._block_document_name = "staging"
    with pytest.raises(InvalidInput, match="only in a sandbox"):
        signoff_required(disguised, skip=True)
    # A worker that allows nothing (a real staging worker) refuses even the sandbox.
    monkeypatch.delenv(ALLOW_SKIP_VARIABLE)
    with pytest.raises(InvalidInput, match="only in a sandbox"):
        signoff_required(sandbox, skip=True)


@pytest.mark.unit
def test_refusal_rules():
    eve, dev, sam = POLICY.leads(Role.ENGINEERING)[0], POLICY.leads(Role.DEVOPS)[0], POLICY.leads(Role.SECURITY)[0]
    signed = SignOff(role=Role.ENGINEERING, name="Eve Engineer", decision=Decision.APPROVE)
    assert refusal_reason(Role.ENGINEERING, eve, POLICY, []) is None
    assert "may not sign for security" in refusal_reason(Role.SECURITY, lead("Mallory"), POLICY, [])
    assert "may not sign for security" in refusal_reason(Role.SECURITY, eve, POLICY, [])
    assert "already signed off by Eve Engineer" in refusal_reason(Role.ENGINEERING, eve, POLICY, [signed])
    assert "one person signs one role" in refusal_reason(Role.DEVOPS, eve, POLICY, [signed])
    assert refusal_reason(Role.DEVOPS, dev, POLICY, [signed]) is None
    assert refusal_reason(Role.SECURITY, sam, POLICY, [signed]) is None


@pytest.mark.unit
def test_one_identity_belongs_to_one_person():
    with pytest.raises(ValueError, match="share a slack identity"):
        StagingEnvironment.model_validate(
            {
                "approvers": {
                    "security": [{"name": "Sam", "slack_user_id": "U0X"}],
                    "product": [{"name": "Pat", "slack_user_id": "U0X"}],
                }
            }
        )
    with pytest.raises(ValueError, match="principal"):
        Approver(
            name="Sam",
            ssh_allowed_signers=["* ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIP4D9fQPjhGSL1ZTtM/VujB+/lKphZWeBOdAyHgAPJjo"],
        )
    with pytest.raises(ValueError, match="options are not allowed"):
        Approver(name="Sam", ssh_allowed_signers=["sam cert-authority ssh-ed25519 AAAA"])
    # A block saved before identities existed still loads; its leads can never sign.
    assert not Approver.model_validate("Sam Security").verifiable


@pytest.mark.unit
def test_the_statement_binds_run_role_decision_digest_evidence_and_notes():
    run = uuid.UUID(int=1)
    evidence = Evidence(
        version="3.2.0",
        commit="c" * 40,
        digest=RELEASE.digest,
        reports=[ReportHash(stage="smoke", verdict="pass", sha256="a" * 64)],
    )
    base = Statement.of(run, Role.SECURITY, "approve", RELEASE.digest, evidence.sha256(), "ok")
    assert base.text() == (
        f"architect-signoff statement v1\nrun: {run}\nrole: security\ndecision: approve\n"
        f"digest: {RELEASE.digest}\nevidence: sha256:{evidence.sha256()}\n"
        f"notes: sha256:{Statement.of(run, 'security', 'approve', '', '', 'ok').notes_sha256}\n"
    )
    changed_report = evidence.model_copy(
        update={"reports": [ReportHash(stage="smoke", verdict="pass", sha256="b" * 64)]}
    )
    variants = [
        Statement.of(uuid.UUID(int=2), Role.SECURITY, "approve", RELEASE.digest, evidence.sha256(), "ok"),
        Statement.of(run, Role.PRODUCT, "approve", RELEASE.digest, evidence.sha256(), "ok"),
        Statement.of(run, Role.SECURITY, "reject", RELEASE.digest, evidence.sha256(), "ok"),
        Statement.of(run, Role.SECURITY, "approve", RELEASE.digest + "0", evidence.sha256(), "ok"),
        Statement.of(run, Role.SECURITY, "approve", RELEASE.digest, changed_report.sha256(), "ok"),
        Statement.of(run, Role.SECURITY, "approve", RELEASE.digest, evidence.sha256(), "ok!"),
    ]
    assert len({base.sha256(), *(v.sha256() for v in variants)}) == 7


@pytest.mark.unit
def test_the_standin_signs_as_slack_does():
    """The stand-in's request signatures are Slack's: slack-sdk's own verifier accepts them, and only them."""
    body = urllib.parse.urlencode({"payload": json.dumps({"type": "block_actions"})})
    now = int(time.time())
    verifier = SignatureVerifier("s3cret")
    assert verifier.is_valid(body, str(now), slack_signature("s3cret", str(now), body))
    assert not verifier.is_valid(body + "x", str(now), slack_signature("s3cret", str(now), body))
    assert not verifier.is_valid(body, str(now - 301), slack_signature("s3cret", str(now - 301), body))


@pytest.mark.unit
def test_the_receiver_checks_slacks_signature_its_window_and_replays():
    now = 1_700_000_000
    receiver = Receiver(
        ReceiverConfig(slack_signing_secret="s3cret", slack_bot_token="xoxb-test", receipt_key=new_private_key()),
        clock=lambda: now,
    )
    body = urllib.parse.urlencode({"payload": json.dumps({"type": "block_actions"})}).encode()

    def headers(timestamp: int, secret: str = "s3cret") -> dict:
        return {
            "x-slack-request-timestamp": str(timestamp),
            "x-slack-signature": slack_signature(secret, str(timestamp), body.decode()),
        }

    receiver.authenticate(body, headers(now - 299))
    for bad, why in [
        (headers(now - 299), "replayed"),
        (headers(now - 301), "expired timestamp"),
        (headers(now + 301), "expired timestamp"),
        (headers(now, "not-the-secret"), "does not verify"),
        ({}, "unsigned"),
        ({**headers(now), "x-slack-request-timestamp": "soon"}, "malformed"),
    ]:
        with pytest.raises(Refused, match=why):
            receiver.authenticate(body, bad)
    receiver.authenticate(body, headers(now))  # a new request: its own signature


@pytest.mark.unit
def test_description_and_document_show_what_is_signed():
    ledger = Ledger(
        flow_run_id="00000000-0000-0000-0000-000000000001",
        pause_key="sign-off-2",
        environment="sandbox",
        version=RELEASE.version,
        commit=RELEASE.commit,
        digest=RELEASE.digest,
        approvers=APPROVERS,
        deadline=datetime(2024, 2, 17, 18, 0, tzinfo=UTC),
        evidence_sha256="e" * 64,
        signed=[SignOff(role=Role.DEVOPS, name="Dev Ops", decision=Decision.APPROVE)],
    )
    record = SignOffRecord(
        environment="sandbox",
        environment_kind="sandbox",
        version=RELEASE.version,
        commit=RELEASE.commit,
        digest=RELEASE.digest,
        outcome="approved",
        signoffs=[
            SignOff(
                role=Role.SECURITY,
                name="Sam Security",
                decision="approve",
                notes="ok | ```rm``` <!channel>",
                path="terminal",
                identity="ssh:sam@architect.sandbox SHA256:abc",
                statement_sha256="5" * 64,
            )
        ],
        gates=[GateSummary.of(g) for g in GATES],
        figures=FIGURES,
        policy_sha256="p" * 64,
        evidence_sha256="e" * 64,
    )
    text = describe(ledger, record)
    assert "3.2.0" in text and RELEASE.commit in text and "sha256:9c1e9c1e" in text
    assert "Signed 1/4:** devops — Dev Ops" in text and "one-time code" in text and "eeeeeeee" in text
    assert "engineering (Eve Engineer)" in text and "devops (" not in text.split("Missing")[1].split("\n")[0]
    assert all(g.link in text for g in GATES) and "182 ms" in text
    doc = record.document()
    assert "Deployment Sign-Off: Architect Dashboard API v3.2.0" in doc and "Environment: Sandbox (sandbox)" in doc
    assert "Security Lead:    Sam Security" in doc and "Engineering Lead: ____" in doc and "Via: terminal" in doc
    assert RELEASE.digest in doc and "530 rps" in doc and "smoke: 24/24 checks passed" in doc
    assert "ssh:sam@architect.sandbox SHA256:abc" in doc and "5" * 64 in doc and "p" * 64 in doc and "e" * 64 in doc
    assert doc.count("```") == 2, "notes must not end the template's code block"


# -- against the sandbox ----------------------------------------------------------------------


@pytest.mark.sandbox
def test_four_signoffs_complete_the_run_with_the_document(signoff_run):
    run = signoff_run()
    with get_client(sync_client=True) as client:
        key = keyset_from_base_key(f"paused-{run.pause_key()}")["description"]
        description = json.loads(client.read_flow_run_input(run.id, key))
    assert RELEASE.version in description and RELEASE.commit in description and "sha256:9c1e" in description
    assert "/artifacts/key/smoke" in description and "Missing:** engineering (Eve Engineer)" in description
    run.sign("engineering", notes="tests pass, coverage 81 %")
    run.sign("devops", path="ui")
    ledger = run.ledger()
    assert [s.role for s in ledger.signed] == [Role.ENGINEERING, Role.DEVOPS]
    assert [s.path for s in ledger.signed] == ["terminal", "ui"]
    assert ledger.missing == [Role.SECURITY, Role.PRODUCT]
    update = run.wait_for_slack("awaiting sign-off 2/4")
    assert update["kind"] == "chat.update" and "Eve Engineer" in update["text"]
    assert "missing: security, product" in update["text"]
    assert "/runs/flow-run/" in update["text"]
    assert any("2/4 signed" in json.dumps(b) for b in update["blocks"]), "the Block Kit message shows k/4 too"
    run.sign("security", path="slack", notes="pen test clean")
    run.sign("product", expect_pause=False)
    state = run.result()
    assert state.is_completed(), state.message
    assert run.server_state().is_completed()
    doc = run.document()
    assert "Deployment Sign-Off: Architect Dashboard API v3.2.0" in doc and "Outcome: APPROVED" in doc
    for role, name in LEADS.items():
        assert f"{name}  Date: " in doc, f"{role} missing from the document"
    assert "tests pass, coverage 81 %" in doc and "P95 latency" in doc and RELEASE.digest in doc
    assert "ssh:eve@architect.sandbox SHA256:" in doc and f"one-time code sent to slack:{SLACK_IDS['devops']}" in doc
    assert f"slack:{SLACK_IDS['security']}" in doc and "pen test clean" in doc
    heads = [m for m in run.slack() if m["kind"] == "chat.postMessage" and not m.get("thread_ts")]
    assert len(heads) == 1, "one Slack message per run, updated in place"
    final = run.wait_for_slack("✅ signed off")
    assert "4/4 signed" in final["text"] and not final.get("blocks"), "no buttons once the sign-off is decided"


@pytest.mark.sandbox
def test_each_lead_signs_with_the_slack_buttons_and_the_message_shows_it(signoff_run):
    """The Slack path end to end: for each role the button, the confirmation modal, the receiver's
    receipt, the flow's check, and the run's message updated in place."""
    run = signoff_run()
    seconds = []
    for i, role in enumerate(LEADS, start=1):
        key = run.wait_paused()
        started = time.monotonic()
        pressed = time.time()
        click = run.click(SLACK_IDS[role], "approve")  # click 1: Approve
        assert click["ok"] and click["status"] == 200, click
        view = run.opened_view(SLACK_IDS[role], pressed)
        assert view is not None and "Notes" in json.dumps(view["view"]), "a confirmation step with a notes field"
        assert run.pause_key() == key, "pressing the button alone signs nothing"
        submitted = run.submit(view["view_id"], notes=f"{role} ok")  # click 2: the modal's Approve
        assert submitted["ok"] and not submitted["view_open"], submitted
        if i < 4:
            run.wait_for_slack(f"awaiting sign-off {i}/4", within_s=10)
            seconds.append(time.monotonic() - started)
    state = run.result()
    assert state.is_completed(), state.message
    doc = run.document()
    for role in LEADS:
        assert f"slack:{SLACK_IDS[role]}" in doc and f"{role} ok" in doc
    print(f"\nclick to the run's Slack message showing it: {', '.join(f'{s:.2f} s' for s in seconds)}")
    assert max(seconds) < 10


@pytest.mark.sandbox
def test_a_report_edited_after_a_lead_signed_voids_that_signature(signoff_run):
    run = signoff_run(reports=True)
    shown = run.ledger()
    assert all(r.sha256 for r in shown.evidence.reports) and len({r.sha256 for r in shown.evidence.reports}) == 4
    run.sign("engineering", notes="saw the smoke report")
    assert [s.role.value for s in run.ledger().signed] == ["engineering"]
    devops = run.ssh_signature("devops", "approve", "also saw it")  # over the evidence as shown
    with get_client(sync_client=True) as client:  # anyone with API access can edit a report
        smoke = next(g for g in run.ledger().evidence.reports if g.stage == "smoke")
        artifact = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=["smoke-report"]), flow_run_id=ArtifactFilterFlowRunId(any_=[run.id])
            )
        )[0]
        client.update_artifact(artifact.id, ArtifactUpdate(data="# smoke: 24/24 checks passed (trust me)"))
    key = run.wait_paused()
    run.resume({"role": "devops", "decision": "approve", "notes": "also saw it", "proof": devops})
    run.wait_paused(after_key=key)
    now = run.ledger()
    assert now.signed == [], "the signature over the old report no longer counts"
    assert now.evidence_sha256 != shown.evidence_sha256
    assert next(g for g in now.evidence.reports if g.stage == "smoke").sha256 != smoke.sha256
    assert "the smoke report changed after it was shown" in run.wait_for_slack("report changed")["text"]
    for role in LEADS:  # everyone signs the evidence as it is now
        run.sign(role, notes="signed again", expect_pause=role != "product")
    assert run.result().is_completed()
    doc = run.document()
    assert now.evidence_sha256 in doc and "evidence changed" in doc


@pytest.mark.sandbox
def test_a_rejection_by_the_security_lead_fails_the_run(signoff_run):
    run = signoff_run()
    run.sign("engineering")
    run.sign("security", decision="reject", notes="TLS certificate expires in 2 days", expect_pause=False)
    state = run.result()
    assert state.is_failed()
    assert "not signed off: rejected by Sam Security (security): TLS certificate expires in 2 days" in state.message
    assert run.server_state().is_failed()
    doc = run.document()
    assert "Outcome: REJECTED" in doc and "Decision: reject" in doc and "Eve Engineer" in doc
    assert "rejected by Sam Security" in run.wait_for_slack("❌ sign-off")["text"]


@pytest.mark.sandbox
def test_a_timeout_fails_the_run_and_never_leaves_it_paused(signoff_run):
    run = signoff_run(timeout_s=6)
    state = run.result(within_s=45)
    assert state.is_failed() and "not signed off: timed out after 6 s" in state.message, state.message
    final = run.server_state()
    assert final.is_failed() and not final.is_paused()
    history = [s.type.value for s in run.states()]
    assert history[-1] == "FAILED" and "PAUSED" in history
    # Out of the expired pause and Running again, so the flow could roll back. On a busy machine the
    # server's expiry rule may turn the pause Failed a moment first; the flow then forces Running.
    assert "RUNNING" in history[history.index("PAUSED") + 1 :], history
    with pytest.raises(Exception, match="isn't paused|not paused"):
        resume_flow_run(run.id, run_input={"role": "product", "decision": "approve", "proof": ""}, _sync=True)
    reminders = [m for m in run.slack() if "Reminder" in (m.get("text") or "")]
    assert len(reminders) == 2 and all(m["thread_ts"] for m in reminders)
    assert "Outcome: TIMED OUT" in run.document()
    run.wait_for_log("Reminder: sign-off 0/4")


@pytest.mark.sandbox
def test_refused_signoffs_keep_the_run_waiting(signoff_run, signoff_env):
    # Eve may sign for engineering and devops here, so "one person, two roles" can be tried.
    approvers = sandbox_approvers()
    approvers[Role.DEVOPS] = [*approvers[Role.DEVOPS], approvers[Role.ENGINEERING][0]]
    edit_environment(signoff_env, approvers=approvers)
    run = signoff_run()
    cases = [  # (role, key of, refusal)
        ("engineering", "security", "the signature is not made with a key this role lists"),
        ("engineering", "engineering", None),
        ("engineering", "engineering", "engineering is already signed off by Eve Engineer"),
        ("devops", "engineering", "Eve Engineer already signed for engineering; one person signs one role"),
    ]
    for i, (role, signer, refusal) in enumerate(cases):
        before = [s.name for s in run.ledger().signed]
        run.sign(role, key=KEYS[signer], notes=f"attempt {i}")
        after = [s.name for s in run.ledger().signed]
        assert after == (before if refusal else [*before, LEADS[signer]]), f"{signer} for {role}: {before} -> {after}"
        if refusal:
            assert "Sign-off refused" in run.wait_for_log(refusal)
            assert "⛔" in run.wait_for_slack(refusal)["text"]
    assert run.server_state().is_paused(), "a refused sign-off must not end the wait"
    run.sign("devops")
    run.sign("security")
    run.sign("product", expect_pause=False)
    state = run.result()
    assert state.is_completed(), state.message
    doc = run.document()
    assert "Refused sign-offs" in doc and "one person signs one role" in doc


@pytest.mark.sandbox
def test_form_input_with_wrong_types_is_refused_by_the_server(signoff_run):
    run = signoff_run()
    key = run.wait_paused()
    bad_inputs = [
        {"role": "security", "proof": 42, "decision": "approve"},
        {"role": "ops", "proof": "", "decision": "approve"},
        {"role": "security", "proof": "", "decision": "maybe"},
        {"role": "security"},
        {"role": "security", "name": "Sam Security", "decision": "approve"},  # the old typed name: not a field
        {"role": "security", "decision": "approve", "admin": True},
        {"role": "security", "decision": "approve", "notes": ["a", "list"]},
    ]
    for run_input in bad_inputs:
        with pytest.raises(RuntimeError, match="Cannot resume this run"):
            resume_flow_run(run.id, run_input=run_input, _sync=True)
        assert run.pause_key() == key, f"{run_input} moved the run on"
    assert run.ledger().signed == []
    run.sign("product", decision="reject", notes="enough", expect_pause=False)
    assert run.result().is_failed()


@pytest.mark.sandbox
def test_cli_lists_the_waiting_run_and_signs_it_off(signoff_run, capsys):
    run = signoff_run()
    assert signoff_cli.main(["list", "--flow", FLOW_NAME]) == 0
    out = capsys.readouterr().out
    block = out[out.index(str(run.id)) :]
    assert f"version 3.2.0 to {run.environment}" in block and "signed  0/4" in block and RELEASE.digest in block
    assert "missing engineering (Eve Engineer), devops (Dev Ops)" in block
    assert signoff_cli.main(["show", str(run.id)]) == 0
    assert RELEASE.commit in capsys.readouterr().out

    key = run.pause_key()
    rc = signoff_cli.main(
        ["sign", str(run.id), "--role", "security", "--decision", "approve", "--key", str(KEYS["product"])]
    )
    err = capsys.readouterr().err
    assert rc == 1 and "may not sign for security" in err and "Refused:" in err
    assert run.pause_key() == key, "a refused CLI sign-off must not resume the run"

    for i, (role, name) in enumerate(LEADS.items(), start=1):
        rc = signoff_cli.main(
            [
                "sign",
                str(run.id),
                "--role",
                role,
                "--decision",
                "approve",
                "--key",
                str(KEYS[role]),
                "--name",
                name,
                "--notes",
                f"checked from the terminal ({role})",
            ]
        )
        out = capsys.readouterr().out
        assert rc == 0, out
        assert (f"Accepted: {i}/4 signed" in out) if i < 4 else ("The run ended Completed" in out), out
        if i == 2:
            assert signoff_cli.main(["list", "--flow", FLOW_NAME, "--json"]) == 0
            listed = {r["flow_run_id"]: r for r in json.loads(capsys.readouterr().out)}
            assert listed[str(run.id)]["missing"] == ["security", "product"]
    assert run.result().is_completed()
    assert "checked from the terminal (product)" in run.document()
    assert signoff_cli.main(["list", "--flow", FLOW_NAME]) == 0
    assert str(run.id) not in capsys.readouterr().out
