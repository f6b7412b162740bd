"""One-time codes for the Prefect UI's Resume form: the run sends each lead one by Slack DM.

A code is bound to one role and one lead, counts once, and is kept only as an HMAC under a key
that lives in the run's memory: neither the code nor anything it could be guessed from is ever
written where the Prefect API could read it.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import threading
from dataclasses import dataclass, field

from blocks.approvers import Approver, Role
from tasks.core.errors import CodeRefused

ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"  # Crockford's base32: no I, L, O, U to misread
LENGTH = 10  # 50 bits; each guess costs a whole resume and pause
CODE_PREFIX = "code:"  # optional, so a code can never be mistaken for another kind of proof


def normalize(code: str) -> str:
    text = code.strip().upper().removeprefix(CODE_PREFIX.upper())
    text = text.replace("-", "").replace(" ", "").replace("O", "0").replace("I", "1").replace("L", "1")
    return text


def looks_like_code(text: str) -> bool:
    text = normalize(text)
    return len(text) == LENGTH and all(c in ALPHABET for c in text)


@dataclass
class _Issued:
    role: Role
    lead: Approver
    digest: bytes
    used: bool = False


@dataclass
class OneTimeCodes:
    """The codes of one run's sign-off."""

    _key: bytes = field(default_factory=lambda: secrets.token_bytes(32))
    _issued: list[_Issued] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def _mac(self, code: str) -> bytes:
        return hmac.new(self._key, normalize(code).encode(), hashlib.sha256).digest()

    def issue(self, role: Role, lead: Approver) -> str:
        """A fresh code for ``lead`` signing ``role``, as they read it (XXXXX-XXXXX)."""
        code = "".join(secrets.choice(ALPHABET) for _ in range(LENGTH))
        with self._lock:
            self._issued.append(_Issued(role=role, lead=lead, digest=self._mac(code)))
        return f"{code[:5]}-{code[5:]}"

    def redeem(self, role: Role, code: str) -> Approver:
        """The lead the code was issued to for ``role``; it is spent by this call."""
        if not looks_like_code(code):
            raise CodeRefused("the proof is not a one-time code")
        digest = self._mac(code)
        with self._lock:
            match = next((i for i in self._issued if hmac.compare_digest(i.digest, digest)), None)
            if match is None:
                raise CodeRefused("wrong one-time code")
            if match.role != role:
                raise CodeRefused(f"that one-time code was sent for {match.role.value}, not {role.value}")
            if match.used:
                raise CodeRefused("that one-time code was already used")
            match.used = True
            return match.lead
