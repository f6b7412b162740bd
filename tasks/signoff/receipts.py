"""Slack sign-offs: the receiver's signed receipt, and the flow's check of it.

Only the sign-off receiver can tell that a button press came from Slack (it checks Slack's
request signature with the signing secret). It hands the run a receipt: the statement's fields
and the Slack user id, signed with an Ed25519 key only the receiver holds. The environment lists
the public half; the run freezes it at its start and accepts nothing the key did not sign.
"""

from __future__ import annotations

import base64
import binascii
import time

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat
from pydantic import BaseModel, ValidationError

from tasks.core.errors import ReceiptRefused
from tasks.signoff.statement import Statement, canonical_json

PREFIX = "architect-receipt.v1."
MAX_AGE_S = 15 * 60  # a receipt is used within seconds; an old one is someone's copy


class ReceiptClaims(BaseModel):
    statement: Statement
    slack_user_id: str
    issued_at: int


def looks_like_receipt(text: str) -> bool:
    return text.strip().startswith(PREFIX)


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def new_private_key() -> str:
    """A fresh receiver key, as the receiver's configuration holds it (base64 of the 32-byte seed)."""
    raw = Ed25519PrivateKey.generate().private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
    return base64.b64encode(raw).decode()


def load_private_key(text: str) -> Ed25519PrivateKey:
    return Ed25519PrivateKey.from_private_bytes(base64.b64decode(text, validate=True))


def public_key_text(key: Ed25519PrivateKey) -> str:
    """What the environment block lists: ``ed25519:`` and the raw public key in base64."""
    return "ed25519:" + base64.b64encode(key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)).decode()


def make_receipt(key: Ed25519PrivateKey, statement: Statement, slack_user_id: str, now: float | None = None) -> str:
    claims = ReceiptClaims(statement=statement, slack_user_id=slack_user_id, issued_at=int(now or time.time()))
    body = canonical_json(claims.model_dump(mode="json"))
    return f"{PREFIX}{_b64(body)}.{_b64(key.sign(body))}"


def verify_receipt(token: str, public_key: str | None, now: float | None = None) -> ReceiptClaims:
    """The claims of a receipt the receiver's key signed, not older than MAX_AGE_S."""
    if not public_key:
        raise ReceiptRefused("this environment lists no sign-off receiver key, so no Slack receipt can count")
    try:
        body_b64, sig_b64 = token.strip().removeprefix(PREFIX).split(".")
        body, signature = _unb64(body_b64), _unb64(sig_b64)
        key = Ed25519PublicKey.from_public_bytes(base64.b64decode(public_key.removeprefix("ed25519:")))
    except (ValueError, binascii.Error):
        raise ReceiptRefused("the receipt is malformed") from None
    try:
        key.verify(signature, body)
    except InvalidSignature:
        raise ReceiptRefused("the receipt is not signed by this environment's sign-off receiver") from None
    try:
        claims = ReceiptClaims.model_validate_json(body)
    except ValidationError:
        raise ReceiptRefused("the receipt's content is malformed") from None
    age = (now or time.time()) - claims.issued_at
    if not -60 <= age <= MAX_AGE_S:
        raise ReceiptRefused(f"the receipt was issued {age:.0f} s ago; only a fresh one counts")
    return claims
