"""The run's redactor: secrets registered once reach no log line, artifact text, error or Slack text.

No sandbox: the log filter, the error mappers, the notifier's escaping point and the artifact
helpers' data are checked in this process. Each test registers values of its own (registration
lasts for the process, as it does in a flow run), so no test depends on another's.
"""

from __future__ import annotations

import base64
import io
import logging
import threading
import uuid
from urllib.parse import quote

import pytest
from docker.errors import APIError, ContainerError
from kubernetes.client.exceptions import ApiException

from blocks.docker.errors import docker_error
from blocks.kubernetes.errors import kubernetes_error
from tasks.core.escaping import for_slack_once
from tasks.core.redaction import MASK, redact, redact_data, register, run_redactor
from tasks.database.tools import ToolExit
from tasks.notify import RunNotifier

pytestmark = pytest.mark.unit


def fresh_secret() -> str:
    return f"pw-{uuid.uuid4().hex[:12]}/+&"  # characters that URL-encoding changes


def every_form(secret: str) -> list[str]:
    return [secret, quote(secret, safe=""), base64.b64encode(secret.encode()).decode()]


def test_a_registered_secret_is_masked_in_every_form_and_a_database_url_in_base64_too():
    secret = fresh_secret()
    register([secret])
    url = f"postgres://architect:{quote(secret, safe='')}@127.0.0.1:5432/app"
    text = " ".join([*every_form(secret), base64.b64encode(url.encode()).decode(), url])
    out = redact(text)
    for form in [*every_form(secret), quote(secret, safe="")]:
        assert form not in out
    assert out.count(MASK) >= 5
    assert run_redactor().knows(secret)


def test_a_secret_registered_in_one_thread_is_masked_in_another():
    """Tasks of a run are threads of the flow's process: what the flow registered, they hide."""
    secret = fresh_secret()
    register([secret])
    seen: list[str] = []
    worker = threading.Thread(target=lambda: seen.append(redact(f"connect with {secret}")))
    worker.start()
    worker.join()
    assert seen == [f"connect with {MASK}"]


def test_log_lines_arguments_and_tracebacks_leave_the_handler_redacted():
    secret = fresh_secret()
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    logger = logging.getLogger(f"test-redaction-{uuid.uuid4().hex}")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        register([secret])  # installs the filter on every handler there is, this one included
        logger.warning("replica said: %s", f"DATABASE_URL=postgres://u:{secret}@db/app")
        try:
            raise RuntimeError(f"boom {base64.b64encode(secret.encode()).decode()}")
        except RuntimeError:
            logger.exception("failed with %r", secret)
    finally:
        logger.removeHandler(handler)
    written = stream.getvalue()
    assert "replica said" in written and "RuntimeError: boom" in written
    for form in every_form(secret):
        assert form not in written, form
    assert written.count(MASK) >= 3


def test_a_url_password_is_masked_with_no_secret_registered():
    assert redact("git clone https://bot:tok3n-value@git.example/app.git") == (
        f"git clone https://bot:{MASK}@git.example/app.git"
    )


def test_table_rows_are_redacted_cell_by_cell():
    secret = fresh_secret()
    register([secret])
    rows = [{"name": "r1", "detail": f"printed {secret}", "ready": False}, ["x", secret, 3]]
    assert redact_data(rows) == [{"name": "r1", "detail": f"printed {MASK}", "ready": False}, ["x", MASK, 3]]


def test_the_docker_mapping_redacts_the_engine_explanation_and_a_one_offs_stderr():
    secret = fresh_secret()
    register([secret])
    api = docker_error(APIError("conflict", explanation=f"env JWT_SECRET={secret} refused"), "starting", "unix://x")
    stderr = f"panic: DATABASE_URL=postgres://u:{secret}@db/app\n" + "x" * 10
    one_off = docker_error(ContainerError("c", 1, "migrate", "img", stderr.encode()), "migrating", "unix://x")
    for error in (api, one_off):
        assert secret not in str(error) and MASK in str(error), str(error)


def test_the_kubernetes_mapping_redacts_the_server_message():
    secret = fresh_secret()
    register([secret])
    exc = ApiException(status=422, reason="Unprocessable")
    exc.body = f'{{"message": "value {secret} is invalid"}}'
    assert str(kubernetes_error(exc, "applying the Deployment")) == (
        f"Kubernetes refused applying the Deployment: HTTP 422 value {MASK} is invalid"
    )


def test_a_pg_tools_stderr_is_redacted_as_it_is_recorded():
    secret = fresh_secret()
    register([secret])
    failed = ToolExit("pg_dump", 1, f'connection to "postgresql://a:{secret}@h/db" failed')
    assert secret not in failed.stderr and secret not in str(failed) and MASK in failed.stderr


def test_the_notifier_redacts_and_escapes_what_it_sends_but_keeps_the_runs_link():
    secret = fresh_secret()
    register([secret])
    url = "http://127.0.0.1:4200/runs/flow-run/abc"
    notifier = RunNotifier(None, "Deploy of <!channel>", url, logging.getLogger("t"), ["deploy"])
    notifier.stage("deploy", "failed", f"rejected: <!channel> see <https://evil.example|here> {secret}")
    text = notifier.render()
    assert "<!channel>" not in text and "<https://evil.example" not in text and secret not in text
    assert "&lt;!channel&gt;" in text and MASK in text
    assert f"<{url}|Open the run in Prefect>" in text
    escaped_before = f"pre-escaped &lt;!here&gt; &amp; {secret}"
    assert notifier._slack_text(escaped_before) == f"pre-escaped &lt;!here&gt; &amp; {MASK}"


def test_slack_once_escaping_never_escapes_twice():
    assert for_slack_once("a &amp; b &lt; c & <d>") == "a &amp; b &lt; c &amp; &lt;d&gt;"
