"""One deploy at a time per environment and per database: Prefect global concurrency limits of 1.

Every run takes the locks before preflight, whoever started it (the UI, the schedule, a
test calling the flow directly), and holds them until it ends, sign-off wait included. Two
environments that share a database (a copy of one, say) still never back up, migrate or
restore it at the same time. The locks are leases the server drops by itself if the process
holding them dies.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

from prefect.client.orchestration import get_client
from prefect.client.schemas.actions import GlobalConcurrencyLimitCreate
from prefect.concurrency.sync import concurrency
from prefect.exceptions import ObjectNotFound
from prefect.logging import get_run_logger

from tasks.core.errors import DeployLocked
from tasks.core.prefect_errors import prefect_errors
from tasks.core.stages import Stage


def lock_names(environment: str, database: str) -> list[str]:
    safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in database)
    return [f"staging-deploy-{environment}", f"staging-database-{safe}"]


def ensure_locks(names: list[str]) -> None:
    """Create each limit (1 slot) that does not exist yet."""
    with prefect_errors("creating the deploy locks"), get_client(sync_client=True) as client:
        for name in names:
            try:
                client.read_global_concurrency_limit_by_name(name)
            except ObjectNotFound:  # the first deploy of this environment or database: made here
                client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))


def held_locks(names: list[str]) -> list[str]:
    """Which of the locks ``names`` someone holds right now."""
    with prefect_errors("reading the deploy locks"), get_client(sync_client=True) as client:
        limits = [client.read_global_concurrency_limit_by_name(name) for name in names]
    return [limit.name for limit in limits if limit.active_slots >= limit.limit]


@contextmanager
def deploy_lock(environment: str, database: str, *, wait: bool, lease_s: float = 60) -> Iterator[float]:
    """Hold the deploy locks of ``environment`` and of ``database`` (host:port/name); yields how
    long it took to get them. With ``wait=False`` a held lock raises DeployLocked at once."""
    names = lock_names(environment, database)
    ensure_locks(names)
    logger = get_run_logger()
    logger.info("taking the deploy locks %s%s", ", ".join(names), "" if wait else " (no waiting)")
    started = time.monotonic()
    if not wait and (held := held_locks(names)):
        # Said here, not by a timed-out acquisition: Prefect's lease service logs that as an ERROR.
        raise DeployLocked(
            f"another deploy to {environment} is running (holds {', '.join(held)})", stage=Stage.PREFLIGHT
        )
    slot = concurrency(names, occupy=1, timeout_seconds=None if wait else 2, strict=True, lease_duration=lease_s)
    try:
        slot.__enter__()
    except TimeoutError as exc:
        raise DeployLocked(f"another deploy to {environment} is running", stage=Stage.PREFLIGHT) from exc
    waited = time.monotonic() - started
    try:
        yield waited
    finally:
        slot.__exit__(None, None, None)
