"""The metrics gate: PromQL checks against the guide's thresholds and against the last good release.

Each check is a ``MetricCheck`` (``queries``); the gate runs them in one loop. A check with no
data, NaN or too few samples is *inconclusive*; it is asked again for ``inconclusive_retry_s``
and then FAILS with that reason, never passes.

With ``since`` (the deploy), the gate first reads every check that has a baseline tolerance over
the gate's window ending at the deploy: the previous release's last traffic. After the load test
each such check is judged twice, against its threshold and against that baseline (``judge``). No
baseline (a first deploy, no traffic before it) leaves that judgment inconclusive and the
threshold decides; the report says so. The table artifact shows both sides.
"""

from __future__ import annotations

import time
from datetime import datetime

import httpx
from prefect import task
from prefect.cache_policies import NO_CACHE

from blocks.environment import StagingEnvironment
from tasks.core.artifacts import in_task_run, table_artifact
from tasks.core.errors import Inconclusive
from tasks.core.models import CheckResult, Verdict
from tasks.core.run_log import run_logger
from tasks.core.stages import Stage
from tasks.gates.baseline import DistributionTest
from tasks.gates.metrics.judge import (
    BaselineReading,
    Reading,
    compare,
    distribution_test,
    earlier_releases,
    evaluate,
    read_baseline,
)
from tasks.gates.metrics.prometheus import Prometheus
from tasks.gates.metrics.queries import MetricCheck, effective_window, guide_checks, parse_duration, resolve
from tasks.gates.metrics.report import MetricsBaseline, MetricsReport, table_rows


@task(cache_policy=NO_CACHE)
def check_metrics(
    environment: StagingEnvironment,
    window: str = "5m",
    inconclusive_retry_s: float = 30,
    since: datetime | None = None,
    checks: list[MetricCheck] | None = None,
    retry_interval_s: float = 5,
) -> MetricsReport:
    """PromQL checks in the environment's Prometheus against its performance targets and the baseline.

    ``since`` (the end of the rollout) cuts the window so only the new release's samples count, and
    is where the baseline window (``window`` long) ends. Inconclusive checks are asked again every
    ``retry_interval_s`` for ``inconclusive_retry_s``, then fail with the reason. ``checks``
    defaults to the guide's. Read-only, but never cached: it must observe the present.
    """
    logger = run_logger()
    checks = checks if checks is not None else guide_checks(environment.performance)
    alpha, large_effect = environment.performance.baseline.significance, environment.performance.baseline.large_effect
    prom = Prometheus(str(environment.prometheus_url))
    readings: dict[str, Reading] = {}
    baselines: dict[str, BaselineReading] = {}
    distributions: dict[str, tuple[DistributionTest | None, str]] = {}
    deadline = time.monotonic() + inconclusive_retry_s
    pending, attempt = list(checks), 0
    since_ts = since.timestamp() if since else 0
    baseline_window = f"{int(parse_duration(window))}s"
    resolved = effective_window(window, since)
    releases: list[str] = []
    try:
        if since is not None:  # before anything else: the previous release's last window, ending at the deploy
            releases = earlier_releases(prom, baseline_window, since_ts)
            logger.info(
                "PromQL releases serving in the %s before the deploy -> %s",
                baseline_window,
                ", ".join(releases) or "unknown",
            )
            for check in (c for c in checks if c.tolerance is not None):
                baselines[check.name] = read_baseline(prom, check, baseline_window, since_ts)
                if len(releases) > 1 and baselines[check.name].value is not None:  # e.g. a failed deploy rolled back
                    baselines[check.name].missing = (
                        f"no clean baseline: the {baseline_window} before the deploy "
                        f"held more than one earlier release ({', '.join(releases)})"
                    )
                b = baselines[check.name]
                logger.info(
                    "PromQL baseline %s (%s before the deploy) -> %s",
                    check.name,
                    baseline_window,
                    b.missing or f"{b.value:.4g}{check.unit} ({b.samples} samples)",
                )
        while pending:
            attempt += 1
            resolved = effective_window(window, since)
            for check in list(pending):
                try:
                    readings[check.name] = evaluate(prom, check, resolved, since_ts)
                    pending.remove(check)
                except (Inconclusive, httpx.HTTPError) as exc:  # no answer yet, or Prometheus restarting
                    reason = str(exc) if isinstance(exc, Inconclusive) else f"Prometheus unreachable: {exc!r}"
                    readings[check.name] = Reading(query=resolve(check.query, resolved, since_ts), detail=reason)
                except (ValueError, KeyError) as exc:  # a rejected query or a malformed answer
                    readings[check.name] = Reading(
                        query=resolve(check.query, resolved, since_ts),
                        verdict=Verdict.FAIL,
                        detail=f"{type(exc).__name__}: {exc}",
                    )
                    pending.remove(check)
                logger.info("PromQL %s -> %s", check.name, readings[check.name].detail)
            if not pending or time.monotonic() + retry_interval_s > deadline:
                break
            time.sleep(retry_interval_s)
        if since is not None:
            for check in (c for c in checks if c.distribution_query):
                distributions[check.name] = distribution_test(
                    prom, check, resolved, baseline_window, since_ts, alpha, large_effect
                )
                test, note = distributions[check.name]
                logger.info("PromQL %s distribution -> %s", check.name, test.describe() if test else note)
    finally:
        prom.close()
    report = MetricsReport(
        stage=Stage.METRICS,
        baseline=MetricsBaseline(
            window=baseline_window if since else "", ends_at=since, releases=releases if since else []
        ),
    )
    comparisons = {}
    for check in checks:
        r = readings[check.name]
        if r.verdict == Verdict.INCONCLUSIVE:  # never a silent pass: the gate fails with the reason
            r.verdict, r.detail = Verdict.FAIL, f"inconclusive after {attempt} attempt(s): {r.detail}"
        test, note = distributions.get(check.name, (None, ""))
        comparison = compare(check, r, baselines.get(check.name) if since else None, test, note)
        comparisons[check.name] = comparison
        report.baseline.comparisons.append(comparison)
        detail = r.detail
        if since is not None and comparison.vs_baseline is not None:
            detail += f"; vs baseline: {comparison.vs_baseline.value}: {comparison.why}"
        report.checks.append(CheckResult(name=check.name, verdict=comparison.verdict, detail=detail, request=r.query))
    logger.info("metrics gate: %s; %s", report.summary(), report.baseline.summary())
    if in_task_run():
        table_artifact(
            table=table_rows(checks, readings, comparisons, since is not None),
            key="metrics-gate",
            description=f"{report.summary()}; {report.baseline.summary()}" if since is not None else report.summary(),
        )
    return report
