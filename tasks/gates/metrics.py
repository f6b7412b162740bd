"""The metrics gate: PromQL checks against the guide's thresholds, with a three-way verdict.

Each check is a ``MetricCheck`` (query, comparison, threshold, sample query); the gate runs
them in one loop. A check with no data, NaN or too few samples is *inconclusive*; it is
asked again for ``inconclusive_retry_s`` and then FAILS with that reason, never passes.

Scoping to the new release: the replicas reuse the same slots (instance labels), and the
request metrics carry no version label, so a join on ``app_build_info`` cannot separate
old from new samples inside ``rate()``. Instead the range window is cut at the deploy:
pass ``since`` (when the rollout completed) and the window becomes the shorter of
``window`` and the time since then, so only samples the new release produced count. A
window that is still too short for ``rate()`` comes back empty, which is inconclusive and
retried while the window grows.
"""

from __future__ import annotations

import math
import re
import time
from datetime import datetime, timezone
from typing import Literal

import httpx
from prefect import task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.context import TaskRunContext
from pydantic import BaseModel, Field

from blocks.environment import PerformanceTargets, StagingEnvironment
from tasks.core.run_log import run_logger
from tasks.core.models import CheckResult, GateReport, Verdict

GUIDE_ALERTS = ["HighErrorRate", "HighLatency", "DatabaseDown", "CacheDown"]
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


def guide_checks(performance: PerformanceTargets) -> list[MetricCheck]:
    """The guide's alert expressions, judged against the environment's performance targets."""
    guide = "|".join(GUIDE_ALERTS)
    return [
        MetricCheck(  # no 5xx series at all is a ratio of 0, not missing data: hence `or vector(0)`
            name="5xx error rate",
            query='(sum(rate(http_requests_total{status=~"5.."}[{window}])) or vector(0))'
            " / sum(rate(http_requests_total[{window}]))",
            op="<", threshold=performance.error_rate_max,
            samples_query="sum(increase(http_requests_total[{window}]))", min_samples=50,
        ),
        MetricCheck(
            name="P95 latency",
            query="histogram_quantile(0.95, sum by (le) (rate(http_request_duration_seconds_bucket[{window}])))",
            op="<", threshold=performance.p95_ms, scale=1000, unit="ms",
            samples_query="sum(increase(http_request_duration_seconds_count[{window}]))", min_samples=50,
        ),
        MetricCheck(  # down at any scrape in the window counts, not just now
            name="database up", query="min(min_over_time(pg_up[{window}]))", op=">=", threshold=1,
            samples_query="sum(count_over_time(pg_up[{window}]))", min_samples=3,
        ),
        MetricCheck(
            name="cache up", query="min(min_over_time(redis_up[{window}]))", op=">=", threshold=1,
            samples_query="sum(count_over_time(redis_up[{window}]))", min_samples=3,
        ),
        MetricCheck(  # the peak share of the pool in the window (the load test's), per replica
            name="database connections",
            query="max(max_over_time(database_connections_in_use[{window}])"
            " / max_over_time(database_connections_max[{window}]))",
            op="<", threshold=performance.db_connections_max,
            samples_query="sum(count_over_time(database_connections_in_use[{window}]))", min_samples=3,
        ),
        # Firing fails; pending is listed but does not (the rule's `for:` has not elapsed). Only
        # alerts that became active since the deploy count: one still firing over the previous
        # release's errors (its `rate[5m]` outlives the rollback) says nothing about this one,
        # and the 5xx ratio above already judges this release's own requests.
        MetricCheck(
            name="no guide alert firing",
            query=f'count by (alertname) ((ALERTS_FOR_STATE{{alertname=~"{guide}"}} >= {{since}})'
            f' and ignoring (alertstate) ALERTS{{alertstate="firing", alertname=~"{guide}"}})',
            op="<=", threshold=0, empty_value=0, requires_rules=GUIDE_ALERTS,
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
        elapsed = ((now or datetime.now(timezone.utc)) - since).total_seconds()
        seconds = min(seconds, max(elapsed, 1))
    return f"{max(int(seconds), 1)}s"


class Inconclusive(Exception):
    """No usable answer yet; asked again until the retry window closes."""


class Prometheus:
    """The two read endpoints the gate uses."""

    def __init__(self, url: str, timeout_s: float = 10):
        self.client = httpx.Client(base_url=url.rstrip("/"), timeout=timeout_s)

    def query(self, promql: str) -> list[tuple[dict, float]]:
        response = self.client.get("/api/v1/query", params={"query": promql})
        body = response.json() if response.headers.get("content-type", "").startswith("application/json") else {}
        if body.get("status") != "success":
            error = f"{body.get('errorType', response.status_code)}: {body.get('error', response.text[:200])}"
            if response.status_code == 400:  # bad PromQL will not get better
                raise ValueError(f"Prometheus rejected the query: {error}")
            raise Inconclusive(f"Prometheus error {error}")
        data = body["data"]
        if data["resultType"] == "scalar":
            return [({}, float(data["result"][1]))]
        return [(r.get("metric", {}), float(r["value"][1])) for r in data["result"]]

    def alert_rules(self) -> set[str]:
        body = self.client.get("/api/v1/rules", params={"type": "alert"}).json()
        return {r["name"] for g in body.get("data", {}).get("groups", []) for r in g.get("rules", [])}

    def close(self) -> None:
        self.client.close()


def _labels(metric: dict) -> str:
    return "{" + ", ".join(f"{k}={v}" for k, v in sorted(metric.items()) if k != "__name__") + "}"


def resolve(query: str, window: str, since_ts: float) -> str:
    return query.replace("{window}", window).replace("{since}", f"{since_ts:.0f}")


def evaluate(prom: Prometheus, check: MetricCheck, window: str, since_ts: float = 0) -> dict:
    """One reading: resolved query, value, samples, verdict, detail. Raises ``Inconclusive``."""
    query = resolve(check.query, window, since_ts)
    reading = {"query": query, "value": None, "samples": None}
    if check.requires_rules:
        missing = sorted(set(check.requires_rules) - prom.alert_rules())
        if missing:
            raise Inconclusive(f"alert rules not loaded in Prometheus: {', '.join(missing)}")
    if check.samples_query:
        counted = prom.query(resolve(check.samples_query, window, since_ts))
        samples = sum(v for _, v in counted if not math.isnan(v))
        reading["samples"] = round(samples)
        if samples < check.min_samples:
            raise Inconclusive(f"too few samples: {samples:.0f} < {check.min_samples:g} in {window}")
    series = prom.query(query)
    if not series:
        if check.empty_value is None:
            raise Inconclusive(f"no data for {query}")
        series = [({}, check.empty_value)]
    if any(math.isnan(v) for _, v in series):
        raise Inconclusive(f"NaN from {query} (no traffic in {window}?)")
    # the worst series decides: the largest for an upper bound, the smallest for a lower one
    metric, raw = (min if check.op == ">=" else max)(series, key=lambda s: s[1])
    value = raw * check.scale
    ok = {"<": value < check.threshold, "<=": value <= check.threshold, ">=": value >= check.threshold}[check.op]
    detail = f"{value:.4g}{check.unit} {check.op} {check.threshold:g}{check.unit}" if ok else (
        f"{value:.4g}{check.unit} breaks {check.op} {check.threshold:g}{check.unit}"
        + (f" at {_labels(metric)}" if metric else ""))
    if not ok and len(series) > 1:
        detail += f" ({len(series)} series: {', '.join(_labels(m) for m, _ in series)})"
    if reading["samples"] is not None:
        detail += f" ({reading['samples']} samples in {window})"
    if check.info_query:
        info = prom.query(check.info_query)
        detail += f"; guide alerts now: {', '.join(_labels(m) for m, _ in info)}" if info else "; no guide alert active"
    reading.update(value=value, verdict=Verdict.PASS if ok else Verdict.FAIL, detail=detail)
    return reading


@task(cache_policy=NO_CACHE)
def check_metrics(
    environment: StagingEnvironment,
    window: str = "5m",
    inconclusive_retry_s: float = 30,
    since: datetime | None = None,
    checks: list[MetricCheck] | None = None,
    retry_interval_s: float = 5,
) -> GateReport:
    """PromQL checks in the environment's Prometheus against its performance targets.

    ``since`` (the end of the rollout) cuts the window so only the new release's samples
    count. Inconclusive checks are asked again every ``retry_interval_s`` for
    ``inconclusive_retry_s``, then fail with the reason. ``checks`` defaults to the guide's.
    Read-only, but never cached: it must observe the present.
    """
    logger = run_logger()
    checks = checks if checks is not None else guide_checks(environment.performance)
    prom = Prometheus(str(environment.prometheus_url))
    readings: dict[str, dict] = {}
    deadline = time.monotonic() + inconclusive_retry_s
    pending, attempt = list(checks), 0
    since_ts = since.timestamp() if since else 0
    try:
        while pending:
            attempt += 1
            resolved = effective_window(window, since)
            for check in list(pending):
                try:
                    readings[check.name] = evaluate(prom, check, resolved, since_ts)
                    pending.remove(check)
                except (Inconclusive, httpx.HTTPError) as exc:  # no answer yet, or Prometheus restarting
                    reason = str(exc) if isinstance(exc, Inconclusive) else f"Prometheus unreachable: {exc!r}"
                    readings[check.name] = {"query": resolve(check.query, resolved, since_ts), "value": None,
                                            "samples": None, "verdict": Verdict.INCONCLUSIVE, "detail": reason}
                except (ValueError, KeyError) as exc:  # a rejected query or a malformed answer
                    readings[check.name] = {"query": resolve(check.query, resolved, since_ts), "value": None,
                                            "samples": None, "verdict": Verdict.FAIL,
                                            "detail": f"{type(exc).__name__}: {exc}"}
                    pending.remove(check)
                logger.info("PromQL %s -> %s", check.name, readings[check.name]["detail"])
            if not pending or time.monotonic() + retry_interval_s > deadline:
                break
            time.sleep(retry_interval_s)
    finally:
        prom.close()
    report = GateReport(stage="metrics")
    rows = []
    for check in checks:
        r = readings[check.name]
        if r["verdict"] == Verdict.INCONCLUSIVE:  # never a silent pass: the gate fails with the reason
            r["verdict"], r["detail"] = Verdict.FAIL, f"inconclusive after {attempt} attempt(s): {r['detail']}"
        report.checks.append(CheckResult(name=check.name, verdict=r["verdict"], detail=r["detail"],
                                         request=r["query"]))
        rows.append({"check": check.name, "query": r["query"],
                     "value": "" if r["value"] is None else f"{r['value']:.4g}{check.unit}",
                     "threshold": f"{check.op} {check.threshold:g}{check.unit}",
                     "samples": "" if r["samples"] is None else r["samples"],
                     "verdict": r["verdict"].value, "detail": r["detail"]})
    if TaskRunContext.get() is not None:
        create_table_artifact(table=rows, key="metrics-gate", description=report.summary())
    return report
