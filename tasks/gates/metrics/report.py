"""The metrics gate's report: every check's two judgments, as the gate's table and for the sign-off."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

from tasks.core.escaping import for_markdown
from tasks.core.models import GateReport, Verdict
from tasks.gates.baseline import TABLE_HEAD, Comparison, show
from tasks.gates.metrics.judge import Reading
from tasks.gates.metrics.queries import MetricCheck


class MetricsBaseline(BaseModel):
    """What the checks were compared with: the window that ended at the deploy."""

    window: str = ""
    ends_at: datetime | None = Field(None, description="the deploy; None: not known, nothing compared")
    releases: list[str] = Field(default_factory=list, description="earlier releases that served in the window")
    comparisons: list[Comparison] = Field(default_factory=list)

    @property
    def verdict(self) -> Verdict:
        judged = [c.vs_baseline for c in self.comparisons if c.vs_baseline is not None]
        if Verdict.FAIL in judged:
            return Verdict.FAIL
        return Verdict.PASS if judged and set(judged) == {Verdict.PASS} else Verdict.INCONCLUSIVE

    def summary(self) -> str:
        if self.ends_at is None:
            return "vs baseline: not compared (the deploy time is not known)"
        failed = [c.name for c in self.comparisons if c.vs_baseline == Verdict.FAIL]
        missing = [c.name for c in self.comparisons if c.vs_baseline == Verdict.INCONCLUSIVE]
        if failed:
            return f"vs baseline: regression in {', '.join(failed)}"
        if missing:
            return f"vs baseline: inconclusive for {', '.join(missing)} (no baseline); the thresholds decided"
        return "vs baseline: every compared check within its tolerance"

    def markdown(self) -> str:
        when = (
            f"the {self.window} before the deploy ({self.ends_at:%Y-%m-%d %H:%M:%S} UTC)"
            if self.ends_at
            else "nothing (the deploy time is not known)"
        )
        if self.releases:
            when += f", served by {', '.join(self.releases)}"
        lines = [f"**Against the live release** (Prometheus, {when}): {self.verdict.value}", "", TABLE_HEAD]
        lines += [c.row() for c in self.comparisons]
        tests = [
            f"- {for_markdown(c.name)}: {for_markdown(c.distribution.describe())}"
            for c in self.comparisons
            if c.distribution
        ]
        return "\n".join(lines + ([""] + tests if tests else []))


class MetricsReport(GateReport):
    """The metrics gate's ``GateReport`` with the baseline comparison of every check."""

    baseline: MetricsBaseline = Field(default_factory=MetricsBaseline)

    def markdown(self) -> str:
        return f"**{for_markdown(self.summary())}**\n\n{self.baseline.markdown()}"


def table_rows(
    checks: list[MetricCheck], readings: dict[str, Reading], comparisons: dict[str, Comparison], compared: bool
) -> list[dict]:
    """The gate's table: query, value, threshold, samples, verdict; with a deploy time also the baseline's side."""
    rows = []
    for check in checks:
        r, c = readings[check.name], comparisons[check.name]
        row = {
            "check": check.name,
            "query": r.query,
            "value": "" if r.value is None else f"{r.value:.4g}{check.unit}",
            "threshold": f"{check.op} {check.threshold:g}{check.unit}",
            "samples": "" if r.samples is None else r.samples,
            "verdict": c.verdict.value if compared else r.verdict.value,
            "detail": r.detail,
        }
        if compared:
            row |= {
                "baseline": show(c.baseline, c.unit) if c.vs_baseline is not None else "",
                "delta": c.delta if c.vs_baseline is not None else "",
                "tolerance": c.tolerance,
                "vs threshold": r.verdict.value,
                "vs baseline": c.vs_baseline.value if c.vs_baseline is not None else "n/a",
                "why": c.why,
            }
        rows.append(row)
    return rows
