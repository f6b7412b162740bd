"""The load gate: the guide's profiles against its latency, throughput and error-rate targets.

``run_load_test`` drives ``tasks.gates.load.generator`` (an open-model generator in its own processes)
through the chosen profiles, judges what it measured against the environment's
``PerformanceTargets`` and returns a ``LoadReport``: pass, fail (naming each target missed and by
how much) or inconclusive (the generator could not keep up, or too few samples). While it runs,
a progress artifact moves; at the end a table artifact holds one row per profile and a markdown
artifact shows latency over time (an SVG embedded as a data: URI) and the per-endpoint numbers.
"""

from __future__ import annotations

import base64
import math

from pydantic import BaseModel, Field, SecretStr
from prefect import task
from prefect.artifacts import (create_markdown_artifact, create_progress_artifact, create_table_artifact,
                               update_progress_artifact)
from prefect.cache_policies import NO_CACHE
from prefect.context import TaskRunContext

from blocks.environment import PerformanceTargets, StagingEnvironment
from tasks.core.errors import InvalidInput
from tasks.gates.load.generator import GeneratorConfig, SetupError, run_profile
from tasks.gates.load.model import API_MIX, LatencyHistogram, ProfileRun, profiles_from_targets, static_mix
from tasks.core.models import Verdict
from tasks.core.run_log import run_logger

MIN_SAMPLES = 100  # fewer measured requests in a profile say nothing about a P99
KEPT_UP = 0.95  # a service "holds" an offered rate when it answers at least this share of it per second
PROFILE_NAMES = ("light", "medium", "heavy", "sustained")


class FailedTarget(BaseModel):
    profile: str
    metric: str = Field(description="p50, p95, p99, max, error_rate, throughput")
    observed: float
    limit: float
    unit: str
    message: str


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
    saturation: list[str] = Field(default_factory=list, description="why the generator cannot be trusted")
    rate_shortfall: bool = Field(False, description="the generator did not offer the intended rate")


class LoadReport(BaseModel):
    verdict: Verdict
    reason: str
    failed_targets: list[FailedTarget] = Field(default_factory=list)
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


def profile_result(run: ProfileRun) -> ProfileResult:
    endpoints = [EndpointResult(name=name, requests=h.total, errors=run.endpoint_errors.get(name, 0),
                                p50_ms=h.percentile(50) * 1000, p99_ms=h.percentile(99) * 1000)
                 for name, h in sorted(run.by_endpoint.items())]
    return ProfileResult(
        name=run.profile.name, offered_rps=run.profile.rate_rps, duration_s=run.profile.duration_s,
        requests=run.requests, throughput_rps=run.throughput_rps, p50_ms=run.ms(50), p95_ms=run.ms(95),
        p99_ms=run.ms(99), max_ms=run.latency.max_s * 1000, error_rate=run.error_rate, errors=dict(run.errors),
        endpoints=endpoints, generator_processes=len(run.processes),
        generator_cpu_max=max((p.cpu_share for p in run.processes), default=0.0),
        send_lag_p99_ms=run.lag.percentile(99) * 1000 if run.lag.total else 0.0, saturation=run.saturation,
        rate_shortfall=run.rate_shortfall)


def _over(profile: str, metric: str, observed: float, limit: float, unit: str) -> FailedTarget:
    excess = (observed - limit) / limit * 100 if limit else math.inf
    shown = f"{observed:.2%}" if unit == "ratio" else f"{observed:,.1f} {unit}"
    bound = f"{limit:.2%}" if unit == "ratio" else f"{limit:,.0f} {unit}"
    return FailedTarget(profile=profile, metric=metric, observed=observed, limit=limit, unit=unit,
                        message=f"{profile}: {metric} {shown} >= {bound} limit (+{excess:.0f}%)")


def judge(runs: list[ProfileRun], targets: PerformanceTargets) -> LoadReport:
    """Pure: the measured profiles against the targets. Saturation or thin data make it inconclusive."""
    profiles = [profile_result(r) for r in runs]
    failed: list[FailedTarget] = []
    warnings: list[str] = []
    for p in profiles:
        if p.requests < MIN_SAMPLES:
            continue
        for metric, observed, limit in (("p50", p.p50_ms, targets.p50_ms), ("p95", p.p95_ms, targets.p95_ms),
                                        ("p99", p.p99_ms, targets.p99_ms), ("max", p.max_ms, targets.max_ms)):
            if observed >= limit:
                failed.append(_over(p.name, metric, observed, limit, "ms"))
        if p.error_rate >= targets.error_rate_max:
            failed.append(_over(p.name, "error_rate", p.error_rate, targets.error_rate_max, "ratio"))
        elif p.error_rate >= targets.error_rate_target:
            warnings.append(f"{p.name}: error rate {p.error_rate:.2%} is above the {targets.error_rate_target:.2%}"
                            f" goal (below the {targets.error_rate_max:.2%} maximum)")
        if p.throughput_rps < KEPT_UP * p.offered_rps:
            warnings.append(f"{p.name}: served {p.throughput_rps:,.0f} of {p.offered_rps:,.0f} req/s offered")
    measured = [p for p in profiles if p.requests >= MIN_SAMPLES]
    held = [p for p in measured if p.throughput_rps >= KEPT_UP * p.offered_rps]
    best = max((p.throughput_rps for p in measured), default=0.0)
    capacity = max([best] + [p.offered_rps for p in held])
    if measured and capacity < targets.min_rps:
        worst = min(measured, key=lambda p: p.throughput_rps / p.offered_rps)
        failed.append(FailedTarget(
            profile=worst.name, metric="throughput", observed=best, limit=targets.min_rps, unit="req/s",
            message=f"throughput: best {best:,.0f} req/s < {targets.min_rps:,.0f} req/s minimum "
                    f"(-{(targets.min_rps - best) / targets.min_rps:.0%})"))
    for label, rate in (("target", targets.target_rps), ("peak", targets.peak_rps)):
        if measured and not any(p.offered_rps >= rate for p in held):
            warnings.append(f"{label} throughput {rate:,.0f} req/s not shown held by any profile run")

    # Latency is measured from the intended send time, so a busy generator's own delay can only
    # make the service look slower: a pass stands, a fail cannot be blamed on the service. A
    # generator that did not even offer the intended rate leaves nothing to judge.
    saturation = [s for p in profiles for s in p.saturation]
    shortfall = any(p.rate_shortfall for p in profiles)
    thin = [p.name for p in profiles if p.requests < MIN_SAMPLES]
    if saturation and not shortfall and not failed and not thin and profiles:
        warnings.append("the generator was busy (" + "; ".join(saturation) + "); its delay counts in the "
                        "latencies, so it can only have made them worse: the pass stands")
    if saturation and (shortfall or failed):
        verdict, reason = Verdict.INCONCLUSIVE, "inconclusive: generator saturated: " + "; ".join(saturation)
    elif thin or not profiles:
        verdict, reason = Verdict.INCONCLUSIVE, f"inconclusive: fewer than {MIN_SAMPLES} requests in {thin or 'any'}"
    elif failed:
        verdict, reason = Verdict.FAIL, "failed: " + "; ".join(f.message for f in failed)
    else:
        verdict, reason = Verdict.PASS, "passed: " + ", ".join(
            f"{p.name} {p.offered_rps:,.0f} req/s p99 {p.p99_ms:,.1f} ms" for p in profiles)

    total = LatencyHistogram()
    for r in runs:
        total.merge(r.latency)
    requests = sum(p.requests for p in profiles)
    errors = sum(r.error_count for r in runs)
    return LoadReport(
        verdict=verdict, reason=reason, failed_targets=failed, warnings=warnings, profiles=profiles,
        requests=requests, p50_ms=total.percentile(50) * 1000, p95_ms=total.percentile(95) * 1000,
        p99_ms=total.percentile(99) * 1000, max_ms=total.max_s * 1000 if total.total else math.nan,
        throughput_rps=best if profiles else math.nan, error_rate=errors / requests if requests else math.nan,
        targets=targets)


def latency_chart_svg(runs: list[ProfileRun], targets: PerformanceTargets, width: int = 900,
                      height: int = 340) -> str:
    """Latency over time, one time slot per point: p50, p99 and max on a log scale, with the targets."""
    left, right, top, bottom = 60, 20, 30, 50
    plot_w, plot_h = width - left - right, height - top - bottom
    spans = [(r, max(r.timeline, default=-1) + 1) for r in runs]
    slots = max(1, sum(n for _, n in spans))
    peak = max([targets.max_ms] + [h.max_s * 1000 for r in runs for h in r.timeline.values()])
    y_max = 10 ** math.ceil(math.log10(max(peak, 10)))

    def x(i: float) -> float:
        return left + plot_w * i / slots

    def y(ms: float) -> float:
        return top + plot_h * (1 - math.log10(min(max(ms, 0.1), y_max) / 0.1) / math.log10(y_max / 0.1))

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
           f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">',
           f'<rect width="{width}" height="{height}" fill="white"/>',
           f'<text x="{left}" y="18" font-size="13" font-weight="bold">Latency over time (ms, log scale)</text>']
    decade = 0.1
    while decade <= y_max:
        out.append(f'<line x1="{left}" x2="{width - right}" y1="{y(decade):.1f}" y2="{y(decade):.1f}" '
                   f'stroke="#e5e5e5"/><text x="{left - 6}" y="{y(decade) + 4:.1f}" text-anchor="end">{decade:g}</text>')
        decade *= 10
    for label, ms, color in (("P50 target", targets.p50_ms, "#1f77b4"), ("P99 target", targets.p99_ms, "#d62728"),
                             ("max target", targets.max_ms, "#555")):
        out.append(f'<line x1="{left}" x2="{width - right}" y1="{y(ms):.1f}" y2="{y(ms):.1f}" stroke="{color}" '
                   f'stroke-dasharray="5,4"/><text x="{width - right - 4}" y="{y(ms) - 3:.1f}" text-anchor="end" '
                   f'fill="{color}">{label} {ms:g}</text>')
    offset = 0
    for run, n in spans:
        out.append(f'<line x1="{x(offset):.1f}" x2="{x(offset):.1f}" y1="{top}" y2="{top + plot_h}" stroke="#999"/>'
                   f'<text x="{x(offset) + 4:.1f}" y="{top + 12}">{run.profile.name} '
                   f'{run.profile.rate_rps:,.0f} req/s</text>')
        for q, color, stroke in ((50, "#1f77b4", 2), (99, "#ff7f0e", 2), (100, "#999", 1)):
            points = " ".join(f"{x(offset + s + 0.5):.1f},{y(h.percentile(q) * 1000):.1f}"
                              for s, h in sorted(run.timeline.items()))
            if points:
                out.append(f'<polyline points="{points}" fill="none" stroke="{color}" stroke-width="{stroke}"/>')
        for s, count in run.timeline_errors.items():
            out.append(f'<rect x="{x(offset + s):.1f}" y="{top + plot_h - 6}" width="{max(1.0, x(1) - left):.1f}" '
                       f'height="6" fill="#d62728"><title>{count} errors</title></rect>')
        offset += n
    seconds = sum(n * r.slot_s for r, n in spans)
    out.append(f'<line x1="{left}" x2="{width - right}" y1="{top + plot_h}" y2="{top + plot_h}" stroke="#333"/>'
               f'<text x="{left + plot_w / 2}" y="{height - 26}" text-anchor="middle">time since each profile '
               f'started, {seconds:g} s measured in all</text>')
    legend = (("p50", "#1f77b4"), ("p99", "#ff7f0e"), ("max", "#999"), ("errors", "#d62728"))
    for k, (label, color) in enumerate(legend):
        out.append(f'<rect x="{left + 90 * k}" y="{height - 16}" width="14" height="4" fill="{color}"/>'
                   f'<text x="{left + 90 * k + 18}" y="{height - 11}">{label}</text>')
    out.append("</svg>")
    return "".join(out)


def report_markdown(report: LoadReport, svg: str, mix=API_MIX) -> str:
    image = base64.b64encode(svg.encode()).decode()
    lines = [f"# Load test: {report.verdict.value}", "", report.reason, ""]
    if report.verdict == Verdict.INCONCLUSIVE and report.failed_targets:
        lines += ["Seen over the targets while the generator could not keep up (not a verdict on the service):", ""]
        lines += [f"- {f.message}" for f in report.failed_targets]
    else:
        lines += [f"- **{f.message}**" for f in report.failed_targets]
    lines += [f"- {w}" for w in report.warnings]
    lines += ["", f"![latency over time](data:image/svg+xml;base64,{image})", "",
              "| profile | endpoint | requests | errors | p50 ms | p99 ms |", "|---|---|---:|---:|---:|---:|"]
    for p in report.profiles:
        lines += [f"| {p.name} | {e.name} | {e.requests} | {e.errors} | {e.p50_ms:.1f} | {e.p99_ms:.1f} |"
                  for e in p.endpoints]
    lines += ["", "Request mix (weights): " + ", ".join(f"{s.name} ({s.method} {s.path}) {s.weight:g}" for s in mix) + "."]
    return "\n".join(lines)


def _table(report: LoadReport) -> list[dict]:
    return [{"profile": p.name, "offered req/s": round(p.offered_rps), "served req/s": round(p.throughput_rps, 1),
             "requests": p.requests, "p50 ms": round(p.p50_ms, 1), "p95 ms": round(p.p95_ms, 1),
             "p99 ms": round(p.p99_ms, 1), "max ms": round(p.max_ms, 1), "error rate": f"{p.error_rate:.3%}",
             "errors": ", ".join(f"{k}: {v}" for k, v in sorted(p.errors.items())) or "none",
             "generator": f"{p.generator_processes} proc, cpu {p.generator_cpu_max:.0%}, "
                          f"lag p99 {p.send_lag_p99_ms:.1f} ms", "saturated": "; ".join(p.saturation) or "no"}
            for p in report.profiles]


@task(name="run_load_test", cache_policy=NO_CACHE)
def run_load_test(
    environment: StagingEnvironment,
    profiles: list[str] | None = None,
    duration_s: float = 10.0,
    sustained_s: float = 60.0,
    warmup_s: float = 2.0,
    session_cookie: SecretStr | None = None,
    path: str | None = None,
    base_url: str | None = None,
) -> LoadReport:
    """The guide's load profiles against ``environment.api_url``, judged against its performance targets.

    ``profiles``: any of light (min_rps), medium (target_rps), heavy (peak_rps), sustained (target_rps for
    ``sustained_s``); default light, medium, heavy for ``duration_s`` each after ``warmup_s``. Logs in once per
    generator process as the environment's smoke user unless ``session_cookie`` is given. ``path`` replaces
    the API mix with GET of one path (e.g. ``/static-ok``); ``base_url`` overrides the API URL (loopback only).
    """
    logger = run_logger()
    names = list(profiles or ["light", "medium", "heavy"])
    unknown = [n for n in names if n not in PROFILE_NAMES]
    if unknown or not 0 < duration_s <= 3600 or not 0 < sustained_s <= 86400 or not 0 <= warmup_s <= 60:
        raise InvalidInput(f"load test: unknown profiles {unknown} or duration out of range", stage="load")
    targets = environment.performance
    plan = [profiles_from_targets(targets, duration_s, warmup_s, sustained_s)[n] for n in names]
    environment.ssl_context()  # the CA must load here, before processes start
    base = (base_url or str(environment.api_url)).rstrip("/")
    mix = static_mix(path) if path else API_MIX
    runs: list[ProfileRun] = []
    in_run = TaskRunContext.get() is not None
    progress_id = create_progress_artifact(progress=0.0, key="load-test-progress",
                                           description="Load test: " + ", ".join(names)) if in_run else None
    total_s = sum(p.warmup_s + p.duration_s for p in plan)
    done_s = 0.0
    for profile in plan:
        config = GeneratorConfig(
            base_url=base, mix=mix, ca_file=environment.ca_bundle,
            username=environment.smoke_user, password=environment.smoke_password.get_secret_value(),
            session_cookie=session_cookie.get_secret_value() if session_cookie else None,
            slot_s=max(0.5, profile.duration_s / 150))
        span = profile.warmup_s + profile.duration_s

        def progress(share: float, done_s: float = done_s, span: float = span) -> None:
            if progress_id:
                update_progress_artifact(progress_id, progress=round(100 * (done_s + share * span) / total_s, 1))

        logger.info("load %s: %g req/s for %g s (+%g s warm-up) at %s", profile.name, profile.rate_rps,
                    profile.duration_s, profile.warmup_s, base)
        try:
            run = run_profile(config, profile, on_progress=progress)
        except ValueError as exc:
            raise InvalidInput(f"load test: {exc}", stage="load") from exc
        except SetupError as exc:
            report = LoadReport(verdict=Verdict.FAIL, reason=f"failed: load generator setup: {exc}", targets=targets,
                                failed_targets=[FailedTarget(profile=profile.name, metric="setup", observed=0,
                                                             limit=0, unit="", message=f"setup: {exc}")])
            logger.error("load %s: %s", profile.name, report.reason)
            return report
        runs.append(run)
        done_s += span
        logger.info("load %s: %d requests, p50 %.1f ms, p99 %.1f ms, %.0f req/s served, error rate %.3f%%%s",
                    profile.name, run.requests, run.ms(50), run.ms(99), run.throughput_rps, 100 * run.error_rate,
                    " (generator saturated)" if run.saturation else "")
    report = judge(runs, targets)
    logger.info("load gate: %s", report.reason)
    if in_run:
        create_table_artifact(table=_table(report), key="load-test-results", description=report.reason[:500])
        create_markdown_artifact(markdown=report_markdown(report, latency_chart_svg(runs, targets), mix),
                                 key="load-test-report", description="Latency over time and per endpoint")
    return report
