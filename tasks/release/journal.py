"""The deploy journal: what a run has changed and not yet finished, kept where the next run finds it.

A run writes its journal (a Prefect artifact keyed per environment, so every entry stays in
the artifact's history) once it has its checkpoint (the revision it replaces and the
pre-deployment backup): a new entry as each later stage starts, naming that stage and what the
run may have changed by then. It closes the journal when the release is live or rolled back.
Only new versions are ever written, so the journal keeps its whole history and works unchanged
on a server whose database is SQLite (which answered updates and deletes under write load with
503s that cost seconds of client back-off). A journal still open when the next
run holds the environment's lock therefore belongs to a run that died mid-deploy (its worker
killed, its machine gone): the lock is a lease that only a dead holder loses. The
next run closes that run as Crashed and rolls its changes back before it changes anything itself.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from prefect import task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactCollectionFilter, ArtifactCollectionFilterKey
from prefect.exceptions import ObjectNotFound
from prefect.logging import get_run_logger
from prefect.states import Crashed
from pydantic import BaseModel

from blocks.database import PostgresDatabase
from tasks.core.models import Revision, utcnow
from tasks.core.stages import Effect, Stage
from tasks.database.backup import BackupResult
from tasks.notify import SlackMessage


class Checkpoint(BaseModel):
    """Where a rollback of this run goes back to, taken before anything changes."""

    version: str
    previous: Revision | None
    backup: BackupResult


class DeployJournal(BaseModel):
    """Enough to undo a run that cannot undo itself."""

    environment: str
    flow_run_id: str
    flow_run_name: str
    version: str
    stage: Stage
    # An entry without it (written before it existed) may have changed both.
    changed: list[Effect] = [Effect.DATABASE, Effect.APP]
    previous: Revision | None
    backup: str | None = None
    started_at: datetime
    slack_message: SlackMessage | None = None

    def describe(self) -> str:
        return f"run {self.flow_run_name} ({self.flow_run_id}) of {self.version}, stopped during {self.stage}"


def artifact_key(environment: str) -> str:
    # Artifact keys allow lower-case letters, digits and '-' only.
    safe = "".join(c if c.isalnum() else "-" for c in environment.lower())
    return f"deploy-journal-{safe}"


def _record(environment: str, journal: DeployJournal | None) -> None:
    state = "none open" if journal is None else f"OPEN: {journal.describe()}"
    body = "null" if journal is None else journal.model_dump_json(indent=1)
    create_markdown_artifact(
        key=artifact_key(environment),
        description=f"Deploy journal of {environment}: {state}",
        markdown=f"## Deploy journal of `{environment}`: {state}\n\n```json\n{body}\n```\n",
    )


def write_journal(journal: DeployJournal) -> DeployJournal:
    """Record what this run is changing (a new entry each time); returns the journal for chaining."""
    get_run_logger().info("deploy journal: %s at %s", journal.version, journal.stage)
    _record(journal.environment, journal)
    return journal


def read_journal(environment: str) -> DeployJournal | None:
    """The environment's open journal, if its latest entry is one."""
    with get_client(sync_client=True) as client:
        latest = client.read_latest_artifacts(
            artifact_filter=ArtifactCollectionFilter(key=ArtifactCollectionFilterKey(any_=[artifact_key(environment)])),
            limit=1,
        )
    if not latest:
        return None
    body = str(latest[0].data).split("```json\n", 1)[-1].rsplit("\n```", 1)[0]
    return None if body.strip() == "null" else DeployJournal.model_validate_json(body)


def clear_journal(environment: str) -> None:
    get_run_logger().info("deploy journal of %s closed", environment)
    _record(environment, None)


@task(cache_policy=NO_CACHE)
def close_abandoned_run(journal: DeployJournal, found_by: str) -> str:
    """Mark the run that wrote ``journal`` Crashed, if the server still thinks it is going.

    Returns the state it was left in, as the report shows it.
    """
    logger = get_run_logger()
    with get_client(sync_client=True) as client:
        try:
            run = client.read_flow_run(journal.flow_run_id)
        except ObjectNotFound:
            return "not found on the server"
        if run.state is None or run.state.is_final():
            return f"already {run.state.name if run.state else 'without a state'}"
        logger.info("marking flow run %s (%s) Crashed", journal.flow_run_name, run.state.name)
        message = (
            f"stopped mid-deploy during {journal.stage} (its process died); found and rolled back by run {found_by}"
        )
        client.set_flow_run_state(journal.flow_run_id, Crashed(message=message), force=True)
        return f"{run.state.name} → Crashed"


def workspace_prefix(flow_run_id: str) -> str:
    """Build workspaces are named after their run, so a dead run's leftovers can be found."""
    return f"architect-build-{flow_run_id}-"


def new_workspace(flow_run_id: str) -> tempfile.TemporaryDirectory[str]:
    """A build workspace of this run (removed when the context ends, or by the run that recovers it)."""
    return tempfile.TemporaryDirectory(prefix=workspace_prefix(flow_run_id))


def remove_workspaces(flow_run_id: str) -> list[str]:
    """Delete the build workspaces a dead run left in the temp directory."""
    removed = []
    for path in Path(tempfile.gettempdir()).glob(workspace_prefix(flow_run_id) + "*"):
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path.name)
    return removed


def load_backup(database: PostgresDatabase, name: str | None) -> BackupResult | None:
    """The backup a journal names, from the manifest stored beside its dump (None if it is gone)."""
    if name is None:
        return None
    try:
        return BackupResult.model_validate_json(database.backups().read_bytes(f"{name}.manifest.json"))
    except (FileNotFoundError, ValueError):
        return None


@dataclass
class RunJournal:
    """The deploy journal of one environment as one run keeps it: what the runner writes and
    closes, and what recovery reads of a run that died."""

    environment: str
    flow_run_id: str
    flow_run_name: str
    database: PostgresDatabase  # where the backups a journal names are kept
    started_at: datetime | None = None

    def write(
        self, checkpoint: Checkpoint, stage: Stage, changed: list[Effect], slack_message: SlackMessage | None
    ) -> DeployJournal:
        self.started_at = self.started_at or utcnow()
        return write_journal(
            DeployJournal(
                environment=self.environment,
                flow_run_id=self.flow_run_id,
                flow_run_name=self.flow_run_name,
                version=checkpoint.version,
                stage=stage,
                changed=changed,
                previous=checkpoint.previous,
                backup=checkpoint.backup.name,
                started_at=self.started_at,
                slack_message=slack_message,
            )
        )

    def close(self) -> None:
        clear_journal(self.environment)

    def read(self) -> DeployJournal | None:
        return read_journal(self.environment)

    def close_abandoned_run(self, abandoned: DeployJournal) -> str:
        return close_abandoned_run(abandoned, self.flow_run_name)

    def remove_workspaces(self, abandoned: DeployJournal) -> list[str]:
        return remove_workspaces(abandoned.flow_run_id)

    def load_backup(self, abandoned: DeployJournal) -> BackupResult | None:
        return load_backup(self.database, abandoned.backup)
