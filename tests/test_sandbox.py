"""The local sandbox works for real: every service answers a real request.

Assumes the sandbox is up (`make sandbox-up`). One test takes it down and up again; it declares
that with ``broken_service``, whose finaliser brings it up if the test did not and checks every
service healthy, so the tests after it, in any order, find the sandbox as the others do.
"""

from __future__ import annotations

import socket
import ssl
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import psycopg
import pytest

from sandbox import config, procs, services
from sandbox.daemons import redis_command
from tests.support.faults import Service

pytestmark = pytest.mark.sandbox

ALERTS = {"HighErrorRate", "HighLatency", "DatabaseDown", "CacheDown"}


@pytest.fixture(scope="module", autouse=True)
def sandbox_is_up(sandbox_up):
    if not config.SECRETS_FILE.exists():
        pytest.fail(f"no {config.SECRETS_FILE}: run `make sandbox-up` before these tests")


@pytest.fixture(scope="module")
def secrets() -> dict[str, str]:
    return config.load_secrets()


@pytest.fixture(scope="module")
def ca_context() -> ssl.SSLContext:
    return ssl.create_default_context(cafile=str(config.CA_CERT))


def eventually(probe, timeout: float = 10.0, interval: float = 0.25):
    """Return probe()'s first truthy result within timeout, else its last result."""
    deadline = time.monotonic() + timeout
    while True:
        result = probe()
        if result or time.monotonic() > deadline:
            return result
        time.sleep(interval)


def test_postgres_row_written_on_primary_is_read_on_replica(secrets):
    table = f"sandbox_probe_{uuid.uuid4().hex[:8]}"
    marker = uuid.uuid4().hex
    password = secrets["architect_db_password"]
    with psycopg.connect(config.pg_conninfo(config.PG_PRIMARY_PORT, password), autocommit=True) as primary:
        assert primary.execute("SELECT pg_is_in_recovery()").fetchone()[0] is False
        primary.execute(f"CREATE TABLE {table} (marker text PRIMARY KEY)")
        try:
            primary.execute(f"INSERT INTO {table} VALUES (%s)", (marker,))
            with psycopg.connect(config.pg_conninfo(config.PG_REPLICA_PORT, password), autocommit=True) as replica:
                assert replica.execute("SELECT pg_is_in_recovery()").fetchone()[0] is True

                def replicated():
                    try:
                        return replica.execute(f"SELECT marker FROM {table}").fetchall()
                    except psycopg.errors.UndefinedTable:
                        return None

                assert eventually(replicated) == [(marker,)]
                with pytest.raises(psycopg.errors.ReadOnlySqlTransaction):
                    replica.execute(f"INSERT INTO {table} VALUES ('nope')")
        finally:
            primary.execute(f"DROP TABLE {table}")


def test_architect_owns_the_staging_database(secrets):
    with psycopg.connect(config.pg_conninfo(password=secrets["architect_db_password"])) as conn:
        owner = conn.execute(
            "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = current_database()"
        ).fetchone()[0]
        limit = conn.execute("SHOW max_connections").fetchone()[0]
    assert owner == config.PG_USER
    assert limit == "200"


def test_postgres_rejects_a_wrong_password():
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(config.pg_conninfo(password="wrong"), connect_timeout=3)


def test_redis_set_get_with_aof():
    key, value = f"sandbox-test:{uuid.uuid4().hex}", uuid.uuid4().hex
    assert redis_command("SET", key, value, "EX", "60") == b"+OK"
    assert redis_command("GET", key) == value.encode()
    assert b"aof_enabled:1" in redis_command("INFO", "persistence")
    redis_command("DEL", key)


def test_prometheus_has_the_four_alert_rules():
    groups = httpx.get(f"{config.PROMETHEUS_URL}/api/v1/rules").json()["data"]["groups"]
    rules = {r["name"]: r for g in groups for r in g["rules"] if r["type"] == "alerting"}
    assert set(rules) >= ALERTS
    assert "http_request_duration_seconds_bucket" in rules["HighLatency"]["query"]
    assert " / " in rules["HighErrorRate"]["query"]
    assert all(rules[name]["health"] == "ok" for name in ALERTS)


def test_prometheus_scrapes_the_exporters_and_replica_slots():
    def targets():
        active = httpx.get(f"{config.PROMETHEUS_URL}/api/v1/targets").json()["data"]["activeTargets"]
        by_job: dict[str, list[dict]] = {}
        for target in active:
            by_job.setdefault(target["labels"]["job"], []).append(target)
        if all(t["health"] == "up" for job in ("postgres", "redis") for t in by_job.get(job, [{}])):
            return by_job
        return None

    by_job = eventually(targets, timeout=15)
    assert by_job, "postgres/redis exporter targets are not up"
    slots = sorted(t["labels"]["instance"] for t in by_job["architect-api"])
    assert slots == [f"127.0.0.1:{p}" for p in config.APP_SLOT_PORTS]
    value = httpx.get(f"{config.PROMETHEUS_URL}/api/v1/query", params={"query": "pg_up"}).json()["data"]["result"]
    assert value and value[0]["value"][1] == "1"


def test_prometheus_lifecycle_reload_is_enabled():
    assert httpx.post(f"{config.PROMETHEUS_URL}/-/reload", timeout=10).status_code == 200


def test_registry_accepts_a_pushed_scratch_image(tmp_path: Path):
    docker = pytest.importorskip("docker")
    (tmp_path / "hello.txt").write_text("sandbox registry probe\n")
    (tmp_path / "Dockerfile").write_text("FROM scratch\nCOPY hello.txt /hello.txt\n")
    repo, tag = f"{config.REGISTRY}/sandbox-test/probe", "latest"
    client = docker.DockerClient(base_url=config.DOCKER_HOST)
    try:
        image, _ = client.images.build(path=str(tmp_path), tag=f"{repo}:{tag}", rm=True)
        errors = [line for line in client.images.push(repo, tag=tag, stream=True, decode=True) if "error" in line]
        assert not errors
        client.images.remove(image.id, force=True)
    finally:
        client.close()
    catalog = httpx.get(f"http://{config.REGISTRY}/v2/_catalog").json()["repositories"]
    assert "sandbox-test/probe" in catalog
    tags = httpx.get(f"http://{config.REGISTRY}/v2/sandbox-test/probe/tags/list").json()["tags"]
    assert tag in tags


def test_slack_standin_records_what_slack_sdk_sends(secrets):
    slack_sdk = pytest.importorskip("slack_sdk")
    from slack_sdk.errors import SlackApiError

    client = slack_sdk.WebClient(token=secrets["slack_bot_token"], base_url=config.SLACK_API_URL)
    text = f"sandbox test {uuid.uuid4().hex}"
    blocks = [{"type": "section", "text": {"type": "mrkdwn", "text": text}}]
    posted = client.chat_postMessage(channel="#deployments", text=text, blocks=blocks)
    assert posted["ok"] and posted["channel"].startswith("C") and posted["message"]["text"] == text
    reply = client.chat_postMessage(channel=posted["channel"], text=text + " reply", thread_ts=posted["ts"])
    assert float(reply["ts"]) > float(posted["ts"])
    updated = client.chat_update(channel=posted["channel"], ts=posted["ts"], text=text + " done")
    assert updated["ts"] == posted["ts"]
    assert client.auth_test()["ok"]
    assert client.conversations_info(channel=posted["channel"])["channel"]["id"] == posted["channel"]

    with pytest.raises(SlackApiError) as missing:
        client.chat_update(channel=posted["channel"], ts="1.000001", text="x")
    assert missing.value.response["error"] == "message_not_found"
    with pytest.raises(SlackApiError) as bad_token:
        slack_sdk.WebClient(token="xoxb-wrong", base_url=config.SLACK_API_URL).auth_test()
    assert bad_token.value.response["error"] == "invalid_auth"

    hook = httpx.post(config.SLACK_WEBHOOK_URL, json={"text": text + " webhook"})
    assert hook.status_code == 200 and hook.text == "ok"

    records = httpx.get(f"{config.SLACK_CONTROL_URL}/messages").json()
    mine = [r for r in records if (r.get("text") or "").startswith(text)]
    assert [r["kind"] for r in mine] == ["chat.postMessage", "chat.postMessage", "chat.update", "webhook"]
    assert mine[0]["blocks"] == blocks and mine[1]["thread_ts"] == posted["ts"]


def test_slack_standin_error_mode_answers_500(secrets, slack_mode):
    headers = {"Authorization": f"Bearer {secrets['slack_bot_token']}"}
    slack_mode("error")  # asserts the stand-in says "error"; back to "ok" after the test in any case
    assert httpx.post(f"{config.SLACK_API_URL}auth.test", headers=headers).status_code == 500
    slack_mode("ok")
    assert httpx.post(f"{config.SLACK_API_URL}auth.test", headers=headers).json()["ok"] is True


def test_prefect_server_and_work_pool():
    assert httpx.get(f"{config.PREFECT_API_URL}/health").json() is True
    pool = httpx.get(f"{config.PREFECT_API_URL}/work_pools/{config.PREFECT_WORK_POOL}")
    assert pool.status_code == 200 and pool.json()["type"] == "process"
    env = config.PREFECT_ENV_FILE.read_text()
    assert f"PREFECT_API_URL={config.PREFECT_API_URL}" in env


def test_nginx_redirects_http_and_serves_verified_https(ca_context):
    plain = httpx.get(f"{config.API_HTTP_URL}/health", follow_redirects=False)
    assert plain.status_code == 301
    assert plain.headers["location"] == f"https://localhost:{config.NGINX_HTTPS_PORT}/health"
    for base in (config.API_URL, f"https://127.0.0.1:{config.NGINX_HTTPS_PORT}"):
        with httpx.Client(verify=ca_context, timeout=10) as client:
            own = client.get(f"{base}/nginx-health")
            assert own.status_code == 200
            assert own.headers["strict-transport-security"] == "max-age=31536000"
            assert client.get(f"{base}/static-ok").text == "ok"
            # 502 when no replica runs, 200 when the app is deployed.
            assert client.get(f"{base}/health").status_code in (200, 502)


def test_https_is_rejected_without_the_sandbox_ca():
    with pytest.raises(httpx.ConnectError):
        httpx.get(
            f"{config.API_URL}/nginx-health",
            verify=ssl.create_default_context(cafile="/etc/ssl/certs/ca-certificates.crt"),
        )


def test_status_reports_every_service_healthy():
    rows = services.status()
    assert {r["service"] for r in rows} >= {
        "postgres-primary",
        "postgres-replica",
        "postgres-prefect",
        "redis",
        "dockerd",
        "registry",
        "prometheus",
        "nginx-https",
        "nginx-http",
        "slack-standin",
        "prefect-server",
        "prefect-worker",
    }
    assert [r for r in rows if not r["healthy"]] == []


def test_the_prefect_server_keeps_its_data_in_its_own_postgresql():
    name = f"sandbox_probe_{uuid.uuid4().hex[:8]}"
    httpx.post(
        f"{config.PREFECT_API_URL}/variables/", json={"name": name, "value": "stored"}, timeout=10
    ).raise_for_status()
    try:
        with psycopg.connect(config.prefect_conninfo()) as conn:
            row = conn.execute("SELECT value FROM variable WHERE name = %s", (name,)).fetchone()
    finally:
        httpx.delete(f"{config.PREFECT_API_URL}/variables/name/{name}", timeout=10)
    assert row is not None and row[0] == "stored", row


# --- the whole sandbox down and up again ---------------------------------------------
OUR_PORTS = (
    config.PG_PRIMARY_PORT,
    config.PG_REPLICA_PORT,
    config.PG_PREFECT_PORT,
    config.REDIS_PORT,
    config.REGISTRY_PORT,
    config.PROMETHEUS_PORT,
    config.POSTGRES_EXPORTER_PORT,
    config.REDIS_EXPORTER_PORT,
    config.NGINX_HTTP_PORT,
    config.NGINX_HTTPS_PORT,
    config.SLACK_PORT,
    config.PREFECT_PORT,
)


def _listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.5)
        return sock.connect_ex((config.HOST, port)) == 0


def _sandbox(*args: str, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sandbox", *args], cwd=config.REPO_ROOT, capture_output=True, text=True, timeout=timeout
    )


def test_restart_cycle_down_then_up_is_healthy(broken_service):
    whole = broken_service(
        Service(
            "the whole sandbox",
            stop=lambda: _sandbox("down", timeout=300),
            start=lambda: _sandbox("up", timeout=600),
            app_survives=False,
        )
    )
    down = whole.stop()
    assert down.returncode == 0, down.stdout + down.stderr
    still = [p for p in OUR_PORTS if _listening(p)]
    assert still == [], f"still listening after down: {still}"
    assert procs.mounts_under(config.STATE_DIR) == [], "a mount under the sandbox's state is left after down"

    up = _sandbox("up", timeout=600)
    # 2 = every service healthy but a hook owned by another module failed.
    assert up.returncode in (0, 2), up.stdout + up.stderr
    rows = services.status()
    assert [r for r in rows if not r["healthy"]] == []
    again = _sandbox("up", timeout=300)  # idempotent: nothing restarted
    assert "started" not in again.stdout.replace("not started", ""), again.stdout
