"""Who may sign a release off: the four roles and, for each, its leads by verifiable identity.

A lead is a display name plus the identities the sign-off can verify: a Slack user id (Slack's
buttons, and the one-time code the run sends there) and SSH public keys in ``allowed_signers``
form (``architect-signoff sign``). A name alone proves nothing; a lead without an identity can
never sign.
"""

from __future__ import annotations

import base64
import binascii
import re
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from blocks.validation import CONTROL_CHARACTERS


class Role(StrEnum):
    """The four leads who sign a release off (the guide's Sign-Off section)."""

    ENGINEERING = "engineering"
    DEVOPS = "devops"
    SECURITY = "security"
    PRODUCT = "product"


SLACK_USER_ID = re.compile(r"[UW][A-Z0-9]{2,20}")
# An allowed_signers principal, matched literally: no wildcards (*, ?), lists (,) or negation (!).
PRINCIPAL = re.compile(r"[A-Za-z0-9][A-Za-z0-9._@+-]{0,99}")
SSH_KEY_TYPES = frozenset(
    {
        "ssh-ed25519",
        "sk-ssh-ed25519@openssh.com",
        "ecdsa-sha2-nistp256",
        "ecdsa-sha2-nistp384",
        "ecdsa-sha2-nistp521",
        "sk-ecdsa-sha2-nistp256@openssh.com",
        "ssh-rsa",
    }
)
RECEIVER_KEY = re.compile(r"ed25519:[A-Za-z0-9+/]{43}=")


def parse_allowed_signer(line: str) -> tuple[str, str, str]:
    """(principal, key type, base64 key) of one ``allowed_signers`` line: ``principal keytype key [comment]``.

    Options (``namespaces=``, ``valid-after=``, ``cert-authority``) are refused: the sign-off
    decides namespaces and validity itself, and a certificate authority would let anyone it
    certifies sign.
    """
    if CONTROL_CHARACTERS.search(line) or len(line) > 16_384:
        raise ValueError("an allowed_signers line is one line of at most 16 KiB, without control characters")
    fields = line.split()
    if len(fields) < 3:
        raise ValueError(f"{line[:60]!r} is not 'principal keytype base64-key [comment]'")
    principal, key_type, key = fields[0], fields[1], fields[2]
    if not PRINCIPAL.fullmatch(principal):
        raise ValueError(f"principal {principal[:60]!r}: letters, digits and ._@+- only (no patterns, no lists)")
    if key_type not in SSH_KEY_TYPES:
        raise ValueError(f"{key_type[:60]!r} is not an SSH public key type (options are not allowed)")
    try:
        blob = base64.b64decode(key, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError(f"the {key_type} key of {principal} is not base64") from None
    if not blob.startswith(len(key_type).to_bytes(4, "big") + key_type.encode()):
        raise ValueError(f"the key of {principal} is not a {key_type} key")
    return principal, key_type, key


class Approver(BaseModel):
    """One lead: a display name and the identities the sign-off verifies."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=100, description="Display name, e.g. Sam Security")
    slack_user_id: str | None = Field(
        None, description="Slack user id (U…): Slack's Approve/Reject buttons and the one-time code's direct message"
    )
    ssh_allowed_signers: list[str] = Field(
        default_factory=list,
        description="SSH public keys for `architect-signoff sign`, as allowed_signers lines: principal keytype key",
    )

    @model_validator(mode="before")
    @classmethod
    def _from_a_name(cls, value: Any) -> Any:
        # Blocks saved before identities existed list bare names: they load, and can never sign.
        return {"name": value} if isinstance(value, str) else value

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not value.strip() or CONTROL_CHARACTERS.search(value):
            raise ValueError("a lead's name is not blank and has no control characters")
        return " ".join(value.split())

    @field_validator("slack_user_id")
    @classmethod
    def _slack_user_id(cls, value: str | None) -> str | None:
        if value is not None and not SLACK_USER_ID.fullmatch(value):
            raise ValueError(f"{value[:40]!r} is not a Slack user id (U0123ABCD)")
        return value

    @field_validator("ssh_allowed_signers")
    @classmethod
    def _signers(cls, value: list[str]) -> list[str]:
        lines = [" ".join(line.split()) for line in value]
        for line in lines:
            parse_allowed_signer(line)
        return lines

    @property
    def principals(self) -> list[str]:
        return [parse_allowed_signer(line)[0] for line in self.ssh_allowed_signers]

    @property
    def ssh_keys(self) -> set[str]:
        return {" ".join(parse_allowed_signer(line)[1:]) for line in self.ssh_allowed_signers}

    @property
    def verifiable(self) -> bool:
        return bool(self.slack_user_id or self.ssh_allowed_signers)

    def identities(self) -> set[str]:
        """Everything that makes this person this person: one person signs one role."""
        return {
            f"name:{self.name.casefold()}",
            *([f"slack:{self.slack_user_id}"] if self.slack_user_id else []),
            *(f"ssh:{key}" for key in self.ssh_keys),
            *(f"principal:{p}" for p in self.principals),
        }

    def same_person(self, other: Approver) -> bool:
        return bool(self.identities() & other.identities())


def check_approvers(approvers: dict[Role, list[Approver]]) -> dict[Role, list[Approver]]:
    """One person, one identity: a Slack id, key or principal never names two different people."""
    owner: dict[str, str] = {}
    for role, leads in approvers.items():
        names = [lead.name.casefold() for lead in leads]
        if len(set(names)) != len(names):
            raise ValueError(f"approvers for {role.value} list a name twice")
        for lead in leads:
            for identity in lead.identities() - {f"name:{lead.name.casefold()}"}:
                if owner.setdefault(identity, lead.name) != lead.name:
                    kind = identity.split(":", 1)[0]
                    raise ValueError(
                        f"approvers: {owner[identity]} and {lead.name} share a {kind} identity; "
                        "each identity belongs to one person"
                    )
    return approvers


def check_receiver_key(value: str | None) -> str | None:
    """The sign-off receiver's public key, ``ed25519:`` and 32 bytes in base64."""
    if value is not None and not RECEIVER_KEY.fullmatch(value):
        raise ValueError("the sign-off receiver's key is 'ed25519:' followed by 32 bytes in base64")
    return value
