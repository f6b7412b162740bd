"""Cancelling a deploy the three ways people do, and watching how its run ends.

``cancel(run_id, how)``: ``"ui"`` posts what the Prefect UI's Cancel button posts (the state
Cancelling, unforced) to the API; ``"cli"`` runs ``prefect flow-run cancel``; ``"sigterm"`` sends
SIGTERM to the sandbox's worker process (by its PID file), as a service manager stopping it does.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import State

from sandbox import config, daemons, procs

WAYS = ("ui", "cli", "sigterm")


def cancel(run_id: str, how: str) -> None:
    if how == "ui":
        response = httpx.post(
            f"{config.PREFECT_API_URL}/flow_runs/{run_id}/set_state",
            json={"state": {"type": "CANCELLING", "name": "Cancelling"}},
            timeout=10,
        )
        response.raise_for_status()
        assert response.json()["status"] == "ACCEPT", response.json()
    elif how == "cli":
        done = subprocess.run(
            ["prefect", "flow-run", "cancel", run_id], capture_output=True, text=True, timeout=60, env=os.environ
        )
        assert done.returncode == 0, done.stdout + done.stderr
    elif how == "sigterm":
        pid = daemons.WORKER.running()
        assert pid is not None, "the sandbox's worker is not running"
        os.kill(pid, signal.SIGTERM)
    else:
        raise ValueError(f"no way to cancel called {how!r}: {WAYS}")


def state_of(run_id: str) -> State:
    with get_client(sync_client=True) as client:
        state = client.read_flow_run(run_id).state
    assert state is not None
    return state


def wait_until_final(run_id: str, timeout_s: float = 600) -> State:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if (state := state_of(run_id)).is_final():
            return state
        time.sleep(0.5)
    raise AssertionError(f"flow run {run_id} did not end within {timeout_s:.0f} s: {state_of(run_id)!r}")


def wait_for_message(run_id: str, prefix: str, timeout_s: float = 120) -> State:
    """The run's final state once its message starts with ``prefix`` (the worker may overwrite
    the run's own message first, and the run's keeper puts it back); the last state seen otherwise."""
    deadline = time.monotonic() + timeout_s
    state = wait_until_final(run_id)
    while time.monotonic() < deadline and not (state.message or "").startswith(prefix):
        time.sleep(0.5)
        state = state_of(run_id)
    return state


def wait_for_exit(pid: int, timeout_s: float = 90) -> bool:
    """True once ``pid`` has gone (the worker shutting down after SIGTERM)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not Path(f"/proc/{pid}").exists() or _zombie(pid):
            return True
        time.sleep(0.2)
    return False


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().split(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def processes_of_flow_run(flow_run_id: str) -> list[int]:
    """PIDs of the processes the worker started for this flow run (found by the run id in their environment)."""
    needle = f"PREFECT__FLOW_RUN_ID={flow_run_id}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if needle in (entry / "environ").read_bytes().split(b"\0"):
                    found.append(int(entry.name))
            except OSError:
                continue  # gone, or not ours to read
    return found


def kill_worker_and_its_run(flow_run_id: str) -> list[int]:
    """SIGKILL, no grace: what a machine that loses power does to the worker and its flow run."""
    worker = daemons.WORKER.running()
    assert worker is not None, "the sandbox's worker is not running"
    victims = processes_of_flow_run(flow_run_id)
    assert victims, "the flow run's process was not found"
    procs.terminate(worker, daemons.WORKER.expect, grace=0, sig=signal.SIGKILL)
    for pid in victims:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return victims


def children_of(pid: int) -> list[int]:
    """PIDs of pid's child processes: our worker wrapper's one child is Prefect's worker."""
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            found += [int(child) for child in (task / "children").read_text().split()]
        except (OSError, ValueError):
            continue  # gone
    return found


def run_processes_but_its_keeper(flow_run_id: str) -> list[int]:
    """The run's processes other than the detached keeper of its Cancelled message (which
    outlives the run on purpose, tasks/release/cancellation.py)."""
    keeper = b"tasks.release.cancellation"
    found = []
    for pid in processes_of_flow_run(flow_run_id):
        try:
            if keeper not in Path(f"/proc/{pid}/cmdline").read_bytes():
                found.append(pid)
        except OSError:
            continue  # gone
    return found
