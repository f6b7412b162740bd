"""What a deploy protects, named once: the database (its host resolved, port, name) and the target.

The deploy lock, the deploy journal and the backups are all keyed by this identity, so two
environments that share a database, or two spellings of one host (``localhost``,
``127.0.0.1``), are one lock, one journal and one backup namespace.
"""

from __future__ import annotations

import hashlib

from pydantic import BaseModel

from tasks.core.net import resolve_host


def database_identity(host: str, port: int, dbname: str) -> str:
    """host:port/dbname with the host resolved, e.g. ``loopback:55432/architect_staging``."""
    return f"{resolve_host(host)}:{port}/{dbname}"


class DeployIdentity(BaseModel):
    """The database and the target a deploy changes."""

    database: str  # database_identity()
    target: str  # DeployTarget.identity()

    @property
    def key(self) -> str:
        """A short name safe for lock names and artifact keys (lower-case letters, digits, '-')."""
        return self._safe(f"{self.database}|{self.target}")

    @property
    def database_key(self) -> str:
        """The same for the database alone (the backups' namespace)."""
        return self._safe(self.database)

    def _safe(self, identity: str) -> str:
        readable = "".join(c if c.isalnum() else "-" for c in self.database.split("/")[-1].lower())[:40]
        return f"{readable}-{hashlib.sha256(identity.encode()).hexdigest()[:16]}"
