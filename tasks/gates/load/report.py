"""What a person reads of a load test: the table, the latency-over-time chart, the markdown report,
and the machine-readable summary the NEXT release's load test compares itself with.

The summary is a markdown artifact (``load-test-data``) holding one JSON block: per profile the
percentiles, the error rate and the latency histogram's bucket counts (the per-request sample the
Mann-Whitney test needs), so the run history keeps what was measured, not only what was concluded.
"""

from __future__ import annotations

import base64
import json
import math
import re

from blocks.environment import PerformanceTargets
from tasks.core.escaping import for_markdown
from tasks.core.models import Verdict
from tasks.gates.load.judge import LoadBaseline, LoadReport, ProfileBaseline
from tasks.gates.load.model import API_MIX, BUCKET_GROWTH, ProfileRun

DATA_KEY = "load-test-data"
DATA_FORMAT = 1
_JSON_BLOCK = re.compile(r"```json\n(.*?)\n```", re.S)


def latency_chart_svg(runs: list[ProfileRun], targets: PerformanceTargets, width: int = 900, height: int = 340) -> str:
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

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11">',
        f'<rect width="{width}" height="{height}" fill="white"/>',
        f'<text x="{left}" y="18" font-size="13" font-weight="bold">Latency over time (ms, log scale)</text>',
    ]
    decade = 0.1
    while decade <= y_max:
        out.append(
            f'<line x1="{left}" x2="{width - right}" y1="{y(decade):.1f}" y2="{y(decade):.1f}" '
            f'stroke="#e5e5e5"/><text x="{left - 6}" y="{y(decade) + 4:.1f}" '
            f'text-anchor="end">{decade:g}</text>'
        )
        decade *= 10
    for label, ms, color in (
        ("P50 target", targets.p50_ms, "#1f77b4"),
        ("P99 target", targets.p99_ms, "#d62728"),
        ("max target", targets.max_ms, "#555"),
    ):
        out.append(
            f'<line x1="{left}" x2="{width - right}" y1="{y(ms):.1f}" y2="{y(ms):.1f}" stroke="{color}" '
            f'stroke-dasharray="5,4"/><text x="{width - right - 4}" y="{y(ms) - 3:.1f}" text-anchor="end" '
            f'fill="{color}">{label} {ms:g}</text>'
        )
    offset = 0
    for run, n in spans:
        out.append(
            f'<line x1="{x(offset):.1f}" x2="{x(offset):.1f}" y1="{top}" y2="{top + plot_h}" stroke="#999"/>'
            f'<text x="{x(offset) + 4:.1f}" y="{top + 12}">{run.profile.name} '
            f"{run.profile.rate_rps:,.0f} req/s</text>"
        )
        for q, color, stroke in ((50, "#1f77b4", 2), (99, "#ff7f0e", 2), (100, "#999", 1)):
            points = " ".join(
                f"{x(offset + s + 0.5):.1f},{y(h.percentile(q) * 1000):.1f}" for s, h in sorted(run.timeline.items())
            )
            if points:
                out.append(f'<polyline points="{points}" fill="none" stroke="{color}" stroke-width="{stroke}"/>')
        for s, count in run.timeline_errors.items():
            out.append(
                f'<rect x="{x(offset + s):.1f}" y="{top + plot_h - 6}" width="{max(1.0, x(1) - left):.1f}" '
                f'height="6" fill="#d62728"><title>{count} errors</title></rect>'
            )
        offset += n
    seconds = sum(n * r.slot_s for r, n in spans)
    out.append(
        f'<line x1="{left}" x2="{width - right}" y1="{top + plot_h}" y2="{top + plot_h}" stroke="#333"/>'
        f'<text x="{left + plot_w / 2}" y="{height - 26}" text-anchor="middle">time since each profile '
        f"started, {seconds:g} s measured in all</text>"
    )
    legend = (("p50", "#1f77b4"), ("p99", "#ff7f0e"), ("max", "#999"), ("errors", "#d62728"))
    for k, (label, color) in enumerate(legend):
        out.append(
            f'<rect x="{left + 90 * k}" y="{height - 16}" width="14" height="4" fill="{color}"/>'
            f'<text x="{left + 90 * k + 18}" y="{height - 11}">{label}</text>'
        )
    out.append("</svg>")
    return "".join(out)


def headline(report: LoadReport) -> str:
    """The report's first line: the verdict and the deciding profile with its number."""
    return f"# Load test {for_markdown(report.reason.split('; ')[0])}"  # the reason starts with the verdict


def report_markdown(report: LoadReport, svg: str, mix=API_MIX) -> str:
    image = base64.b64encode(svg.encode()).decode()
    lines = [headline(report), "", for_markdown(report.reason), ""]
    lines += [f"- **{for_markdown(f.message)}**" for f in report.failed_targets]
    if report.explained_misses:
        lines += [
            "",
            "Seen over the targets while the generator could not keep up, within what its own lag can "
            "explain (not a verdict on the service):",
            "",
        ]
        lines += [f"- {for_markdown(f.message)}" for f in report.explained_misses]
    lines += [f"- {for_markdown(w)}" for w in report.warnings]
    lines += ["", report.baseline.markdown()]
    lines += [
        "",
        f"![latency over time](data:image/svg+xml;base64,{image})",
        "",
        "| profile | endpoint | requests | errors | p50 ms | p99 ms |",
        "|---|---|---:|---:|---:|---:|",
    ]
    for p in report.profiles:
        lines += [
            f"| {p.name} | {e.name} | {e.requests} | {e.errors} | {e.p50_ms:.1f} | {e.p99_ms:.1f} |"
            for e in p.endpoints
        ]
    lines += [
        "",
        "Request mix (weights): " + ", ".join(f"{s.name} ({s.method} {s.path}) {s.weight:g}" for s in mix) + ".",
    ]
    return "\n".join(lines)


def _previous(report: LoadReport, profile: str, metric: str) -> float | str:
    for p in report.baseline.profiles:
        if p.profile == profile:
            for r in p.rows:
                if r.name == metric and r.baseline is not None:
                    return round(r.baseline, 1)
    return ""


def results_table(report: LoadReport) -> list[dict]:
    """One row per profile, this run's numbers beside the live release's last ones."""
    verdicts = {p.profile: p.verdict.value for p in report.baseline.profiles}
    return [
        {
            "profile": p.name,
            "offered req/s": round(p.offered_rps),
            "served req/s": round(p.throughput_rps, 1),
            "requests": p.requests,
            "p50 ms": round(p.p50_ms, 1),
            "p95 ms": round(p.p95_ms, 1),
            "p99 ms": round(p.p99_ms, 1),
            "max ms": round(p.max_ms, 1),
            "error rate": f"{p.error_rate:.3%}",
            "errors": ", ".join(f"{k}: {v}" for k, v in sorted(p.errors.items())) or "none",
            "generator": f"{p.generator_processes} proc, cpu {p.generator_cpu_max:.0%}, "
            f"lag p99 {p.send_lag_p99_ms:.1f} ms, max {p.send_lag_max_ms:.1f} ms",
            "saturated": "; ".join(p.saturation) or "no",
            "live release p50 ms": _previous(report, p.name, "p50"),
            "live release p95 ms": _previous(report, p.name, "p95"),
            "live release p99 ms": _previous(report, p.name, "p99"),
            "vs live release": verdicts.get(p.name, "inconclusive") if report.baseline.source else "no baseline",
        }
        for p in report.profiles
    ]


def data_markdown(report: LoadReport) -> str:
    """What the next release's load test reads back from the run history (only what a pass measured)."""
    data = {
        "format": DATA_FORMAT,
        "bucket_growth": BUCKET_GROWTH,
        "verdict": report.verdict.value,
        "profiles": [
            {
                "name": p.name,
                "offered_rps": p.offered_rps,
                "duration_s": p.duration_s,
                "requests": p.requests,
                "p50_ms": p.p50_ms,
                "p95_ms": p.p95_ms,
                "p99_ms": p.p99_ms,
                "max_ms": p.max_ms,
                "error_rate": p.error_rate,
                "saturated": bool(p.saturation),
                "endpoints": [e.name for e in p.endpoints],
                "latency_buckets": {str(k): v for k, v in sorted(p.latency_buckets.items())},
            }
            for p in report.profiles
            if not math.isnan(p.p99_ms)
        ],
    }
    return (
        "# Load test data\n\nThis run's measurements, for the next release's load test to compare itself with "
        "(latency buckets grow by 0.5 %).\n\n```json\n" + json.dumps(data, separators=(",", ":")) + "\n```\n"
    )


def parse_data_markdown(
    markdown: str, source: str, version: str | None = None, measured_at=None
) -> LoadBaseline | None:
    """A ``load-test-data`` artifact back into a ``LoadBaseline``; None when it is not one."""
    found = _JSON_BLOCK.search(markdown or "")
    if not found:
        return None
    try:
        data = json.loads(found.group(1))
        if data.get("format") != DATA_FORMAT or data.get("verdict") != Verdict.PASS.value:
            return None  # only a load test that passed is a baseline
        profiles = [
            ProfileBaseline(**{**p, "latency_buckets": {int(k): int(v) for k, v in p["latency_buckets"].items()}})
            for p in data["profiles"]
        ]
    except (ValueError, KeyError, TypeError):
        return None
    return LoadBaseline(
        source=source,
        version=version,
        measured_at=measured_at,
        bucket_growth=float(data.get("bucket_growth", BUCKET_GROWTH)),
        profiles=profiles,
    )
