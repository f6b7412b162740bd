"""Profile runs made up for the load judge's tests: what a generator could have measured, without one."""

from __future__ import annotations

import random
from collections import Counter

from tasks.gates.load.model import LatencyHistogram, LoadProfile, ProcessResult, ProfileRun


def made_up_run(
    name: str = "light",
    rate: float = 100,
    duration_s: float = 10,
    *,
    latency_ms: float = 5.0,
    spread_ms: float = 1.0,
    slow_share: float = 0.0,
    slow_ms: float = 0.0,
    lag_ms: float = 0.5,
    saturated: bool = False,
    errors: dict[str, int] | None = None,
    served_share: float = 1.0,
    shortfall: bool = False,
    seed: int = 7,
) -> ProfileRun:
    """A profile's merged run: ``rate * duration_s`` requests around ``latency_ms`` (a ``slow_share`` of
    them at ``slow_ms``), a generator whose worst send lag is ``lag_ms``, saturated or not."""
    rng = random.Random(seed)
    profile = LoadProfile(name, rate, duration_s, 0.0)
    total = int(rate * duration_s)
    latency, lag = LatencyHistogram(), LatencyHistogram()
    for i in range(total):
        ms = slow_ms if i < total * slow_share else max(latency_ms + rng.gauss(0, spread_ms), 0.05)
        latency.record(ms / 1000)
        lag.record(rng.uniform(0, lag_ms) / 1000)
    lag.record(lag_ms / 1000)  # the worst lag seen
    failed = Counter(errors or {})
    process = ProcessResult(
        index=0,
        due=total,
        sent=total,
        ok=total - sum(failed.values()),
        completed_in_window=int(total * served_share),
        errors=failed,
        latency=latency,
        lag=lag,
        by_endpoint={"static": latency},
        cpu_share=0.9 if saturated else 0.2,
    )
    saturation = [f"{name}: generator process 0 p99 send lag {lag_ms:.1f} ms (limit 20 ms)"] if saturated else []
    return ProfileRun(
        profile=profile,
        processes=[process],
        latency=latency,
        lag=lag,
        errors=failed,
        by_endpoint={"static": latency},
        endpoint_errors=Counter(),
        timeline={},
        timeline_errors=Counter(),
        saturation=saturation,
        slot_s=1.0,
        rate_shortfall=shortfall,
    )
