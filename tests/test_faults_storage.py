"""The fault matrix (issue 8), the backup: the database dies while pg_dump runs, and the disk
fills up while the dump is written. Either way the run must end Failed at "backup" before
anything is migrated or deployed, leave no partial dump in storage, and leave the database
exactly as it was (every table's row count and checksum).

What a test breaks is undone by fixtures, however it ends: the primary by ``broken_service``
(started again, the sandbox checked whole), the full filesystem by ``small_backup_filesystem``
(unmounted, checked).
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import suppress
from datetime import UTC, datetime
from pathlib import Path

import psycopg
import pytest
from prefect.filesystems import LocalFileSystem

from sandbox import procs
from tasks.database.manifest import table_checksums
from tests.support.app_state import assert_only_good_replicas
from tests.support.blocks import unsaved
from tests.support.deploys import GOOD_WITH_MIGRATION, deploy
from tests.support.faults import Trigger
from tests.support.run_records import assert_slack_told, task_runs_of, task_started

pytestmark = pytest.mark.sandbox


class EventsTableLock:
    """An ACCESS EXCLUSIVE lock on ``events``, taken by ``take()`` (from a Trigger), released on exit."""

    def __init__(self, database):
        self.database = database
        self.holder: psycopg.Connection | None = None

    def take(self) -> None:
        self.holder = self.database.connect(autocommit=False)
        self.holder.execute("LOCK TABLE events IN ACCESS EXCLUSIVE MODE")

    def __enter__(self) -> EventsTableLock:
        return self

    def __exit__(self, *exc) -> None:
        if self.holder is not None:
            with suppress(psycopg.Error):  # the server closed it when it stopped
                self.holder.close()


@pytest.fixture
def small_backup_filesystem(sandbox_env, tmp_path) -> Iterator[Path]:
    """A tmpfs of twice the database's size (plus 16 MiB), unmounted after the test, checked."""
    with sandbox_env.database.connect() as conn:
        size = conn.execute("SELECT pg_database_size(current_database())").fetchone()[0]
    mount = tmp_path / "backups"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={2 * size + (16 << 20)}", "tmpfs", str(mount)], check=True)
    yield mount
    subprocess.run(["umount", str(mount)], check=True)
    assert procs.mounts_under(mount) == [], f"{mount} is still mounted"


def stored_files(database) -> set[str]:
    return {f.name for f in database.backups().list()}


def dump_waiting_on_a_lock(database) -> bool:
    """pg_dump has started and waits for the table lock the test holds."""
    with database.connect() as conn:
        return conn.execute(
            "SELECT count(*) > 0 FROM pg_stat_activity WHERE application_name = 'pg_dump' AND wait_event_type = 'Lock'"
        ).fetchone()[0]


def assert_nothing_past_the_backup(state) -> None:
    changed = [t.name for t in task_runs_of(state) if t.name.startswith(("run_migrations", "deploy_release"))]
    assert not changed, f"the run went past the failed backup: {changed}"


def test_the_database_dying_during_the_backup_fails_it_and_loses_nothing(
    sandbox_env, deployed_good_release, environment_copy, slack_messages, broken_service
):
    """pg_dump is made to wait on a table lock the test holds (taken once the build's read-only
    migration review has read every table, as the Go tests start), then the primary stops under it.
    The backup is retried once (the server may come back), then the run ends Failed with
    "backup failed: ... unreachable while taking the backup (nothing was changed)"; no dump or
    .partial is left in storage, and once the primary is back every table equals what it was."""
    database = sandbox_env.database
    # pg_dump gives up on a held lock after lock_timeout_ms; long enough here that the stop comes first.
    name = environment_copy(database=unsaved(database, lock_timeout_ms=120_000))
    files_before, checksums_before = stored_files(database), table_checksums(database)
    started = datetime.now(UTC)
    backing_up = task_started("backup_database", started)
    primary = broken_service("postgres-primary")
    with (
        EventsTableLock(database) as lock,
        Trigger(task_started("run_go_tests", started), lock.take) as locking,
        Trigger(lambda: backing_up() and dump_waiting_on_a_lock(database), primary.stop, poll_s=0.3) as fault,
    ):
        state = deploy(*GOOD_WITH_MIGRATION, environment=name)
    broken_service.restore_now()  # the checksums below read the primary
    print(f"final state: {state.type.value}: {state.message}")
    locking.assert_fired("the events table was never locked: the build stage was not seen")
    fault.assert_fired("pg_dump never waited on the lock, so the primary was not stopped under it")
    assert state.is_failed()
    assert state.message.startswith("backup failed:"), state.message
    assert "unreachable while taking the backup" in state.message, state.message
    assert state.message.endswith("(nothing was changed)"), state.message
    backups = [t for t in task_runs_of(state) if t.name.startswith("backup_database")]
    assert len(backups) == 1 and backups[0].run_count == 2, [(t.name, t.run_count) for t in backups]
    assert_nothing_past_the_backup(state)
    assert stored_files(database) == files_before, "a dump or a .partial was left in storage"
    assert table_checksums(database) == checksums_before
    assert_only_good_replicas(sandbox_env, deployed_good_release)
    assert_slack_told(slack_messages(), state, "backup failed", "unreachable")


def free_bytes(directory: Path) -> int:
    stat = os.statvfs(directory)
    return stat.f_bavail * stat.f_frsize


def fill_up(directory: Path) -> None:
    """Take every free byte of the filesystem under ``directory`` (another process's data)."""
    with open(directory / "someone-elses-file", "wb") as f:
        os.posix_fallocate(f.fileno(), 0, free_bytes(directory))


def test_a_full_disk_while_writing_the_backup_fails_it_and_leaves_no_partial_dump(
    sandbox_env, deployed_good_release, environment_copy, slack_messages, small_backup_filesystem
):
    """Backups go to a small filesystem of their own. It has room at preflight (the backup-space
    check passes), then another process fills it during the build: pg_dump hits "No space left
    on device", the run ends Failed at backup with that reason, and the storage holds only the
    other process's file: the .partial dump was removed."""
    database, mount = sandbox_env.database, small_backup_filesystem
    name = environment_copy(database=unsaved(database, backup_storage=LocalFileSystem(basepath=str(mount))))
    checksums_before = table_checksums(database)
    started = datetime.now(UTC)
    with Trigger(task_started("run_go_tests", started), lambda: fill_up(mount)) as fault:
        state = deploy(*GOOD_WITH_MIGRATION, environment=name)
    print(f"final state: {state.type.value}: {state.message}")
    fault.assert_fired("the disk was never filled: the build stage was not seen")
    assert free_bytes(mount) == 0, "the backup filesystem was not full"
    assert state.is_failed()
    assert state.message.startswith("backup failed: pg_dump exited 1"), state.message
    assert "No space left on device" in state.message, state.message
    assert state.message.endswith("(nothing was changed)"), state.message
    preflight = [t for t in task_runs_of(state) if t.name.startswith("check_database")]
    assert preflight and preflight[0].state.is_completed()
    assert_nothing_past_the_backup(state)
    assert sorted(p.name for p in mount.iterdir()) == ["someone-elses-file"]
    assert table_checksums(database) == checksums_before
    assert_only_good_replicas(sandbox_env, deployed_good_release)
    assert_slack_told(slack_messages(), state, "backup failed", "No space left on device")
