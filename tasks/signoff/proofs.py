"""Who a sign-off comes from, proven: the one place the flow verifies every kind of proof.

The Prefect API is unauthenticated, so whatever arrives as run input is a claim. It counts only
with a proof the flow checks itself, against the policy it froze when the run started:

- ``slack``: a receipt signed by the sign-off receiver's key (which checked Slack's signature);
- ``ui``: a one-time code the run sent that lead by Slack DM;
- ``terminal``: an SSH signature over the statement, by a key the role lists.
"""

from __future__ import annotations

import base64
import hashlib
import re
from dataclasses import dataclass, field
from typing import Literal
from uuid import UUID

from pydantic import BaseModel

from blocks.approvers import Approver, Role
from tasks.core.errors import ProofRefused
from tasks.signoff.codes import CodeRefused, OneTimeCodes, looks_like_code
from tasks.signoff.policy import SignOffPolicy
from tasks.signoff.receipts import ReceiptRefused, looks_like_receipt, verify_receipt
from tasks.signoff.ssh import SshSignatureError, looks_like_ssh_signature, verify_statement
from tasks.signoff.statement import Decision, Statement, sha256_hex

SignOffPath = Literal["slack", "ui", "terminal"]
# What Slack reads as markup that reaches people: <!channel>, <!here>, <@U…>, <#C…>, <https://…|…>.
SLACK_CONTROL = re.compile(r"<\s*[!@#]|<\s*[A-Za-z][A-Za-z0-9+.-]*:")
NOTES_MAX = 2000


class VerifiedProof(BaseModel):
    lead: Approver
    path: SignOffPath
    identity: str
    statement: Statement


def notes_refusal(notes: str) -> str | None:
    """Why notes are refused: Slack control sequences would ping or link from the run's message."""
    if len(notes) > NOTES_MAX:
        return f"notes are at most {NOTES_MAX} characters"
    if SLACK_CONTROL.search(notes):
        return "notes contain a Slack control sequence (<!channel>, <@user>, <#channel> or a <link>); write plain text"
    if re.search(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]", notes):
        return "notes contain control characters"
    return None


def ssh_fingerprint(key: str) -> str:
    """OpenSSH's SHA256 fingerprint of ``keytype base64``."""
    blob = base64.b64decode(key.split()[1])
    return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")


@dataclass
class ProofChecker:
    """Everything one run verifies proofs against; lives in the paused run's process."""

    run_id: UUID
    policy: SignOffPolicy
    digest: str
    codes: OneTimeCodes = field(default_factory=OneTimeCodes)
    _used: set[str] = field(default_factory=set)

    def statement(self, role: Role, decision: Decision | str, notes: str, evidence_sha256: str) -> Statement:
        return Statement.of(self.run_id, role, decision, self.digest, evidence_sha256, notes)

    def verify(self, role: Role, decision: Decision, notes: str, proof: str, evidence_sha256: str) -> VerifiedProof:
        """The lead and path this proof shows, or ProofRefused."""
        proof = proof.strip()
        statement = self.statement(role, decision, notes, evidence_sha256)
        if not proof:
            raise ProofRefused(
                "no proof: enter the one-time code the run sent you by Slack, press the buttons in "
                "Slack, or sign with architect-signoff (a typed name is not proof)"
            )
        fingerprint = sha256_hex(proof)
        if fingerprint in self._used:
            raise ProofRefused("this proof was already used")
        if looks_like_receipt(proof):
            verified = self._receipt(role, proof, statement)
        elif looks_like_ssh_signature(proof):
            verified = self._ssh(role, proof, statement)
        elif looks_like_code(proof):
            try:
                lead = self.codes.redeem(role, proof)
            except CodeRefused as exc:
                raise ProofRefused(str(exc)) from None
            verified = VerifiedProof(
                lead=lead, path="ui", statement=statement, identity=f"one-time code sent to slack:{lead.slack_user_id}"
            )
        else:
            raise ProofRefused("the proof is neither a one-time code, an SSH signature nor a receiver's receipt")
        self._used.add(fingerprint)
        return verified

    def _receipt(self, role: Role, proof: str, statement: Statement) -> VerifiedProof:
        try:
            claims = verify_receipt(proof, self.policy.receiver_key)
        except ReceiptRefused as exc:
            raise ProofRefused(str(exc)) from None
        if claims.statement != statement:
            raise ProofRefused("the receipt is for another statement (run, role, decision, image, evidence or notes)")
        lead = self.policy.lead_by_slack(role, claims.slack_user_id)
        if lead is None:
            raise ProofRefused(f"Slack user {claims.slack_user_id} is not listed for {role.value}")
        return VerifiedProof(lead=lead, path="slack", statement=statement, identity=f"slack:{claims.slack_user_id}")

    def _ssh(self, role: Role, proof: str, statement: Statement) -> VerifiedProof:
        try:
            lead, principal = verify_statement(statement.text(), proof, self.policy.leads(role))
        except SshSignatureError as exc:
            raise ProofRefused(str(exc)) from None
        line = next(line for line in lead.ssh_allowed_signers if line.split()[0] == principal)
        key = " ".join(line.split()[1:3])
        return VerifiedProof(
            lead=lead, path="terminal", statement=statement, identity=f"ssh:{principal} {ssh_fingerprint(key)}"
        )
