"""One deploy at a time per deploy identity and per database: a lease the run holds and checks.

Every run takes the locks before preflight, whoever started it (the UI, the schedule, a test
calling the flow directly), and holds them until it ends, sign-off wait included. They are two
Prefect global concurrency limits of one slot, named from ``DeployIdentity``: one for the
database alone (two environments sharing a database never back up, migrate or restore it at the
same time; ``localhost`` and ``127.0.0.1`` are one database) and one for database and target.

Why Prefect leases kept in Redis, not a PostgreSQL advisory lock: the server's lease storage
(``prefect_redis.lease_storage``, set for the sandbox's server in sandbox/daemons.py) also holds
the deployments' own ``concurrency_limit`` slots, which an advisory lock would leave in server
memory to be lost on a restart; and an advisory lock lives on one database session, so the
lock would die with a connection blip to the very database a restore is replacing. A lease
outlives its holder by at most ``lease_s`` (60 s, the server's minimum) plus the server's
repossessor pass (5 s in the sandbox): a dead holder never needs a manual step.

``DeployLock`` renews its lease itself, in a thread, and never cancels the run: a renewal that
fails (a server restart takes 5-10 s) is tried again until the lease has really expired. What
the run does about a lost lease is decided where it is safe to decide, before each stage that
changes something: ``check()`` renews at once and raises ``LockLost`` when the lease is gone,
saying whether this run may still undo its own changes (``may_undo``).

The fence: after each acquisition the holder writes its lease id into a Prefect variable per
lock. A run that lost its lease and takes the locks back at once finds its own id there only
if nobody held either lock in between; then it may undo what it did. Otherwise another run held
the lock, may have recovered our open journal, and this run touches nothing.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from uuid import UUID

import httpx
from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate, VariableCreate, VariableUpdate
from prefect.client.schemas.objects import ConcurrencyLeaseHolder
from prefect.context import FlowRunContext
from prefect.exceptions import ObjectNotFound
from prefect.logging import get_logger, get_run_logger
from prefect.settings import PREFECT_CLIENT_MAX_RETRIES, temporary_settings

from tasks.core.errors import DeployLocked, LockLost, TemporaryError
from tasks.core.prefect_errors import prefect_errors
from tasks.core.stages import Stage
from tasks.release.identity import DeployIdentity

__all__ = ["DeployLock", "DeployLocked", "LockLost", "deploy_lock", "lock_names"]

LEASE_S = 60.0  # the server refuses shorter leases
RETRY_S = 2.0  # between attempts while the server does not answer
GONE = (404, 410)  # the server's answers for a lease it no longer has


def lock_names(identity: DeployIdentity) -> list[str]:
    """The database's lock first, then the deploy identity's."""
    return [f"staging-database-{identity.database_key}", f"staging-deploy-{identity.key}"]


def _marker(name: str) -> str:
    return f"{name}-holder"  # the Prefect variable naming the last lease that took lock ``name``


def _logger() -> logging.Logger | logging.LoggerAdapter[logging.Logger]:
    try:
        return get_run_logger()
    except Exception:  # outside a flow run (a test, a script): the module's logger
        return get_logger("tasks.release.lock")


@contextmanager
def _client() -> Iterator[SyncPrefectClient]:
    # The lock retries on its own, knowing when its lease expires; the client's own backoff
    # (up to a minute) would hide that deadline. The setting is read at each request.
    with temporary_settings({PREFECT_CLIENT_MAX_RETRIES: 0}), get_client(sync_client=True) as client:
        yield client


def _status(exc: BaseException) -> int | None:
    cause: BaseException | None = exc
    while cause is not None:
        if isinstance(cause, httpx.HTTPStatusError):
            return cause.response.status_code
        cause = cause.__cause__
    return None


class DeployLock:
    """The deploy locks of one identity, held by this process from ``acquire()`` to ``release()``."""

    def __init__(self, identity: DeployIdentity, *, lease_s: float = LEASE_S):
        self.identity = identity
        self.names = lock_names(identity)
        self.lease_s = lease_s
        self.waited_s = 0.0
        self._lease: UUID | None = None
        self._expires = 0.0  # monotonic time by which the server drops the lease if not renewed
        self._lost: str | None = None  # why the lease is gone, once the renewal thread knows
        self._state = threading.Lock()
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    @property
    def lease_id(self) -> UUID | None:
        return self._lease

    # -- taking and giving back ---------------------------------------------------------------

    def acquire(self, *, wait: bool) -> float:
        """Take both locks; returns the seconds it took. With ``wait=False`` a held lock raises
        DeployLocked at once; with ``wait=True`` it waits as long as the holder holds it."""
        self._ensure_limits()
        _logger().info("taking the deploy locks %s%s", ", ".join(self.names), "" if wait else " (no waiting)")
        started = time.monotonic()
        with _client() as client:
            while True:
                try:
                    lease = self._try_take(client)
                except TemporaryError as exc:  # the server restarting: it answers again in seconds
                    if not wait and time.monotonic() - started > 2 * self.lease_s:
                        raise
                    _logger().warning("deploy lock: %s; trying again", exc)
                    time.sleep(RETRY_S)
                    continue
                if lease is not None:
                    break
                if not wait:
                    raise DeployLocked(
                        f"another deploy to {self.identity.target} or its database {self.identity.database}"
                        " is running (holds the deploy lock)",
                        stage=Stage.PREFLIGHT,
                    )
                time.sleep(RETRY_S)
            try:
                self._write_markers(client, lease)
            except BaseException:  # not held as far as the run knows: give it back now, not in a lease
                with contextlib.suppress(Exception):
                    client.release_concurrency_slots_with_lease(lease)
                raise
        self._hold(lease, started)
        self.waited_s = time.monotonic() - started
        return self.waited_s

    def release(self) -> None:
        """Give the locks back (idempotent); a lease already gone is nothing to give back."""
        self._stop_renewer()
        with self._state:
            lease, self._lease = self._lease, None
        if lease is None:
            return
        try:
            with prefect_errors("releasing the deploy locks"), _client() as client:
                client.release_concurrency_slots_with_lease(lease)
        except TemporaryError as exc:  # the server drops it itself within the lease
            _logger().warning("deploy lock: could not release (%s); it expires within %.0f s", exc, self.lease_s)

    def __enter__(self) -> DeployLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    # -- the fence ------------------------------------------------------------------------------

    def check(self) -> None:
        """Renew the lease now; raises LockLost when it is gone (after trying to take it back).

        While the server does not answer, keeps trying until the lease would have expired: a
        restarting server keeps the lease (it is in Redis), so the run goes on once it is back.
        """
        with self._state:
            lease, lost = self._lease, self._lost
        if lease is None:
            raise LockLost("the deploy lock is not held", may_undo=False)
        # Asked even when the renewal thread gave up: a lease the server still has (expired but not
        # yet repossessed) still counts its slots, so nobody else can have taken them.
        with _client() as client:
            if self._renew_until_known(client, lease):
                if lost is not None:  # the thread stopped; keep renewing from here
                    self._start_renewer(lease)
                return
        self._lost_lease(lease, lost or f"lease {lease} is gone")

    def _lost_lease(self, lease: UUID, why: str) -> None:
        """Try to take the locks back without waiting, then raise LockLost with what we may do."""
        self._stop_renewer()
        with self._state:
            self._lease = None
        started = time.monotonic()
        try:
            with _client() as client:
                retaken = self._try_take(client)
                if retaken is None:
                    raise LockLost(f"deploy lock lost ({why}); another run holds it again", may_undo=False)
                intruders = self._markers_other_than(client, lease)
                if intruders:
                    client.release_concurrency_slots_with_lease(retaken)
                    raise LockLost(
                        f"deploy lock lost ({why}); another run held {', '.join(intruders)} since", may_undo=False
                    )
                self._write_markers(client, retaken)
        except TemporaryError as exc:
            raise LockLost(f"deploy lock lost ({why}); could not take it back: {exc}", may_undo=False) from exc
        self._hold(retaken, started)
        raise LockLost(f"deploy lock lost ({why}); taken back, nobody held it in between", may_undo=True)

    # -- the server -----------------------------------------------------------------------------

    def _ensure_limits(self) -> None:
        """Create each limit (1 slot) that does not exist yet."""
        with prefect_errors("creating the deploy locks"), _client() as client:
            for name in self.names:
                try:
                    client.read_global_concurrency_limit_by_name(name)
                except ObjectNotFound:  # the first deploy of this identity or database: made here
                    client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))

    def _try_take(self, client: SyncPrefectClient) -> UUID | None:
        """One attempt at both slots at once: the lease, or None when either is held."""
        run = (context := FlowRunContext.get()) and context.flow_run
        holder = ConcurrencyLeaseHolder(type="flow_run", id=run.id) if run else None  # shown in the UI
        with prefect_errors("taking the deploy locks"):
            try:
                response = client.increment_concurrency_slots_with_lease(
                    self.names, 1, "concurrency", self.lease_s, holder=holder
                )
            except httpx.HTTPStatusError as exc:
                if exc.response.status_code == 423:  # Locked: a slot is taken
                    return None
                raise
        body = response.json()
        if sorted(limit["name"] for limit in body["limits"]) != sorted(self.names):
            # Not both limits: one was deleted between _ensure_limits and now. Give it back.
            client.release_concurrency_slots_with_lease(UUID(body["lease_id"]))
            raise TemporaryError(f"the deploy locks {', '.join(self.names)} are not all there")
        return UUID(body["lease_id"])

    def _renew(self, client: SyncPrefectClient, lease: UUID) -> bool | None:
        """True renewed, False the server no longer has the lease, None no answer."""
        asked = time.monotonic()
        try:
            with prefect_errors("renewing the deploy lock"):
                client.renew_concurrency_lease(lease, self.lease_s)
        except TemporaryError:
            return None
        except Exception as exc:
            if _status(exc) in GONE:
                return False
            raise
        with self._state:
            if self._lease == lease:
                self._expires = asked + self.lease_s
        return True

    def _renew_until_known(self, client: SyncPrefectClient, lease: UUID) -> bool:
        """Renew, trying again while the server does not answer, until the lease would have expired."""
        while (renewed := self._renew(client, lease)) is None:
            if time.monotonic() > self._expires:
                return False
            time.sleep(RETRY_S)
        return renewed

    def _write_markers(self, client: SyncPrefectClient, lease: UUID) -> None:
        with prefect_errors("recording the deploy lock's holder"):
            for name in self.names:  # only the holder writes: no two writers race here
                if client.read_variable_by_name(_marker(name)) is None:
                    client.create_variable(VariableCreate(name=_marker(name), value=str(lease)))
                else:
                    client.update_variable(VariableUpdate(name=_marker(name), value=str(lease)))

    def _markers_other_than(self, client: SyncPrefectClient, lease: UUID) -> list[str]:
        """The locks whose last taker was not ``lease``."""
        with prefect_errors("reading the deploy lock's holder"):
            found = {name: client.read_variable_by_name(_marker(name)) for name in self.names}
        return [name for name, variable in found.items() if variable is None or variable.value != str(lease)]

    # -- keeping the lease --------------------------------------------------------------------

    def _hold(self, lease: UUID, asked: float) -> None:
        with self._state:
            self._lease, self._expires = lease, asked + self.lease_s
        self._start_renewer(lease)

    def _start_renewer(self, lease: UUID) -> None:
        self._stop_renewer()
        with self._state:
            self._lost = None
        self._stop = threading.Event()
        context = contextvars.copy_context()  # the run's logger and settings in the thread too
        self._renewer = threading.Thread(
            target=context.run, args=(self._keep, lease, self._stop), daemon=True, name=f"deploy-lock-{lease}"
        )
        self._renewer.start()

    def _keep(self, lease: UUID, stop: threading.Event) -> None:
        """Renew every quarter lease; on no answer, every RETRY_S until the lease has expired."""
        with _client() as client:
            while not stop.wait(self.lease_s / 4):
                while not stop.is_set():
                    try:
                        renewed = self._renew(client, lease)
                    except Exception as exc:  # a refusal we do not expect: check() will ask again
                        _logger().warning("deploy lock: renewal refused: %s", exc)
                        renewed = None
                    if renewed is not None or time.monotonic() > self._expires:
                        break
                    stop.wait(RETRY_S)
                if not renewed and not stop.is_set():
                    with self._state:
                        if self._lease == lease:
                            self._lost = f"lease {lease} " + ("is gone" if renewed is False else "expired unrenewed")
                    _logger().error("deploy lock: %s; the run stops at its next check", self._lost)
                    return

    def _stop_renewer(self) -> None:
        self._stop.set()
        if self._renewer is not None and self._renewer is not threading.current_thread():
            self._renewer.join(timeout=5)
        self._renewer = None


@contextmanager
def deploy_lock(identity: DeployIdentity, *, wait: bool, lease_s: float = LEASE_S) -> Iterator[DeployLock]:
    """Hold the deploy locks of ``identity`` for the block; yields the DeployLock (``waited_s``,
    ``check()``). With ``wait=False`` a held lock raises DeployLocked at once."""
    lock = DeployLock(identity, lease_s=lease_s)
    lock.acquire(wait=wait)
    try:
        yield lock
    finally:
        lock.release()
