"""What the gates that talk HTTP to the deployed API record: redacted text, response excerpts, the table.

Every check records the requests it made (method + path, never credentials) and, on failure,
what came back (status + the first ``EXCERPT_CHARS`` characters of the body, secrets redacted).
A gate's table artifact is made only inside a task run.
"""

from __future__ import annotations

from collections.abc import Callable

import httpx

from blocks.environment import StagingEnvironment
from tasks.core.artifacts import in_task_run, table_artifact
from tasks.core.models import CheckResult, GateReport
from tasks.core.redaction import Redactor

EXCERPT_CHARS = 300


def publish_table(report: GateReport, key: str, columns: Callable[[CheckResult], dict]) -> None:
    """The gate's table artifact; only inside a task run (a plain ``.fn`` call has no run to attach it to)."""
    if not in_task_run():
        return
    table_artifact(table=[columns(c) for c in report.checks], key=key, description=f"{report.summary()}")


def environment_secrets(environment: StagingEnvironment) -> list[str]:
    try:
        return environment.secret_values()
    except Exception:  # a partly configured block still has the smoke password to hide
        return [environment.smoke_password.get_secret_value()]


def excerpt(response: httpx.Response, redact: Redactor) -> str:
    try:
        body = response.read().decode("utf-8", "replace")
    except Exception as exc:  # a body cut off mid-stream is still worth a status line
        body = f"<body unreadable: {exc}>"
    return redact(f"{response.status_code} {body[:EXCERPT_CHARS]}")
