"""What a cancelled run needs of Prefect to roll back and to end Cancelled with its own message.

How Prefect 3.9.1 cancels a run its process worker started (the UI's Cancel and ``prefect
flow-run cancel`` both set the run Cancelling): the worker's cancellation observer sees the
Cancelling event, tells the run over its control channel that the SIGTERM to come is a cancel,
sends SIGTERM to the run's process group, waits up to 30 s (fixed, in
``prefect.runner._cancellation_manager``) for it to exit, SIGKILLs it if not, and then force-sets
the run Cancelled with the message "Flow run was cancelled successfully.", over whatever the run
said. (SIGTERM of the worker itself is no cancel: the worker SIGINTs itself, and as it shuts down
anyio SIGKILLs the runs it started, with no grace; their journal is left for the next run.)

So two things here:

- ``resume_for_rollback``: a run that is Cancelling (or was Paused for sign-off) may start no task
  (the server aborts a task run whose flow run is not Running), so the rollback, which is tasks
  and a subflow, could not run. The run goes back to Running, named "RollingBack", first.
- ``keep_cancelled_message``: after the run has ended itself Cancelled with what it undid, a small
  detached process (its own session, so the worker's group kill misses it) waits for the
  worker's overwrite and puts the run's own message back.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from uuid import UUID

from prefect.client.orchestration import get_client
from prefect.client.schemas.objects import StateType
from prefect.context import FlowRunContext
from prefect.logging import get_run_logger
from prefect.states import Cancelled, Running

ROLLING_BACK = "RollingBack"
# Longer than the worker's 30 s kill grace plus its hooks and the state proposal.
KEEP_FOR_S = 75.0


def _flow_run_id() -> UUID | None:
    context = FlowRunContext.get()
    return context.flow_run.id if context is not None and context.flow_run is not None else None


def resume_for_rollback() -> None:
    """Put this run back to Running (named RollingBack) if a cancel left it Cancelling or Paused."""
    run_id = _flow_run_id()
    if run_id is None:
        return
    with get_client(sync_client=True) as client:
        state = client.read_flow_run(run_id).state
        if state is not None and state.is_running():
            return
        get_run_logger().warning("cancel requested (%s): rolling back first", state.name if state else "no state")
        running = Running(name=ROLLING_BACK, message="cancel requested: rolling back what this run changed")
        client.set_flow_run_state(run_id, running, force=True)


def keep_cancelled_message(message: str) -> None:
    """Make ``message`` the run's final Cancelled message even if its worker overwrites it later."""
    run_id = _flow_run_id()
    if run_id is None:
        return
    keeper = subprocess.Popen(
        [sys.executable, "-m", "tasks.release.cancellation", str(run_id)],
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,  # out of the run's process group, which the worker kills
        cwd=os.getcwd(),
        env={**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)},
    )
    assert keeper.stdin is not None
    keeper.stdin.write(json.dumps({"message": message}).encode())  # stdin, not argv
    keeper.stdin.close()


def _keep(run_id: UUID, message: str, keep_for_s: float = KEEP_FOR_S) -> None:
    deadline = time.monotonic() + keep_for_s
    with get_client(sync_client=True) as client:
        while time.monotonic() < deadline:
            state = client.read_flow_run(run_id).state
            if state is not None and state.is_final():
                ours = state.type == StateType.CANCELLED and state.message == message
                if not ours:
                    # The worker's finalisation (Cancelled, or Crashed when it could not confirm
                    # Cancelled) over the run's own: put the run's message back, once.
                    if state.type in (StateType.CANCELLED, StateType.CRASHED):
                        client.set_flow_run_state(run_id, Cancelled(message=message), force=True)
                    return
            time.sleep(0.25)


if __name__ == "__main__":
    _keep(UUID(sys.argv[1]), json.loads(sys.stdin.read())["message"])
