"""The live release's last load report, read back from the run history (Prefect's artifacts).

The release that is live is the one the last Completed run of the same flow, to the same
environment, deployed: a failed run was rolled back to it, and only a run that passed every gate
completes. That run's ``load-test-data`` artifact is the baseline. Nothing is stored anywhere else.
"""

from __future__ import annotations

import re
from uuid import UUID

import httpx
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    ArtifactFilterKey,
    FlowFilter,
    FlowFilterId,
    FlowRunFilter,
    FlowRunFilterId,
    FlowRunFilterStateType,
)
from prefect.client.schemas.objects import StateType
from prefect.client.schemas.sorting import FlowRunSort
from prefect.context import TaskRunContext
from prefect.exceptions import PrefectException

from tasks.gates.load.judge import LoadBaseline
from tasks.gates.load.report import DATA_KEY, parse_data_markdown

RUNS_LOOKED_AT = 20  # the live release's run is the newest completed one; older ones are only a fallback
_DEPLOYED = re.compile(r"^(\S+) \([0-9a-f]{7,40}\) deployed")


def previous_load_baseline() -> tuple[LoadBaseline | None, str]:
    """(baseline, why there is none) for the running task's flow run; never raises."""
    context = TaskRunContext.get()
    if context is None or context.task_run.flow_run_id is None:
        return None, "not run inside a flow run, so there is no run history to compare with"
    try:
        return _read(context.task_run.flow_run_id)
    except (httpx.HTTPError, PrefectException, OSError, ValueError) as exc:
        return None, f"the run history could not be read ({type(exc).__name__}: {exc})"


def _read(flow_run_id: UUID) -> tuple[LoadBaseline | None, str]:
    with get_client(sync_client=True) as client:
        current = client.read_flow_run(flow_run_id)
        environment = (current.parameters or {}).get("environment")
        runs = client.read_flow_runs(
            flow_filter=FlowFilter(id=FlowFilterId(any_=[current.flow_id])),
            flow_run_filter=FlowRunFilter(
                id=FlowRunFilterId(not_any_=[flow_run_id]),
                state={"type": FlowRunFilterStateType(any_=[StateType.COMPLETED])},
            ),
            sort=FlowRunSort.END_TIME_DESC,
            limit=RUNS_LOOKED_AT,
        )
        runs = [r for r in runs if (r.parameters or {}).get("environment") == environment]
        if not runs:
            return None, f"no earlier completed run to {environment or 'this environment'} in the run history"
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(
                key=ArtifactFilterKey(any_=[DATA_KEY]), flow_run_id=ArtifactFilterFlowRunId(any_=[r.id for r in runs])
            )
        )
    by_run = {a.flow_run_id: a for a in artifacts}
    for run in runs:  # newest first: the live release's run, unless it ran no load test
        artifact = by_run.get(run.id)
        if artifact is None:
            continue
        message = run.state.message if run.state and run.state.message else ""
        deployed = _DEPLOYED.match(message)
        version = deployed.group(1) if deployed else (run.parameters or {}).get("version")
        source = f"{run.name}" + (f" ({version})" if version else "")
        baseline = parse_data_markdown(str(artifact.data), source, version, run.end_time)
        if baseline is not None:
            return baseline, ""
    return None, f"none of the last {len(runs)} completed runs kept a load report ({DATA_KEY})"
