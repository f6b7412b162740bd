"""Recovery of a run that died mid-deploy: its journal is still open when the next run holds the lock.

The next run closes the dead run as Crashed, removes its build workspaces, rolls back what its
journal says it may have changed, closes the journal and replaces the dead run's Slack message
(which still says "running"), all before it changes anything itself.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol

from tasks.core.errors import BackupMissing, GateFailed
from tasks.core.stages import Effect, Stage
from tasks.database.backup import BackupResult
from tasks.notify import SlackMessage
from tasks.release.journal import DeployJournal


class JournalOfOthers(Protocol):
    """What recovery needs of the journal (tasks.release.journal.RunJournal)."""

    flow_run_name: str

    def read(self) -> DeployJournal | None: ...
    def close(self) -> None: ...
    def close_abandoned_run(self, abandoned: DeployJournal) -> str: ...
    def remove_workspaces(self, abandoned: DeployJournal) -> list[str]: ...
    def load_backup(self, abandoned: DeployJournal) -> BackupResult | None: ...


class Messages(Protocol):
    def reply(self, text: str) -> None: ...
    def overwrite(self, message: SlackMessage, text: str) -> None: ...


def recover_abandoned_run(journal: JournalOfOthers, notifier: Messages, rollback: Callable[..., Any]) -> str:
    """Undo the run whose journal is open, if there is one (the caller holds the lock it held).

    ``rollback`` is the rollback subflow with its environment and restore policy bound
    (``flows.rollback.bound_rollback``); it is given the dead run's frozen configuration. Returns
    what the run's final message adds ("" when no journal was open); raises GateFailed when the
    rollback left the environment unhealthy.
    """
    abandoned = journal.read()
    if abandoned is None:
        return ""
    this_run = journal.flow_run_name
    notifier.reply(f"⚠️ found a half-finished deploy: {abandoned.describe()}; rolling it back first")
    closed = journal.close_abandoned_run(abandoned)
    journal.remove_workspaces(abandoned)
    missing = ""
    try:
        backup = journal.load_backup(abandoned) if Effect.DATABASE in abandoned.changed else None
    except BackupMissing as exc:  # the app is still rolled back; the database cannot be
        backup, missing = None, str(exc)
    # The dead run's own configuration, as it started; its build's migration review died with it,
    # so the restore policy falls back to comparing schema versions. An entry from before runs
    # froze their configuration carries none: then the rollback keeps the one bound to it.
    frozen = {"config": abandoned.config, "migrations": None} if abandoned.config is not None else {}
    report = rollback(
        abandoned.previous,
        abandoned.stage,
        abandoned.describe(),
        backup,
        undo_app=Effect.APP in abandoned.changed,
        **frozen,
    )
    if missing:
        report = report.model_copy(update={"database": f"NOT restored: {missing}"})
    journal.close()
    notifier.reply(f"↩️ recovered from the half-finished deploy ({closed}): {report.summary()}")
    if abandoned.slack_message:  # its run can no longer say how it ended
        notifier.overwrite(
            abandoned.slack_message,
            f"💀 {abandoned.describe()}: its process died. Rolled back by run {this_run}: {report.summary()}",
        )
    if missing:
        raise GateFailed(
            f"the half-finished deploy of {abandoned.version} was rolled back, but its database was NOT "
            f"restored: {missing}",
            stage=Stage.PREFLIGHT,
        )
    if not report.healthy:
        raise GateFailed(
            f"the half-finished deploy of {abandoned.version} was rolled back, but {report.summary()}",
            stage=Stage.PREFLIGHT,
        )
    return f", after rolling back the half-finished deploy of {abandoned.version} ({report.summary()})"
