"""The runner of the stage table: it runs each stage's step in order and decides what a failure means.

It owns what every stage shares: the run's Slack message (marks, timings), the deploy journal,
the verdicts of the gates, which stage a failure belongs to, and what to undo. What to undo
follows from what the stages that started declare they change (``Effect``), never from their
positions. It makes no Prefect or network call of its own: the notifier, the journal, the
rollback, the lock's fence, the release's guards and the clock are handed in, so tests drive it
with fakes.

A cancel (the UI's Cancel, ``prefect flow-run cancel``, a SIGTERM of the run's process) reaches
the flow as a BaseException in the middle of a stage; the runner undoes what the started stages changed
and returns how the run ended (``Ended.cancelled``), so the flow itself ends the run Cancelled
with a message saying what was undone.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any, Protocol, runtime_checkable

from tasks.core.errors import DeployError, GateFailed, LockLost
from tasks.core.models import GateReport, Revision, Verdict
from tasks.core.redaction import redact
from tasks.core.stages import Effect, Stage


@runtime_checkable
class Report(Protocol):
    """What a gate returns: a GateReport, a LoadReport, a MigrationResult."""

    @property
    def verdict(self) -> Verdict: ...


@dataclass(frozen=True)
class GateVerdict:
    """A gate's verdict as the runner judges it: the stage it belongs to and what it says."""

    stage: str
    verdict: Verdict
    why: str

    @classmethod
    def of(cls, report: Report, stage: Stage) -> GateVerdict:
        """``report`` as returned by ``stage``'s step; a GateReport names its own stage."""
        if isinstance(report, GateReport):
            return cls(report.stage, report.verdict, report.summary())
        # A LoadReport says why in ``reason``, a MigrationResult in ``detail``.
        why = getattr(report, "reason", None) or getattr(report, "detail", "")
        return cls(stage, report.verdict, f"{stage}: {why}")


def verdict_failure(*verdicts: GateVerdict) -> GateFailed | None:
    """The failure the verdicts amount to, or None when every one passed. Only PASS passes
    (inconclusive does not); every failing gate is named, so a release that fails load and
    metrics says so both ways. The failure belongs to the first failing gate's stage."""
    failed = [v for v in verdicts if v.verdict != Verdict.PASS]
    if not failed:
        return None
    stage = failed[0].stage
    # "<stage> failed: " starts the run's message already; later gates keep their names.
    whys = [v.why.removeprefix(f"{stage}: ") if n == 0 else v.why for n, v in enumerate(failed)]
    return GateFailed("; ".join(whys), stage=stage)


class Notifier(Protocol):
    """The run's Slack message (tasks.notify.RunNotifier)."""

    @property
    def message(self) -> Any: ...  # where Slack keeps it, once posted; the journal records it
    def stage(self, name: str, status: str, detail: str | None = None) -> None: ...
    def reply(self, text: str) -> None: ...
    def finish(self, outcome: str) -> None: ...
    def close(self) -> None: ...


class Checkpoint(Protocol):
    """Where a rollback goes back to (tasks.release.journal.Checkpoint)."""

    @property
    def previous(self) -> Revision | None: ...
    @property
    def backup(self) -> Any: ...  # the pre-deployment backup


class Journal(Protocol):
    """This run's entries in the deploy journal (tasks.release.journal.RunJournal)."""

    def write(self, checkpoint: Any, stage: Stage, changed: list[Effect], slack_message: Any) -> Any: ...
    def close(self) -> None: ...


class RollbackReport(Protocol):
    def summary(self) -> str: ...


# flows.rollback.rollback with its environment and restore policy bound:
# (previous, failed_stage, reason, backup, undo_app=...) -> RollbackReport.
Rollback = Callable[..., RollbackReport]


@dataclass(frozen=True)
class Step:
    """One row of the stage table: the stage, what it changes, and the call that runs it.

    ``run`` returns what the stage found; a report (or a tuple holding reports) is the stage's
    verdict. With ``checkpoint`` what it returns is where a rollback goes back to. ``judged_later``
    holds the verdict for the next stage's, so both are read before either fails the run.
    ``skipped`` says why the stage does not run at all.
    """

    stage: Stage
    changes: Effect
    run: Callable[[], Any]
    checkpoint: bool = False
    judged_later: bool = False
    skipped: str = ""


@dataclass(frozen=True)
class Ended:
    """How a run ended early: failed (after undoing what it changed), skipped (nothing changed),
    or cancelled (after undoing what it changed, as far as the cancel let it)."""

    message: str
    skipped: bool = False
    cancelled: bool = False


def may_undo(exc: BaseException) -> bool:
    """False for a lost lock whose new holder may already be changing the environment
    (``LockLost.may_undo``): then this run must not touch it, not even to undo its own changes."""
    return not (isinstance(exc, LockLost) and not exc.may_undo)


LEFT_OPEN = "the deploy journal stays open, so the next run rolls the rest back"


class Results(SimpleNamespace):
    """What each stage's step returned, by stage (``results.build``, ``results.sign_off``),
    for the steps after it; steps may leave more there."""


def describe(exc: BaseException) -> str:
    """A failure as the run's message names it: our own errors say what happened, others their type
    too; an outside library's exception text can quote a secret, so it is redacted."""
    return str(exc) if isinstance(exc, DeployError) else redact(f"{type(exc).__name__}: {exc}")


class StageRunner:
    """Runs a stage table and ends a run that fails or is cancelled, undoing what it changed.

    The checkpoint step (backup) gives the runner its way back: no stage that changes something
    may start before it, and from then on every stage that starts is journalled with what the
    run may have changed, so the next run can undo a run that died.
    """

    def __init__(
        self,
        notifier: Notifier,
        journal: Journal,
        rollback: Rollback,
        skip_on: tuple[type[Exception], ...] = (),
        clock: Callable[[], float] = time.monotonic,
        fence: Callable[[], None] | None = None,
        guards: Sequence[Callable[[], None]] = (),
        on_cancel: Callable[[], None] | None = None,
    ):
        self.notifier, self.journal, self.rollback, self.clock = notifier, journal, rollback, clock
        self.skip_on = skip_on  # errors that end the run Cancelled when nothing changed (a held lock)
        # Called before each stage that changes something: raises (LockLost) once the lock is
        # no longer ours. Assignable, since the lock is taken by the first step.
        self.fence = fence
        # Called before every stage (and once after the last): each raises (GateFailed) when the
        # release it watches went bad. A step may add one (the watcher started after deploy).
        self.guards: list[Callable[[], None]] = list(guards)
        # Called once a cancel arrives, before the rollback (the flow puts its run back to Running
        # so the rollback's tasks may run).
        self.on_cancel = on_cancel
        self.results = Results()
        self.timings: dict[Stage, float] = {}
        self.changed: list[Effect] = []  # what the stages that started change, in order
        self.checkpoint: Checkpoint | None = None
        self._started: list[Stage] = []
        self._held: list[GateVerdict] = []  # verdicts held for the next stage's

    def __enter__(self) -> StageRunner:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.notifier.close()

    def run(self, steps: Sequence[Step]) -> Ended | None:
        """Run ``steps`` in order; None when every one passed, else how the run ended.

        A cancel (a BaseException that is not an Exception: Prefect's TerminationSignal,
        CancelledError, KeyboardInterrupt) is undone like a failure and ends the run cancelled.
        """
        last = steps[-1].stage
        try:
            for step in steps:
                if step.skipped:
                    self.notifier.stage(step.stage, "skipped", step.skipped)
                    continue
                if ended := self._run_step(step):
                    return ended
            if failure := verdict_failure(*self._held):  # a table that ends on a held verdict
                return self._fail(self._failed_stage(failure, last), str(failure))
            try:  # the release is watched until the run ends: once more before it is declared live
                self._check_guards()
            except Exception as exc:
                return self._fail(self._started[-1] if self._started else last, describe(exc))
        except BaseException as exc:  # a cancel between stages (inside a stage, _run_step has it)
            if isinstance(exc, Exception):
                raise
            return self._cancel(self._started[-1] if self._started else last, exc, None)
        return None

    def succeed(self, outcome: str) -> None:
        """The run is done and nothing is left to undo: close the journal, tell Slack."""
        if self.checkpoint is not None:
            self.journal.close()
        self.notifier.finish(outcome)

    # -- one stage -----------------------------------------------------------------------

    def _run_step(self, step: Step) -> Ended | None:
        started = self.clock()
        self._started.append(step.stage)
        self.notifier.stage(step.stage, "running", "")
        try:
            result = self._start_and_run(step)
        except self.skip_on as exc:
            if not self.changed:
                return self._skip(step.stage, exc, started)
            return self._fail(step.stage, describe(exc), started)
        except Exception as exc:  # any failure of the stage, the journal write and the rollback point included
            if not may_undo(exc):
                return self._stop_untouched(step.stage, exc, started)
            return self._fail(step.stage, describe(exc), started)
        except BaseException as exc:
            return self._cancel(step.stage, exc, started)
        setattr(self.results, step.stage.name.lower(), result)
        if step.checkpoint:
            self.checkpoint = result
        found = result if isinstance(result, tuple) else (result,)
        self._held.extend(GateVerdict.of(r, step.stage) for r in found if isinstance(r, Report))
        if not step.judged_later:
            failure, self._held = verdict_failure(*self._held), []
            if failure is not None:
                return self._fail(self._failed_stage(failure, step.stage), str(failure), started, step.stage)
        self._time(step.stage, started)
        self.notifier.stage(step.stage, "passed")
        return None

    def _check_guards(self) -> None:
        for guard in list(self.guards):
            guard()

    def _start_and_run(self, step: Step) -> Any:
        self._check_guards()
        if step.changes is not Effect.NOTHING:
            if self.checkpoint is None:
                raise DeployError(
                    f"{step.stage} changes the {step.changes}, but no step before it took a "
                    "checkpoint to roll back to; nothing was run"
                )
            if self.fence is not None:  # before the stage counts as changing anything
                self.fence()
            if step.changes not in self.changed:
                self.changed.append(step.changes)
        if self.checkpoint is not None:  # said before the stage changes anything, so a death here is undone
            self.journal.write(self.checkpoint, step.stage, list(self.changed), self.notifier.message)
        return step.run()

    def _failed_stage(self, failure: GateFailed, running: Stage) -> Stage:
        """A verdict belongs to the gate that gave it (a load test judged with the metrics); any
        other failure to the stage that was running."""
        return Stage(failure.stage) if failure.stage in self._started else running

    def _time(self, stage: Stage, started: float) -> None:
        self.timings[stage] = round(self.clock() - started, 2)

    # -- how a run ends early ------------------------------------------------------------

    def _skip(self, stage: Stage, exc: Exception, started: float) -> Ended:
        self._time(stage, started)
        self.notifier.stage(stage, "skipped", str(exc)[:300])
        self.notifier.finish(f"➖ skipped: {exc}")
        return Ended(f"{exc}; this run was cancelled", skipped=True)

    def _fail(self, stage: Stage, reason: str, started: float | None = None, running: Stage | None = None) -> Ended:
        """Undo what the started stages changed, then say how the run ended, naming ``stage``."""
        if started is not None:
            self._time(running or stage, started)
        if running is not None and running != stage:
            self.notifier.stage(running, "failed", reason[:300])
        self.notifier.stage(stage, "failed", reason[:300])
        if not self.changed:
            self.notifier.finish(f"❌ {stage} failed; nothing was changed")
            self.notifier.reply(f"❌ {stage} failed: {reason}")
            return Ended(f"{stage} failed: {reason} (nothing was changed)")
        self.notifier.reply(f"❌ {stage} failed: {reason}\nRolling back…")
        try:
            summary = self._undo(stage, reason)
        except Exception as exc:  # the journal stays open: the next run tries again
            self.notifier.finish(f"🚨 {stage} failed and the rollback failed too")
            self.notifier.reply(f"🚨 rollback failed: {exc}")
            return Ended(f"{stage} failed: {reason}; ROLLBACK FAILED: {exc}")
        except BaseException as exc:  # cancelled while rolling back: the journal stays open
            self.notifier.finish(f"🚨 {stage} failed and the rollback was cancelled")
            return Ended(f"{stage} failed: {reason}; ROLLBACK INTERRUPTED ({type(exc).__name__}); {LEFT_OPEN}")
        self.notifier.finish(f"❌ {stage} failed; {summary}")
        return Ended(f"{stage} failed: {reason}; {summary}")

    def _stop_untouched(self, stage: Stage, exc: Exception, started: float) -> Ended:
        """The lock is lost to a run that may be changing the environment now: undo nothing."""
        self._time(stage, started)
        self.notifier.stage(stage, "failed", str(exc)[:300])
        if self.changed:
            left = "nothing was undone: the deploy journal stays open for the run that holds the lock now"
        else:
            left = "nothing was changed"
        self.notifier.finish(f"🔒 stopped at {stage}: {exc}; {left}")
        self.notifier.reply(f"🔒 {stage}: {exc}\n{left}")
        return Ended(f"{stage} stopped: {exc}; {left}")

    def _cancel(self, stage: Stage, exc: BaseException, started: float | None) -> Ended:
        """The run is being cancelled during ``stage``: undo what it changed, tell Slack, and say
        how it ended. A rollback that fails or is itself cut short leaves the journal open, so the
        next run to take the lock rolls the rest back."""
        if started is not None:
            self._time(stage, started)
        reason = f"the run was cancelled ({type(exc).__name__})"
        self.notifier.stage(stage, "cancelled", reason)
        if not self.changed:
            message = f"cancelled during {stage}; nothing was changed"
            self.notifier.finish(f"🛑 {message}")
            return Ended(message, cancelled=True)
        self.notifier.reply(f"🛑 {stage}: {reason}\nRolling back…")
        try:
            if self.on_cancel is not None:
                self.on_cancel()
            summary = self._undo(stage, reason)
        except Exception as rollback_exc:  # the cancel still ends the run; the journal stays open
            message = f"cancelled during {stage}; ROLLBACK FAILED: {rollback_exc}; {LEFT_OPEN}"
            self.notifier.finish(f"🚨 cancelled during {stage} and the rollback failed")
            self.notifier.reply(f"🚨 rollback failed: {rollback_exc}")
            return Ended(message, cancelled=True)
        except BaseException as again:  # a second cancel (or the kill) cut the rollback short
            message = f"cancelled during {stage}; ROLLBACK INTERRUPTED ({type(again).__name__}); {LEFT_OPEN}"
            self.notifier.finish(f"🚨 cancelled during {stage}; the rollback was interrupted")
            return Ended(message, cancelled=True)
        message = f"cancelled during {stage}; {summary}"
        self.notifier.finish(f"🛑 {message}")
        return Ended(message, cancelled=True)

    def _undo(self, stage: Stage, reason: str) -> str:
        """Roll back what the started stages changed: the app if one changed it, the database
        (from the checkpoint's backup, as the restore policy says) if one changed that."""
        checkpoint = self.checkpoint
        assert checkpoint is not None  # a stage that changes something cannot start without one
        if self.fence is not None:  # a lock lost to another run: its holder owns the environment now
            try:
                self.fence()
            except LockLost as exc:
                if not exc.may_undo:
                    raise
        backup = checkpoint.backup if Effect.DATABASE in self.changed else None
        report = self.rollback(checkpoint.previous, stage, reason, backup, undo_app=Effect.APP in self.changed)
        self.journal.close()  # rolled back: nothing left for the next run to undo
        self.notifier.reply(f"↩️ {report.summary()}")
        return report.summary()
