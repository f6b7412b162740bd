"""The load gate: the guide's profiles against its targets and against the live release.

``run_load_test`` drives ``tasks.gates.load.generator`` (an open-model generator in its own processes)
through the chosen profiles, reads the live release's last load report from the run history
(``history``), and has ``judge`` decide: pass, fail (naming each target missed or regression, and
by how much) or inconclusive (only what a saturated generator can explain, or too few samples).
While it runs a progress artifact moves; at the end ``report`` makes the table (this run beside
the live release), the markdown with the latency-over-time chart, and the data the next release's
load test compares itself with.
"""

from __future__ import annotations

from prefect import task
from prefect.artifacts import create_progress_artifact, update_progress_artifact
from prefect.cache_policies import NO_CACHE
from pydantic import SecretStr

from blocks.environment import StagingEnvironment
from tasks.core.artifacts import in_task_run, markdown_artifact, table_artifact
from tasks.core.errors import InvalidInput
from tasks.core.models import Verdict
from tasks.core.run_log import run_logger
from tasks.core.stages import Stage
from tasks.gates.load.generator import GeneratorConfig, SetupError, run_profile
from tasks.gates.load.history import previous_load_baseline
from tasks.gates.load.judge import (
    KEPT_UP,
    MIN_SAMPLES,
    EndpointResult,
    FailedTarget,
    LoadReport,
    ProfileResult,
    judge,
    profile_result,
)
from tasks.gates.load.model import API_MIX, ProfileRun, profiles_from_targets, static_mix
from tasks.gates.load.report import DATA_KEY, data_markdown, latency_chart_svg, report_markdown, results_table

__all__ = [
    "KEPT_UP",
    "MIN_SAMPLES",
    "EndpointResult",
    "FailedTarget",
    "LoadReport",
    "ProfileResult",
    "judge",
    "latency_chart_svg",
    "profile_result",
    "report_markdown",
    "run_load_test",
]

PROFILE_NAMES = ("light", "medium", "heavy", "sustained")


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
    """The guide's load profiles against ``environment.api_url``, judged against its performance targets
    and against the live release's last load report (the run history's; none: the targets decide alone).

    ``profiles``: any of light (min_rps), medium (target_rps), heavy (peak_rps), sustained (target_rps for
    ``sustained_s``); default light, medium, heavy for ``duration_s`` each after ``warmup_s``. Logs in once per
    generator process as the environment's smoke user unless ``session_cookie`` is given. ``path`` replaces
    the API mix with GET of one path (e.g. ``/static-ok``); ``base_url`` overrides the API URL (loopback only).
    """
    logger = run_logger()
    names = list(profiles or ["light", "medium", "heavy"])
    unknown = [n for n in names if n not in PROFILE_NAMES]
    if unknown or not 0 < duration_s <= 3600 or not 0 < sustained_s <= 86400 or not 0 <= warmup_s <= 60:
        raise InvalidInput(f"load test: unknown profiles {unknown} or duration out of range", stage=Stage.LOAD)
    targets = environment.performance
    plan = [profiles_from_targets(targets, duration_s, warmup_s, sustained_s)[n] for n in names]
    environment.ssl_context()  # the CA must load here, before processes start
    base = (base_url or str(environment.api_url)).rstrip("/")
    mix = static_mix(path) if path else API_MIX
    runs: list[ProfileRun] = []
    in_run = in_task_run()
    progress_id = (
        create_progress_artifact(progress=0.0, key="load-test-progress", description="Load test: " + ", ".join(names))
        if in_run
        else None
    )
    total_s = sum(p.warmup_s + p.duration_s for p in plan)
    done_s = 0.0
    for profile in plan:
        config = GeneratorConfig(
            base_url=base,
            mix=mix,
            ca_file=environment.ca_bundle,
            username=environment.smoke_user,
            password=environment.smoke_password.get_secret_value(),
            session_cookie=session_cookie.get_secret_value() if session_cookie else None,
            slot_s=max(0.5, profile.duration_s / 150),
        )
        span = profile.warmup_s + profile.duration_s

        def progress(share: float, done_s: float = done_s, span: float = span) -> None:
            if progress_id:
                update_progress_artifact(progress_id, progress=round(100 * (done_s + share * span) / total_s, 1))

        logger.info(
            "load %s: %g req/s for %g s (+%g s warm-up) at %s",
            profile.name,
            profile.rate_rps,
            profile.duration_s,
            profile.warmup_s,
            base,
        )
        try:
            run = run_profile(config, profile, on_progress=progress)
        except ValueError as exc:
            raise InvalidInput(f"load test: {exc}", stage=Stage.LOAD) from exc
        except SetupError as exc:
            report = LoadReport(
                verdict=Verdict.FAIL,
                reason=f"failed: load generator setup: {exc}",
                targets=targets,
                failed_targets=[
                    FailedTarget(
                        profile=profile.name, metric="setup", observed=0, limit=0, unit="", message=f"setup: {exc}"
                    )
                ],
            )
            logger.error("load %s: %s", profile.name, report.reason)
            return report
        runs.append(run)
        done_s += span
        logger.info(
            "load %s: %d requests, p50 %.1f ms, p99 %.1f ms, %.0f req/s served, error rate %.3f%%%s",
            profile.name,
            run.requests,
            run.ms(50),
            run.ms(99),
            run.throughput_rps,
            100 * run.error_rate,
            " (generator saturated)" if run.saturation else "",
        )
    baseline, missing = previous_load_baseline()
    logger.info("load baseline: %s", baseline.source if baseline else missing)
    report = judge(runs, targets, baseline, missing)
    logger.info("load gate: %s", report.reason)
    if in_run:
        table_artifact(table=results_table(report), key="load-test-results", description=report.reason[:500])
        markdown_artifact(
            markdown=report_markdown(report, latency_chart_svg(runs, targets), mix),
            key="load-test-report",
            description="Latency over time and per endpoint",
        )
        markdown_artifact(
            markdown=data_markdown(report),
            key=DATA_KEY,
            description="What this load test measured, for the next release to compare with",
        )
    return report
