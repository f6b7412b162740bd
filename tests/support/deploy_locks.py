"""Deploy-lock helpers for tests: a fresh identity, the leases the server keeps in Redis, a holder
in another process (to SIGKILL), and the Prefect server as a service a test may restart.

``python -m tests.support.deploy_locks DATABASE TARGET`` takes the deploy lock of that identity,
prints its lease id and holds it until it is killed.
"""

from __future__ import annotations

import contextlib
import contextvars
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from datetime import datetime
from uuid import UUID

import redis
from prefect.client.orchestration import get_client

from sandbox import config, daemons
from tasks.release.identity import DeployIdentity, database_identity
from tasks.release.lock import DeployLock, lock_names
from tests.support.faults import Service
from tests.support.run_records import wait_for_paused_deploy

LEASE_PREFIX = "prefect:concurrency:lease:"  # prefect_redis.lease_storage's key for a lease


def new_identity(host: str = "localhost") -> DeployIdentity:
    """An identity no other test uses: its own database name and target."""
    name = f"locktest_{uuid.uuid4().hex[:10]}"
    return DeployIdentity(database=database_identity(host, config.PG_PRIMARY_PORT, name), target=f"target-{name}")


def same_database(identity: DeployIdentity, host: str) -> DeployIdentity:
    """The same database and target, the host spelled ``host``."""
    port_and_name = identity.database.split(":", 1)[1]
    port, name = port_and_name.split("/", 1)
    return DeployIdentity(database=database_identity(host, int(port), name), target=identity.target)


def forget(identity: DeployIdentity) -> None:
    """Delete the identity's limits and holder markers (a test's cleanup)."""
    with get_client(sync_client=True) as client:
        for name in lock_names(identity):
            for delete, key in (
                (client.delete_global_concurrency_limit_by_name, name),
                (client.delete_variable_by_name, f"{name}-holder"),
            ):
                with contextlib.suppress(Exception):  # never created: nothing to delete
                    delete(key)


def redis_client() -> redis.Redis:
    return redis.Redis(host=config.HOST, port=config.REDIS_PORT, db=daemons.PREFECT_REDIS_DB)


def lease_in_redis(lease: UUID) -> bool:
    with redis_client() as r:
        return bool(r.exists(f"{LEASE_PREFIX}{lease}"))


def active_slots(name: str) -> int:
    with get_client(sync_client=True) as client:
        return client.read_global_concurrency_limit_by_name(name).active_slots


def revoke(lease: UUID) -> None:
    """Give a lease's slots back behind its holder's back, as the server does to an expired one."""
    with get_client(sync_client=True) as client:
        client.release_concurrency_slots_with_lease(lease)


@dataclass
class HolderProcess:
    """A process of its own holding a deploy lock; ``kill()`` SIGKILLs it (no release)."""

    proc: subprocess.Popen[str]
    lease: UUID

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(10)


def hold_in_subprocess(identity: DeployIdentity, timeout_s: float = 60) -> HolderProcess:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.support.deploy_locks", identity.database, identity.target],
        cwd=config.REPO_ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()  # the lease id once it holds the lock
    if not line:
        proc.kill()
        raise RuntimeError(f"the holder process exited before taking the lock (rc {proc.wait(timeout_s)})")
    return HolderProcess(proc, UUID(line))


# The Prefect server as a service a test stops and starts (broken_service restores it and checks
# the whole sandbox, the worker included).
PREFECT_SERVER = Service("prefect-server", daemons.PREFECT_SERVER.stop, daemons.PREFECT_SERVER.ensure)


def restart_prefect_server() -> float:
    """Stop the server and start it again; returns the seconds its API did not answer."""
    started = time.monotonic()
    daemons.PREFECT_SERVER.stop()
    daemons.PREFECT_SERVER.ensure()
    return time.monotonic() - started


class DeployInThread(threading.Thread):
    """``deploy(...)`` (tests/support/deploys.py) in a thread, in a copy of the test's context (its
    Prefect settings); ``state`` once it ends, ``error`` if it raised."""

    def __init__(self, *args: object, **parameters: object):
        super().__init__(daemon=True)
        self.args, self.parameters = args, parameters
        self.state, self.error = None, None
        self.context = contextvars.copy_context()

    def run(self) -> None:
        from tests.support.deploys import deploy

        try:
            self.state = self.context.run(deploy, *self.args, **self.parameters)
        except BaseException as exc:  # the test reports it
            self.error = exc


def paused_deploy(after: datetime, run: DeployInThread, timeout_s: float = 600) -> UUID:
    """The id of ``run``'s staging-deploy run (started after ``after``) once it pauses for sign-off."""
    return wait_for_paused_deploy(
        after, timeout_s, ended=lambda: None if run.is_alive() else repr(run.state or run.error)
    )


if __name__ == "__main__":
    held = DeployLock(DeployIdentity(database=sys.argv[1], target=sys.argv[2]))
    held.acquire(wait=False)
    print(held.lease_id, flush=True)
    while True:  # until killed: the lease then expires on the server
        time.sleep(60)
