"""One deploy at a time per environment: a Prefect global concurrency limit of 1.

Every run takes the lock before preflight, whoever started it (the UI, the schedule, a
test calling the flow directly), and holds it until it ends, sign-off wait included. The
lock is a lease the server drops by itself if the process holding it dies.
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

from tasks.errors import TemporaryError


class DeployLocked(TemporaryError):
    """Another deploy to the same environment holds the lock."""


def lock_name(environment: str) -> str:
    return f"staging-deploy-{environment}"


def ensure_lock(environment: str) -> str:
    """Create the environment's limit (1 slot) if it does not exist yet."""
    name = lock_name(environment)
    with get_client(sync_client=True) as client:
        try:
            client.read_global_concurrency_limit_by_name(name)
        except ObjectNotFound:
            client.create_global_concurrency_limit(GlobalConcurrencyLimitCreate(name=name, limit=1))
    return name


@contextmanager
def deploy_lock(environment: str, *, wait: bool, lease_s: float = 60) -> Iterator[float]:
    """Hold the environment's deploy lock; yields how long it took to get it.

    With ``wait=False`` a held lock raises DeployLocked at once instead of queueing.
    """
    name = ensure_lock(environment)
    logger = get_run_logger()
    logger.info("taking the deploy lock %s%s", name, "" if wait else " (no waiting)")
    started = time.monotonic()
    slot = concurrency(name, occupy=1, timeout_seconds=None if wait else 2, strict=True, lease_duration=lease_s)
    try:
        slot.__enter__()
    except TimeoutError as exc:
        raise DeployLocked(f"another deploy to {environment} is running", stage="preflight") from exc
    waited = time.monotonic() - started
    try:
        yield waited
    finally:
        slot.__exit__(None, None, None)
