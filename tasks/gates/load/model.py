"""What the load generator sends and what it measures: plain data, no I/O.

The request mix and the guide's profiles say what to send; ``LatencyHistogram`` (log buckets,
so merging processes is adding counts and percentiles are never averaged), ``ProcessResult``
(one generator process) and ``ProfileRun`` (all of a profile's processes, merged) say what came back.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field

BUCKET_GROWTH = 1.005  # histogram buckets 0.5% wide: percentiles are right within 0.5%


class LatencyHistogram:
    """HDR-like: log buckets from 1 µs, counts only, so merging two is adding counts."""

    _LOG = math.log(BUCKET_GROWTH)

    def __init__(self) -> None:
        self.counts: Counter[int] = Counter()
        self.total = 0
        self.max_s = 0.0

    def record(self, seconds: float) -> None:
        self.counts[max(0, math.ceil(math.log(max(seconds, 1e-6) * 1e6) / self._LOG))] += 1
        self.total += 1
        self.max_s = max(self.max_s, seconds)

    def merge(self, other: LatencyHistogram) -> LatencyHistogram:
        self.counts.update(other.counts)
        self.total += other.total
        self.max_s = max(self.max_s, other.max_s)
        return self

    def percentile(self, q: float) -> float:
        """Seconds at quantile ``q`` (0-100): the bucket's upper bound, as HDR reports it."""
        if not self.total:
            return float("nan")
        rank, seen = max(1, math.ceil(self.total * q / 100)), 0
        for bucket in sorted(self.counts):
            seen += self.counts[bucket]
            if seen >= rank:
                return min(BUCKET_GROWTH**bucket / 1e6, self.max_s)
        return self.max_s

    def count_above(self, seconds: float) -> int:
        edge = math.log(seconds * 1e6) / self._LOG
        return sum(n for b, n in self.counts.items() if b - 1 >= edge)


@dataclass(frozen=True)
class RequestSpec:
    """One kind of request in the mix; ``{event_id}`` in the path is an event made at setup."""

    name: str
    method: str
    path: str
    weight: float
    auth: bool = False
    body: bytes | None = None


EVENT_BODY = b'{"type":"load_test","source":"architect-deploy-load","payload":{"step":"load"}}'
ERROR_BODY = b'{"kind":"LoadTestError","message":"synthetic error from the load gate"}'

# Reads dominate a dashboard's traffic; a fifth writes (events, client errors). Created rows are
# left behind: the database is staging's. Weights add up to 100 so they read as percentages.
API_MIX: tuple[RequestSpec, ...] = (
    RequestSpec("health", "GET", "/health", 10),
    RequestSpec("list events", "GET", "/api/v1/events?limit=20", 25, auth=True),
    RequestSpec("get event", "GET", "/api/v1/events/{event_id}", 15, auth=True),
    RequestSpec("create event", "POST", "/api/v1/events", 10, auth=True, body=EVENT_BODY),
    RequestSpec("create error", "POST", "/api/v1/errors", 10, body=ERROR_BODY),
    RequestSpec("list notifications", "GET", "/api/v1/notifications", 15, auth=True),
    RequestSpec("errors aggregate", "GET", "/api/v1/errors/aggregate", 15, auth=True),
)


def static_mix(path: str = "/static-ok") -> tuple[RequestSpec, ...]:
    return (RequestSpec("static", "GET", path, 1),)


@dataclass(frozen=True)
class LoadProfile:
    name: str
    rate_rps: float
    duration_s: float
    warmup_s: float = 2.0

    @property
    def expected(self) -> int:
        return int(self.rate_rps * self.duration_s)


def profiles_from_targets(
    targets, duration_s: float = 10.0, warmup_s: float = 2.0, sustained_s: float = 60.0
) -> dict[str, LoadProfile]:
    """The guide's profiles from a ``PerformanceTargets``: baseline, expected, spike, sustained."""
    return {
        "light": LoadProfile("light", targets.min_rps, duration_s, warmup_s),
        "medium": LoadProfile("medium", targets.target_rps, duration_s, warmup_s),
        "heavy": LoadProfile("heavy", targets.peak_rps, duration_s, warmup_s),
        "sustained": LoadProfile("sustained", targets.target_rps, sustained_s, warmup_s),
    }


@dataclass
class ProcessResult:
    """What one generator process saw in the measured window."""

    index: int
    due: int = 0  # requests scheduled in the window for this process
    sent: int = 0  # of those, actually started before the window closed
    unsent: int = 0  # never started: the dispatcher ran out of time
    ok: int = 0
    completed_in_window: int = 0  # 2xx/3xx answers that arrived inside the window (throughput)
    errors: Counter = field(default_factory=Counter)
    latency: LatencyHistogram = field(default_factory=LatencyHistogram)
    lag: LatencyHistogram = field(default_factory=LatencyHistogram)
    by_endpoint: dict[str, LatencyHistogram] = field(default_factory=dict)
    endpoint_errors: Counter = field(default_factory=Counter)
    timeline: dict[int, LatencyHistogram] = field(default_factory=dict)
    timeline_errors: Counter = field(default_factory=Counter)
    cpu_share: float = 0.0
    cpu_wait_share: float = 0.0  # time runnable but waiting for a CPU: other processes crowding the machine


@dataclass
class ProfileRun:
    """A profile's merged numbers, and whether the generator itself could be trusted."""

    profile: LoadProfile
    processes: list[ProcessResult]
    latency: LatencyHistogram
    lag: LatencyHistogram
    errors: Counter
    by_endpoint: dict[str, LatencyHistogram]
    endpoint_errors: Counter
    timeline: dict[int, LatencyHistogram]
    timeline_errors: Counter
    saturation: list[str]
    slot_s: float
    # The generator did not even offer the intended rate: nothing about that rate can be judged.
    rate_shortfall: bool = False

    @property
    def requests(self) -> int:
        return sum(p.due for p in self.processes)

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    @property
    def error_rate(self) -> float:
        return self.error_count / self.requests if self.requests else float("nan")

    @property
    def throughput_rps(self) -> float:
        """Successful answers that arrived inside the window, per second (as wrk counts)."""
        return sum(p.completed_in_window for p in self.processes) / self.profile.duration_s

    @property
    def send_rate_rps(self) -> float:
        return sum(p.sent for p in self.processes) / self.profile.duration_s

    def ms(self, q: float) -> float:
        return self.latency.percentile(q) * 1000
