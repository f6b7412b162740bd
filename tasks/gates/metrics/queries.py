"""What the metrics gate asks Prometheus: the guide's alert expressions as checks, and their windows.

In a check's queries ``{window}`` becomes the range and ``{since}`` the deploy's unix time.
Scoping to the new release: the replicas reuse the same slots (instance labels) and the request
metrics carry no version label, so a join on ``app_build_info`` cannot separate old from new
samples inside ``rate()``. Instead the range window is cut at the deploy (``effective_window``).
The baseline is the same query evaluated AT the deploy, over the gate's whole window: the last
traffic the previous release served.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Literal

from pydantic import BaseModel, Field

from blocks.environment import BaselineTolerance, PerformanceTargets

GUIDE_ALERTS = ["HighErrorRate", "HighLatency", "DatabaseDown", "CacheDown"]
# Which releases served in a window: the baseline is clean only if one earlier release did.
RELEASES_QUERY = "count by (version) (max_over_time(app_build_info[{window}]))"
_DURATION = re.compile(r"(\d+)(ms|s|m|h|d|w)")
_UNIT_S = {"ms": 0.001, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


class MetricCheck(BaseModel):
    """One PromQL check. In its queries ``{window}`` becomes the effective range and ``{since}``
    the deploy's unix time (0 when unknown)."""

    name: str
    query: str
    op: Literal["<", "<=", ">="] = Field(description="passes when value OP threshold")
    threshold: float
    scale: float = Field(1.0, description="multiplies the value before comparing (seconds -> ms)")
    unit: str = ""
    samples_query: str | None = Field(None, description="how many samples/requests lie behind the value")
    min_samples: float = 1
    empty_value: float | None = Field(None, description="value of an empty result; None makes it inconclusive")
    requires_rules: list[str] = Field(default_factory=list, description="alert rules that must be loaded")
    info_query: str | None = Field(None, description="series listed in the detail for information only")
    tolerance: BaselineTolerance | None = Field(
        None, description="how much worse than the baseline (before the deploy) it may be; None: not compared"
    )
    tolerance_unit: Literal["", "ms", "ratio"] = Field("", description="how the baseline comparison shows values")
    distribution_query: str | None = Field(
        None, description="per-bucket counts (`sum by (le) (increase(..._bucket[{window}]))`) for Mann-Whitney U"
    )
    quantile: float | None = Field(None, gt=0, lt=1, description="the quantile the value is (0.95 for a P95)")


def guide_checks(performance: PerformanceTargets) -> list[MetricCheck]:
    """The guide's alert expressions, judged against the environment's performance targets and baseline tolerances."""
    guide = "|".join(GUIDE_ALERTS)
    tolerances = performance.baseline
    return [
        MetricCheck(  # no 5xx series at all is a ratio of 0, not missing data: hence `or vector(0)`
            name="5xx error rate",
            query='(sum(rate(http_requests_total{status=~"5.."}[{window}])) or vector(0))'
            " / sum(rate(http_requests_total[{window}]))",
            op="<",
            threshold=performance.error_rate_max,
            samples_query="sum(increase(http_requests_total[{window}]))",
            min_samples=50,
            tolerance=tolerances.error_rate,
            tolerance_unit="ratio",
        ),
        MetricCheck(
            name="P95 latency",
            query="histogram_quantile(0.95, sum by (le) (rate(http_request_duration_seconds_bucket[{window}])))",
            op="<",
            threshold=performance.p95_ms,
            scale=1000,
            unit="ms",
            samples_query="sum(increase(http_request_duration_seconds_count[{window}]))",
            min_samples=50,
            tolerance=tolerances.p95_ms,
            tolerance_unit="ms",
            quantile=0.95,
            distribution_query="sum by (le) (increase(http_request_duration_seconds_bucket[{window}]))",
        ),
        MetricCheck(  # down at any scrape in the window counts, not just now
            name="database up",
            query="min(min_over_time(pg_up[{window}]))",
            op=">=",
            threshold=1,
            samples_query="sum(count_over_time(pg_up[{window}]))",
            min_samples=3,
        ),
        MetricCheck(
            name="cache up",
            query="min(min_over_time(redis_up[{window}]))",
            op=">=",
            threshold=1,
            samples_query="sum(count_over_time(redis_up[{window}]))",
            min_samples=3,
        ),
        MetricCheck(  # the peak share of the pool in the window (the load test's), per replica
            name="database connections",
            query="max(max_over_time(database_connections_in_use[{window}])"
            " / max_over_time(database_connections_max[{window}]))",
            op="<",
            threshold=performance.db_connections_max,
            samples_query="sum(count_over_time(database_connections_in_use[{window}]))",
            min_samples=3,
            tolerance=tolerances.db_connections,
        ),
        # Firing fails; pending is listed but does not (the rule's `for:` has not elapsed). Only
        # alerts that became active since the deploy count: one still firing over the previous
        # release's errors (its `rate[5m]` outlives the rollback) says nothing about this one,
        # and the 5xx ratio above already judges this release's own requests.
        MetricCheck(
            name="no guide alert firing",
            query=f'count by (alertname) ((ALERTS_FOR_STATE{{alertname=~"{guide}"}} >= {{since}})'
            f' and ignoring (alertstate) ALERTS{{alertstate="firing", alertname=~"{guide}"}})',
            op="<=",
            threshold=0,
            empty_value=0,
            requires_rules=GUIDE_ALERTS,
            info_query=f'ALERTS{{alertname=~"{guide}"}}',
        ),
    ]


def parse_duration(text: str) -> float:
    """Seconds in a Prometheus duration (``90s``, ``5m``, ``1h30m``)."""
    parts = _DURATION.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"not a Prometheus duration: {text!r}")
    return sum(int(n) * _UNIT_S[u] for n, u in parts)


def effective_window(window: str, since: datetime | None, now: datetime | None = None) -> str:
    """``window``, cut to the time since ``since`` (the deploy) so older samples do not count."""
    seconds = parse_duration(window)
    if since is not None:
        elapsed = ((now or datetime.now(UTC)) - since).total_seconds()
        seconds = min(seconds, max(elapsed, 1))
    return f"{max(int(seconds), 1)}s"


def resolve(query: str, window: str, since_ts: float) -> str:
    return query.replace("{window}", window).replace("{since}", f"{since_ts:.0f}")
