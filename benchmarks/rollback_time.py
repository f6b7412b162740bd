"""How fast a bad release is gone: from the failing stage's verdict to the previous release
healthy again (and the database restored), with a steady background load counting failures.
And how fast a cancel undoes a release: v3.2.0 started through the worker, cancelled as the UI
does during its load test, timed from the cancel request to every replica serving v3.1.0 healthy
through nginx (target 10 s, no failed request).

    PREFECT_API_URL=http://127.0.0.1:4200/api python -m benchmarks.rollback_time [--runs 2] [--only cancel|bad]

Needs the sandbox up (`make sandbox-up`) and the deployments registered (`make deployments`).
Deploys the good v3.1.0 first, then each bad release, then the cancelled one.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
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

from sandbox.daemons import SKIP_SIGNOFF_ALLOWED
from tests.support.background_load import BackgroundLoad

# The good release is deployed in this process, as the sandbox's worker would run it: with its say on skipping sign-off.
os.environ.setdefault("ARCHITECT_ALLOW_SKIP_SIGNOFF", SKIP_SIGNOFF_ALLOWED)

CANCELLED = ("v3.2.0", "3.2.0")  # migration 003: the cancel restores the database too

GOOD = ("v3.1.0", "3.1.0")
# (release, the stage whose verdict starts the clock)
BAD = [
    (("v3.2.1-unhealthy", "3.2.1-unhealthy"), "deploy_release"),
    (("v3.2.1-badmigration", "3.2.1-badmigration"), "run_migrations"),
]


# 005 of the bad-migration release is contract: it runs only when the run names it.
ALLOWED = ["005_error_fingerprint"]


def deploy(git_ref: str, version: str):
    from flows.staging_deploy import staging_deploy

    return staging_deploy(
        git_ref=git_ref,
        version=version,
        skip_signoff=True,
        load_duration_s=4.0,
        allow_migrations=ALLOWED,
        return_state=True,
    )


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


def previous_release_healthy(env, previous: str) -> bool:
    from tests.support.app_state import api_health, serving_versions

    try:
        return serving_versions(env) == {previous} and api_health(timeout=2)["status_code"] == 200
    except Exception:  # a replica between containers: not yet
        return False


def cancel_during_load(env) -> tuple[float, float, int, int, str]:
    """One cancelled deploy: (cancel → previous healthy s, cancel → run Cancelled s, failed, sent, message)."""
    from prefect.deployments import run_deployment

    from tests.support.cancels import cancel, state_of, wait_for_message
    from tests.support.run_records import task_runs_named

    started = datetime.now(UTC)
    with BackgroundLoad(rate=50, max_seconds=300) as load:
        run = run_deployment(
            "staging-deploy/manual",
            timeout=0,
            parameters={
                "git_ref": CANCELLED[0],
                "version": CANCELLED[1],
                "skip_signoff": True,
                "load_duration_s": 30.0,
                "load_profiles": ["light"],
            },
        )
        run_id = str(run.id)
        deadline = time.monotonic() + 600
        while not task_runs_named("run_load_test%", started) and time.monotonic() < deadline:
            time.sleep(0.2)
        time.sleep(2.0)  # well inside the load test
        asked = time.monotonic()
        cancel(run_id, "ui")
        while not previous_release_healthy(env, GOOD[1]) and time.monotonic() < asked + 120:
            time.sleep(0.1)
        healthy = time.monotonic() - asked
        while not state_of(run_id).is_final() and time.monotonic() < asked + 120:
            time.sleep(0.1)
        ended = time.monotonic() - asked
    state = wait_for_message(run_id, "cancelled during ")
    return healthy, ended, len(load.failures), load.sent, f"{state.type.value}: {state.message}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=2)
    parser.add_argument("--only", choices=["bad", "cancel"], default=None)
    args = parser.parse_args()
    rows = []
    cancels = []
    with temporary_settings({PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
        for release, failing_task in BAD if args.only != "cancel" else []:
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
        if args.only != "bad":
            from blocks.environment import StagingEnvironment

            env = StagingEnvironment.load("sandbox")
            for _ in range(args.runs):
                if not deploy(*GOOD).is_completed():
                    print("could not deploy the good release first", file=sys.stderr)
                    return 1
                cancels.append(cancel_during_load(env))
    if cancels:
        print(f"\ncancel during load of {CANCELLED[1]} (UI cancel, 50 req/s through nginx), {len(cancels)} run(s)")
        print(f"{'cancel -> ' + GOOD[1] + ' healthy s':>30} {'cancel -> run ended s':>22} {'failed/sent':>12}")
        for healthy, ended, failed, sent, message in cancels:
            print(f"{healthy:30.1f} {ended:22.1f} {f'{failed}/{sent}':>12}   {message}")
        print("(target: cancel -> previous release healthy within 10 s, 0 failed requests)")
    if not rows:
        return 0
    print(f"\nrollback time, verdict -> previous release healthy (and database restored), {args.runs} run(s) each")
    print(f"{'release':24} {'median s':>9} {'max s':>7} {'failed/sent requests':>22}")
    for name, median, worst, failed, sent in rows:
        print(f"{name:24} {median:9.1f} {worst:7.1f} {f'{failed}/{sent}':>22}")
    print("(target: under 30 s, 0 failed requests)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
