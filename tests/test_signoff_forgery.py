"""Every forgery of a sign-off, against the receiver, the raw Prefect API and the CLI (issue 14).

One run waits for sign-off for the whole test; Eve is listed for engineering and devops, so one
person signing two roles can be tried. After each forgery the run is still paused, nobody new
has signed, the refusal is in the run's log and its Slack thread (never the proof itself), and
at the end the document lists only the four real signatures.
"""

from __future__ import annotations

import json
import subprocess
import time
import uuid

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from prefect.client.orchestration import get_client
from prefect.input.run_input import keyset_from_base_key

from blocks.approvers import Approver, Role
from deployments import signoff_cli
from sandbox import config
from sandbox.environment_block import sandbox_approvers
from sandbox.slack_standin import slack_signature
from tasks.signoff.receipts import load_private_key, make_receipt
from tests.support.signoff import INTERACTIONS_URL, KEYS, SLACK_IDS, SignoffRun, edit_environment, signoff_environment

pytestmark = pytest.mark.sandbox
MALLORY = "U0MALLORY"


@pytest.fixture
def mallory_key(tmp_path):
    key = tmp_path / "mallory"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "mallory@evil.example", "-f", str(key)],
        check=True,
        timeout=30,
    )
    return key


def test_every_forgery_is_refused_and_the_run_keeps_waiting(sandbox_up, environment_copy, mallory_key):
    approvers = sandbox_approvers()
    approvers[Role.DEVOPS] = [*approvers[Role.DEVOPS], approvers[Role.ENGINEERING][0]]
    env = signoff_environment(environment_copy, approvers=approvers)
    run = SignoffRun(timeout_s=600, environment=env).start()
    secret = config.load_secrets()["slack_signing_secret"]
    proofs: list[str] = []  # every proof offered: none may ever be shown in Slack

    def signed() -> list[tuple[str, str]]:
        return [(s.role.value, s.name) for s in run.ledger().signed]

    def refused_by_the_flow(run_input: dict, reason: str) -> None:
        """Through the raw Prefect API: the run resumes, refuses, and pauses again under a new key."""
        key, before = run.wait_paused(), signed()
        proofs.append(run_input.get("proof", ""))
        run.resume(run_input)
        run.wait_paused(after_key=key)
        assert signed() == before, f"{reason}: a forgery counted"
        assert "Sign-off refused" in run.wait_for_log(reason)
        assert "⛔" in run.wait_for_slack(reason)["text"]

    def refused_by_the_receiver(body: str, headers: dict, reason: str) -> None:
        key, before = run.wait_paused(), signed()
        answer = httpx.post(INTERACTIONS_URL, content=body.encode(), headers=headers, timeout=10)
        assert answer.status_code == 401 and reason in answer.text, (answer.status_code, answer.text)
        assert run.pause_key() == key and signed() == before
        assert "nothing was signed" in run.wait_for_slack(reason)["text"]

    def signed_headers(body: str, timestamp: int, key: str = secret) -> dict:
        return {
            "Content-Type": "application/x-www-form-urlencoded",
            "X-Slack-Request-Timestamp": str(timestamp),
            "X-Slack-Signature": slack_signature(key, str(timestamp), body),
        }

    try:
        run.wait_paused()
        # A real sign-off first: Eve for engineering, from the terminal.
        run.sign("engineering", notes="reviewed")
        eve_engineering = run.ssh_signature("engineering", "approve", "reviewed")
        assert signed() == [("engineering", "Eve Engineer")]

        # -- the receiver -----------------------------------------------------------------------
        pressed = time.time()
        click = run.click(SLACK_IDS["security"], "approve")  # genuine: Sam presses Approve
        assert click["ok"], click
        sam_view = run.opened_view(SLACK_IDS["security"], pressed)
        assert sam_view is not None
        genuine = click["request"]
        refused_by_the_receiver(genuine["body"], genuine["headers"], "a replayed Slack request")
        tampered = genuine["body"].replace(SLACK_IDS["security"], SLACK_IDS["product"])
        refused_by_the_receiver(tampered, genuine["headers"], "Slack signature does not verify")
        refused_by_the_receiver(
            genuine["body"],
            signed_headers(genuine["body"], int(time.time()), "not-the-secret"),
            "Slack signature does not verify",
        )
        refused_by_the_receiver(
            genuine["body"], signed_headers(genuine["body"], int(time.time()) - 400), "expired timestamp"
        )
        refused_by_the_receiver(
            genuine["body"], {"Content-Type": "application/x-www-form-urlencoded"}, "unsigned request"
        )

        key = run.pause_key()
        pressed = time.time()
        assert run.click(MALLORY, "reject")["status"] == 200  # signed by Slack, but Mallory is listed nowhere
        assert "Slack user U0MALLORY is not listed for any role" in run.wait_for_slack("U0MALLORY")["text"]
        assert run.opened_view(MALLORY, pressed, within_s=1) is None and run.pause_key() == key

        pressed = time.time()
        assert run.click(SLACK_IDS["engineering"], "approve")["status"] == 200  # Eve again, for devops now
        assert "one person signs one role" in run.wait_for_slack("one person signs one role")["text"]
        assert run.opened_view(SLACK_IDS["engineering"], pressed, within_s=1) is None

        answer = run.submit(sam_view["view_id"], notes="<!channel> ship it")
        assert answer["response"]["response_action"] == "errors" and answer["view_open"], answer
        assert "Slack control sequence" in run.wait_for_slack("Slack control sequence")["text"]
        assert run.pause_key() == key and signed() == [("engineering", "Eve Engineer")]

        # -- the raw Prefect API ------------------------------------------------------------------
        refused_by_the_flow({"role": "security", "decision": "approve", "notes": "", "proof": ""}, "no proof")
        refused_by_the_flow({"role": "security", "decision": "reject", "proof": "ABCDE-FGHJK"}, "wrong one-time code")
        pat_code = run.code("product")
        refused_by_the_flow(
            {"role": "security", "decision": "approve", "proof": pat_code},
            "that one-time code was sent for product, not security",
        )
        forged = make_receipt(
            Ed25519PrivateKey.generate(), run.statement("security", "approve", ""), SLACK_IDS["security"]
        )
        refused_by_the_flow(
            {"role": "security", "decision": "approve", "proof": forged},
            "not signed by this environment's sign-off receiver",
        )
        with pytest.raises(RuntimeError, match="Cannot resume this run"):  # the typed name of old: not even a field
            run.resume({"role": "security", "name": "Sam Security", "decision": "approve"})
        assert signed() == [("engineering", "Eve Engineer")]
        refused_by_the_flow(
            {
                "role": "devops",
                "decision": "reject",
                "notes": "",
                "proof": run.ssh_signature("devops", "reject", "", key=KEYS["engineering"]),
            },
            "Eve Engineer already signed for engineering; one person signs one role",
        )

        # -- the terminal -------------------------------------------------------------------------
        key = run.pause_key()
        code = signoff_cli.main(
            ["sign", str(run.id), "--role", "security", "--decision", "approve", "--key", str(mallory_key)]
        )
        assert code == 1 and run.pause_key() == key
        refused_by_the_flow(
            {"role": "security", "decision": "approve", "proof": run.ssh_signature("security", key=mallory_key)},
            "the signature is not made with a key this role lists",
        )
        refused_by_the_flow(
            {"role": "security", "decision": "approve", "proof": run.ssh_signature("security", run_id=uuid.uuid4())},
            "the signature does not verify over this run's statement",
        )
        other_digest = run.ledger().digest.replace("9c1e", "0bad", 1)
        refused_by_the_flow(
            {"role": "security", "decision": "approve", "proof": run.ssh_signature("security", digest=other_digest)},
            "the signature does not verify over this run's statement",
        )
        refused_by_the_flow(
            {"role": "engineering", "decision": "approve", "notes": "reviewed", "proof": eve_engineering},
            "this proof was already used",
        )

        # -- the block edited during the pause: Mallory added to security counts for nothing ---------
        edited = sandbox_approvers()
        mallory_line = f"mallory@evil.example {' '.join(mallory_key.with_suffix('.pub').read_text().split()[:2])}"
        edited[Role.SECURITY] = [Approver(name="Mallory", slack_user_id=MALLORY, ssh_allowed_signers=[mallory_line])]
        edit_environment(env, approvers=edited)
        refused_by_the_flow(
            {"role": "security", "decision": "approve", "proof": run.ssh_signature("security", key=mallory_key)},
            "the signature is not made with a key this role lists",
        )

        # -- the real ones: Dev Ops (terminal), Sam (Slack), Pat (the UI's code) --------------------
        run.sign("devops", notes="rollout watched")
        key = run.wait_paused()
        answer = run.submit(sam_view["view_id"], notes="pen test clean")
        assert answer["ok"] and not answer["view_open"], answer
        run.wait_paused(after_key=key)
        assert ("security", "Sam Security") in signed()
        with get_client(sync_client=True) as client:
            receipt_input = json.loads(
                client.read_flow_run_input(run.id, keyset_from_base_key(f"paused-{key}")["response"])
            )
        proofs.append(receipt_input["proof"])
        refused_by_the_receiver(answer["request"]["body"], answer["request"]["headers"], "a replayed Slack request")
        refused_by_the_flow(receipt_input, "this proof was already used")
        refused_by_the_flow({**receipt_input, "role": "product"}, "this proof was already used")
        # A receipt the receiver really issued, but for another run's statement, is no receipt for this one.
        elsewhere = make_receipt(
            load_private_key(config.load_secrets()["signoff_receiver_key"]),
            run.statement("product", "approve", "", run_id=uuid.uuid4()),
            SLACK_IDS["product"],
        )
        refused_by_the_flow(
            {"role": "product", "decision": "approve", "proof": elsewhere}, "the receipt is for another statement"
        )

        run.resume({"role": "product", "decision": "approve", "notes": "demo done", "proof": pat_code})
        state = run.result()
        assert state.is_completed(), state.message
    finally:
        run.close()

    doc = run.document()
    table = doc.split("**Signatures**")[1].split("**Gates**")[0]
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| Role")]
    assert [row.split(" | ")[1:4] for row in rows] == [
        ["Eve Engineer", f"ssh:eve@architect.sandbox {row_fingerprint(rows[0])}", "terminal"],
        ["Dev Ops", f"ssh:dev@architect.sandbox {row_fingerprint(rows[1])}", "terminal"],
        ["Sam Security", f"slack:{SLACK_IDS['security']}", "slack"],
        ["Pat Product", f"one-time code sent to slack:{SLACK_IDS['product']}", "ui"],
    ]
    assert "Mallory" not in table and "Refused sign-offs" in doc
    said = json.dumps([m.get("text") for m in run.slack()])
    for proof in [*proofs, pat_code, "ABCDE-FGHJK"]:
        assert not proof or proof.strip()[:40] not in said, "a proof was echoed in Slack"
    assert "BEGIN SSH SIGNATURE" not in said and "architect-receipt" not in said
    assert "BEGIN SSH SIGNATURE" not in doc and "architect-receipt" not in doc and pat_code not in doc


def row_fingerprint(row: str) -> str:
    return row.split(" | ")[2].split(" ")[1]
