"""What every fault test needs: a sandbox service to stop and to start again, a check that the
sandbox is whole again afterwards, and a fault fired at the right moment of a running deploy.

The ``broken_service`` fixture (tests/conftest.py) is a ``BrokenServices``: the test declares each
service it stops, and when the test ends, however it ends, each is started again and
``sandbox_problems()`` must come back empty.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx

from sandbox import config, daemons, postgres, services


@dataclass(frozen=True)
class Service:
    """One sandbox service a test may stop; ``start`` brings it back (idempotent).

    ``app_survives``: the app's replicas outlive the stop, so once the service is back the API must
    answer 200 through nginx again. Not so for `sandbox down`, which removes them: the next test
    that needs the app deploys it (``deployed_good_release``).
    """

    name: str
    stop: Callable[[], object]
    start: Callable[[], object]
    app_survives: bool = True


def start_postgres() -> None:
    """Primary back up; ensure_up also waits until the replica streams from it again."""
    postgres.ensure_up(config.load_secrets()["architect_db_password"])


# Named as `sandbox status` names them.
SERVICES = {
    service.name: service
    for service in (
        Service("postgres-primary", lambda: postgres.stop(postgres.PRIMARY), start_postgres),
        Service("registry", daemons.REGISTRY.stop, daemons.REGISTRY.ensure),
        Service("prometheus", daemons.PROMETHEUS.stop, daemons.PROMETHEUS.ensure),
        Service("dockerd", daemons.DOCKER.stop, daemons.DOCKER.ensure),
        Service("prefect-worker", daemons.WORKER.stop, daemons.WORKER.ensure),
    )
}


def sandbox_problems(with_the_app: bool = True) -> list[str]:
    """Every unhealthy `sandbox status` row, and (``with_the_app``) the API through nginx unless it
    answers 200; [] when the sandbox is whole."""
    sick = [f"{row['service']}: {row['detail']}" for row in services.status() if not row["healthy"]]
    if not sick and with_the_app:
        try:
            response = httpx.get(f"{config.API_URL}/health", verify=str(config.CA_CERT), timeout=5)
            if response.status_code != 200:
                sick = [f"api: GET /health through nginx answers {response.status_code}"]
        except httpx.HTTPError as exc:
            sick = [f"api: GET /health through nginx: {exc!r}"]
    return sick


def wait_until_healthy(timeout_s: float = 150, with_the_app: bool = True) -> list[str]:
    """Poll ``sandbox_problems()`` until there are none (returns []) or the time is up (returns the last)."""
    deadline = time.monotonic() + timeout_s
    while (sick := sandbox_problems(with_the_app)) and time.monotonic() < deadline:
        time.sleep(2)
    return sick


class BrokenServices:
    """The services one test stops (``broken("registry")`` declares one and returns it).

    ``restore()`` starts each again and waits until the sandbox is whole; it returns what is still
    wrong ([] when nothing). ``restore_now()`` is the same as an assertion, for a test that needs
    the sandbox back before its own checks; the ``broken_service`` fixture restores at the end anyway.
    """

    def __init__(self) -> None:
        self.services: list[Service] = []

    def __call__(self, service: str | Service) -> Service:
        found = SERVICES[service] if isinstance(service, str) else service
        self.services.append(found)
        return found

    def names(self) -> str:
        return ", ".join(s.name for s in self.services)

    def restore(self) -> list[str]:
        if not self.services:
            return []
        problems = []
        for service in self.services:
            try:
                service.start()
            except Exception as exc:  # still check the sandbox, and report both
                problems.append(f"starting {service.name} again failed: {exc!r}")
        return problems + wait_until_healthy(with_the_app=all(s.app_survives for s in self.services))

    def restore_now(self) -> None:
        problems = self.restore()
        assert not problems, f"the sandbox did not recover after {self.names()} stopped: {problems}"


class Trigger(threading.Thread):
    """Do ``action`` (the fault) once ``condition()`` holds, polled from a background thread.

    Use as a context manager around the deploy; afterwards ``fired_at`` says whether (and when)
    the fault happened, and ``error`` holds anything the condition or the action raised.
    """

    def __init__(
        self, condition: Callable[[], bool], action: Callable[[], object], timeout_s: float = 600, poll_s: float = 0.5
    ):
        super().__init__(daemon=True)
        self.condition, self.action, self.timeout_s, self.poll_s = condition, action, timeout_s, poll_s
        self.abort = threading.Event()
        self.fired_at: float | None = None
        self.error: BaseException | None = None

    def run(self) -> None:
        deadline = time.monotonic() + self.timeout_s
        try:
            while not self.abort.is_set() and time.monotonic() < deadline:
                if self.condition():
                    self.fired_at = time.monotonic()
                    self.action()
                    return
                self.abort.wait(self.poll_s)
        except BaseException as exc:  # reported by the test, not lost in the thread
            self.error = exc

    def __enter__(self) -> Trigger:
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.abort.set()
        self.join(120)

    def assert_fired(self, what: str) -> None:
        assert self.error is None, f"the fault could not be made: {self.error!r}"
        assert self.fired_at is not None, f"the fault never happened: {what}"
