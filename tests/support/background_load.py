"""A small steady load through nginx while a test deploys: did any request fail?"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import httpx

from sandbox import config


@dataclass
class BackgroundLoad:
    """GET /health through the load balancer at ``rate`` per second, until stopped or bounded out."""

    rate: float = 50.0
    max_seconds: float = 600.0
    path: str = "/health"
    sent: int = 0
    failures: list[str] = field(default_factory=list)
    retried: int = 0  # GETs nginx dropped unanswered on a kept-alive connection, sent again once

    def __post_init__(self) -> None:
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="background-load", daemon=True)

    def __enter__(self) -> BackgroundLoad:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(15)

    def _run(self) -> None:
        interval = 1.0 / self.rate
        started = time.monotonic()
        limit = int(self.rate * self.max_seconds)  # bounded in count as well as in time
        with httpx.Client(base_url=config.API_URL, verify=str(config.CA_CERT), timeout=5.0) as client:
            while not self._stop.is_set() and self.sent < limit:
                due = started + self.sent * interval
                delay = due - time.monotonic()
                if delay > 0:
                    self._stop.wait(delay)
                self.sent += 1
                try:
                    try:
                        response = client.get(self.path)
                    except httpx.RemoteProtocolError:
                        # nginx closing an idle kept-alive connection (a reload does) can cross a
                        # request already on its way: RFC 9112 9.3.1 lets a client send an
                        # idempotent request again, and browsers do. Once, on a new connection.
                        self.retried += 1
                        response = client.get(self.path)
                    # 503 from an unhealthy replica still counts: the balancer should not send there
                    if response.status_code != 200:
                        self.failures.append(f"{response.status_code}: {response.text[:120]}")
                except httpx.HTTPError as exc:
                    self.failures.append(f"{type(exc).__name__}: {exc}")
