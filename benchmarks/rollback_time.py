"""How fast a bad release is gone: from the failing stage's verdict to the previous release
healthy again (and the database restored), with a steady background load counting failures.

    PREFECT_API_URL=http://127.0.0.1:4200/api python -m benchmarks.rollback_time [--runs 2]

Needs the sandbox up (`make sandbox-up`). Deploys the good v3.1.0 first, then each bad release.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from datetime import UTC, datetime

from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    FlowFilter,
    FlowFilterName,
    FlowRunFilter,
    FlowRunFilterId,
    FlowRunFilterStartTime,
)
from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings

from tests.support.background_load import BackgroundLoad

GOOD = ("v3.1.0", "3.1.0")
# (release, the stage whose verdict starts the clock)
BAD = [
    (("v3.2.1-unhealthy", "3.2.1-unhealthy"), "deploy_release"),
    (("v3.2.1-badmigration", "3.2.1-badmigration"), "run_migrations"),
]


def deploy(git_ref: str, version: str):
    from flows.staging_deploy import staging_deploy

    return staging_deploy(git_ref=git_ref, version=version, skip_signoff=True, load_duration_s=4.0, return_state=True)


def verdict_to_recovered(state, failing_task: str, started: datetime) -> float:
    """Seconds from the failing task's end to the rollback subflow's end."""
    with get_client(sync_client=True) as client:
        tasks = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id]))
        )
        verdict = max(t.end_time for t in tasks if t.task_key.startswith(failing_task) and t.end_time)
        rollbacks = client.read_flow_runs(
            flow_filter=FlowFilter(name=FlowFilterName(any_=["rollback"])),
            flow_run_filter=FlowRunFilter(start_time=FlowRunFilterStartTime(after_=started)),
        )
    end = max(r.end_time for r in rollbacks if r.end_time)
    return (end - verdict).total_seconds()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=2)
    args = parser.parse_args()
    rows = []
    with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        for release, failing_task in BAD:
            times, failed, sent = [], 0, 0
            for _ in range(args.runs):
                if not deploy(*GOOD).is_completed():
                    print("could not deploy the good release first", file=sys.stderr)
                    return 1
                started = datetime.now(UTC)
                with BackgroundLoad(rate=50, max_seconds=300) as load:
                    state = deploy(*release)
                assert state.is_failed(), state.message
                times.append(verdict_to_recovered(state, failing_task, started))
                failed, sent = failed + len(load.failures), sent + load.sent
            rows.append((release[1], statistics.median(times), max(times), failed, sent))
    print(f"\nrollback time, verdict -> previous release healthy (and database restored), {args.runs} run(s) each")
    print(f"{'release':24} {'median s':>9} {'max s':>7} {'failed/sent requests':>22}")
    for name, median, worst, failed, sent in rows:
        print(f"{name:24} {median:9.1f} {worst:7.1f} {f'{failed}/{sent}':>22}")
    print("(target: under 30 s, 0 failed requests)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
