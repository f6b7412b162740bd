"""The release watch: from the end of the rollout until the run ends, the deployed replicas are watched.

The health gate judges a release once; smoke, load, metrics and a sign-off pause of up to a day
follow, and a replica may exit, restart or turn unhealthy at any point of them. ``ReleaseWatch``
asks the target for its replicas (``DeployTarget.replica_states()``) every couple of seconds from a
background thread and keeps the first problem it sees:

- a replica the rollout left running is no longer listed (removed, replaced by another name);
- a replica is not running (exited, dead, restarting, paused);
- a replica restarted since the deploy (its restart count grew: Docker's restart policy and
  Kubernetes' kubelet both bring a crashed replica back, so a crash shows as a restart);
- a replica has not been ready for longer than a short grace (a slow answer or a blip is not a
  failure; a replica that stays unready is);
- fewer replicas run than the rollout left running;
- the target did not answer for a long while (nobody can say the release is fine).

``check()`` raises ``ReleaseUnhealthy`` naming the replica; the runner calls it before every stage
(its guards) and the sign-off wait every few seconds. Use it as a context manager: the thread stops
when the run ends. It observes only: what to do about a problem is the runner's (roll back).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from tasks.core.errors import ReleaseUnhealthy, one_line
from tasks.core.models import ReplicaState

WATCH_INTERVAL_S = 2.0  # one replica listing (Docker: one engine call and a /health per replica)
NOT_READY_GRACE_S = 15.0  # unready this long in a row fails; a single slow /health does not
UNREACHABLE_GRACE_S = 60.0  # the target unanswered this long: the release can no longer be vouched for


class ReplicaSource(Protocol):
    """What the watch needs of a deploy target (blocks.target.DeployTarget)."""

    def replica_states(self) -> list[ReplicaState]: ...


@dataclass
class _Seen:
    """What the watch remembers of one replica: its restarts when first seen, since when it is unready."""

    restarts: int
    started_at: str | None = None
    unready_since: float | None = None


class ReleaseWatch:
    """Watches the replicas of a release from its rollout until the run ends (see the module doc).

    ``expected`` is how many replicas the rollout left running; without it, as many as the first
    look finds. ``background=False`` polls only when ``check()`` is called (for tests, and for
    callers that check often anyway). ``clock`` is injectable so the grace can be tested.
    """

    def __init__(
        self,
        target: ReplicaSource,
        expected: int | None = None,
        *,
        interval_s: float = WATCH_INTERVAL_S,
        not_ready_grace_s: float = NOT_READY_GRACE_S,
        unreachable_grace_s: float = UNREACHABLE_GRACE_S,
        background: bool = True,
        clock: Callable[[], float] = time.monotonic,
        logger: logging.Logger | logging.LoggerAdapter | None = None,
    ):
        self.target, self.expected = target, expected
        self.interval_s, self.not_ready_grace_s, self.unreachable_grace_s = (
            interval_s,
            not_ready_grace_s,
            unreachable_grace_s,
        )
        self.background, self.clock = background, clock
        self.logger = logger or logging.getLogger(__name__)
        self.problem: str | None = None  # the first problem seen; never replaced by a later one
        self.watching = True  # False when the target cannot list its replicas at all
        self.polls = 0
        self._seen: dict[str, _Seen] | None = None  # the baseline, from the first answer
        self._started_at: float | None = None
        self._last_poll: float | None = None
        self._unreachable_since: float | None = None
        self.last_error = ""  # why the target last did not answer, for the logs and the problem
        self._lock = threading.Lock()
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    # -- the run's lifetime ----------------------------------------------------------------

    def __enter__(self) -> ReleaseWatch:
        self.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def start(self) -> None:
        """The first look (the baseline: which replicas, their restart counts), then the thread."""
        self._started_at = self.clock()
        self.poll()
        if not self.watching:
            return
        count = len(self._seen or {})
        self.logger.info("Watching %d replicas of the release every %g s until the run ends", count, self.interval_s)
        if self.background:
            self._thread = threading.Thread(target=self._run, name="release-watch", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        if self._thread is not None:
            # A poll in flight is bounded by the engine's and /health's timeouts; daemon either way.
            self._thread.join(timeout=self.interval_s + 15)

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        while not self._stopped.wait(self.interval_s):
            self.poll()
            if self.problem is not None or not self.watching:
                return  # the first problem is what the run fails with; nothing more to learn

    # -- what the runner and the sign-off wait call ----------------------------------------

    def check(self) -> None:
        """Raise ReleaseUnhealthy once a problem was seen; looks again first if the last look is old
        (a look in flight is waited for, so what it saw counts)."""
        if self.watching and self.problem is None and not self._stopped.is_set():
            self.poll(unless_newer_than=self.interval_s)
        if self.problem is not None:
            raise ReleaseUnhealthy(self.problem)

    # -- one look ----------------------------------------------------------------------------

    def poll(self, unless_newer_than: float | None = None) -> str | None:
        """Look at the replicas once (not when the last look began less than ``unless_newer_than``
        seconds ago); returns the first problem seen so far (None while all is well)."""
        with self._lock:
            if self.problem is not None or not self.watching:
                return self.problem
            now = self.clock()
            last = self._last_poll
            if unless_newer_than is not None and last is not None and now - last < unless_newer_than:
                return None
            self._last_poll, self.polls = now, self.polls + 1
            try:
                states = self.target.replica_states()
            except NotImplementedError as exc:  # a target that cannot list replicas is not watched
                self.watching = False
                self.logger.warning("The release is not watched after the deploy: %s", exc)
                return None
            except Exception as exc:  # the engine or API is away: a while is fine, long is not
                if not self.last_error:
                    self.logger.warning("Release watch: the target did not answer: %s", one_line(exc))
                self.last_error = f"{type(exc).__name__}: {one_line(exc)}"
                self._unreachable_since = self._unreachable_since if self._unreachable_since is not None else now
                if now - self._unreachable_since >= self.unreachable_grace_s:
                    away = now - self._unreachable_since
                    self.problem = f"the target did not answer for {away:.0f} s: {one_line(exc)}"
                return self.problem
            self._unreachable_since, self.last_error = None, ""
            # Not logged here: a run that fails for another reason rolls back while this still
            # looks, and the replicas it replaces are no problem; check() reports it when asked.
            self.problem = self._judge(states, now)
            return self.problem

    def _judge(self, states: list[ReplicaState], now: float) -> str | None:
        since = now - (self._started_at if self._started_at is not None else now)
        after = f"{since:.0f} s after the deploy"
        listed = {s.name: s for s in states}
        if self._seen is None:  # the baseline: these replicas, with the restarts they had when the rollout ended
            self._seen = {s.name: _Seen(restarts=s.restarts, started_at=s.started_at) for s in states}
        for name, seen in sorted(self._seen.items()):
            state = listed.get(name)
            if state is None:
                return f"replica {name} is gone {after}: the target no longer lists it"
            detail = f": {state.detail}" if state.detail else ""
            if not state.running:
                return f"replica {name} stopped running {after}{detail}"
            if state.restarts > seen.restarts:
                times = state.restarts - seen.restarts
                return f"replica {name} restarted {times} time{'s' if times > 1 else ''} {after}{detail}"
            if seen.started_at and state.started_at and state.started_at != seen.started_at:
                return f"replica {name} was restarted {after} (started again at {state.started_at}){detail}"
            if state.ready is False:
                seen.unready_since = seen.unready_since if seen.unready_since is not None else now
                if now - seen.unready_since >= self.not_ready_grace_s:
                    return f"replica {name} has not been ready for {now - seen.unready_since:.0f} s ({after}){detail}"
            else:
                seen.unready_since = None
        expected = self.expected if self.expected is not None else len(self._seen)
        running = [s.name for s in states if s.running]
        if len(running) < expected:
            return f"only {len(running)} of the {expected} replicas the rollout left are running {after}"
        return None
