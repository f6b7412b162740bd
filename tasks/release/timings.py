"""The stage-timings artifact: how long each stage of a run took, as the runner measured it."""

from __future__ import annotations

from collections.abc import Mapping

from tasks.core.artifacts import table_artifact


def publish_stage_timings(timings: Mapping[object, float]) -> None:
    table_artifact(
        key="stage-timings",
        description="How long each stage took",
        table=[{"stage": str(stage), "seconds": seconds} for stage, seconds in timings.items()],
    )
