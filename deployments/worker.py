"""The Prefect worker with a graceful stop: SIGTERM rolls back the runs it is running (issue 15).

``python -m deployments.worker --pool POOL [prefect worker start options ...]`` starts
``prefect worker start --pool POOL ...`` as a child and passes its output through (the child
writes to this process's stdout and stderr). On SIGTERM or SIGINT it does not pass the signal on
at once: Prefect 3.9.1's process worker SIGKILLs its flow-run processes as it shuts down, so a
run could undo nothing. Instead it

1. reads the pool's flow runs that are Running, Paused or Cancelling,
2. sets each Running or Paused one to Cancelling, unforced, as ``prefect flow-run cancel`` and the
   UI's Cancel do (the worker then SIGTERMs the run, which rolls itself back and ends Cancelled),
3. waits until each has reached a final state, at most ``DRAIN_S`` in all, one log line per run,
4. then SIGTERMs the worker, SIGKILLs it after ``WORKER_GRACE_S``, and exits with its status.

The worker runs in its own session, so a signal to this process's group (``sandbox down``) does
not reach it before the runs are drained, and it gets SIGKILL if this process dies (a SIGKILLed
wrapper must not leave a worker behind).
"""

from __future__ import annotations

import argparse
import ctypes
import logging
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import FrameType
from uuid import UUID

from prefect.client.orchestration import SyncPrefectClient, get_client
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterState,
    FlowRunFilterStateType,
    WorkPoolFilter,
    WorkPoolFilterName,
)
from prefect.client.schemas.objects import FlowRun, State, StateType
from prefect.settings import PREFECT_API_REQUEST_TIMEOUT, temporary_settings

# A run's rollback takes 5-8 s and the worker allows 30 s from its SIGTERM of the run to SIGKILL.
DRAIN_S = 50.0
WORKER_GRACE_S = 15.0
POLL_S = 0.5
API_TIMEOUT_S = 5.0
# Set by tasks/release/cancellation.py while a cancelled run undoes itself: already on its way.
ROLLING_BACK = "RollingBack"
PR_SET_PDEATHSIG = 1

log = logging.getLogger("deployments.worker")


def _child_setup() -> None:
    # Runs in the child before exec: default SIGINT (a background shell may have ignored it), and
    # SIGKILL when this wrapper dies, so a killed wrapper never leaves an unmanaged worker.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


def start_worker(pool: str, extra: Sequence[str]) -> subprocess.Popen[bytes]:
    argv = [sys.executable, "-m", "prefect", "worker", "start", "--pool", pool, *extra]
    return subprocess.Popen(argv, stdin=subprocess.DEVNULL, start_new_session=True, preexec_fn=_child_setup)


def _pool_runs(client: SyncPrefectClient, pool: str) -> list[FlowRun]:
    wanted = [StateType.RUNNING, StateType.PAUSED, StateType.CANCELLING]
    return client.read_flow_runs(
        flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=wanted))),
        work_pool_filter=WorkPoolFilter(name=WorkPoolFilterName(any_=[pool])),
        limit=200,
    )


def drain(pool: str, deadline: float) -> dict[UUID, str]:
    """Cancel the pool's live runs and wait (until ``deadline``) for each to end; returns how each ended."""
    ended: dict[UUID, str] = {}
    with temporary_settings({PREFECT_API_REQUEST_TIMEOUT: API_TIMEOUT_S}), get_client(sync_client=True) as client:
        runs = _pool_runs(client, pool)
        log.info("graceful stop: %d live flow run(s) in pool %s", len(runs), pool)
        for run in runs:
            state = run.state
            if state is None or state.type == StateType.CANCELLING or state.name == ROLLING_BACK:
                continue  # already being cancelled
            result = client.set_flow_run_state(run.id, State(type=StateType.CANCELLING))
            log.info("graceful stop: flow run %s (%s) set Cancelling: %s", run.id, run.name, result.status.value)
        waiting = {run.id: run.name for run in runs}
        while waiting and time.monotonic() < deadline:
            for run_id, name in list(waiting.items()):
                state = client.read_flow_run(run_id).state
                if state is not None and state.is_final():
                    ended[run_id] = state.type.value
                    log.info("graceful stop: run %s (%s) ended %s: %s", run_id, name, state.type.value, state.message)
                    del waiting[run_id]
            if waiting:
                time.sleep(POLL_S)
        for run_id, name in waiting.items():
            ended[run_id] = "not final"
            log.warning("graceful stop: run %s (%s) not final after %.0f s; stopping worker", run_id, name, DRAIN_S)
    return ended


def children(pid: int) -> list[int]:
    """PIDs of pid's child processes (the flow-run processes of a worker)."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(child) for child in (task / "children").read_text().split()]
        except (OSError, ValueError):
            continue  # the thread or process has gone
    return found


def wait_for_runs_to_exit(worker: subprocess.Popen[bytes], deadline: float) -> None:
    # A run sets itself Cancelled a moment before its process exits; the worker's own shutdown
    # would SIGKILL it in that moment, so give it until the deadline to go by itself.
    while worker.poll() is None and children(worker.pid) and time.monotonic() < deadline:
        time.sleep(POLL_S / 5)
    left = children(worker.pid) if worker.poll() is None else []
    if left:
        log.warning("graceful stop: the worker still has child process(es) %s", left)


def stop_worker(worker: subprocess.Popen[bytes], grace_s: float = WORKER_GRACE_S) -> int:
    if worker.poll() is None:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(grace_s)
        except subprocess.TimeoutExpired:
            log.warning("graceful stop: the worker outlived %.0f s after SIGTERM; SIGKILL", grace_s)
            worker.kill()
            worker.wait(10)
    code = worker.returncode
    return 128 - code if code < 0 else code  # a signal death as a shell reports it


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pool", required=True)
    args, extra = parser.parse_known_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr)

    asked: list[int] = []

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        asked.append(signum)

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    worker = start_worker(args.pool, extra)
    log.info("started prefect worker (pid %d) for pool %s", worker.pid, args.pool)
    while not asked:  # lives as long as the worker does, or until asked to stop
        try:
            return stop_worker(worker) if worker.wait(1.0) is not None else 0
        except subprocess.TimeoutExpired:
            continue
    log.info("graceful stop: got %s", signal.Signals(asked[0]).name)
    # A second signal while draining changes nothing: every step below is bounded anyway.
    deadline = time.monotonic() + DRAIN_S
    try:
        drain(args.pool, deadline)
    except Exception as exc:  # the API down or refusing: the worker still has to stop
        log.warning("graceful stop: could not drain the pool's runs: %s: %s", type(exc).__name__, exc)
    wait_for_runs_to_exit(worker, deadline)
    code = stop_worker(worker)
    log.info("graceful stop: worker exited with status %d", code)
    return code


if __name__ == "__main__":
    sys.exit(main())
