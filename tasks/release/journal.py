"""The deploy journal: what a run has changed and not yet finished, kept where the next run finds it.

A run writes its journal (a Prefect artifact keyed per environment, so every entry stays in
the artifact's history) once it has taken the pre-deployment backup, names the stage it is in
as it changes the database and the app, and closes the journal when the release is live or
rolled back. Only new versions are ever written, so the journal keeps its whole history and
works unchanged on a server whose database is SQLite (which answered updates and deletes under
write load with 503s that cost seconds of client back-off). A journal still open when the next
run holds the environment's lock therefore belongs to a run that died mid-deploy (its worker
killed, its machine gone): the lock is a lease that only a dead holder loses. The
next run closes that run as Crashed and rolls its changes back before it changes anything itself.
"""

from __future__ import annotations

import shutil
import tempfile
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
from tasks.database.backup import BackupResult
from tasks.core.models import Revision, utcnow
from tasks.notify import SlackMessage


class DeployJournal(BaseModel):
    """Enough to undo a run that cannot undo itself."""

    environment: str
    flow_run_id: str
    flow_run_name: str
    version: str
    stage: str
    previous: Revision | None
    backup: str | None = None
    started_at: datetime
    slack_message: SlackMessage | None = None

    def at(self, stage: str) -> "DeployJournal":
        return self.model_copy(update={"stage": stage})

    def describe(self) -> str:
        return f"run {self.flow_run_name} ({self.flow_run_id}) of {self.version}, stopped during {self.stage}"


def artifact_key(environment: str) -> str:
    # Artifact keys allow lower-case letters, digits and '-' only.
    safe = "".join(c if c.isalnum() else "-" for c in environment.lower())
    return f"deploy-journal-{safe}"


def _record(environment: str, journal: DeployJournal | None) -> None:
    state = "none open" if journal is None else f"OPEN: {journal.describe()}"
    body = "null" if journal is None else journal.model_dump_json(indent=1)
    create_markdown_artifact(key=artifact_key(environment), description=f"Deploy journal of {environment}: {state}",
                             markdown=f"## Deploy journal of `{environment}`: {state}\n\n```json\n{body}\n```\n")


def write_journal(journal: DeployJournal) -> DeployJournal:
    """Record what this run is changing (a new entry each time); returns the journal for chaining."""
    get_run_logger().info("deploy journal: %s at %s", journal.version, journal.stage)
    _record(journal.environment, journal)
    return journal


def read_journal(environment: str) -> DeployJournal | None:
    """The environment's open journal, if its latest entry is one."""
    with get_client(sync_client=True) as client:
        latest = client.read_latest_artifacts(artifact_filter=ArtifactCollectionFilter(
            key=ArtifactCollectionFilterKey(any_=[artifact_key(environment)])), limit=1)
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
        message = (f"stopped mid-deploy during {journal.stage} (its process died); "
                   f"found and rolled back by run {found_by}")
        client.set_flow_run_state(journal.flow_run_id, Crashed(message=message), force=True)
        return f"{run.state.name} → Crashed"


def workspace_prefix(flow_run_id: str) -> str:
    """Build workspaces are named after their run, so a dead run's leftovers can be found."""
    return f"architect-build-{flow_run_id}-"


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


def new_journal(environment: str, flow_run, version: str, previous: Revision | None, backup: str,
                slack_message: SlackMessage | None) -> DeployJournal:
    """The journal of a run about to migrate: from here on it changes what the next run must undo."""
    return DeployJournal(environment=environment, flow_run_id=str(flow_run.id), flow_run_name=flow_run.name,
                         version=version, stage="migrate", previous=previous, backup=backup, started_at=utcnow(),
                         slack_message=slack_message)

