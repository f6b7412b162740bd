"""What a lead signs: the evidence of a release and the canonical statement over it.

The evidence is the release (version, commit, image digest), a SHA-256 of every gate report
the leads are shown and of every comparison text (baselines, migrations) beside them; its hash
goes into the statement. The statement is newline-terminated text that the flow, the CLI and
the receiver build byte for byte alike, so a signature over it binds one run, one role, one
decision, one image and one body of evidence (and the notes).
"""

from __future__ import annotations

import hashlib
import json
from enum import StrEnum
from typing import Any
from uuid import UUID

from pydantic import BaseModel, Field

from blocks.approvers import Role

NAMESPACE = "architect-signoff"  # the ssh-keygen -Y namespace: a signature for anything else never fits
STATEMENT_HEADER = "architect-signoff statement v1"


class Decision(StrEnum):
    APPROVE = "approve"
    REJECT = "reject"


def canonical_json(value: Any) -> bytes:
    """One byte string per value: sorted keys, no spaces, UTF-8."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def sha256_hex(data: bytes | str) -> str:
    return hashlib.sha256(data.encode() if isinstance(data, str) else data).hexdigest()


class ReportHash(BaseModel):
    """One gate report as shown: its stage, verdict and the SHA-256 of its content."""

    stage: str
    verdict: str
    sha256: str


class Evidence(BaseModel):
    """What the leads look at when they sign."""

    version: str
    commit: str
    digest: str
    reports: list[ReportHash]
    context: dict[str, str] = Field(
        default_factory=dict, description="SHA-256 of each comparison text shown (baselines, migrations)"
    )

    @classmethod
    def hash_texts(cls, texts: dict[str, str]) -> dict[str, str]:
        return {name: sha256_hex(text) for name, text in texts.items()}

    def sha256(self) -> str:
        # Without context the hash is what it was before comparisons were shown.
        return sha256_hex(canonical_json(self.model_dump(mode="json", exclude=set() if self.context else {"context"})))


class Statement(BaseModel):
    """The canonical sign-off statement (what ``ssh-keygen -Y sign`` and the receiver sign)."""

    run_id: UUID
    role: Role
    decision: Decision
    digest: str
    evidence_sha256: str
    notes_sha256: str

    @classmethod
    def of(
        cls, run_id: UUID | str, role: Role, decision: Decision | str, digest: str, evidence_sha256: str, notes: str
    ) -> Statement:
        return cls(
            run_id=UUID(str(run_id)),
            role=Role(role),
            decision=Decision(decision),
            digest=digest,
            evidence_sha256=evidence_sha256,
            notes_sha256=sha256_hex(notes),
        )

    def text(self) -> str:
        return (
            f"{STATEMENT_HEADER}\n"
            f"run: {self.run_id}\n"
            f"role: {self.role.value}\n"
            f"decision: {self.decision.value}\n"
            f"digest: {self.digest}\n"
            f"evidence: sha256:{self.evidence_sha256}\n"
            f"notes: sha256:{self.notes_sha256}\n"
        )

    def sha256(self) -> str:
        return sha256_hex(self.text())
