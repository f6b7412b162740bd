"""The deploy journal: what a run has changed and not yet finished, kept where the next run finds it.

A run writes its journal (a Prefect artifact keyed by what the deploy lock protects, the run's
``DeployIdentity``: its database, host resolved, and its target; two environments sharing both
share one journal) once it has its checkpoint (the revision it replaces and the pre-deployment
backup): a new entry as each later stage starts, naming that stage and what the run may have
changed by then; each entry still names its environment. It closes the journal when the release
is live or rolled back. Only new versions are ever written, so the journal keeps its whole history
and works unchanged on a server whose database is SQLite (which answered updates and deletes
under write load with 503s that cost seconds of client back-off). A journal still open when the
next run holds the lock therefore belongs to a run that died mid-deploy (its worker killed, its
machine gone): the lock is a lease that only a dead holder loses. The next run closes that run
as Crashed and rolls its changes back before it changes anything itself.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactCollectionFilter, ArtifactCollectionFilterKey
from prefect.exceptions import ObjectNotFound
from prefect.logging import get_run_logger
from prefect.states import Crashed
from pydantic import BaseModel

from blocks.database import PostgresDatabase
from tasks.core.artifacts import markdown_artifact
from tasks.core.errors import BackupMissing
from tasks.core.models import Revision, utcnow
from tasks.core.stages import Effect, Stage
from tasks.database.backup import BackupResult
from tasks.database.retention import JOURNAL_KEY_PREFIX, journal_body
from tasks.notify import SlackMessage
from tasks.release.identity import DeployIdentity, deploy_identity
from tasks.release.snapshot import ConfigSnapshot


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
    # What the journal is keyed by; None in entries written under the per-environment key.
    identity: DeployIdentity | None = None
    # The run's configuration at its start, for its recovery; None in entries written before it existed.
    config: ConfigSnapshot | None = None

    def describe(self) -> str:
        return f"run {self.flow_run_name} ({self.flow_run_id}) of {self.version}, stopped during {self.stage}"


def artifact_key(name: str) -> str:
    # Artifact keys allow lower-case letters, digits and '-' only.
    safe = "".join(c if c.isascii() and c.isalnum() else "-" for c in name.lower())
    return f"{JOURNAL_KEY_PREFIX}{safe}"


def journal_key(identity: DeployIdentity) -> str:
    """The journal's artifact key: one per database and target, whichever environment names them."""
    return artifact_key(identity.key)


def legacy_journal_key(environment: str) -> str:
    """The per-environment key of earlier releases (``deploy-journal-<environment>``)."""
    return artifact_key(environment)


def _record(key: str, environment: str, journal: DeployJournal | None) -> None:
    state = "none open" if journal is None else f"OPEN: {journal.describe()}"
    body = "null" if journal is None else journal.model_dump_json(indent=1)
    markdown_artifact(
        key=key,
        description=f"Deploy journal (last written by {environment}): {state}",
        markdown=f"## Deploy journal, last written by `{environment}`: {state}\n\n```json\n{body}\n```\n",
    )


def _latest(key: str) -> tuple[bool, DeployJournal | None]:
    """(whether the key has any entry, its latest entry if that is an open journal)."""
    with get_client(sync_client=True) as client:
        latest = client.read_latest_artifacts(
            artifact_filter=ArtifactCollectionFilter(key=ArtifactCollectionFilterKey(any_=[key])), limit=1
        )
    if not latest:
        return False, None
    body = journal_body(latest[0].data)
    return True, None if body is None else DeployJournal.model_validate_json(body)


def _identity_of(environment: str, identity: DeployIdentity | None) -> DeployIdentity:
    if identity is not None:
        return identity
    from blocks.environment import StagingEnvironment  # only where a caller names the environment alone

    return deploy_identity(StagingEnvironment.load(environment))


def write_journal(journal: DeployJournal) -> DeployJournal:
    """Record what this run is changing (a new entry each time); returns the journal for chaining."""
    identity = _identity_of(journal.environment, journal.identity)
    get_run_logger().info("deploy journal: %s at %s (%s)", journal.version, journal.stage, identity.describe())
    _record(journal_key(identity), journal.environment, journal.model_copy(update={"identity": identity}))
    return journal


def find_journal(environment: str, identity: DeployIdentity | None = None) -> tuple[DeployJournal | None, str]:
    """The open journal of what ``environment`` deploys to (its DeployIdentity), and its key.

    Compatibility for one release: a journal an earlier release left open under the
    per-environment key (``legacy_journal_key``) is found too, when the identity's is not open.
    """
    key = journal_key(_identity_of(environment, identity))
    if (found := _latest(key)[1]) is not None:
        return found, key
    legacy = legacy_journal_key(environment)
    return _latest(legacy)[1], legacy


def read_journal(environment: str, identity: DeployIdentity | None = None) -> DeployJournal | None:
    """The open journal of what ``environment`` deploys to, if there is one (see find_journal)."""
    return find_journal(environment, identity)[0]


def clear_journal(environment: str, identity: DeployIdentity | None = None, legacy: bool | None = None) -> None:
    """Close the journal. The per-environment one of an earlier release too: with ``legacy``
    True, or None and it is still open (compatibility for one release, see find_journal)."""
    get_run_logger().info("deploy journal of %s closed", environment)
    _record(journal_key(_identity_of(environment, identity)), environment, None)
    old = legacy_journal_key(environment)
    if legacy or (legacy is None and _latest(old)[1] is not None):
        _record(old, environment, None)


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
    """The backup a journal names, from the manifest stored beside its dump (its database's
    namespace, or the flat layout of earlier releases). None when the journal names none.

    Raises BackupMissing when the named backup's dump or manifest is gone: that is not the same
    as a run that took no backup, and the recovery must say which it was.
    """
    if name is None:
        return None
    store = database.backups()
    manifest = f"{name}.manifest.json"
    try:
        backup = BackupResult.model_validate_json(store.read_bytes(manifest))
    except FileNotFoundError:
        raise BackupMissing(
            f"the pre-deployment backup {name} is missing: no {manifest} in {store.describe()} "
            "(nor in the flat layout of earlier releases)"
        ) from None
    except ValueError as exc:
        raise BackupMissing(f"the pre-deployment backup {name} is unreadable: {manifest} is not a manifest") from exc
    if not store.exists(backup.dump_file):
        raise BackupMissing(
            f"the pre-deployment backup {name} is missing: its dump {backup.dump_file} is not in {store.describe()}"
        )
    return backup


@dataclass
class RunJournal:
    """The deploy journal of what one run deploys to, as that run keeps it: what the runner writes
    and closes, and what recovery reads of a run that died (of this environment or of another
    one naming the same database and target)."""

    environment: str
    flow_run_id: str
    flow_run_name: str
    database: PostgresDatabase  # where the backups a journal names are kept
    started_at: datetime | None = None
    config: ConfigSnapshot | None = None  # the run's frozen configuration, carried by each entry
    # The journal's key: give the run's own (deploy_identity(env) at its start); None takes it
    # from the environment block when first needed.
    identity: DeployIdentity | None = None
    _found_under: str | None = field(default=None, init=False, repr=False)

    def key_identity(self) -> DeployIdentity:
        self.identity = _identity_of(self.environment, self.identity)
        return self.identity

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
                config=self.config,
                identity=self.key_identity(),
            )
        )

    def close(self) -> None:
        # The per-environment key only when the journal just recovered was found there.
        legacy = self._found_under == legacy_journal_key(self.environment)
        clear_journal(self.environment, self.key_identity(), legacy=legacy)
        self._found_under = None

    def read(self) -> DeployJournal | None:
        found, key = find_journal(self.environment, self.key_identity())
        self._found_under = key if found is not None else None
        return found

    def close_abandoned_run(self, abandoned: DeployJournal) -> str:
        return close_abandoned_run(abandoned, self.flow_run_name)

    def remove_workspaces(self, abandoned: DeployJournal) -> list[str]:
        return remove_workspaces(abandoned.flow_run_id)

    def load_backup(self, abandoned: DeployJournal) -> BackupResult | None:
        return load_backup(self.database, abandoned.backup)
