"""The stage runner and the recovery of a dead run, driven with fakes: no sandbox, no Prefect server.

The table here has the flow's stages and effects; its steps return canned reports. What is
checked is what the runner decides: which stage a failure belongs to, the run's message, what
the rollback is asked to undo, what Slack and the journal hear.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from prefect.exceptions import TerminationSignal

from tasks.core.errors import GateFailed, LockLost, PermanentError, TemporaryError
from tasks.core.models import CheckResult, GateReport, Revision, Verdict
from tasks.core.stages import Effect, Stage
from tasks.database.migrations import MigrationResult
from tasks.gates.load.gate import LoadReport
from tasks.release.journal import DeployJournal
from tasks.release.lock import DeployLocked
from tasks.release.recovery import recover_abandoned_run
from tasks.runner import Ended, GateVerdict, StageRunner, Step, verdict_failure

pytestmark = pytest.mark.unit

REPO_ROOT = Path(__file__).resolve().parent.parent
PREVIOUS = Revision(number=7, image="registry/architect-api:3.1.0@sha256:aa", version="3.1.0")
BACKUP = "pre-deployment-1700000000"  # stands in for the BackupResult the rollback gets


# -- fakes ---------------------------------------------------------------------------------


class FakeNotifier:
    def __init__(self) -> None:
        self.marks: list[tuple[str, str, str | None]] = []
        self.replies: list[str] = []
        self.outcomes: list[str] = []
        self.overwritten: list[tuple[Any, str]] = []
        self.closed = False
        self.message = SimpleNamespace(channel="C1", ts="1.0")

    def stage(self, name: str, status: str, detail: str | None = None) -> None:
        self.marks.append((str(name), status, detail))

    def status_of(self, name: str) -> str:
        return [status for stage, status, _ in self.marks if stage == name][-1]

    def reply(self, text: str) -> None:
        self.replies.append(text)

    def finish(self, outcome: str) -> None:
        self.outcomes.append(outcome)

    def overwrite(self, message: Any, text: str) -> None:
        self.overwritten.append((message, text))

    def close(self) -> None:
        self.closed = True


class FakeJournal:
    def __init__(self, abandoned: DeployJournal | None = None) -> None:
        self.entries: list[tuple[str, list[str]]] = []
        self.closes = 0
        self.abandoned = abandoned
        self.flow_run_name = "brave-otter"
        self.removed: list[str] = []
        self.fail_write_at: Stage | None = None

    def write(self, checkpoint: Any, stage: Stage, changed: list[Effect], slack_message: Any) -> None:
        if stage == self.fail_write_at:
            raise TemporaryError("Prefect API answered 503 while writing the deploy journal")
        assert checkpoint.previous == PREVIOUS and slack_message is not None
        self.entries.append((str(stage), [str(e) for e in changed]))

    def close(self) -> None:
        self.closes += 1

    def read(self) -> DeployJournal | None:
        return self.abandoned

    def close_abandoned_run(self, abandoned: DeployJournal) -> str:
        return "Running → Crashed"

    def remove_workspaces(self, abandoned: DeployJournal) -> list[str]:
        self.removed.append(abandoned.flow_run_id)
        return [f"architect-build-{abandoned.flow_run_id}-x"]

    def load_backup(self, abandoned: DeployJournal) -> Any:
        return f"loaded {abandoned.backup}"


class FakeRollback:
    def __init__(self, healthy: bool = True, error: Exception | None = None) -> None:
        self.calls: list[dict[str, Any]] = []
        self.healthy, self.error = healthy, error

    def __call__(self, previous, failed_stage, reason, backup, *, undo_app: bool):
        self.calls.append(
            {"previous": previous, "stage": failed_stage, "reason": reason, "backup": backup, "undo_app": undo_app}
        )
        if self.error is not None:
            raise self.error
        app = (
            f"rolled back to revision {previous.number} ({previous.version})" if undo_app else "the app was not changed"
        )
        database = f"restored from {backup}" if backup else "not touched"
        health = "healthy" if self.healthy else "NOT healthy"
        return SimpleNamespace(summary=lambda: f"{app}, {health}; database {database}", healthy=self.healthy)


class Clock:
    """Each reading is one second after the last."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 1.0
        return self.now


def passing(stage: Stage, n: int = 2) -> GateReport:
    return GateReport(
        stage=stage, checks=[CheckResult(name=f"{stage} check {i}", verdict=Verdict.PASS) for i in range(n)]
    )


def failing(stage: Stage, name: str, detail: str, verdict: Verdict = Verdict.FAIL) -> GateReport:
    return GateReport(
        stage=stage,
        checks=[CheckResult(name="fine", verdict=Verdict.PASS), CheckResult(name=name, verdict=verdict, detail=detail)],
    )


def load_report(verdict: Verdict = Verdict.PASS, reason: str = "every target met") -> LoadReport:
    return LoadReport(verdict=verdict, reason=reason)


def schema(verdict: Verdict = Verdict.PASS, detail: str = "schema at version 3 as expected") -> MigrationResult:
    return MigrationResult(
        expected_version=3, current_version=3 if verdict == Verdict.PASS else 2, verdict=verdict, detail=detail
    )


def raising(exc: BaseException) -> Callable[[], Any]:
    def step() -> Any:
        raise exc

    return step


def table(ran: list[str] | None = None, needs_signoff: bool = True, **steps: Callable[[], Any]) -> list[Step]:
    """The flow's stages and effects with canned steps; ``steps`` replaces some by stage name."""
    ran = [] if ran is None else ran

    def canned(stage: Stage, result: Any) -> Callable[[], Any]:
        def step() -> Any:
            ran.append(str(stage))
            return steps[stage.name.lower()]() if stage.name.lower() in steps else result

        return step

    checkpoint = SimpleNamespace(version="3.2.0", previous=PREVIOUS, backup=BACKUP)
    return [
        Step(Stage.PREFLIGHT, Effect.NOTHING, canned(Stage.PREFLIGHT, passing(Stage.PREFLIGHT))),
        Step(Stage.BUILD, Effect.NOTHING, canned(Stage.BUILD, SimpleNamespace(version="3.2.0"))),
        Step(Stage.BACKUP, Effect.NOTHING, canned(Stage.BACKUP, checkpoint), checkpoint=True),
        Step(Stage.MIGRATE, Effect.DATABASE, canned(Stage.MIGRATE, ("migration run", schema()))),
        Step(Stage.DEPLOY, Effect.APP, canned(Stage.DEPLOY, "rollout")),
        Step(Stage.HEALTH, Effect.NOTHING, canned(Stage.HEALTH, passing(Stage.HEALTH))),
        Step(Stage.SMOKE, Effect.NOTHING, canned(Stage.SMOKE, passing(Stage.SMOKE))),
        Step(Stage.LOAD, Effect.NOTHING, canned(Stage.LOAD, load_report()), judged_later=True),
        Step(Stage.METRICS, Effect.NOTHING, canned(Stage.METRICS, (passing(Stage.METRICS), passing(Stage.METRICS)))),
        Step(
            Stage.SIGN_OFF,
            Effect.NOTHING,
            canned(Stage.SIGN_OFF, "signed"),
            skipped="" if needs_signoff else "sandbox run without sign-off",
        ),
    ]


def runner(journal: FakeJournal | None = None, rollback: FakeRollback | None = None):
    notifier, journal, rollback = FakeNotifier(), journal or FakeJournal(), rollback or FakeRollback()
    return StageRunner(notifier, journal, rollback, clock=Clock(), skip_on=(DeployLocked,)), notifier, journal, rollback


# -- the verdict: only PASS passes, every failing gate named ---------------------------------


def test_passing_verdicts_are_no_failure():
    assert (
        verdict_failure(GateVerdict.of(passing(Stage.HEALTH), Stage.HEALTH), GateVerdict.of(load_report(), Stage.LOAD))
        is None
    )
    assert verdict_failure() is None


def test_a_failing_gate_is_named_without_repeating_its_stage():
    logout = failing(Stage.SMOKE, "auth: logout clears the session", "200 after logout")
    failure = verdict_failure(GateVerdict.of(logout, Stage.SMOKE))
    assert isinstance(failure, GateFailed) and failure.stage == Stage.SMOKE
    assert str(failure) == "auth: logout clears the session: 200 after logout"


def test_inconclusive_is_not_a_pass():
    report = failing(Stage.METRICS, "5xx error rate", "Prometheus unreachable", Verdict.INCONCLUSIVE)
    failure = verdict_failure(GateVerdict.of(report, Stage.METRICS))
    assert failure is not None and failure.stage == Stage.METRICS
    assert str(failure) == "5xx error rate: Prometheus unreachable"
    # A gate that checked nothing has not passed either.
    assert verdict_failure(GateVerdict.of(GateReport(stage=Stage.HEALTH), Stage.HEALTH)) is not None


def test_every_failing_gate_is_named_and_the_first_owns_the_failure():
    failure = verdict_failure(
        GateVerdict.of(load_report(Verdict.FAIL, "p95 812 ms > 500 ms"), Stage.LOAD),
        GateVerdict.of(passing(Stage.METRICS), Stage.METRICS),
        GateVerdict.of(failing(Stage.METRICS, "5xx error rate", "4.1% > 1%"), Stage.METRICS),
        GateVerdict.of(schema(Verdict.FAIL, "schema at version 2, image expects 3"), Stage.MIGRATE),
    )
    assert failure is not None and failure.stage == Stage.LOAD
    assert str(failure) == (
        "p95 812 ms > 500 ms; metrics: 5xx error rate: 4.1% > 1%; migrate: schema at version 2, image expects 3"
    )


# -- a run through the table ----------------------------------------------------------------


def test_a_good_run_journals_every_stage_from_migrate_on_and_success_closes_the_journal():
    ran: list[str] = []
    run, notifier, journal, rollback = runner()
    assert run.run(table(ran)) is None
    assert ran == [str(s) for s in Stage]
    assert journal.entries == [
        ("migrate", ["database"]),
        ("deploy", ["database", "app"]),
        ("health", ["database", "app"]),
        ("smoke", ["database", "app"]),
        ("load", ["database", "app"]),
        ("metrics", ["database", "app"]),
        ("sign-off", ["database", "app"]),
    ]
    assert journal.closes == 0, "the journal stays open until the run says it is done"
    run.succeed("✅ 3.2.0 is live on sandbox")
    assert journal.closes == 1 and notifier.outcomes == ["✅ 3.2.0 is live on sandbox"]
    assert rollback.calls == []
    assert all(notifier.status_of(str(s)) == "passed" for s in Stage)
    assert list(run.timings) == list(Stage) and all(t == 1.0 for t in run.timings.values())
    assert run.results.build.version == "3.2.0" and run.results.sign_off == "signed"


def test_a_skipped_stage_is_shown_skipped_and_not_run():
    ran: list[str] = []
    run, notifier, journal, _ = runner()
    assert run.run(table(ran, needs_signoff=False)) is None
    assert "sign-off" not in ran and Stage.SIGN_OFF not in run.timings
    assert notifier.marks[-1] == ("sign-off", "skipped", "sandbox run without sign-off")
    assert journal.entries[-1][0] == "metrics"


def test_a_dry_run_table_changes_nothing_and_closes_no_journal():
    run, notifier, journal, _ = runner()
    assert run.run(table()[:2]) is None
    run.succeed("🔍 dry run of 3.2.0: nothing was changed")
    assert journal.entries == [] and journal.closes == 0


UNDONE = {  # stage -> (undo the app, restore from the backup); None: nothing changed, no rollback
    Stage.PREFLIGHT: None,
    Stage.BUILD: None,
    Stage.BACKUP: None,
    Stage.MIGRATE: (False, BACKUP),
    **{s: (True, BACKUP) for s in (Stage.DEPLOY, Stage.HEALTH, Stage.SMOKE, Stage.LOAD, Stage.METRICS, Stage.SIGN_OFF)},
}


@pytest.mark.parametrize("stage", list(Stage))
def test_a_failure_in_each_stage_undoes_what_the_started_stages_changed(stage):
    ran: list[str] = []
    run, notifier, journal, rollback = runner()
    error = PermanentError(f"{stage} broke", stage=Stage.PREFLIGHT)  # the stage it claims is not the one running
    ended = run.run(table(ran, **{stage.name.lower(): raising(error)}))

    assert ended is not None and not ended.skipped
    assert ran == [str(s) for s in Stage][: list(Stage).index(stage) + 1], "no stage runs after a failure"
    assert notifier.status_of(str(stage)) == "failed"
    if UNDONE[stage] is None:
        assert ended.message == f"{stage} failed: {stage} broke (nothing was changed)"
        assert rollback.calls == [] and journal.closes == 0
        assert notifier.outcomes == [f"❌ {stage} failed; nothing was changed"]
        return
    undo_app, backup = UNDONE[stage]
    assert rollback.calls == [
        {"previous": PREVIOUS, "stage": stage, "reason": f"{stage} broke", "backup": backup, "undo_app": undo_app}
    ]
    summary = FakeRollback()(PREVIOUS, stage, "", backup, undo_app=undo_app).summary()  # what the fake reports
    assert ended.message == f"{stage} failed: {stage} broke; {summary}"
    assert journal.closes == 1, "rolled back: the journal is closed"
    assert notifier.replies == [f"❌ {stage} failed: {stage} broke\nRolling back…", f"↩️ {summary}"]
    assert notifier.outcomes == [f"❌ {stage} failed; {summary}"]


def test_an_error_that_is_not_ours_says_its_type():
    run, _, _, _ = runner()
    ended = run.run(table(build=raising(KeyError("digest"))))
    assert ended is not None and ended.message == "build failed: KeyError: 'digest' (nothing was changed)"


def test_a_failing_gate_fails_its_own_stage():
    run, _, _, rollback = runner()
    smoke = failing(Stage.SMOKE, "auth: logout clears the session", "token still accepted")
    ended = run.run(table(smoke=lambda: smoke))
    assert ended is not None
    assert ended.message.startswith("smoke failed: auth: logout clears the session: token still accepted; rolled back")
    assert rollback.calls[0]["stage"] == Stage.SMOKE and rollback.calls[0]["undo_app"] is True


def test_a_failed_migration_check_undoes_the_database_only():
    run, _, _, rollback = runner()
    ended = run.run(table(migrate=lambda: ("migration run", schema(Verdict.FAIL, "schema at version 2, expects 3"))))
    assert ended is not None
    assert ended.message.startswith("migrate failed: schema at version 2, expects 3; the app was not changed")
    assert rollback.calls[0]["undo_app"] is False and rollback.calls[0]["backup"] == BACKUP


def test_an_inconclusive_gate_fails_the_run_and_rolls_back():
    run, _, _, rollback = runner()
    unreachable = failing(Stage.METRICS, "5xx error rate", "inconclusive: Prometheus unreachable", Verdict.INCONCLUSIVE)
    ended = run.run(table(metrics=lambda: (unreachable, passing(Stage.METRICS))))
    assert ended is not None
    assert ended.message.startswith("metrics failed: 5xx error rate: inconclusive: Prometheus unreachable; rolled back")
    assert [c["stage"] for c in rollback.calls] == [Stage.METRICS]


def test_a_failed_load_test_is_judged_with_the_metrics_and_both_are_named():
    ran: list[str] = []
    run, notifier, _, rollback = runner()
    slow = load_report(Verdict.FAIL, "p95 812 ms > 500 ms (medium)")
    erroring = failing(Stage.METRICS, "5xx error rate", "4.1% > 1%")
    ended = run.run(table(ran, load=lambda: slow, metrics=lambda: (erroring, passing(Stage.METRICS))))
    assert ended is not None
    assert "metrics" in ran and "sign-off" not in ran, "the metrics are read after a failed load test"
    assert ended.message.startswith("load failed: p95 812 ms > 500 ms (medium); metrics: 5xx error rate: 4.1% > 1%; ")
    assert rollback.calls[0]["stage"] == Stage.LOAD and rollback.calls[0]["undo_app"] is True
    assert notifier.status_of("load") == "failed" and notifier.status_of("metrics") == "failed"


def test_a_held_verdict_at_the_end_of_the_table_is_still_judged():
    run, _, _, _ = runner()
    steps = table(load=lambda: load_report(Verdict.INCONCLUSIVE, "generator saturated"))[:8]  # ends with load
    ended = run.run(steps)
    assert ended is not None and ended.message.startswith("load failed: generator saturated; rolled back")


def test_the_current_revision_is_recorded_inside_backup_and_its_failure_is_backups():
    ran: list[str] = []
    run, notifier, journal, rollback = runner()
    error = TemporaryError("Docker engine at unix:///run/docker.sock did not answer while listing replicas")
    ended = run.run(table(ran, backup=raising(error)))  # the step's first call is record_current_revision
    assert ended is not None
    assert ended.message == f"backup failed: {error} (nothing was changed)"
    assert notifier.status_of("build") == "passed" and notifier.status_of("backup") == "failed"
    assert rollback.calls == [] and journal.entries == []


def test_a_journal_write_that_fails_is_the_failure_of_the_stage_it_opens():
    ran: list[str] = []
    journal = FakeJournal()
    journal.fail_write_at = Stage.MIGRATE
    run, notifier, _, rollback = runner(journal=journal)
    ended = run.run(table(ran))
    assert ended is not None and ended.message.startswith("migrate failed: Prefect API answered 503")
    assert "migrate" not in ran, "the migration never runs unjournalled"
    assert notifier.status_of("backup") == "passed"
    assert rollback.calls[0]["undo_app"] is False and rollback.calls[0]["backup"] == BACKUP


def test_no_stage_that_changes_something_starts_without_a_checkpoint():
    ran: list[str] = []
    run, _, _, rollback = runner()
    steps = [step for step in table(ran) if step.stage != Stage.BACKUP]
    ended = run.run(steps)
    assert ended is not None and ended.message.startswith("migrate failed: migrate changes the database, but no step")
    assert ended.message.endswith("(nothing was changed)")
    assert "migrate" not in ran and rollback.calls == []


def test_a_rollback_that_fails_is_reported_and_leaves_the_journal_open():
    rollback = FakeRollback(error=TemporaryError("Docker engine did not answer while rolling back"))
    run, notifier, journal, _ = runner(rollback=rollback)
    ended = run.run(table(health=lambda: failing(Stage.HEALTH, "replica 127.0.0.1:18082", "503 three times")))
    assert ended is not None
    assert ended.message == (
        "health failed: replica 127.0.0.1:18082: 503 three times; "
        "ROLLBACK FAILED: Docker engine did not answer while rolling back"
    )
    assert journal.closes == 0, "the next run finds the journal open and tries again"
    assert notifier.outcomes == ["🚨 health failed and the rollback failed too"]
    assert notifier.replies[-1] == "🚨 rollback failed: Docker engine did not answer while rolling back"


def test_another_deploy_holding_the_lock_skips_the_run():
    ran: list[str] = []
    run, notifier, journal, rollback = runner()
    locked = DeployLocked("another deploy to sandbox is running (holds staging-deploy-sandbox)")
    ended = run.run(table(ran, preflight=raising(locked)))
    assert ended is not None and ended.skipped
    assert ended.message == f"{locked}; this run was cancelled"
    assert ran == ["preflight"] and rollback.calls == [] and journal.entries == []
    assert notifier.outcomes == ["➖ skipped: another deploy to sandbox is running (holds staging-deploy-sandbox)"]


# -- a cancel: undone like a failure, the run ends cancelled saying what was undone -----------

CANCELS = [TerminationSignal(15), asyncio.CancelledError(), KeyboardInterrupt()]
CANCEL_IDS = ["TerminationSignal", "CancelledError", "KeyboardInterrupt"]


class Interrupting(FakeRollback):
    """A rollback cut short by a second cancel (the worker's kill, a second click)."""

    def __call__(self, previous, failed_stage, reason, backup, *, undo_app: bool):
        super().__call__(previous, failed_stage, reason, backup, undo_app=undo_app)
        raise TerminationSignal(15)


@pytest.mark.parametrize("signal", CANCELS, ids=CANCEL_IDS)
@pytest.mark.parametrize(
    ("stage", "undo_app", "backup"),
    # Effect levels: nothing changed yet, the database only, the database and the app.
    [
        (Stage.MIGRATE, False, BACKUP),
        (Stage.DEPLOY, True, BACKUP),
        (Stage.LOAD, True, BACKUP),
        (Stage.SIGN_OFF, True, BACKUP),
    ],
)
def test_a_cancel_undoes_what_the_started_stages_changed_and_ends_the_run_cancelled(signal, stage, undo_app, backup):
    ran: list[str] = []
    resumed: list[str] = []
    run, notifier, journal, rollback = runner()
    run.on_cancel = lambda: resumed.append("running again")
    ended = run.run(table(ran, **{stage.name.lower(): raising(signal)}))
    reason = f"the run was cancelled ({type(signal).__name__})"
    assert rollback.calls == [
        {"previous": PREVIOUS, "stage": stage, "reason": reason, "backup": backup, "undo_app": undo_app}
    ]
    app = "rolled back to revision 7 (3.1.0)" if undo_app else "the app was not changed"
    said = f"cancelled during {stage}; {app}, healthy; database restored from {BACKUP}"
    assert ended == Ended(said, cancelled=True)
    assert resumed == ["running again"], "the run is put back to Running before its rollback's tasks start"
    assert journal.closes == 1
    assert notifier.status_of(str(stage)) == "cancelled"
    assert notifier.replies[0] == f"🛑 {stage}: {reason}\nRolling back…"
    assert notifier.outcomes[-1] == f"🛑 {said}"
    assert ran[-1] == str(stage)


@pytest.mark.parametrize("stage", [Stage.PREFLIGHT, Stage.BUILD, Stage.BACKUP])
def test_a_cancel_before_anything_changed_undoes_nothing(stage):
    run, notifier, journal, rollback = runner()
    resumed: list[str] = []
    run.on_cancel = lambda: resumed.append("running again")
    ended = run.run(table(**{stage.name.lower(): raising(TerminationSignal(15))}))
    assert ended == Ended(f"cancelled during {stage}; nothing was changed", cancelled=True)
    assert rollback.calls == [] and resumed == [] and journal.entries == []
    assert notifier.outcomes == [f"🛑 cancelled during {stage}; nothing was changed"]


def test_a_cancel_whose_rollback_fails_ends_cancelled_and_keeps_the_journal():
    rollback = FakeRollback(error=PermanentError("no earlier revision"))
    run, notifier, journal, _ = runner(rollback=rollback)
    ended = run.run(table(deploy=raising(KeyboardInterrupt())))
    assert ended is not None and ended.cancelled
    assert ended.message.startswith("cancelled during deploy; ROLLBACK FAILED: no earlier revision; ")
    assert "the deploy journal stays open, so the next run rolls the rest back" in ended.message
    assert journal.closes == 0
    assert notifier.outcomes == ["🚨 cancelled during deploy and the rollback failed"]


def test_a_cancel_whose_rollback_is_cut_short_ends_cancelled_and_keeps_the_journal():
    rollback = Interrupting()
    run, notifier, journal, _ = runner(rollback=rollback)
    ended = run.run(table(load=raising(TerminationSignal(15))))
    assert ended is not None and ended.cancelled and len(rollback.calls) == 1
    assert ended.message.startswith("cancelled during load; ROLLBACK INTERRUPTED (TerminationSignal); ")
    assert journal.closes == 0, "the next run finds the journal open and finishes the rollback"
    assert journal.entries[-1] == ("load", ["database", "app"]), "the journal says what may need undoing"
    assert notifier.outcomes == ["🚨 cancelled during load; the rollback was interrupted"]


def test_a_cancel_during_the_rollback_of_a_failure_keeps_the_journal_open():
    run, notifier, journal, _ = runner(rollback=Interrupting())
    ended = run.run(table(health=lambda: failing(Stage.HEALTH, "replica 127.0.0.1:18082", "503 three times")))
    assert ended is not None and not ended.cancelled
    assert ended.message.startswith("health failed: replica 127.0.0.1:18082: 503 three times; ROLLBACK INTERRUPTED")
    assert journal.closes == 0
    assert notifier.outcomes == ["🚨 health failed and the rollback was cancelled"]


def test_leaving_the_runner_closes_the_notifier():
    run, notifier, _, _ = runner()
    with run:
        ended = run.run(table(smoke=raising(KeyboardInterrupt())))
    assert ended is not None and ended.cancelled
    assert notifier.closed


# -- the lock's fence: checked before each stage that changes something --------------------------


class Fence:
    """The deploy lock's ``check``: fine until ``lost`` is set, then raises it."""

    def __init__(self) -> None:
        self.calls = 0
        self.lost: LockLost | None = None
        self.lose_at_call: int | None = None

    def __call__(self) -> None:
        self.calls += 1
        if self.lose_at_call is not None and self.calls >= self.lose_at_call and self.lost is not None:
            raise self.lost


def test_the_fence_is_checked_before_each_stage_that_changes_something_only():
    fence, ran = Fence(), []
    run, _, _, _ = runner()
    run.fence = fence
    assert run.run(table(ran)) is None
    assert fence.calls == 2, "once before migrate, once before deploy"


def test_a_lock_lost_to_another_holder_stops_the_run_and_undoes_nothing():
    fence, ran = Fence(), []
    fence.lost, fence.lose_at_call = (
        LockLost("the deploy lock's lease is gone; another run held it since", may_undo=False),
        2,
    )
    run, notifier, journal, rollback = runner()
    run.fence = fence
    ended = run.run(table(ran))
    assert ended is not None and not ended.cancelled and not ended.skipped
    assert ran == ["preflight", "build", "backup", "migrate"], "deploy never started"
    assert rollback.calls == [], "the lock's new holder owns the environment now"
    assert journal.closes == 0, "the journal stays open for the run that holds the lock now"
    assert journal.entries == [("migrate", ["database"])], "deploy was never journalled as started"
    assert "nothing was undone" in ended.message and "holds the lock now" in ended.message, ended.message
    assert ended.message.startswith("deploy stopped: the deploy lock's lease is gone"), ended.message
    assert notifier.outcomes[-1].startswith("🔒 stopped at deploy: "), notifier.outcomes


def test_a_lock_lost_before_anything_changed_says_nothing_was_changed():
    fence = Fence()
    fence.lost, fence.lose_at_call = LockLost("lease gone", may_undo=False), 1
    run, _, journal, rollback = runner()
    run.fence = fence
    ended = run.run(table())
    assert ended is not None and ended.message == "migrate stopped: lease gone; nothing was changed"
    assert rollback.calls == [] and journal.entries == []


def test_a_lock_lost_that_may_still_undo_rolls_back_as_a_failure():
    fence, ran = Fence(), []
    fence.lost, fence.lose_at_call = LockLost("lease expired, taken back at once", may_undo=True), 2
    run, notifier, journal, rollback = runner()
    run.fence = fence
    ended = run.run(table(ran))
    assert ended is not None and not ended.cancelled
    assert ran[-1] == "migrate"
    assert rollback.calls == [
        {
            "previous": PREVIOUS,
            "stage": Stage.DEPLOY,
            "reason": "lease expired, taken back at once",
            "backup": BACKUP,
            "undo_app": False,
        }
    ], "only the database had changed: deploy never ran"
    assert journal.closes == 1
    assert ended.message.startswith("deploy failed: lease expired, taken back at once; the app was not changed")


def test_a_cancel_after_the_lock_was_lost_to_another_run_undoes_nothing():
    fence = Fence()
    fence.lost, fence.lose_at_call = LockLost("deploy lock lost; another run holds it now", may_undo=False), 3
    run, notifier, journal, rollback = runner()
    run.fence = fence  # fine before migrate and deploy, lost by the time the cancel would undo
    ended = run.run(table(load=raising(TerminationSignal(15))))
    assert ended is not None and ended.cancelled
    assert rollback.calls == [] and journal.closes == 0
    assert ended.message.startswith("cancelled during load; ROLLBACK FAILED: deploy lock lost; another run holds it")


# -- guards (the release watcher): checked before every stage once registered ----------------------


def test_a_guard_registered_by_a_step_is_checked_before_every_later_stage_and_at_the_end():
    calls: list[str] = []
    run, _, _, _ = runner()

    def deploy() -> str:
        run.guards.append(lambda: calls.append("checked"))
        return "rollout"

    assert run.run(table(deploy=deploy)) is None
    # health, smoke, load, metrics, sign-off, and once more before the release is declared live
    assert calls == ["checked"] * 6


def test_a_failing_guard_fails_the_stage_about_to_start_and_rolls_back():
    ran: list[str] = []
    run, notifier, journal, rollback = runner()
    dead = GateFailed("replica architect-api-2 of 3.2.0 restarted (exit 2)", stage="watch")
    checks = {"n": 0}

    def guard() -> None:
        checks["n"] += 1
        if checks["n"] == 3:  # fine before health and smoke, bad before load
            raise dead

    def deploy() -> str:
        run.guards.append(guard)
        return "rollout"

    ended = run.run(table(ran, deploy=deploy))
    assert ended is not None and not ended.cancelled
    assert "load" not in ran, "the stage never ran"
    assert ended.message.startswith("load failed: replica architect-api-2 of 3.2.0 restarted (exit 2); rolled back")
    assert rollback.calls[0]["undo_app"] and rollback.calls[0]["backup"] == BACKUP
    assert journal.closes == 1 and notifier.status_of("load") == "failed"


def test_a_guard_failing_after_the_last_stage_keeps_the_release_from_going_live():
    run, _, journal, rollback = runner()
    seen = {"n": 0}

    def guard() -> None:
        seen["n"] += 1
        if seen["n"] == 6:
            raise GateFailed("replica architect-api-1 of 3.2.0 unhealthy for 30 s")

    def deploy() -> str:
        run.guards.append(guard)
        return "rollout"

    ended = run.run(table(deploy=deploy))
    assert ended is not None and ended.message.startswith("sign-off failed: replica architect-api-1")
    assert len(rollback.calls) == 1 and journal.closes == 1


# -- recovery of a run that died --------------------------------------------------------------


DEAD_RUNS_MESSAGE = {"channel": "C1", "ts": "9.9"}


def abandoned(changed: list[Effect] | None = None) -> DeployJournal:
    extra = {} if changed is None else {"changed": changed}
    return DeployJournal(
        environment="sandbox",
        flow_run_id="0f1e2d3c",
        flow_run_name="quiet-heron",
        version="3.2.1",
        stage=Stage.DEPLOY,
        previous=PREVIOUS,
        backup=BACKUP,
        slack_message=DEAD_RUNS_MESSAGE,
        started_at=datetime(2026, 11, 26, tzinfo=UTC),
        **extra,
    )


def test_no_open_journal_means_nothing_to_recover():
    notifier, rollback = FakeNotifier(), FakeRollback()
    assert recover_abandoned_run(FakeJournal(), notifier, rollback) == ""
    assert rollback.calls == [] and notifier.replies == []


def test_an_abandoned_journal_is_rolled_back_closed_and_its_slack_message_replaced():
    dead = abandoned()
    journal, notifier, rollback = FakeJournal(dead), FakeNotifier(), FakeRollback()
    suffix = recover_abandoned_run(journal, notifier, rollback)
    assert rollback.calls == [
        {
            "previous": PREVIOUS,
            "stage": Stage.DEPLOY,
            "reason": dead.describe(),
            "backup": f"loaded {BACKUP}",
            "undo_app": True,
        }
    ]
    assert journal.closes == 1 and journal.removed == ["0f1e2d3c"]
    assert suffix == (
        ", after rolling back the half-finished deploy of 3.2.1 (rolled back to revision 7 (3.1.0), "
        f"healthy; database restored from loaded {BACKUP})"
    )
    assert notifier.replies[0].startswith("⚠️ found a half-finished deploy: run quiet-heron (0f1e2d3c) of 3.2.1")
    assert notifier.replies[1].startswith("↩️ recovered from the half-finished deploy (Running → Crashed): ")
    [(message, text)] = notifier.overwritten
    assert message == dead.slack_message and "its process died. Rolled back by run brave-otter" in text


def test_a_run_that_died_migrating_gets_its_database_back_and_its_app_left_alone():
    journal, rollback = FakeJournal(abandoned(changed=[Effect.DATABASE])), FakeRollback()
    recover_abandoned_run(journal, FakeNotifier(), rollback)
    assert rollback.calls[0]["undo_app"] is False and rollback.calls[0]["backup"] == f"loaded {BACKUP}"


def test_a_recovery_that_leaves_the_environment_unhealthy_fails_preflight():
    journal, rollback = FakeJournal(abandoned()), FakeRollback(healthy=False)
    with pytest.raises(GateFailed) as caught:
        recover_abandoned_run(journal, FakeNotifier(), rollback)
    assert caught.value.stage == Stage.PREFLIGHT and "was rolled back, but" in str(caught.value)
    assert journal.closes == 1


def test_the_recovery_inside_preflight_fails_preflight_and_changes_nothing_of_this_run():
    journal = FakeJournal(abandoned())
    run, notifier, _, rollback = runner(journal=journal, rollback=FakeRollback(healthy=False))
    ended = run.run(
        table(preflight=lambda: (recover_abandoned_run(journal, notifier, rollback), passing(Stage.PREFLIGHT))[1])
    )
    assert ended is not None and ended.message.startswith("preflight failed: the half-finished deploy of 3.2.1")
    assert ended.message.endswith("(nothing was changed)") and len(rollback.calls) == 1


# -- the modules load without a server ------------------------------------------------------


def test_the_flow_and_the_runner_import_without_a_prefect_server():
    env = {**os.environ, "PREFECT_API_URL": "http://127.0.0.1:9/api"}  # nothing listens on port 9
    code = "import flows.staging_deploy, flows.rollback, tasks.runner, tasks.release.recovery, tasks.release.journal"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr[-2000:]
