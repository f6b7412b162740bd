"""Names of what a deploy protects, normalised once so every spelling of one thing gives one name.

``database_identity`` is a database with its host resolved; ``identity_key`` turns any identity
into a short name that lock names, artifact keys and storage paths all accept. The blocks
(which may import only this package) and tasks/release/identity.py share them.
"""

from __future__ import annotations

import hashlib

from tasks.core.net import resolve_host


def database_identity(host: str, port: int, dbname: str) -> str:
    """host:port/dbname with the host resolved, e.g. ``loopback:55432/architect_staging``."""
    return f"{resolve_host(host)}:{port}/{dbname}"


def identity_key(identity: str, readable: str) -> str:
    """``readable`` cut to 40 of [a-z0-9-] for people, then 16 hex digits of SHA-256(identity)
    so that two identities never share a key however alike their readable parts are."""
    label = "".join(c if c.isascii() and c.isalnum() else "-" for c in readable.lower())[:40]
    return f"{label}-{hashlib.sha256(identity.encode()).hexdigest()[:16]}"
