"""Judging one metric check: against its threshold now, and against the baseline before the deploy.

``evaluate`` reads a check's value (and the samples behind it) and judges it against its absolute
threshold; an answer it cannot use raises ``Inconclusive``. ``read_baseline`` evaluates the same
query at the deploy's instant over the gate's window: what the previous release served last.
``compare`` puts both judgments side by side (``tasks.gates.baseline``), with a Mann-Whitney U
test over the two latency histograms when the check has a per-bucket query.
"""

from __future__ import annotations

import math

import httpx
from pydantic import BaseModel

from tasks.core.errors import Inconclusive
from tasks.core.models import Verdict
from tasks.gates.baseline import (
    TAIL_REQUESTS,
    Comparison,
    DistributionTest,
    enough_for_quantile,
    judge_against_baseline,
    mann_whitney,
)
from tasks.gates.metrics.prometheus import Prometheus, labels
from tasks.gates.metrics.queries import RELEASES_QUERY, MetricCheck, resolve


class Reading(BaseModel):
    """One answer to a check: the resolved query, its value, the samples behind it, the verdict."""

    query: str
    value: float | None = None
    samples: int | None = None
    verdict: Verdict = Verdict.INCONCLUSIVE
    detail: str = ""


class BaselineReading(BaseModel):
    """The check's value over the window that ended at the deploy; ``value`` None says why not."""

    query: str
    window: str
    value: float | None = None
    samples: int | None = None
    missing: str = ""


def evaluate(
    prom: Prometheus, check: MetricCheck, window: str, since_ts: float = 0, at: float | None = None
) -> Reading:
    """One reading at ``at`` (now by default), judged against the threshold. Raises ``Inconclusive``."""
    query = resolve(check.query, window, since_ts)
    samples = None
    if check.requires_rules:
        missing = sorted(set(check.requires_rules) - prom.alert_rules())
        if missing:
            raise Inconclusive(f"alert rules not loaded in Prometheus: {', '.join(missing)}")
    if check.samples_query:
        counted = prom.query(resolve(check.samples_query, window, since_ts), at)
        total = sum(v for _, v in counted if not math.isnan(v))
        samples = round(total)
        if total < check.min_samples:
            raise Inconclusive(f"too few samples: {total:.0f} < {check.min_samples:g} in {window}")
    series = prom.query(query, at)
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
    detail = (
        f"{value:.4g}{check.unit} {check.op} {check.threshold:g}{check.unit}"
        if ok
        else (
            f"{value:.4g}{check.unit} breaks {check.op} {check.threshold:g}{check.unit}"
            + (f" at {labels(metric)}" if metric else "")
        )
    )
    if not ok and len(series) > 1:
        detail += f" ({len(series)} series: {', '.join(labels(m) for m, _ in series)})"
    if samples is not None:
        detail += f" ({samples} samples in {window})"
    if check.info_query and at is None:
        info = prom.query(check.info_query)
        detail += f"; guide alerts now: {', '.join(labels(m) for m, _ in info)}" if info else "; no guide alert active"
    return Reading(
        query=query, value=value, samples=samples, verdict=Verdict.PASS if ok else Verdict.FAIL, detail=detail
    )


def read_baseline(prom: Prometheus, check: MetricCheck, window: str, deploy_ts: float) -> BaselineReading:
    """The check's query at the deploy's instant over ``window``: the previous release's last traffic."""
    query = resolve(check.query, window, deploy_ts)
    try:
        reading = evaluate(prom, check, window, deploy_ts, at=deploy_ts)
    except Inconclusive as exc:
        return BaselineReading(
            query=query, window=window, missing=f"no baseline in the {window} before the deploy: {exc}"
        )
    except httpx.HTTPError as exc:
        return BaselineReading(query=query, window=window, missing=f"no baseline: Prometheus unreachable: {exc!r}")
    except (ValueError, KeyError) as exc:
        return BaselineReading(query=query, window=window, missing=f"no baseline: {type(exc).__name__}: {exc}")
    return BaselineReading(query=query, window=window, value=reading.value, samples=reading.samples)


def earlier_releases(prom: Prometheus, window: str, deploy_ts: float) -> list[str]:
    """The releases that served in the baseline window, the candidate (serving now) left out."""
    try:
        before = {m.get("version", "") for m, _ in prom.query(resolve(RELEASES_QUERY, window, deploy_ts), deploy_ts)}
        now = {m.get("version", "") for m, _ in prom.query("count by (version) (app_build_info)")}
    except (Inconclusive, httpx.HTTPError, ValueError, KeyError):
        return []  # no build info: nothing to tell the releases apart by
    return sorted(v for v in before - now if v)


def bucket_counts(prom: Prometheus, query: str, at: float | None = None) -> dict[float, float]:
    """Requests per latency bucket (upper bound -> count) from a cumulative ``sum by (le)`` answer."""
    cumulative = sorted(
        (float(metric.get("le", "nan")), value)
        for metric, value in prom.query(query, at)
        if not math.isnan(value) and "le" in metric
    )
    counts: dict[float, float] = {}
    below = 0.0
    for bound, total in cumulative:
        counts[bound] = max(total - below, 0.0)
        below = max(total, below)
    return counts


def distribution_test(
    prom: Prometheus,
    check: MetricCheck,
    window: str,
    baseline_window: str,
    since_ts: float,
    alpha: float,
    large_effect: float = 0.71,
) -> tuple[DistributionTest | None, str]:
    """Mann-Whitney U over the histogram buckets before and since the deploy; (None, why) when it cannot run."""
    if not check.distribution_query:
        return None, ""
    try:
        before = bucket_counts(prom, resolve(check.distribution_query, baseline_window, since_ts), since_ts)
        after = bucket_counts(prom, resolve(check.distribution_query, window, since_ts))
    except (Inconclusive, httpx.HTTPError, ValueError, KeyError) as exc:
        return None, f"distributions not compared: {exc}"
    test = mann_whitney(before, after, alpha, large_effect)
    if test is None:
        return None, (
            f"distributions not compared: {sum(before.values()):.0f} requests before the deploy, "
            f"{sum(after.values()):.0f} since (too few)"
        )
    return test, ""


def compare(
    check: MetricCheck,
    reading: Reading,
    baseline: BaselineReading | None,
    distribution: DistributionTest | None = None,
    distribution_note: str = "",
) -> Comparison:
    """The two judgments of one check side by side."""
    unit = check.tolerance_unit
    threshold = f"{check.op} {check.threshold:g}{check.unit}"
    comparison = Comparison(
        name=check.name,
        unit=unit,
        candidate=reading.value,
        threshold=threshold,
        absolute=reading.verdict,
        absolute_detail=reading.detail,
        distribution=distribution,
    )
    if check.tolerance is None:
        comparison.vs_baseline, comparison.why = None, "not compared (no baseline tolerance for this check)"
        return comparison
    comparison.tolerance = check.tolerance.describe(unit)
    if baseline is None:
        comparison.why = "no baseline: the deploy time is not known, so there is no 'before' to compare with"
        return comparison
    comparison.baseline = baseline.value
    if baseline.missing:  # no baseline, or one that is not the live release's alone
        comparison.why = baseline.missing
        return comparison
    if reading.value is None:
        comparison.why = "no candidate value to compare"
        return comparison
    if check.quantile is not None and not (
        enough_for_quantile(baseline.samples, check.quantile) and enough_for_quantile(reading.samples, check.quantile)
    ):
        comparison.why = (
            f"not compared: too few requests above the quantile ({baseline.samples} before the "
            f"deploy, {reading.samples} since; a tail of {TAIL_REQUESTS} is needed on each side)"
        )
        return comparison
    comparison.vs_baseline, comparison.why = judge_against_baseline(
        baseline.value, reading.value, check.tolerance, unit, distribution, baseline_missing=baseline.missing
    )
    if baseline.value is not None:
        comparison.why += (
            f" (baseline: {baseline.samples if baseline.samples is not None else '?'} samples "
            f"in the {baseline.window} before the deploy)"
        )
    if distribution_note:
        comparison.why += f"; {distribution_note}"
    return comparison
