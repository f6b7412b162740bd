"""The release watch (tasks/release/watch.py) against a target whose replicas a test scripts.

The watch's judgement runs on what ``replica_states()`` answers; here a ``ScriptedTarget`` (a
real object, no mocks) answers what the test set last, and a hand-moved clock stands in for
time so the not-ready grace is exact. The sandbox tests (tests/test_faults_watch.py) kill real
replicas of a real run.
"""

from __future__ import annotations

import threading

import pytest

from tasks.core.errors import GateFailed, ReleaseUnhealthy, TemporaryError
from tasks.core.models import ReplicaState
from tasks.release.watch import ReleaseWatch

pytestmark = pytest.mark.unit


class ScriptedTarget:
    """A target whose replicas are whatever the test set last; counts how often it was asked."""

    def __init__(self, *names: str):
        self.states = {name: ReplicaState(name=name, running=True, ready=True) for name in names}
        self.error: Exception | None = None
        self.asked = 0
        self.asked_event = threading.Event()

    def replica_states(self) -> list[ReplicaState]:
        self.asked += 1
        self.asked_event.set()
        if self.error is not None:
            raise self.error
        return list(self.states.values())

    def set(self, name: str, **changes) -> None:
        self.states[name] = self.states[name].model_copy(update=changes)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def on_demand(target, clock, **options) -> ReleaseWatch:
    """A watch without its thread: it looks when checked (``interval_s`` 2), at the test's clock."""
    watch = ReleaseWatch(target, options.pop("expected", None), background=False, clock=clock, **options)
    watch.start()
    return watch


def test_healthy_replicas_pass_every_check():
    target, clock = ScriptedTarget("app-r2-18081", "app-r2-18082", "app-r2-18083"), Clock()
    watch = on_demand(target, clock, expected=3)
    for _ in range(5):
        clock.advance(2)
        watch.check()
    assert watch.problem is None and target.asked == 6  # the baseline, then one look per check


def test_a_restart_since_the_deploy_fails_naming_the_replica():
    target, clock = ScriptedTarget("app-r2-18081", "app-r2-18082"), Clock()
    target.set("app-r2-18082", restarts=2)  # restarted during the rollout: the rollout judged that
    watch = on_demand(target, clock)
    clock.advance(2)
    watch.check()
    target.set("app-r2-18082", restarts=3, detail="exit status 137 before")
    clock.advance(2)
    with pytest.raises(ReleaseUnhealthy, match=r"replica app-r2-18082 restarted 1 time 4 s after the deploy"):
        watch.check()


def test_a_restart_that_keeps_the_restart_count_is_seen_by_its_new_start_time():
    """``docker restart`` leaves RestartCount alone (0 again on this engine) and changes StartedAt."""
    target, clock = ScriptedTarget("app-r2-18081"), Clock()
    target.set("app-r2-18081", started_at="2026-12-01T19:00:00.1Z")
    watch = on_demand(target, clock)
    clock.advance(2)
    watch.check()
    target.set("app-r2-18081", started_at="2026-12-01T19:00:09.7Z")
    clock.advance(2)
    with pytest.raises(ReleaseUnhealthy, match=r"replica app-r2-18081 was restarted 4 s after the deploy"):
        watch.check()


def test_a_replica_gone_or_stopped_fails_and_the_first_problem_stays():
    target, clock = ScriptedTarget("app-r2-18081", "app-r2-18082", "app-r2-18083"), Clock()
    watch = on_demand(target, clock)
    del target.states["app-r2-18081"]
    clock.advance(2)
    with pytest.raises(ReleaseUnhealthy, match="replica app-r2-18081 is gone 2 s after the deploy") as first:
        watch.check()
    assert isinstance(first.value, GateFailed)  # the runner fails the stage and rolls back
    target.set("app-r2-18083", running=False, detail="exited with status 1")
    clock.advance(2)
    with pytest.raises(ReleaseUnhealthy, match="app-r2-18081 is gone"):  # not replaced by the later one
        watch.check()


def test_a_stopped_replica_says_why():
    target, clock = ScriptedTarget("app-r2-18081", "app-r2-18082"), Clock()
    watch = on_demand(target, clock)
    target.set("app-r2-18082", running=False, detail="exited with status 137")
    clock.advance(3)
    with pytest.raises(ReleaseUnhealthy, match="replica app-r2-18082 stopped running 3 s after the deploy: exited"):
        watch.check()


def test_not_ready_fails_only_after_the_grace_and_a_recovery_resets_it():
    target, clock = ScriptedTarget("app-r2-18081", "app-r2-18082"), Clock()
    watch = on_demand(target, clock, not_ready_grace_s=15)
    target.set("app-r2-18081", ready=False, detail="/health answered 503")
    for _ in range(8):  # seen unready for 14 s: within the grace
        clock.advance(2)
        watch.check()
    target.set("app-r2-18081", ready=True, detail="")
    clock.advance(2)
    watch.check()
    target.set("app-r2-18081", ready=False, detail="/health answered 503")
    for _ in range(8):  # unready again, counted from when it was seen so again
        clock.advance(2)
        watch.check()
    clock.advance(2)
    with pytest.raises(ReleaseUnhealthy, match=r"app-r2-18081 has not been ready for 16 s .*: /health answered 503"):
        watch.check()


def test_no_readiness_of_its_own_is_not_unready():
    target, clock = ScriptedTarget("pod-a"), Clock()
    target.set("pod-a", ready=None)
    watch = on_demand(target, clock, not_ready_grace_s=1)
    clock.advance(10)
    watch.check()


def test_fewer_replicas_than_the_rollout_left_fails():
    target, clock = ScriptedTarget("app-r2-18081", "app-r2-18082"), Clock()
    watch = on_demand(target, clock, expected=3)
    with pytest.raises(ReleaseUnhealthy, match="only 2 of the 3 replicas the rollout left are running"):
        watch.check()


def test_an_unanswering_target_is_waited_out_then_fails():
    target, clock = ScriptedTarget("app-r2-18081"), Clock()
    watch = on_demand(target, clock, unreachable_grace_s=60)
    target.error = TemporaryError("Docker engine at unix:///var/run/docker.sock did not answer")
    for _ in range(29):  # 58 s: an engine restart is waited out
        clock.advance(2)
        watch.check()
    target.error = None
    clock.advance(2)
    watch.check()
    target.error = TemporaryError("Docker engine did not answer")
    clock.advance(2)
    watch.check()  # the stretch starts again
    clock.advance(60)
    with pytest.raises(ReleaseUnhealthy, match="the target did not answer for 60 s: Docker engine did not answer"):
        watch.check()


def test_a_target_that_cannot_list_replicas_is_not_watched():
    class Unwatchable:
        def replica_states(self):
            raise NotImplementedError("KubernetesEngine cannot list replica states yet")

    watch = ReleaseWatch(Unwatchable(), 3, interval_s=0.01)
    with watch:
        watch.check()
        assert not watch.watching and not watch.running


def test_the_thread_sees_a_problem_by_itself_and_stops_at_the_end_of_the_run():
    target = ScriptedTarget("app-r2-18081", "app-r2-18082")
    with ReleaseWatch(target, 2, interval_s=0.02) as watch:
        assert watch.running
        target.asked_event.clear()
        assert target.asked_event.wait(5), "the thread never looked"
        target.set("app-r2-18082", restarts=1)
        for _ in range(500):  # the thread records it; no check() in between
            if watch.problem:
                break
            target.asked_event.clear()
            target.asked_event.wait(0.1)
        assert watch.problem and "app-r2-18082 restarted" in watch.problem
        assert not watch.running  # nothing more to learn once a problem is recorded
    with pytest.raises(ReleaseUnhealthy, match="app-r2-18082"):
        watch.check()


def test_leaving_the_context_stops_the_thread_and_the_looking():
    target = ScriptedTarget("app-r2-18081")
    with ReleaseWatch(target, 1, interval_s=0.02) as watch:
        assert target.asked_event.wait(5)
    assert not watch.running
    asked = target.asked
    target.set("app-r2-18081", running=False)
    watch.check()  # the run has ended: no more looks, nothing raised
    assert target.asked == asked
