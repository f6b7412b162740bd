"""Judging a release against the one it replaces: a tolerance per measurement, and Mann-Whitney U.

Both the metrics gate (Prometheus, before vs since the deploy) and the load gate (this run's
profiles vs the live release's last load report) use these. A measurement is a regression only
when it is worse than the baseline by more than its ``BaselineTolerance`` (both the relative and
the absolute margin). For latencies, when both samples are large enough, a one-sided Mann-Whitney
U test over the two distributions must agree that the candidate is slower: a quantile that moved
while the distributions cannot be told apart is noise, not a regression. The test never fails a
release on its own (with thousands of requests it calls a 0.1 ms shift significant).

Samples are grouped (value -> count): the generator's log buckets or Prometheus' histogram
buckets, so the test is computed from counts in one pass with the tie correction, never by
expanding every request.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

from pydantic import BaseModel, Field

from blocks.environment import BaselineTolerance
from tasks.core.escaping import for_markdown
from tasks.core.models import Verdict

MIN_DISTRIBUTION_SAMPLES = 50  # fewer requests on either side say nothing about a distribution
TAIL_REQUESTS = 10  # a quantile is compared only with this many requests above it on each side


def enough_for_quantile(requests: float | None, quantile: float) -> bool:
    """Whether ``requests`` put enough of them above ``quantile`` (0-1) for it to mean something:
    400 requests have 4 above their P99, which is then four requests' noise."""
    return requests is not None and requests * (1 - quantile) >= TAIL_REQUESTS


class DistributionTest(BaseModel):
    """One-sided Mann-Whitney U: is the candidate's latency stochastically larger than the baseline's?"""

    baseline_n: int
    candidate_n: int
    u: float = Field(description="U of the candidate: pairs where its request was slower (+0.5 per tie)")
    p_value: float = Field(description="one-sided, normal approximation with tie and continuity corrections")
    effect: float = Field(description="U / (n1 n2): the chance a candidate request is slower than a baseline one")
    alpha: float
    large_effect: float = 0.71

    @property
    def slower(self) -> bool:
        """Significantly AND substantially slower: with hundreds of requests a busy machine alone is significant."""
        return self.p_value < self.alpha and self.effect >= self.large_effect

    def describe(self) -> str:
        p = f"p={self.p_value:.2g}" if self.p_value >= 1e-4 else "p<0.0001"
        if self.slower:
            verdict = "candidate slower"
        elif self.p_value < self.alpha and self.effect > 0.5:
            verdict = f"a shift too small to count (under {self.large_effect:.0%})"
        else:
            verdict = "not distinguishable" if self.effect >= 0.5 else "candidate not slower"
        return (
            f"Mann-Whitney U: {verdict} ({p}, {self.effect:.0%} of request pairs slower; "
            f"n={self.baseline_n:,} vs {self.candidate_n:,})"
        )


def mann_whitney(
    baseline: Mapping[float, float], candidate: Mapping[float, float], alpha: float = 0.01, large_effect: float = 0.71
) -> DistributionTest | None:
    """The test over grouped samples (value -> count); None when either side has too few samples."""
    n_b = sum(baseline.values())
    n_c = sum(candidate.values())
    if n_b < MIN_DISTRIBUTION_SAMPLES or n_c < MIN_DISTRIBUTION_SAMPLES:
        return None
    total = n_b + n_c
    seen = 0.0
    rank_sum_c = 0.0
    ties = 0.0
    for value in sorted(set(baseline) | set(candidate)):
        b, c = baseline.get(value, 0), candidate.get(value, 0)
        group = b + c
        if not group:
            continue
        rank_sum_c += c * (seen + (group + 1) / 2)  # every member of a tie group gets its mean rank
        ties += group**3 - group
        seen += group
    u = rank_sum_c - n_c * (n_c + 1) / 2
    mean = n_b * n_c / 2
    variance = n_b * n_c / 12 * ((total + 1) - ties / (total * (total - 1)))
    if variance <= 0:  # every request in one bucket on both sides: identical as far as can be seen
        p_value = 1.0
    else:
        z = (u - mean - 0.5) / math.sqrt(variance)
        p_value = 0.5 * math.erfc(z / math.sqrt(2))
    return DistributionTest(
        baseline_n=round(n_b),
        candidate_n=round(n_c),
        u=u,
        p_value=min(max(p_value, 0.0), 1.0),
        effect=u / (n_b * n_c),
        alpha=alpha,
        large_effect=large_effect,
    )


def show(value: float | None, unit: str) -> str:
    """A measurement as a person reads it: 4.2 ms, 0.35 %, 0.41."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if unit == "ratio":
        return f"{value:.2%}"
    if unit == "ms":
        return f"{value:,.1f} ms"
    return f"{value:.4g}{unit}"


def show_delta(baseline: float | None, candidate: float | None, unit: str) -> str:
    if baseline is None or candidate is None or math.isnan(baseline) or math.isnan(candidate):
        return "-"
    delta = candidate - baseline
    relative = f" ({delta / baseline:+.0%})" if baseline else ""
    if unit == "ratio":
        return f"{delta * 100:+.2f} points"
    if unit == "ms":
        return f"{delta:+,.1f} ms{relative}"
    return f"{delta:+.4g}{unit}{relative}"


class Comparison(BaseModel):
    """One measurement judged twice: against its absolute threshold, and against the baseline."""

    name: str
    unit: str = ""
    baseline: float | None = Field(None, description="None: no baseline (first deploy, no traffic before it)")
    candidate: float | None = None
    threshold: str = Field("", description="the absolute rule, e.g. '< 500 ms'")
    tolerance: str = Field("", description="the baseline rule, e.g. '+20% and +5 ms'")
    absolute: Verdict = Verdict.INCONCLUSIVE
    absolute_detail: str = ""
    vs_baseline: Verdict | None = Field(Verdict.INCONCLUSIVE, description="None: not judged against a baseline")
    why: str = Field("", description="why the baseline judgment came out as it did")
    distribution: DistributionTest | None = None

    @property
    def delta(self) -> str:
        return show_delta(self.baseline, self.candidate, self.unit)

    @property
    def verdict(self) -> Verdict:
        """A failure of either judgment fails; an inconclusive baseline leaves the absolute judgment to decide."""
        if Verdict.FAIL in (self.absolute, self.vs_baseline):
            return Verdict.FAIL
        return self.absolute

    def row(self) -> str:
        cells = [
            self.name,
            show(self.baseline, self.unit),
            show(self.candidate, self.unit),
            self.delta,
            self.threshold,
            self.tolerance,
            self.absolute.value,
            self.vs_baseline.value if self.vs_baseline else "n/a",
            self.why,
        ]
        return "| " + " | ".join(for_markdown(c) if c else "-" for c in cells) + " |"


TABLE_HEAD = (
    "| check | baseline | candidate | delta | threshold | tolerance | vs threshold | vs baseline | why |\n"
    "|---|---:|---:|---:|---|---|---|---|---|"
)


def judge_against_baseline(
    baseline: float | None,
    candidate: float | None,
    tolerance: BaselineTolerance,
    unit: str,
    distribution: DistributionTest | None = None,
    baseline_missing: str = "no baseline",
    explained_ms: float = 0.0,
) -> tuple[Verdict, str]:
    """The baseline judgment of an upper-bounded measurement (latency, error ratio, pool share).

    ``explained_ms``: how much of a latency the measuring side itself may have added (a busy load
    generator's lag); a regression within it cannot be blamed on the release.
    """
    if baseline is None or candidate is None or math.isnan(baseline) or math.isnan(candidate):
        return Verdict.INCONCLUSIVE, baseline_missing
    allowed = tolerance.allowed(baseline)
    rule = f"at most {show(allowed, unit)} ({tolerance.describe(unit)} over {show(baseline, unit)})"
    if candidate <= allowed:
        return Verdict.PASS, f"{show(candidate, unit)} within {rule}"
    if explained_ms and candidate - explained_ms <= allowed:
        return Verdict.INCONCLUSIVE, (
            f"{show(candidate, unit)} exceeds {rule}, but the load generator's own lag "
            f"({explained_ms:,.1f} ms) can explain the difference"
        )
    if distribution is not None and not distribution.slower:
        return Verdict.PASS, (
            f"{show(candidate, unit)} exceeds {rule}, but the distributions cannot be told apart "
            f"(noise): {distribution.describe()}"
        )
    why = f"REGRESSION: {show(candidate, unit)} exceeds {rule}"
    if distribution is not None:
        why += f"; {distribution.describe()}"
    return Verdict.FAIL, why
