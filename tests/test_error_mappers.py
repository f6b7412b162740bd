"""Each outside system's failures mapped to the error tree: which are temporary, which permanent.

One mapper per system (Docker, Kubernetes, PostgreSQL, HTTP, Prefect). For each: the failures
that may go away when asked again are ``TemporaryError``, the others ``PermanentError``; the
message is one line and still says what the cause was; the context manager chains the cause
and leaves every other exception alone. Where a failure is cheap to cause for real on this
machine (a closed loopback port, a socket that does not exist, a file that is not an archive),
the real library raises it; otherwise the library's own exception classes are built as the
library builds them.
"""

from __future__ import annotations

import socket
import ssl
import subprocess
from pathlib import Path

import docker
import httpx
import psycopg
import psycopg.errors
import pytest
import requests
import urllib3
from docker.errors import (
    APIError,
    BuildError,
    ContainerError,
    ImageNotFound,
    InvalidArgument,
    NotFound,
    StreamParseError,
)
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException
from prefect.exceptions import MissingResult, ObjectAlreadyExists, ObjectNotFound, PrefectHTTPStatusError

from blocks.database.errors import pg_tool_error, postgres_error, postgres_errors
from blocks.database.pg_binaries import find_pg_tool
from blocks.docker.client import DockerConnection
from blocks.docker.errors import docker_error, docker_errors
from blocks.kubernetes.errors import kubernetes_error, kubernetes_errors, refusal
from tasks.core.errors import DeployError, PermanentError, TemporaryError
from tasks.core.http_errors import http_error, http_errors
from tasks.core.prefect_errors import prefect_error, prefect_errors

pytestmark = pytest.mark.unit

ENGINE = "unix:///var/run/docker.sock"


def one_line_keeping(error: DeployError, *causes: str) -> None:
    text = str(error)
    assert "\n" not in text and "\t" not in text, text
    for cause in causes:
        assert cause in text, (cause, text)


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- Docker ---------------------------------------------------------------------------------------


def docker_api_error(status: int, explanation: str, cls: type[APIError] = APIError) -> APIError:
    response = requests.Response()
    response.status_code = status
    response.url = "http+docker://localhost/v1.41/images/create"
    return cls(f"{status} error", response=response, explanation=explanation)


@pytest.mark.parametrize("status", [500, 502, 503, 408, 409, 429])
def test_docker_engine_busy_or_failing_is_temporary(status):
    error = docker_error(
        docker_api_error(status, "Get http://127.0.0.1:55000/v2/: connection\nrefused"), "pulling x", ENGINE
    )
    assert isinstance(error, TemporaryError)
    one_line_keeping(error, f"answered {status}", "while pulling x", "connection refused", ENGINE)


@pytest.mark.parametrize("status, cls", [(400, APIError), (403, APIError), (404, NotFound), (404, ImageNotFound)])
def test_docker_refusals_are_permanent(status, cls):
    error = docker_error(docker_api_error(status, "manifest unknown", cls), "pulling x", ENGINE)
    assert isinstance(error, PermanentError) and not isinstance(error, TemporaryError)
    one_line_keeping(error, f"answered {status}", "manifest unknown")


@pytest.mark.parametrize(
    "exc",
    [
        requests.exceptions.ConnectionError("('Connection aborted.', FileNotFoundError(2, 'No such file'))"),
        requests.exceptions.ReadTimeout("UnixHTTPConnectionPool: Read timed out. (read timeout=60)"),
        urllib3.exceptions.ProtocolError("Connection aborted.\nRemoteDisconnected"),
        docker.errors.DockerException("Error while fetching server API version: ('Connection aborted.',\n x)"),
    ],
)
def test_docker_engine_not_answering_is_temporary(exc):
    error = docker_error(exc, "rolling out 3.2.1", ENGINE)
    assert isinstance(error, TemporaryError)
    one_line_keeping(error, f"Docker engine at {ENGINE} did not answer while rolling out 3.2.1", type(exc).__name__)


def test_a_stream_cut_off_mid_answer_is_temporary():
    assert isinstance(docker_error(StreamParseError(ValueError("half a JSON")), "pushing x", ENGINE), TemporaryError)


def test_a_failed_build_or_command_is_permanent():
    build = docker_error(
        BuildError("The command '/bin/sh -c go vet' returned\na non-zero code: 1", []), "docker build of x", ENGINE
    )
    assert isinstance(build, PermanentError)
    one_line_keeping(build, "docker build of x failed", "returned a non-zero code: 1")
    command = docker_error(
        ContainerError(None, 3, ["--version"], "img", b"panic: boom\ngoroutine 1"), "running --version", ENGINE
    )
    assert isinstance(command, PermanentError)
    one_line_keeping(command, "exit status 3", "panic: boom goroutine 1")


def test_settings_the_sdk_refuses_are_permanent():
    error = docker_error(InvalidArgument("invalid\nmount"), "starting x", ENGINE)
    assert isinstance(error, PermanentError) and not isinstance(error, TemporaryError)
    one_line_keeping(error, "InvalidArgument: invalid mount")


def test_an_engine_that_is_not_there_is_temporary_for_real(tmp_path):
    address = f"unix://{tmp_path}/no-docker.sock"
    with pytest.raises(TemporaryError) as caught:
        DockerConnection(address, timeout_s=2)
    one_line_keeping(caught.value, f"Docker engine at {address} did not answer while connecting")
    assert caught.value.__cause__ is not None


def test_docker_errors_chains_the_cause_keeps_the_stage_and_leaves_the_rest_alone():
    cause = docker_api_error(404, "no such container")
    with pytest.raises(PermanentError) as caught, docker_errors("removing x", ENGINE, stage="deploy"):
        raise cause
    assert caught.value.__cause__ is cause and caught.value.stage == "deploy"
    with pytest.raises(ValueError), docker_errors("removing x", ENGINE):
        raise ValueError("not Docker's")
    mine = TemporaryError("no free port slot")
    with pytest.raises(TemporaryError) as passed, docker_errors("rolling out", ENGINE):
        raise mine
    assert passed.value is mine


# -- Kubernetes -----------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [500, 503, 504, 429])
def test_kubernetes_overloaded_or_failing_is_temporary(status):
    error = refusal(status, b'{"kind":"Status","message":"etcdserver: request\\ntimed out"}', "apply Deployment x")
    assert isinstance(error, TemporaryError)
    one_line_keeping(error, f"Kubernetes refused apply Deployment x: HTTP {status}", "etcdserver: request timed out")


@pytest.mark.parametrize("status", [400, 403, 404, 409, 422])
def test_kubernetes_refusals_are_permanent(status):
    error = refusal(status, b'{"message":"deployments.apps \\"x\\" is forbidden"}', "apply Deployment x")
    assert isinstance(error, PermanentError) and not isinstance(error, TemporaryError)
    one_line_keeping(error, f"HTTP {status}", 'deployments.apps "x" is forbidden')


def test_kubernetes_refusal_of_a_secret_keeps_the_servers_message_out():
    error = refusal(422, b'{"message":"data[JWT_SECRET]: s3cr3t is invalid"}', "create secret x", secret=True)
    assert "s3cr3t" not in str(error) and str(error) == "Kubernetes refused create secret x: HTTP 422"


def test_kubernetes_refusal_that_is_not_json_shows_its_start():
    error = refusal(502, b"<html>Bad\ngateway</html>", "server version")
    assert isinstance(error, TemporaryError)
    one_line_keeping(error, "<html>Bad gateway</html>")


@pytest.mark.parametrize(
    "exc",
    [
        ApiException(status=0, reason="SSLError\n[SSL] record layer failure"),
        urllib3.exceptions.MaxRetryError(None, "/version", "Connection refused"),
        urllib3.exceptions.ReadTimeoutError(None, "/version", "Read timed out"),
        ConnectionResetError(104, "Connection reset by peer"),
    ],
)
def test_kubernetes_api_not_reachable_is_temporary(exc):
    error = kubernetes_error(exc, "server version")
    assert isinstance(error, TemporaryError)
    one_line_keeping(error, "Kubernetes API unreachable (server version)")


def test_kubernetes_typed_api_errors_are_judged_by_status():
    # What the generated API classes raise: an ApiException carrying the answer.
    assert isinstance(kubernetes_error(ApiException(status=503, reason="Service Unavailable"), "x"), TemporaryError)
    forbidden = kubernetes_error(ApiException(status=403, reason="Forbidden"), "x")
    assert isinstance(forbidden, PermanentError) and not isinstance(forbidden, TemporaryError)


def test_kubernetes_client_without_configuration_is_permanent():
    error = kubernetes_error(ConfigException("Invalid kube-config file.\nNo configuration found."), "kubeconfig")
    assert isinstance(error, PermanentError) and not isinstance(error, TemporaryError)
    one_line_keeping(error, "Invalid kube-config file. No configuration found.")


def test_kubernetes_errors_drops_the_chain_and_leaves_the_rest_alone():
    with pytest.raises(TemporaryError) as caught, kubernetes_errors("server version"):
        raise urllib3.exceptions.NewConnectionError(None, "refused")
    assert caught.value.__cause__ is None and caught.value.__suppress_context__
    with pytest.raises(KeyError), kubernetes_errors("server version"):
        raise KeyError("items")


# -- PostgreSQL -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "exc",
    [
        psycopg.errors.LockNotAvailable("canceling statement due to lock timeout"),
        psycopg.errors.QueryCanceled("canceling statement due to statement timeout"),
        psycopg.errors.SerializationFailure("could not serialize access"),
        psycopg.errors.DeadlockDetected("deadlock detected"),
        psycopg.errors.TooManyConnections("sorry, too many clients already"),
        psycopg.errors.AdminShutdown("terminating connection due to administrator command"),
        psycopg.errors.CannotConnectNow("the database system is starting up"),
    ],
)
def test_postgres_failures_that_pass_are_temporary(exc):
    error = postgres_error(exc, "taking the backup", "127.0.0.1:55432/app")
    assert isinstance(error, TemporaryError)
    one_line_keeping(error, "taking the backup", exc.sqlstate, type(exc).__name__)


@pytest.mark.parametrize(
    "exc",
    [
        psycopg.errors.UniqueViolation("duplicate key value violates unique constraint"),
        psycopg.errors.UndefinedTable('relation "schema_migrations" does not exist'),
        psycopg.errors.InsufficientPrivilege("permission denied for table events"),
        psycopg.errors.RaiseException("restore verification: row count of public.events"),
        psycopg.ProgrammingError("the query has 0 placeholders but 1 parameters were passed"),
        psycopg.InterfaceError("the connection is closed"),
    ],
)
def test_postgres_failures_that_stay_are_permanent(exc):
    error = postgres_error(exc, "restoring x", "127.0.0.1:55432/app")
    assert isinstance(error, PermanentError) and not isinstance(error, TemporaryError)
    one_line_keeping(error, "restoring x", str(exc))


def test_a_database_that_does_not_answer_is_temporary_for_real():
    port = closed_port()
    with pytest.raises(TemporaryError) as caught, postgres_errors("taking the backup", f"127.0.0.1:{port}/app"):
        psycopg.connect(host="127.0.0.1", port=port, dbname="app", connect_timeout=2)
    assert isinstance(caught.value.__cause__, psycopg.OperationalError)
    one_line_keeping(
        caught.value,
        f"database 127.0.0.1:{port}/app unreachable while taking the backup",
        "Connection refused",
        "Is the server running",
    )


@pytest.mark.parametrize(
    "tool, code, stderr",
    [
        (
            "pg_dump",
            1,
            'pg_dump: error: connection to server at "127.0.0.1", port 55432 failed: Connection refused\n'
            "\tIs the server running on that host and accepting TCP/IP connections?\n",
        ),
        (
            "pg_dump",
            1,
            "pg_dump: error: query failed: ERROR:  canceling statement due to statement timeout\n"
            "pg_dump: detail: Query was: LOCK TABLE public.events IN ACCESS SHARE MODE\n",
        ),
        ("pg_dump", 1, "pg_dump: error: query failed: ERROR:  canceling statement due to lock timeout\n"),
        ("pg_dump", 1, "pg_dump: error: query failed: server closed the connection unexpectedly\n"),
        (
            "psql",
            3,
            'psql:<stdin>:12: ERROR:  55P03: could not obtain lock on relation "events"\n'
            "LOCATION:  LockAcquireExtended, lock.c:1035\n",
        ),
        ("psql", 3, "psql:<stdin>:40: ERROR:  40P01: deadlock detected\nDETAIL:  Process 1 waits for ShareLock\n"),
        ("psql", 2, "psql:<stdin>:7: fatal: connection to server was lost\n"),
    ],
)
def test_pg_tool_failures_that_pass_are_temporary(tool, code, stderr):
    error = pg_tool_error(tool, code, stderr)
    assert isinstance(error, TemporaryError)
    one_line_keeping(error, f"{tool} exited {code}: ")
    assert "LOCATION" not in str(error)


@pytest.mark.parametrize(
    "tool, code, stderr",
    [
        ("pg_dump", 1, "pg_dump: error: could not write to output file: No space left on device\n"),
        ("pg_restore", 1, "pg_restore: error: input file does not appear to be a valid archive (too short?)\n"),
        (
            "psql",
            3,
            "psql:<stdin>:2: ERROR:  P0001: restore verification: row count of public.events is 10,\n"
            "expected 12\nCONTEXT:  PL/pgSQL function inline_code_block line 1 at RAISE\n"
            "LOCATION:  exec_stmt_raise, pl_exec.c:3891\n",
        ),
        ("psql", 3, 'psql:<stdin>:3: ERROR:  42P07: relation "events" already exists\n'),
        ("psql", 1, "psql: error: restore-verify.sql: No such file or directory\n"),
    ],
)
def test_pg_tool_failures_that_stay_are_permanent(tool, code, stderr):
    error = pg_tool_error(tool, code, stderr)
    assert isinstance(error, PermanentError) and not isinstance(error, TemporaryError)
    one_line_keeping(error, f"{tool} exited {code}: ")


def test_pg_tool_error_keeps_the_cause_on_one_line_and_carries_stage_and_result():
    stderr = (
        "psql:<stdin>:2: ERROR:  P0001: restore verification: row count of public.events is 10,\n"
        "expected 12\nLOCATION:  exec_stmt_raise, pl_exec.c:3891\n"
    )
    error = pg_tool_error("psql", 3, stderr, stage="rollback", result={"verified": False})
    assert str(error) == (
        "psql exited 3: psql:<stdin>:2: ERROR: P0001: restore verification: "
        "row count of public.events is 10, expected 12"
    )
    assert (error.stage, error.result) == ("rollback", {"verified": False})
    assert str(pg_tool_error("pg_dump", 1, "")) == "pg_dump exited 1"


def test_pg_tools_for_real_a_closed_port_is_temporary_and_a_broken_archive_permanent(tmp_path):
    psql, pg_restore = find_pg_tool("psql", 15), find_pg_tool("pg_restore", 15)
    lost = subprocess.run(
        [psql, "-X", "-h", "127.0.0.1", "-p", str(closed_port()), "-c", "SELECT 1"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert isinstance(pg_tool_error("psql", lost.returncode, lost.stderr), TemporaryError), lost
    archive = Path(tmp_path, "pre-deployment-1.dump")
    archive.write_bytes(b"PGDMP not really a dump")
    broken = subprocess.run(
        [pg_restore, "--list", str(archive)], capture_output=True, text=True, timeout=30, check=False
    )
    error = pg_tool_error("pg_restore --list", broken.returncode, broken.stderr)
    assert isinstance(error, PermanentError) and not isinstance(error, TemporaryError), broken


# -- HTTP -----------------------------------------------------------------------------------------


def fetch(handler, url: str = "http://127.0.0.1:9090/api/v1/query?query=up&token=t0ps3cret") -> None:
    with httpx.Client(transport=httpx.MockTransport(handler)) as client, http_errors("asking Prometheus"):
        client.get(url).raise_for_status()


@pytest.mark.parametrize("status", [500, 502, 503, 504, 408, 425, 429])
def test_http_answers_that_say_later_are_temporary(status):
    with pytest.raises(TemporaryError) as caught:
        fetch(lambda request: httpx.Response(status))
    one_line_keeping(caught.value, "asking Prometheus", f"answered HTTP {status}", "http://127.0.0.1:9090/api/v1/query")
    assert "t0ps3cret" not in str(caught.value), "the query string stays out of the message"


@pytest.mark.parametrize("status", [400, 401, 403, 404, 409, 422])
def test_http_refusals_are_permanent(status):
    with pytest.raises(PermanentError) as caught:
        fetch(lambda request: httpx.Response(status))
    assert not isinstance(caught.value, TemporaryError)
    assert isinstance(caught.value.__cause__, httpx.HTTPStatusError)


@pytest.mark.parametrize(
    "cls",
    [
        httpx.ConnectError,
        httpx.ConnectTimeout,
        httpx.ReadTimeout,
        httpx.PoolTimeout,
        httpx.ReadError,
        httpx.RemoteProtocolError,
    ],
)
def test_http_without_an_answer_is_temporary(cls):
    def handler(request):
        raise cls("[Errno 111] Connection\nrefused", request=request)

    with pytest.raises(TemporaryError) as caught:
        fetch(handler)
    one_line_keeping(caught.value, cls.__name__, "Connection refused")


def test_http_closed_port_is_temporary_for_real():
    with pytest.raises(TemporaryError) as caught, http_errors("registry 127.0.0.1"):
        httpx.get(f"http://127.0.0.1:{closed_port()}/v2/", timeout=2)
    one_line_keeping(caught.value, "registry 127.0.0.1", "ConnectError")


def test_http_certificate_that_does_not_verify_is_permanent():
    def handler(request):
        try:
            raise ssl.SSLCertVerificationError(1, "[SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed")
        except ssl.SSLError as exc:
            raise httpx.ConnectError(str(exc), request=request) from exc

    with pytest.raises(PermanentError) as caught:
        fetch(handler)
    assert not isinstance(caught.value, TemporaryError)
    one_line_keeping(caught.value, "CERTIFICATE_VERIFY_FAILED")


def test_http_requests_that_cannot_work_are_permanent():
    for exc in (
        httpx.UnsupportedProtocol("Request URL has an unsupported protocol 'ftp://'."),
        httpx.TooManyRedirects("Exceeded maximum allowed redirects."),
    ):
        error = http_error(exc, "asking x")
        assert isinstance(error, PermanentError) and not isinstance(error, TemporaryError), exc
    with pytest.raises(PermanentError), http_errors("asking x"):
        httpx.get("ftp://127.0.0.1/")
    with pytest.raises(PermanentError), http_errors("asking x"):
        httpx.URL("http://[::1")


# -- Prefect --------------------------------------------------------------------------------------


def prefect_status_error(status: int) -> PrefectHTTPStatusError:
    request = httpx.Request("POST", "http://127.0.0.1:4200/api/v2/concurrency_limits/filter")
    response = httpx.Response(status, request=request, json={"detail": "database is locked"})
    return PrefectHTTPStatusError.from_httpx_error(httpx.HTTPStatusError("x", request=request, response=response))


@pytest.mark.parametrize("status", [500, 503, 429])
def test_prefect_server_busy_is_temporary(status):
    error = prefect_error(prefect_status_error(status), "reading the deploy locks")
    assert isinstance(error, TemporaryError)
    one_line_keeping(error, "Prefect API, reading the deploy locks", f"HTTP {status}")


@pytest.mark.parametrize(
    "exc",
    [
        prefect_status_error(409),
        prefect_status_error(422),
        ObjectNotFound(http_exc=Exception("404")),
        ObjectAlreadyExists(http_exc=Exception("409")),
        MissingResult("State data is missing.\nTypically, this occurs"),
    ],
)
def test_prefect_refusals_are_permanent(exc):
    error = prefect_error(exc, "creating the deploy locks")
    assert isinstance(error, PermanentError) and not isinstance(error, TemporaryError)
    one_line_keeping(error, "Prefect API, creating the deploy locks")


def test_prefect_server_not_answering_is_temporary_for_real():
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with (
        temporary_settings({PREFECT_API_URL: f"http://127.0.0.1:{closed_port()}/api"}),
        pytest.raises(TemporaryError) as caught,
        prefect_errors("reading the deploy locks"),
        get_client(sync_client=True) as client,
    ):
        client.read_global_concurrency_limit_by_name("staging-deploy-x")
    one_line_keeping(caught.value, "Prefect API, reading the deploy locks", "ConnectError")
