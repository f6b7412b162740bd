"""The load judge: what the generator measured, against the targets and against the live release.

Pure (no I/O): ``judge`` turns the profiles' runs into a ``LoadReport``. What it keeps:

- A profile whose generator kept up and that missed a target FAILS.
- A saturated profile's miss also FAILS when it is larger than the generator's own delay can
  explain. Latency is measured from the intended send time, and a busy generator adds at most its
  worst loop lag twice (once to send, once to read the answer), so the service's own latency is
  at least ``measured - 2 x max send lag``: a P99 of 1,300 ms cannot come from 45 ms of lag. HTTP
  error statuses come from the service whatever the generator did; timeouts and refused
  connections may be the generator's own doing.
- Inconclusive is only for the rest: misses a saturated generator can explain, too few requests,
  a generator that could not offer the intended rate.

Each profile is also compared with the same profile of the live release's last load report (the
run history's), with the environment's baseline tolerances and a Mann-Whitney U test over the two
latency distributions (``tasks.gates.baseline``). No previous report leaves that judgment
inconclusive, and the targets decide alone.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

from blocks.environment import PerformanceTargets
from tasks.core.escaping import for_markdown
from tasks.core.models import Verdict
from tasks.gates.baseline import (
    TABLE_HEAD,
    TAIL_REQUESTS,
    Comparison,
    DistributionTest,
    enough_for_quantile,
    judge_against_baseline,
    mann_whitney,
    show,
)
from tasks.gates.load.model import BUCKET_GROWTH, LatencyHistogram, ProfileRun

MIN_SAMPLES = 100  # fewer measured requests in a profile say nothing about a P99
KEPT_UP = 0.95  # a service "holds" an offered rate when it answers at least this share of it per second
LAG_SIDES = 2  # a busy generator delays a request twice: sending it and reading its answer


class FailedTarget(BaseModel):
    profile: str
    metric: str = Field(description="p50, p95, p99, max, error_rate, throughput")
    observed: float
    limit: float
    unit: str
    message: str
    against: Literal["target", "baseline"] = Field("target", description="the guide's target, or the live release")
    explained: bool = Field(False, description="within what a saturated generator's own lag can explain")


class EndpointResult(BaseModel):
    name: str
    requests: int
    errors: int
    p50_ms: float
    p99_ms: float


class ProfileResult(BaseModel):
    name: str
    offered_rps: float
    duration_s: float
    requests: int
    throughput_rps: float = Field(description="successful answers per second inside the window")
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    error_rate: float
    errors: dict[str, int] = Field(default_factory=dict, description="kind (HTTP status, timeout, ...) -> count")
    endpoints: list[EndpointResult] = Field(default_factory=list)
    generator_processes: int
    generator_cpu_max: float = Field(description="busiest generator process, share of a core")
    send_lag_p99_ms: float
    send_lag_max_ms: float = 0.0
    saturation: list[str] = Field(default_factory=list, description="why the generator cannot be trusted")
    rate_shortfall: bool = Field(False, description="the generator did not offer the intended rate")
    latency_buckets: dict[int, int] = Field(
        default_factory=dict,
        exclude=True,
        repr=False,
        description="the latency histogram's counts (log buckets, tasks.gates.load.model): the per-request sample",
    )

    @property
    def service_error_rate(self) -> float:
        """Errors the service answered with (HTTP statuses), whatever the generator did."""
        answered = sum(n for kind, n in self.errors.items() if kind.isdigit())
        return answered / self.requests if self.requests else math.nan

    @property
    def explainable_ms(self) -> float:
        """How much latency the generator itself may have added: 0 when it kept up."""
        return LAG_SIDES * self.send_lag_max_ms if self.saturation else 0.0


class ProfileBaseline(BaseModel):
    """One profile of the live release's last load report."""

    name: str
    offered_rps: float
    duration_s: float = 0.0
    requests: int
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    error_rate: float
    saturated: bool = False
    endpoints: list[str] = Field(default_factory=list, description="the request mix it sent (endpoint names)")
    latency_buckets: dict[int, int] = Field(default_factory=dict, repr=False)


class LoadBaseline(BaseModel):
    """The live release's last load report, as kept in the run history."""

    source: str = Field(description="which run measured it, e.g. 'deploy-v3.2.0-to-sandbox (3.2.0)'")
    version: str | None = None
    measured_at: datetime | None = None
    bucket_growth: float = BUCKET_GROWTH
    profiles: list[ProfileBaseline] = Field(default_factory=list)

    def profile(self, name: str, offered_rps: float, endpoints: list[str]) -> ProfileBaseline | None:
        """The same profile: name, rate and request mix (a static path is no baseline for the API mix)."""
        return next(
            (
                p
                for p in self.profiles
                if p.name == name
                and math.isclose(p.offered_rps, offered_rps, rel_tol=0.01)
                and sorted(p.endpoints) == sorted(endpoints)
            ),
            None,
        )


class ProfileComparison(BaseModel):
    profile: str
    rows: list[Comparison] = Field(default_factory=list)
    distribution: DistributionTest | None = None

    @property
    def verdict(self) -> Verdict:
        verdicts = {r.vs_baseline for r in self.rows}
        if Verdict.FAIL in verdicts:
            return Verdict.FAIL
        return Verdict.PASS if verdicts == {Verdict.PASS} else Verdict.INCONCLUSIVE


class LoadBaselineComparison(BaseModel):
    """This run's profiles against the live release's last load report."""

    source: str | None = Field(None, description="None: no previous load report in the run history")
    missing_reason: str = ""
    profiles: list[ProfileComparison] = Field(default_factory=list)

    @property
    def verdict(self) -> Verdict:
        if not self.profiles or self.source is None:
            return Verdict.INCONCLUSIVE
        verdicts = {p.verdict for p in self.profiles}
        if Verdict.FAIL in verdicts:
            return Verdict.FAIL
        return Verdict.PASS if verdicts == {Verdict.PASS} else Verdict.INCONCLUSIVE

    def summary(self) -> str:
        if self.source is None:
            return (
                f"vs the live release: inconclusive ({self.missing_reason or 'no previous load report'}); "
                "the targets decide alone"
            )
        failed = [f"{p.profile} {r.name}" for p in self.profiles for r in p.rows if r.vs_baseline == Verdict.FAIL]
        if failed:
            return f"vs {self.source}: regression in {', '.join(failed)}"
        return f"vs {self.source}: {self.verdict.value}"

    def markdown(self) -> str:
        lines = [f"**Against the live release** ({for_markdown(self.source or 'none')}): {self.verdict.value}"]
        if self.source is None:
            lines += [
                "",
                f"No baseline: {for_markdown(self.missing_reason or 'no previous load report')}. "
                "The guide's targets decide alone.",
            ]
            return "\n".join(lines)
        lines += ["", TABLE_HEAD]
        for p in self.profiles:
            lines += [r.model_copy(update={"name": f"{p.profile} {r.name}"}).row() for r in p.rows]
        tests = [f"- {p.profile}: {for_markdown(p.distribution.describe())}" for p in self.profiles if p.distribution]
        return "\n".join(lines + ([""] + tests if tests else []))


class LoadReport(BaseModel):
    verdict: Verdict
    reason: str
    failed_targets: list[FailedTarget] = Field(default_factory=list)
    explained_misses: list[FailedTarget] = Field(
        default_factory=list, description="misses a saturated generator's own lag can explain: not a verdict"
    )
    warnings: list[str] = Field(default_factory=list)
    profiles: list[ProfileResult] = Field(default_factory=list)
    requests: int = 0
    p50_ms: float = math.nan
    p95_ms: float = math.nan
    p99_ms: float = math.nan
    max_ms: float = math.nan
    throughput_rps: float = Field(math.nan, description="best throughput of any profile")
    error_rate: float = math.nan
    targets: PerformanceTargets = Field(default_factory=PerformanceTargets)
    baseline: LoadBaselineComparison = Field(default_factory=LoadBaselineComparison)

    def summary(self) -> str:
        """One line for a person: the verdict's reason, then how it compares with the live release."""
        return f"{self.reason} | {self.baseline.summary()}"

    def markdown(self) -> str:
        """The sign-off's view: each profile against the targets and against the live release."""
        lines = [
            f"**Load test: {self.verdict.value}**: {for_markdown(self.reason)}",
            "",
            "| profile | req/s | requests | p50 ms | p95 ms | p99 ms | max ms | errors | generator |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        for p in self.profiles:
            lines.append(
                f"| {for_markdown(p.name)} | {p.offered_rps:,.0f} | {p.requests:,} | {p.p50_ms:,.1f} | "
                f"{p.p95_ms:,.1f} | {p.p99_ms:,.1f} | {p.max_ms:,.1f} | {p.error_rate:.2%} | "
                f"{'saturated' if p.saturation else 'kept up'} |"
            )
        return "\n".join(lines + ["", self.baseline.markdown()])


def profile_result(run: ProfileRun) -> ProfileResult:
    endpoints = [
        EndpointResult(
            name=name,
            requests=h.total,
            errors=run.endpoint_errors.get(name, 0),
            p50_ms=h.percentile(50) * 1000,
            p99_ms=h.percentile(99) * 1000,
        )
        for name, h in sorted(run.by_endpoint.items())
    ]
    return ProfileResult(
        name=run.profile.name,
        offered_rps=run.profile.rate_rps,
        duration_s=run.profile.duration_s,
        requests=run.requests,
        throughput_rps=run.throughput_rps,
        p50_ms=run.ms(50),
        p95_ms=run.ms(95),
        p99_ms=run.ms(99),
        max_ms=run.latency.max_s * 1000,
        error_rate=run.error_rate,
        errors=dict(run.errors),
        endpoints=endpoints,
        generator_processes=len(run.processes),
        generator_cpu_max=max((p.cpu_share for p in run.processes), default=0.0),
        send_lag_p99_ms=run.lag.percentile(99) * 1000 if run.lag.total else 0.0,
        send_lag_max_ms=run.lag.max_s * 1000 if run.lag.total else 0.0,
        saturation=run.saturation,
        rate_shortfall=run.rate_shortfall,
        latency_buckets=dict(run.latency.counts),
    )


def _over(
    profile: str, metric: str, observed: float, limit: float, unit: str, explained_ms: float = 0.0
) -> FailedTarget:
    excess = (observed - limit) / limit * 100 if limit else math.inf
    shown = f"{observed:.2%}" if unit == "ratio" else f"{observed:,.1f} {unit}"
    bound = f"{limit:.2%}" if unit == "ratio" else f"{limit:,.0f} {unit}"
    message = f"{profile}: {metric} {shown} >= {bound} limit (+{excess:.0f}%)"
    explained = False
    if explained_ms:
        explained = observed - explained_ms < limit
        message += (
            f", within what the saturated generator's lag can explain ({explained_ms:,.1f} ms)"
            if explained
            else f", more than the saturated generator's lag can explain ({explained_ms:,.1f} ms)"
        )
    return FailedTarget(
        profile=profile, metric=metric, observed=observed, limit=limit, unit=unit, message=message, explained=explained
    )


def _target_misses(p: ProfileResult, targets: PerformanceTargets) -> list[FailedTarget]:
    """Every target the profile missed; for a saturated profile each says whether its lag explains it."""
    misses = [
        _over(p.name, metric, observed, limit, "ms", p.explainable_ms)
        for metric, observed, limit in (
            ("p50", p.p50_ms, targets.p50_ms),
            ("p95", p.p95_ms, targets.p95_ms),
            ("p99", p.p99_ms, targets.p99_ms),
            ("max", p.max_ms, targets.max_ms),
        )
        if observed >= limit
    ]
    if p.error_rate >= targets.error_rate_max:
        miss = _over(p.name, "error_rate", p.error_rate, targets.error_rate_max, "ratio")
        if p.saturation:  # statuses are the service's answers; timeouts may be the generator's doing
            miss.explained = p.service_error_rate < targets.error_rate_max
            miss.message += f" ({p.service_error_rate:.2%} answered as HTTP errors by the service: " + (
                "the rest may be the saturated generator's doing)"
                if miss.explained
                else "more than the limit whatever the generator did)"
            )
        misses.append(miss)
    return misses


def compare_with_baseline(
    profiles: list[ProfileResult], baseline: LoadBaseline | None, targets: PerformanceTargets, missing_reason: str = ""
) -> LoadBaselineComparison:
    """Each profile against the same profile (name and rate) of the live release's last report."""
    if baseline is None:
        return LoadBaselineComparison(missing_reason=missing_reason or "no previous load report in the run history")
    tolerances = targets.baseline
    out = LoadBaselineComparison(source=baseline.source)
    for p in profiles:
        before = baseline.profile(p.name, p.offered_rps, [e.name for e in p.endpoints])
        comparison = ProfileComparison(profile=p.name)
        if before is None or p.requests < MIN_SAMPLES or before.requests < MIN_SAMPLES:
            why = (
                f"the live release's last load test did not run {p.name} at {p.offered_rps:,.0f} req/s "
                "with the same request mix"
                if before is None
                else f"fewer than {MIN_SAMPLES} requests on one side"
            )
            comparison.rows.append(
                Comparison(
                    name="p95",
                    unit="ms",
                    candidate=p.p95_ms,
                    baseline=before.p95_ms if before else None,
                    tolerance=tolerances.p95_ms.describe("ms"),
                    why=why,
                )
            )
            out.profiles.append(comparison)
            continue
        same_buckets = math.isclose(baseline.bucket_growth, BUCKET_GROWTH)
        distribution = (
            mann_whitney(before.latency_buckets, p.latency_buckets, tolerances.significance, tolerances.large_effect)
            if same_buckets
            else None
        )
        comparison.distribution = distribution
        fewest = min(before.requests, p.requests)
        for metric, quantile, tolerance, then, now, limit in (
            ("p50", 0.50, tolerances.p50_ms, before.p50_ms, p.p50_ms, targets.p50_ms),
            ("p95", 0.95, tolerances.p95_ms, before.p95_ms, p.p95_ms, targets.p95_ms),
            ("p99", 0.99, tolerances.p99_ms, before.p99_ms, p.p99_ms, targets.p99_ms),
        ):
            if enough_for_quantile(fewest, quantile):
                verdict, why = judge_against_baseline(
                    then, now, tolerance, "ms", distribution, explained_ms=p.explainable_ms
                )
            else:
                verdict, why = (
                    Verdict.INCONCLUSIVE,
                    (
                        f"not compared: {fewest:,} requests put "
                        f"{fewest * (1 - quantile):.0f} above the {metric} (a tail of "
                        f"{TAIL_REQUESTS} is needed)"
                    ),
                )
            comparison.rows.append(
                Comparison(
                    name=metric,
                    unit="ms",
                    baseline=then,
                    candidate=now,
                    threshold=f"< {limit:g} ms",
                    tolerance=tolerance.describe("ms"),
                    absolute=Verdict.PASS if now < limit else Verdict.FAIL,
                    vs_baseline=verdict,
                    why=why,
                    distribution=distribution,
                )
            )
        verdict, why = judge_against_baseline(before.error_rate, p.error_rate, tolerances.error_rate, "ratio")
        comparison.rows.append(
            Comparison(
                name="error rate",
                unit="ratio",
                baseline=before.error_rate,
                candidate=p.error_rate,
                threshold=f"< {targets.error_rate_max:.2%}",
                tolerance=tolerances.error_rate.describe("ratio"),
                absolute=Verdict.PASS if p.error_rate < targets.error_rate_max else Verdict.FAIL,
                vs_baseline=verdict,
                why=why,
            )
        )
        out.profiles.append(comparison)
    return out


def _regressions(comparison: LoadBaselineComparison) -> list[FailedTarget]:
    found = []
    for p in comparison.profiles:
        for r in p.rows:
            if r.vs_baseline != Verdict.FAIL or r.baseline is None or r.candidate is None:
                continue
            found.append(
                FailedTarget(
                    profile=p.profile,
                    metric=r.name,
                    observed=r.candidate,
                    limit=r.baseline,
                    unit=r.unit,
                    against="baseline",
                    message=f"{p.profile}: {r.name} {show(r.candidate, r.unit)} vs {show(r.baseline, r.unit)} for the "
                    f"live release ({r.delta}; tolerance {r.tolerance})",
                )
            )
    return found


def judge(
    runs: list[ProfileRun],
    targets: PerformanceTargets,
    baseline: LoadBaseline | None = None,
    baseline_missing: str = "",
) -> LoadReport:
    """Pure: the measured profiles against the targets and against the live release's last report."""
    profiles = [profile_result(r) for r in runs]
    failed: list[FailedTarget] = []
    explained: list[FailedTarget] = []
    warnings: list[str] = []
    measured = [p for p in profiles if p.requests >= MIN_SAMPLES]
    for p in measured:
        for miss in _target_misses(p, targets):
            (explained if miss.explained else failed).append(miss)
        if p.error_rate < targets.error_rate_max and p.error_rate >= targets.error_rate_target:
            warnings.append(
                f"{p.name}: error rate {p.error_rate:.2%} is above the {targets.error_rate_target:.2%}"
                f" goal (below the {targets.error_rate_max:.2%} maximum)"
            )
        if p.throughput_rps < KEPT_UP * p.offered_rps:
            warnings.append(f"{p.name}: served {p.throughput_rps:,.0f} of {p.offered_rps:,.0f} req/s offered")
    held = [p for p in measured if p.throughput_rps >= KEPT_UP * p.offered_rps]
    best = max((p.throughput_rps for p in measured), default=0.0)
    capacity = max([best] + [p.offered_rps for p in held])
    if measured and capacity < targets.min_rps:
        worst = min(measured, key=lambda p: p.throughput_rps / p.offered_rps)
        miss = FailedTarget(
            profile=worst.name,
            metric="throughput",
            observed=best,
            limit=targets.min_rps,
            unit="req/s",
            message=f"throughput: best {best:,.0f} req/s < {targets.min_rps:,.0f} req/s minimum "
            f"(-{(targets.min_rps - best) / targets.min_rps:.0%})",
            # A generator that could not send the rate cannot show whether the service holds it.
            explained=bool(short := [p for p in measured if p.throughput_rps < KEPT_UP * p.offered_rps])
            and all(p.saturation for p in short),
        )
        (explained if miss.explained else failed).append(miss)
    for label, rate in (("target", targets.target_rps), ("peak", targets.peak_rps)):
        if measured and not any(p.offered_rps >= rate for p in held):
            warnings.append(f"{label} throughput {rate:,.0f} req/s not shown held by any profile run")

    comparison = compare_with_baseline(profiles, baseline, targets, baseline_missing)
    regressions = _regressions(comparison)
    # Trusted failures first: the first one is the deciding one, named on the report's first line.
    failed.sort(key=lambda f: bool(next((p.saturation for p in profiles if p.name == f.profile), [])))
    failed += regressions
    saturation = [s for p in profiles for s in p.saturation]
    shortfall = [p.name for p in profiles if p.rate_shortfall]
    thin = [p.name for p in profiles if p.requests < MIN_SAMPLES]
    if failed:
        verdict, reason = Verdict.FAIL, "failed: " + "; ".join(f.message for f in failed)
    elif saturation and (explained or shortfall):
        verdict = Verdict.INCONCLUSIVE
        reason = "inconclusive: generator saturated: " + "; ".join(saturation)
        if explained:
            reason += "; misses within its lag: " + "; ".join(f.message for f in explained)
    elif thin or not profiles:
        verdict, reason = Verdict.INCONCLUSIVE, f"inconclusive: fewer than {MIN_SAMPLES} requests in {thin or 'any'}"
    elif shortfall or explained:
        verdict = Verdict.INCONCLUSIVE
        reason = "inconclusive: " + "; ".join(
            [f"{n}: the generator did not offer the intended rate" for n in shortfall] + [f.message for f in explained]
        )
    else:
        verdict, reason = (
            Verdict.PASS,
            "passed: " + ", ".join(f"{p.name} {p.offered_rps:,.0f} req/s p99 {p.p99_ms:,.1f} ms" for p in profiles),
        )
        if saturation:
            warnings.append(
                "the generator was busy (" + "; ".join(saturation) + "); its delay counts in the "
                "latencies, so it can only have made them worse: the pass stands"
            )
    if comparison.source is None:
        warnings.append(f"not compared with the live release: {comparison.missing_reason}; the targets decided alone")

    total = LatencyHistogram()
    for r in runs:
        total.merge(r.latency)
    requests = sum(p.requests for p in profiles)
    errors = sum(r.error_count for r in runs)
    return LoadReport(
        verdict=verdict,
        reason=reason,
        failed_targets=failed,
        explained_misses=explained,
        warnings=warnings,
        profiles=profiles,
        requests=requests,
        p50_ms=total.percentile(50) * 1000,
        p95_ms=total.percentile(95) * 1000,
        p99_ms=total.percentile(99) * 1000,
        max_ms=total.max_s * 1000 if total.total else math.nan,
        throughput_rps=best if profiles else math.nan,
        error_rate=errors / requests if requests else math.nan,
        targets=targets,
        baseline=comparison,
    )
