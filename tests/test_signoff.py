"""Sign-off by the four leads (issue 6): the pause, the form, the rules, the timeout, the CLI.

Sandbox tests run a small flow that calls ``collect_signoffs`` in a background thread against
the sandbox's Prefect server and play the leads from outside, as the UI and the CLI would.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest
from prefect.client.orchestration import get_client
from prefect.flow_runs import resume_flow_run
from prefect.input.run_input import keyset_from_base_key

from blocks.environment import Role, StagingEnvironment
from deployments import signoff_cli
from tasks.signoff.approval import refusal_reason, signoff_required
from tasks.signoff.document import Decision, GateSummary, Ledger, SignOff, SignOffRecord, describe
from tasks.core.errors import InvalidInput
from tests._signoff_helpers import FIGURES, FLOW_NAME, GATES, LEADS, RELEASE, SignoffRun

APPROVERS = {Role(role): [name] for role, name in LEADS.items()}


@pytest.fixture
def signoff_run(sandbox_up):
    """Start test flow runs that wait for sign-off; any left waiting are rejected at teardown."""
    runs: list[SignoffRun] = []

    def start(timeout_s: float = 120, environment: str = "sandbox") -> SignoffRun:
        run = SignoffRun(timeout_s, environment)
        runs.append(run)
        run.start()
        run.wait_paused()
        return run

    yield start
    for run in runs:
        run.close()


# -- rules and rendering (no sandbox needed) ------------------------------------------------


def test_only_the_sandbox_may_skip_signoff():
    sandbox = StagingEnvironment.model_construct(kind="sandbox")
    staging = StagingEnvironment.model_construct(kind="staging")
    assert signoff_required(staging, skip=False) and signoff_required(sandbox, skip=False)
    assert signoff_required(sandbox, skip=True) is False
    with pytest.raises(InvalidInput, match="only in a sandbox"):
        signoff_required(staging, skip=True)


def test_refusal_rules():
    eve = SignOff(role=Role.ENGINEERING, name="Eve Engineer", decision=Decision.APPROVE)
    both = {**APPROVERS, Role.DEVOPS: ["Dev Ops", "Eve Engineer"]}
    assert refusal_reason(Role.ENGINEERING, "  eve   ENGINEER ", APPROVERS, []) is None
    assert "may not sign for security" in refusal_reason(Role.SECURITY, "Mallory", APPROVERS, [])
    assert "may not sign for security" in refusal_reason(Role.SECURITY, "Eve Engineer", APPROVERS, [])
    assert "already signed off by Eve Engineer" in refusal_reason(Role.ENGINEERING, "Eve Engineer", APPROVERS, [eve])
    assert "one person signs one role" in refusal_reason(Role.DEVOPS, "eve engineer", both, [eve])
    assert refusal_reason(Role.DEVOPS, "Dev Ops", both, [eve]) is None


def test_description_and_document_show_what_is_signed():
    ledger = Ledger(flow_run_id="00000000-0000-0000-0000-000000000001", pause_key="sign-off-2",
                    environment="sandbox", version=RELEASE.version, commit=RELEASE.commit, digest=RELEASE.digest,
                    approvers=APPROVERS, deadline=datetime(2024, 2, 17, 18, 0, tzinfo=UTC),
                    signed=[SignOff(role=Role.DEVOPS, name="Dev Ops", decision=Decision.APPROVE)])
    record = SignOffRecord(environment="sandbox", environment_kind="sandbox", version=RELEASE.version,
                           commit=RELEASE.commit, digest=RELEASE.digest, outcome="approved",
                           signoffs=[SignOff(role=Role.SECURITY, name="Sam Security", decision="approve",
                                             notes="ok | ```rm``` <!channel>")],
                           gates=[GateSummary.of(g) for g in GATES], figures=FIGURES)
    text = describe(ledger, record)
    assert "3.2.0" in text and RELEASE.commit in text and "sha256:9c1e9c1e" in text
    assert "Signed 1/4:** devops — Dev Ops" in text
    assert "engineering (Eve Engineer)" in text and "devops (" not in text.split("Missing")[1].split("\n")[0]
    assert all(g.link in text for g in GATES) and "182 ms" in text
    doc = record.document()
    assert "Deployment Sign-Off: Architect Dashboard API v3.2.0" in doc and "Environment: Sandbox (sandbox)" in doc
    assert "Security Lead:    Sam Security" in doc and "Engineering Lead: ____" in doc
    assert RELEASE.digest in doc and "530 rps" in doc and "smoke: 24/24 checks passed" in doc
    assert doc.count("```") == 2, "notes must not end the template's code block"


# -- against the sandbox ----------------------------------------------------------------------


@pytest.mark.sandbox
def test_four_signoffs_complete_the_run_with_the_document(signoff_run):
    run = signoff_run()
    with get_client(sync_client=True) as client:
        description = json.loads(client.read_flow_run_input(run.id, keyset_from_base_key("paused-sign-off-1")["description"]))
    assert RELEASE.version in description and RELEASE.commit in description and "sha256:9c1e" in description
    assert "/artifacts/key/smoke" in description and "Missing:** engineering (Eve Engineer)" in description
    run.sign("engineering", notes="tests pass, coverage 81 %")
    run.sign("devops")
    ledger = run.ledger()
    assert [s.role for s in ledger.signed] == [Role.ENGINEERING, Role.DEVOPS]
    assert ledger.missing == [Role.SECURITY, Role.PRODUCT]
    update = run.wait_for_slack("awaiting sign-off 2/4")
    assert update["kind"] == "chat.update" and "Eve Engineer" in update["text"] and "missing: security, product" in update["text"]
    assert "/runs/flow-run/" in update["text"]
    run.sign("security", name="sam   security")  # case and spacing are forgiven, the document spells it right
    run.sign("product", expect_pause=False)
    state = run.result()
    assert state.is_completed(), state.message
    assert run.server_state().is_completed()
    doc = run.document()
    assert "Deployment Sign-Off: Architect Dashboard API v3.2.0" in doc and "Outcome: APPROVED" in doc
    for role, name in LEADS.items():
        assert f"{name}  Date: " in doc, f"{role} missing from the document"
    assert "tests pass, coverage 81 %" in doc and "P95 latency" in doc and RELEASE.digest in doc
    heads = [m for m in run.slack() if m["kind"] == "chat.postMessage" and not m.get("thread_ts")]
    assert len(heads) == 1, "one Slack message per run, updated in place"
    assert "4/4 signed" in run.wait_for_slack("✅ signed off")["text"]


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
    # Out of the expired pause by the flow (Running, to roll back), never by the server's timeout.
    assert history[history.index("PAUSED") + 1] == "RUNNING"
    with pytest.raises(Exception, match="isn't paused|not paused"):
        resume_flow_run(run.id, run_input={"role": "product", "name": "Pat Product", "decision": "approve"}, _sync=True)
    reminders = [m for m in run.slack() if "Reminder" in (m.get("text") or "")]
    assert len(reminders) == 2 and all(m["thread_ts"] for m in reminders)
    assert "Outcome: TIMED OUT" in run.document()
    run.wait_for_log("Reminder: sign-off 0/4")


@pytest.mark.sandbox
def test_refused_signoffs_keep_the_run_waiting(signoff_run, environment_copy):
    # Eve may sign for engineering and devops here, so "one person, two roles" can be tried.
    env = environment_copy(approvers={**APPROVERS, Role.DEVOPS: ["Dev Ops", "Eve Engineer"]})
    run = signoff_run(environment=env)
    cases = [
        ("engineering", "Mallory Intruder", "'Mallory Intruder' may not sign for engineering"),
        ("engineering", "Eve Engineer", None),
        ("engineering", "Eve Engineer", "engineering is already signed off by Eve Engineer"),
        ("devops", "Eve Engineer", "Eve Engineer already signed for engineering; one person signs one role"),
    ]
    for role, name, refusal in cases:
        before = [s.name for s in run.ledger().signed]
        run.sign(role, name)
        after = [s.name for s in run.ledger().signed]
        assert after == (before if refusal else [*before, name]), f"{name} for {role}: {before} -> {after}"
        if refusal:
            assert "Sign-off refused" in run.wait_for_log(refusal)
            assert "⛔" in run.wait_for_slack(refusal)["text"]
    assert run.server_state().is_paused(), "a refused sign-off must not end the wait"
    run.sign("devops", "Dev Ops")
    run.sign("security")
    run.sign("product", expect_pause=False)
    state = run.result()
    assert state.is_completed(), state.message
    doc = run.document()
    assert "Refused sign-offs" in doc and "Mallory Intruder" in doc


@pytest.mark.sandbox
def test_form_input_with_wrong_types_is_refused_by_the_server(signoff_run):
    run = signoff_run()
    key = run.wait_paused()
    bad_inputs = [
        {"role": "security", "name": 42, "decision": "approve"},
        {"role": "ops", "name": "Sam Security", "decision": "approve"},
        {"role": "security", "name": "Sam Security", "decision": "maybe"},
        {"role": "security", "decision": "approve"},
        {"role": "security", "name": "", "decision": "approve"},
        {"role": "security", "name": "Sam Security", "decision": "approve", "admin": True},
        {"role": "security", "name": "Sam Security", "decision": "approve", "notes": ["a", "list"]},
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
    block = out[out.index(str(run.id)):]
    assert "version 3.2.0 to sandbox" in block and "signed  0/4" in block and RELEASE.digest in block
    assert "missing engineering (Eve Engineer), devops (Dev Ops)" in block
    assert signoff_cli.main(["show", str(run.id)]) == 0
    assert RELEASE.commit in capsys.readouterr().out

    key = run.pause_key()
    rc = signoff_cli.main(["sign", str(run.id), "--role", "security", "--name", "Mallory", "--decision", "approve"])
    err = capsys.readouterr().err
    assert rc == 1 and "Refused: 'Mallory' may not sign for security" in err
    assert run.pause_key() == key, "a refused CLI sign-off must not resume the run"

    for i, (role, name) in enumerate(LEADS.items(), start=1):
        rc = signoff_cli.main(["sign", str(run.id), "--role", role, "--name", name, "--decision", "approve",
                               "--notes", f"checked from the terminal ({role})"])
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
