"""Retention of pre-deployment backups (issue 15): pruning never deletes the newest backup of a
database, nor one that an open journal or a live (running, paused, cancelling) run refers to.

The unit tests give ``prune_backups`` the referenced names; the sandbox tests let it read them
from the Prefect server, where a paused run and an open journal are real objects made here.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from prefect import flow
from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import ArtifactCreate
from prefect.filesystems import LocalFileSystem
from prefect.settings import PREFECT_API_URL, PREFECT_CLIENT_MAX_RETRIES, temporary_settings
from prefect.states import Completed, Paused, Running

from blocks.database import PostgresDatabase
from tasks.database import retention
from tasks.database.storage import prune_backups

HOUR = 3600


def database(storage: Path, host: str = "127.0.0.1", dbname: str = "architect_staging", **fields) -> PostgresDatabase:
    return PostgresDatabase(
        host=host,
        port=55432,
        dbname=dbname,
        password="not-used",
        backup_storage=LocalFileSystem(basepath=str(storage)),
        **fields,
    )


def fake_backup(directory: Path, hours_old: float, complete: bool = True) -> str:
    """A backup's files as backup_database names them, ``hours_old`` by the time in its name."""
    name = f"pre-deployment-{int(time.time() - hours_old * HOUR)}"
    directory.mkdir(parents=True, exist_ok=True)
    (directory / f"{name}.dump").write_bytes(b"dump")
    if complete:
        (directory / f"{name}.manifest.json").write_text("{}")
    return name


def backups_in(directory: Path) -> set[str]:
    return {p.name.split(".", 1)[0] for p in directory.iterdir() if p.is_file() and p.name.startswith("pre-")}


def namespace_dir(db: PostgresDatabase) -> Path:
    return Path(db.backup_storage.basepath) / db.backup_namespace()


@pytest.mark.unit
def test_the_newest_backup_of_each_database_survives(tmp_path):
    staging, other = database(tmp_path), database(tmp_path, dbname="architect_other")
    s_old, s_newest = fake_backup(namespace_dir(staging), 72), fake_backup(namespace_dir(staging), 48)
    o_old, o_newest = fake_backup(namespace_dir(other), 90), fake_backup(namespace_dir(other), 80)
    o_partial = fake_backup(namespace_dir(other), 70, complete=False)  # not a backup to keep

    assert prune_backups(staging, referenced=set()) == [s_old]
    assert backups_in(namespace_dir(staging)) == {s_newest}
    # Pruning one database never looks at another's: the other's old backups are all still there.
    assert backups_in(namespace_dir(other)) == {o_old, o_newest, o_partial}
    assert sorted(prune_backups(other, referenced=set())) == sorted([o_old, o_partial])
    assert backups_in(namespace_dir(other)) == {o_newest}


@pytest.mark.unit
def test_a_referenced_backup_survives_and_young_ones_stay(tmp_path):
    db = database(tmp_path)
    ns = namespace_dir(db)
    paused_runs = fake_backup(ns, 100)
    old, young = fake_backup(ns, 50), fake_backup(ns, 2)
    assert prune_backups(db, keep={young}, referenced={paused_runs}) == [old]
    assert backups_in(ns) == {paused_runs, young}


@pytest.mark.unit
def test_the_flat_layout_of_earlier_releases_is_pruned_by_the_same_rules(tmp_path):
    db = database(tmp_path)
    flat_old, flat_referenced, flat_newest = (
        fake_backup(tmp_path, 90),
        fake_backup(tmp_path, 80),
        fake_backup(tmp_path, 70),
    )
    (tmp_path / "notes.txt").write_text("not ours")
    assert prune_backups(db, referenced={flat_referenced}) == [flat_old]
    assert backups_in(tmp_path) == {flat_referenced, flat_newest}
    assert (tmp_path / "notes.txt").exists()


@pytest.mark.unit
def test_nothing_is_pruned_when_the_server_cannot_say_what_runs_refer_to(tmp_path):
    db = database(tmp_path)
    old, newest = fake_backup(namespace_dir(db), 90), fake_backup(namespace_dir(db), 80)
    # A port nothing listens on (the discard port): the API is down.
    with temporary_settings({PREFECT_API_URL: "http://127.0.0.1:9/api", PREFECT_CLIENT_MAX_RETRIES: 0}):
        assert prune_backups(db) == []
    assert backups_in(namespace_dir(db)) == {old, newest}


@pytest.mark.unit
def test_what_an_artifact_names():
    entry = '## Deploy journal: OPEN\n\n```json\n{"backup": "pre-deployment-5", "stage": "sign-off"}\n```\n'
    assert retention.backup_named_by("deploy-journal-x", None, entry) == "pre-deployment-5"
    closed = "## Deploy journal: none open\n\n```json\nnull\n```\n"
    assert retention.backup_named_by("deploy-journal-x", None, closed) is None
    described = retention.backup_description("pre-deployment-6")
    assert retention.backup_named_by("database-backup", described, "# Database backup") == "pre-deployment-6"
    assert retention.backup_named_by("rollback-report", described, "") is None


# -- against the sandbox's Prefect server ---------------------------------------------------------


@flow(name="retention-test-paused-deploy")
def _stand_in_deploy() -> None:
    """Never runs: a flow for the paused run made through the API."""


@pytest.fixture
def on_the_server(sandbox_up) -> Iterator[dict]:
    """Makes runs and artifacts on the sandbox's server; removes every one of them afterwards."""
    made: dict[str, list] = {"runs": [], "artifacts": []}
    with get_client(sync_client=True) as client:

        def paused_run_naming(backup: str) -> str:
            """A run paused for sign-off (24 h) whose backup report names ``backup``."""
            run = client.create_flow_run(
                _stand_in_deploy, name=f"retention-test-{uuid.uuid4().hex[:6]}", state=Running()
            )
            made["runs"].append(run.id)
            client.set_flow_run_state(run.id, Paused(timeout_seconds=24 * HOUR, pause_key="sign-off"), force=True)
            assert client.read_flow_run(run.id).state.is_paused()
            artifact(retention.BACKUP_ARTIFACT_KEY, retention.backup_description(backup), "# backup", run.id)
            return str(run.id)

        def open_journal_naming(backup: str) -> str:
            """The open journal of a run that died: no live run, only its latest journal entry."""
            key = f"{retention.JOURNAL_KEY_PREFIX}retention-test-{uuid.uuid4().hex[:8]}"
            artifact(key, "test journal", f'## OPEN\n\n```json\n{{"backup": "{backup}"}}\n```\n', None)
            return key

        def artifact(key: str, description: str, data: str, flow_run_id) -> None:
            made["artifacts"].append(
                client.create_artifact(
                    ArtifactCreate(
                        key=key, type="markdown", description=description, data=data, flow_run_id=flow_run_id
                    )
                ).id
            )

        yield {"paused_run_naming": paused_run_naming, "open_journal_naming": open_journal_naming}
        for artifact_id in made["artifacts"]:
            client.delete_artifact(artifact_id)
        for run_id in made["runs"]:
            client.set_flow_run_state(run_id, Completed(), force=True)
            client.delete_flow_run(run_id)


@pytest.mark.sandbox
def test_a_paused_runs_backup_survives_another_environments_deploy(tmp_path, on_the_server):
    """Environment A's run waits for sign-off; its backup is past the retention and not its
    database's newest. Environment B names the same database (``localhost`` where A has
    ``127.0.0.1``) and the same storage, and its deploy prunes: A's backup stays, the
    unreferenced old one goes. A's backup in the flat layout of earlier releases stays too, while
    a deploy of a third database prunes the flat layout."""
    env_a, env_b = database(tmp_path, "127.0.0.1"), database(tmp_path, "localhost")
    assert env_a.backup_namespace() == env_b.backup_namespace()
    ns = namespace_dir(env_a)
    awaiting_signoff = fake_backup(ns, 100)
    unreferenced, newest = fake_backup(ns, 60), fake_backup(ns, 30)
    flat_awaiting, flat_unreferenced, flat_newest = (fake_backup(tmp_path, h) for h in (150, 140, 130))
    on_the_server["paused_run_naming"](awaiting_signoff)
    on_the_server["paused_run_naming"](flat_awaiting)

    assert awaiting_signoff in retention.referenced_backups()
    assert prune_backups(env_b) == [unreferenced, flat_unreferenced]
    assert backups_in(ns) == {awaiting_signoff, newest}
    assert backups_in(tmp_path) == {flat_awaiting, flat_newest}
    third = database(tmp_path, dbname="architect_third")
    assert prune_backups(third) == []
    assert backups_in(tmp_path) == {flat_awaiting, flat_newest}


@pytest.mark.sandbox
def test_a_backup_named_by_an_open_journal_survives(tmp_path, on_the_server):
    """A run died mid-deploy (no live run left): the next run will restore what its open journal names."""
    db = database(tmp_path)
    ns = namespace_dir(db)
    named, unreferenced, newest = fake_backup(ns, 100), fake_backup(ns, 90), fake_backup(ns, 80)
    on_the_server["open_journal_naming"](named)
    assert prune_backups(db) == [unreferenced]
    assert backups_in(ns) == {named, newest}
