"""Where a report may become a Prefect artifact: only inside a task run.

Gates are also called bare (``task.fn(...)`` in tests and benchmarks); an artifact made there
would belong to no run, so the gate only returns its report.
"""

from __future__ import annotations

from prefect.context import TaskRunContext


def in_task_run() -> bool:
    """True inside a Prefect task run, where an artifact has a run to belong to."""
    return TaskRunContext.get() is not None
