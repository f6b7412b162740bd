"""The schema after ``migrate --direction up``: ``verify_schema`` and what it returns.

The app owns its schema and migrates it from the new image; this only reads
``schema_migrations`` and says whether every migration the image knows is applied.
"""

from __future__ import annotations

from datetime import datetime

from prefect import get_run_logger, task
from pydantic import BaseModel, Field

from blocks.database import PostgresDatabase
from tasks.core.artifacts import table_artifact
from tasks.core.models import Verdict
from tasks.database.manifest import schema_version


class AppliedMigration(BaseModel):
    version: int
    name: str = ""
    applied_at: datetime | None = None


class MigrationResult(BaseModel):
    expected_version: int
    current_version: int
    applied: list[AppliedMigration] = Field(default_factory=list)
    missing: list[int] = Field(default_factory=list, description="versions <= expected not applied")
    unknown: list[int] = Field(default_factory=list, description="applied versions the image does not know")
    verdict: Verdict
    detail: str = ""


@task
def verify_schema(database: PostgresDatabase, expected_version: int) -> MigrationResult:
    """After ``migrate --direction up``: the schema version is the one the image expects, nothing missing."""
    logger = get_run_logger()
    logger.info("reading schema_migrations on %s:%s/%s", database.host, database.port, database.dbname)
    with database.connect() as conn:
        current = schema_version(conn)
        applied = (
            []
            if current == 0 and conn.execute("SELECT to_regclass('schema_migrations') IS NULL").fetchone()[0]
            else [
                AppliedMigration(version=v, name=n, applied_at=a)
                for v, n, a in conn.execute("SELECT version, name, applied_at FROM schema_migrations ORDER BY version")
            ]
        )
    versions = {m.version for m in applied}
    missing = [v for v in range(1, expected_version + 1) if v not in versions]
    unknown = sorted(v for v in versions if v > expected_version)
    # A database ahead of the image (an older release redeployed after a newer one migrated)
    # passes: migrations are forward-only and additive, so every one the image knows is there.
    ok = not missing and current >= expected_version
    if ok and unknown:
        detail = (
            f"schema at version {current}, ahead of the image's {expected_version}: "
            f"{unknown} applied by a newer release; all of the image's migrations are there"
        )
    elif ok:
        detail = f"schema at version {current} as expected"
    else:
        detail = (
            f"schema at version {current}, image expects {expected_version}"
            + (f"; missing {missing}" if missing else "")
            + (f"; unknown to the image {unknown}" if unknown else "")
        )
    result = MigrationResult(
        expected_version=expected_version,
        current_version=current,
        applied=applied,
        missing=missing,
        unknown=unknown,
        verdict=Verdict.PASS if ok else Verdict.FAIL,
        detail=detail,
    )
    logger.info("verify_schema: %s", detail)
    table_artifact(
        key="schema-migrations",
        description=f"{detail} ({database.dbname})",
        table=[
            {
                "version": m.version,
                "name": m.name,
                "applied_at": m.applied_at.isoformat() if m.applied_at else "",
                "status": "unknown to image" if m.version in unknown else "applied",
            }
            for m in applied
        ]
        + [{"version": v, "name": "", "applied_at": "", "status": "MISSING"} for v in missing],
    )
    return result
