"""What a deploy protects, named once: the database (its host resolved, port, name) and the target.

The deploy lock, the deploy journal and the backups are all keyed by this identity, so two
environments that share a database, or two spellings of one host (``localhost``,
``127.0.0.1``), are one lock, one journal and one backup namespace.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from pydantic import BaseModel, ConfigDict

from tasks.core.identity import database_identity, identity_key

if TYPE_CHECKING:
    from blocks.database import PostgresDatabase
    from blocks.target import DeployTarget

__all__ = ["DeployIdentity", "database_identity", "deploy_identity"]


class DeployIdentity(BaseModel):
    """The database and the target a deploy changes."""

    model_config = ConfigDict(frozen=True)

    database: str  # database_identity(), as PostgresDatabase.identity() gives it
    target: str  # DeployTarget.identity()

    @property
    def dbname(self) -> str:
        return self.database.rsplit("/", 1)[-1]

    @property
    def key(self) -> str:
        """A short name safe for lock names and artifact keys (lower-case letters, digits, '-')."""
        return identity_key(f"{self.database}|{self.target}", self.dbname)

    @property
    def database_key(self) -> str:
        """The same for the database alone: the backups' namespace (PostgresDatabase.backup_namespace())."""
        return identity_key(self.database, self.dbname)

    def describe(self) -> str:
        return f"database {self.database}, {self.target}"


class _Environment(Protocol):
    """What deploy_identity reads of an environment (the block, or a run's frozen snapshot of it)."""

    database: PostgresDatabase
    target: DeployTarget


def deploy_identity(env: _Environment) -> DeployIdentity:
    """The identity a run of ``env`` deploys under. Take it once, at the run's start, and keep it:
    the lock, the journal and recovery must all use the same one even if DNS changes mid-run."""
    return DeployIdentity(database=env.database.identity(), target=env.target.identity())
