"""The sandbox's long-running servers other than PostgreSQL, each one a `Daemon`.

A Daemon knows how to render its config, start in the foreground under our PID
file, prove it is healthy with a real request, and apply a changed config to a
running process (reload) without restarting it.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from . import config, procs, templates, tls
from .procs import SandboxError

Check = tuple[bool, str]


@dataclass
class Daemon:
    name: str
    address: str
    expect: str  # substring of /proc/<pid>/cmdline
    ports: tuple[int, ...]
    argv: Callable[[], list[str]]
    check: Callable[[], Check]
    prepare: Callable[[], bool] = lambda: False  # render configs; True if changed
    refresh: Callable[[], None] | None = None  # apply changed config while running
    env: Callable[[], dict[str, str]] = dict
    cwd: Path | None = None
    reset_sigint: bool = False
    start_timeout: float = 30.0
    stop_grace: float = 15.0
    _changed: bool = field(default=False, repr=False)
    _kicked: bool = field(default=False, repr=False)

    def running(self) -> int | None:
        return procs.running(self.name, self.expect)

    def healthy(self) -> bool:
        try:
            return self.check()[0]
        except Exception:
            return False

    def kick(self) -> None:
        """Render config and start the process without waiting (lets servers boot in parallel)."""
        self._changed = self.prepare() or self._changed
        if self.running() is None and not self.healthy():
            self._spawn()
            self._kicked = True
            self._changed = False  # a fresh process reads the current config anyway

    def _spawn(self) -> None:
        procs.ensure_ports_free(self.name, self.ports)
        procs.spawn(self.name, self.argv(), env=self.env(), cwd=self.cwd, reset_sigint=self.reset_sigint)

    def ensure(self) -> str:
        """Make it healthy; returns what was done. Never restarts a healthy process."""
        self._changed = self.prepare() or self._changed
        kicked, self._kicked = self._kicked, False
        if self.healthy():
            if kicked:
                return "started"
            if self._changed and self.refresh and self.running():
                self.refresh()
                self._changed = False
                return "healthy, config reloaded"
            self._changed = False
            return "healthy, left running" if self.running() else "healthy (not started by us)"
        action = "started"
        if self.running() is None:
            self._spawn()
            self._changed = False
        if not procs.wait_for(self.healthy, self.start_timeout, interval=0.25):
            if self.running() is not None:
                # Alive but never became healthy: one clean restart.
                self.stop()
                self._spawn()
                action = "restarted"
                if procs.wait_for(self.healthy, self.start_timeout, interval=0.25):
                    self._changed = False
                    return action
            raise SandboxError(
                f"{self.name} is not healthy ({self.check()[1]}); "
                f"log {procs.log_file(self.name)}:\n{procs.log_tail(self.name)}"
            )
        if self._changed and self.refresh:
            self.refresh()  # it was already starting with an older config
        self._changed = False
        return action

    def stop(self) -> bool:
        return procs.stop(self.name, self.expect, self.stop_grace)


# --- checks ------------------------------------------------------------------------
def http_check(url: str, want: int = 200, contains: str | None = None, **kw) -> Check:
    try:
        resp = httpx.get(url, timeout=3, **kw)
    except httpx.HTTPError as exc:
        return False, f"GET failed: {type(exc).__name__}"
    if resp.status_code != want:
        return False, f"GET -> {resp.status_code}"
    if contains is not None and contains not in resp.text:
        return False, f"GET -> {resp.status_code}, '{contains}' missing"
    return True, f"GET -> {resp.status_code}" + (f", {contains.strip()}" if contains else "")


def redis_command(*args: str, port: int = config.REDIS_PORT, timeout: float = 3) -> bytes:
    """Send one RESP command; return the reply's first line, or the value of a bulk
    string reply (None bulk -> b"$-1"). Enough for PING/SET/GET without a client library."""
    payload = f"*{len(args)}\r\n".encode()
    for arg in args:
        data = arg.encode()
        payload += b"$%d\r\n%s\r\n" % (len(data), data)
    with socket.create_connection((config.HOST, port), timeout=timeout) as sock:
        sock.sendall(payload)
        reply = b""
        while b"\r\n" not in reply:
            chunk = sock.recv(4096)
            if not chunk:
                raise OSError("redis closed the connection")
            reply += chunk
        head, _, rest = reply.partition(b"\r\n")
        if not head.startswith(b"$") or head == b"$-1":
            return head
        size = int(head[1:])
        while len(rest) < size + 2:
            chunk = sock.recv(65536)
            if not chunk:
                raise OSError("redis closed the connection")
            rest += chunk
        return rest[:size]


def redis_check() -> Check:
    try:
        reply = redis_command("PING")
    except OSError as exc:
        return False, f"PING failed: {exc}"
    return reply.startswith(b"+PONG"), f"PING -> {reply.strip().decode(errors='replace')}"


def docker_check() -> Check:
    transport = httpx.HTTPTransport(uds=str(config.DOCKER_SOCKET))
    try:
        with httpx.Client(transport=transport, timeout=3) as client:
            resp = client.get("http://docker/_ping")
    except httpx.HTTPError as exc:
        return False, f"GET /_ping failed: {type(exc).__name__}"
    return resp.status_code == 200 and resp.text == "OK", f"GET /_ping -> {resp.text[:20]}"


def prometheus_check() -> Check:
    ok, detail = http_check(f"{config.PROMETHEUS_URL}/-/ready")
    if not ok:
        return ok, detail
    try:
        groups = httpx.get(f"{config.PROMETHEUS_URL}/api/v1/rules", timeout=3).json()["data"]["groups"]
    except (httpx.HTTPError, KeyError, ValueError) as exc:
        return False, f"rules API: {exc}"
    alerts = [r["name"] for g in groups for r in g["rules"] if r.get("type") == "alerting"]
    return len(alerts) >= 4, f"ready, {len(alerts)} alert rules"


def nginx_https_check() -> Check:
    try:
        resp = httpx.get(f"{config.API_URL}/nginx-health", verify=tls.client_context(), timeout=3)
    except (httpx.HTTPError, OSError) as exc:
        return False, f"GET failed: {type(exc).__name__}: {str(exc)[:80]}"
    hsts = "max-age" in resp.headers.get("strict-transport-security", "")
    return resp.status_code == 200 and hsts, f"GET /nginx-health -> {resp.status_code}, cert verified" + (
        "" if hsts else ", HSTS missing"
    )


def nginx_http_check() -> Check:
    try:
        resp = httpx.get(f"{config.API_HTTP_URL}/", timeout=3)
    except httpx.HTTPError as exc:
        return False, f"GET failed: {type(exc).__name__}"
    location = resp.headers.get("location", "")
    return resp.status_code == 301 and location.startswith("https://"), f"GET / -> {resp.status_code} {location}"


def slack_check() -> Check:
    try:
        token = config.load_secrets()["slack_bot_token"]
        resp = httpx.post(f"{config.SLACK_API_URL}auth.test", timeout=3, headers={"Authorization": f"Bearer {token}"})
        body = resp.json()
    except (httpx.HTTPError, ValueError, OSError, KeyError) as exc:
        return False, f"auth.test failed: {type(exc).__name__}"
    return body.get("ok") is True, f"auth.test -> ok={body.get('ok')}"


def _both(first: Check, second: Check) -> Check:
    return first[0] and second[0], f"{first[1]}; {second[1]}"


# --- config rendering ------------------------------------------------------------
def _mkdir(path: Path) -> bool:
    path.mkdir(parents=True, exist_ok=True)
    return False


def _prepare_registry() -> bool:
    config.REGISTRY_DIR.mkdir(parents=True, exist_ok=True)
    return templates.render(
        config.CONF_DIR / "registry.yml",
        config.STATE_DIR / "registry.yml",
        {
            "REGISTRY_DIR": config.REGISTRY_DIR,
            "REGISTRY_PORT": config.REGISTRY_PORT,
            "HTTP_SECRET": config.load_secrets()["registry_http_secret"],
        },
        mode=0o600,
    )


PROMETHEUS_CONF = config.PROMETHEUS_DIR / "prometheus.yml"


def _prepare_prometheus() -> bool:
    (config.PROMETHEUS_DIR / "data").mkdir(parents=True, exist_ok=True)
    rules = config.MONITORING_DIR / "alert-rules.yml"
    changed = templates.render(
        config.MONITORING_DIR / "prometheus.yml",
        PROMETHEUS_CONF,
        {
            "RULES_FILE": rules,
            "POSTGRES_EXPORTER_PORT": config.POSTGRES_EXPORTER_PORT,
            "REDIS_EXPORTER_PORT": config.REDIS_EXPORTER_PORT,
        },
    )
    if shutil.which("promtool"):
        procs.run(["promtool", "check", "config", str(PROMETHEUS_CONF)])  # checks rules too
    # Rules live in the repo and may change between ups; a reload is cheap.
    return True if changed else _rules_changed(rules)


def _rules_changed(rules: Path) -> bool:
    marker = config.PROMETHEUS_DIR / "rules.applied"
    text = rules.read_text()
    if marker.exists() and marker.read_text() == text:
        return False
    marker.write_text(text)
    return True


def _reload_prometheus() -> None:
    httpx.post(f"{config.PROMETHEUS_URL}/-/reload", timeout=10).raise_for_status()


NGINX_CONF = config.NGINX_DIR / "nginx.conf"


def _nginx_cmd(*extra: str) -> list[str]:
    # -e: nginx opens its error log before reading the config; keep even that in state.
    return [
        "nginx",
        "-c",
        str(NGINX_CONF),
        "-p",
        f"{config.NGINX_DIR}/",
        "-e",
        str(config.LOG_DIR / "nginx-error.log"),
        *extra,
    ]


def _prepare_nginx() -> bool:
    for sub in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (config.NGINX_DIR / "tmp" / sub).mkdir(parents=True, exist_ok=True)
    config.LOG_DIR.mkdir(parents=True, exist_ok=True)
    cert_changed = tls.ensure_certificates()
    conf_changed = templates.render(
        config.CONF_DIR / "nginx.conf",
        NGINX_CONF,
        {
            "NGINX_DIR": config.NGINX_DIR,
            "LOG_DIR": config.LOG_DIR,
            "HTTP_PORT": config.NGINX_HTTP_PORT,
            "HTTPS_PORT": config.NGINX_HTTPS_PORT,
            "SERVER_CERT": config.SERVER_CERT,
            "SERVER_KEY": config.SERVER_KEY,
        },
    )
    procs.run(_nginx_cmd("-t", "-q"))
    return cert_changed or conf_changed


def reload_nginx() -> None:
    """Re-read nginx.conf and certificates without dropping connections (SIGHUP via -s reload)."""
    procs.run(_nginx_cmd("-t", "-q"))
    procs.run(_nginx_cmd("-s", "reload"))


def _worker_check() -> Check:
    if WORKER.running() is None:
        return False, "worker process not running"
    try:
        resp = httpx.post(
            f"{config.PREFECT_API_URL}/work_pools/{config.PREFECT_WORK_POOL}/workers/filter", json={}, timeout=5
        )
        workers = resp.json() if resp.status_code == 200 else []
    except (httpx.HTTPError, ValueError) as exc:
        return False, f"workers API: {type(exc).__name__}"
    mine = [w for w in workers if w.get("name") == config.PREFECT_WORKER_NAME]
    status = mine[0].get("status") if mine else "not registered"
    return status == "ONLINE", f"{config.PREFECT_WORK_POOL}: {config.PREFECT_WORKER_NAME} {status}"


def _worker_env() -> dict[str, str]:
    # Flow runs start from the repo root and import flows/, tasks/, blocks/, sandbox/.
    return {
        **config.PREFECT_ENV,
        "PYTHONPATH": str(config.REPO_ROOT),
        "SANDBOX_STATE": str(config.STATE_DIR),
        # The worker's own say (never a block's) on where a run may skip sign-off: the sandbox and its copies.
        "ARCHITECT_ALLOW_SKIP_SIGNOFF": SKIP_SIGNOFF_ALLOWED,
    }


SKIP_SIGNOFF_ALLOWED = "sandbox,test-*"


def _prepare_signoff_receiver() -> bool:
    """The receiver's configuration file (0600): Slack's signing secret, the bot token, its own key."""
    secrets = config.load_secrets()
    wanted = json.dumps(
        {
            "slack_signing_secret": secrets["slack_signing_secret"],
            "slack_bot_token": secrets["slack_bot_token"],
            "slack_api_url": config.SLACK_API_URL,
            "receipt_key": secrets["signoff_receiver_key"],
        },
        indent=2,
    )
    path = config.SIGNOFF_RECEIVER_CONFIG
    if path.exists() and path.read_text() == wanted:
        return False
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path.with_suffix(".tmp"), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(wanted)
    os.replace(path.with_suffix(".tmp"), path)
    return True


def _pg_exporter_env() -> dict[str, str]:
    return {
        "DATA_SOURCE_NAME": f"postgresql://postgres@:{config.PG_PRIMARY_PORT}/postgres"
        f"?host={config.PG_SOCKET_DIR}&sslmode=disable"
    }


# Concurrency leases (the deploy locks, the deployments' own concurrency slots) kept in the
# sandbox's Redis, not in the server's memory, so a server restart keeps every slot's holder
# (tasks/release/lock.py). Database 1: the app uses 0, the benchmarks 15. The repossessor frees a
# dead holder's slots this often after its lease expires (Prefect's default is 15 s).
PREFECT_REDIS_DB = 1
PREFECT_LEASE_ENV = {
    "PREFECT_SERVER_CONCURRENCY_LEASE_STORAGE": "prefect_redis.lease_storage",
    "PREFECT_REDIS_MESSAGING_HOST": config.HOST,
    "PREFECT_REDIS_MESSAGING_PORT": str(config.REDIS_PORT),
    "PREFECT_REDIS_MESSAGING_DB": str(PREFECT_REDIS_DB),
    "PREFECT_SERVER_SERVICES_REPOSSESSOR_LOOP_SECONDS": "5",
}


def _prefect_server_env() -> dict[str, str]:
    return {
        **config.PREFECT_ENV,
        "PREFECT_SERVER_DATABASE_CONNECTION_URL": config.prefect_database_url(),
        **PREFECT_LEASE_ENV,
    }


def _prefect_server_lease_env_stale() -> bool:
    """True when our running server was started without these lease settings (an older sandbox):
    `sandbox up` then restarts it once, as it reloads any other changed config."""
    pid = PREFECT_SERVER.running()
    if pid is None:
        return False
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return False
    have = {k.decode(): v.decode() for k, _, v in (item.partition(b"=") for item in environ)}
    return any(have.get(key) != value for key, value in PREFECT_LEASE_ENV.items())


def _restart_prefect_server() -> None:
    PREFECT_SERVER.stop()
    PREFECT_SERVER._spawn()
    if not procs.wait_for(PREFECT_SERVER.healthy, PREFECT_SERVER.start_timeout, interval=0.25):
        raise SandboxError(f"prefect-server is not healthy after a restart; log {procs.log_file(PREFECT_SERVER.name)}")


H = config.HOST
REDIS = Daemon(
    "redis",
    f"{H}:{config.REDIS_PORT}",
    "redis-server",
    (config.REDIS_PORT,),
    lambda: [
        "redis-server",
        "--port",
        str(config.REDIS_PORT),
        "--bind",
        H,
        "--protected-mode",
        "yes",
        "--appendonly",
        "yes",
        "--dir",
        str(config.REDIS_DIR),
        "--daemonize",
        "no",
        "--logfile",
        "",
    ],
    redis_check,
    prepare=lambda: _mkdir(config.REDIS_DIR),
)
DOCKER = Daemon(
    "dockerd",
    config.DOCKER_HOST,
    "dockerd",
    (),
    lambda: [
        "dockerd",
        "--storage-driver=vfs",
        "--bridge=none",
        "--iptables=false",
        "--ip-masq=false",
        "--userland-proxy=false",
        "--data-root",
        str(config.DOCKER_DATA),
        "--pidfile",
        str(config.DOCKER_DATA / "dockerd.pid"),
        "-H",
        config.DOCKER_HOST,
        "--log-level=warn",
        # Replicas keep serving while the engine restarts (the fault tests restart it mid-deploy).
        "--live-restore",
    ],
    docker_check,
    start_timeout=60,
    stop_grace=30,
)
REGISTRY = Daemon(
    "registry",
    f"{H}:{config.REGISTRY_PORT}",
    "docker-registry",
    (config.REGISTRY_PORT,),
    lambda: ["docker-registry", "serve", str(config.STATE_DIR / "registry.yml")],
    lambda: http_check(f"http://{config.REGISTRY}/v2/"),
    prepare=_prepare_registry,
)
POSTGRES_EXPORTER = Daemon(
    "postgres-exporter",
    f"{H}:{config.POSTGRES_EXPORTER_PORT}",
    "prometheus-postgres-exporter",
    (config.POSTGRES_EXPORTER_PORT,),
    lambda: [
        "prometheus-postgres-exporter",
        f"--web.listen-address={H}:{config.POSTGRES_EXPORTER_PORT}",
        "--log.level=warn",
    ],
    lambda: http_check(f"http://{H}:{config.POSTGRES_EXPORTER_PORT}/metrics", contains="\npg_up 1"),
    env=_pg_exporter_env,
)
REDIS_EXPORTER = Daemon(
    "redis-exporter",
    f"{H}:{config.REDIS_EXPORTER_PORT}",
    "prometheus-redis-exporter",
    (config.REDIS_EXPORTER_PORT,),
    lambda: [
        "prometheus-redis-exporter",
        "-redis.addr",
        config.redis_url(),
        "-web.listen-address",
        f"{H}:{config.REDIS_EXPORTER_PORT}",
    ],
    lambda: http_check(f"http://{H}:{config.REDIS_EXPORTER_PORT}/metrics", contains="\nredis_up 1"),
)
PROMETHEUS = Daemon(
    "prometheus",
    config.PROMETHEUS_URL,
    str(PROMETHEUS_CONF),
    (config.PROMETHEUS_PORT,),
    lambda: [
        "prometheus",
        f"--config.file={PROMETHEUS_CONF}",
        f"--storage.tsdb.path={config.PROMETHEUS_DIR / 'data'}",
        "--storage.tsdb.retention.time=7d",
        f"--web.listen-address={H}:{config.PROMETHEUS_PORT}",
        "--web.enable-lifecycle",
    ],
    prometheus_check,
    prepare=_prepare_prometheus,
    refresh=_reload_prometheus,
)
NGINX = Daemon(
    "nginx",
    config.API_URL,
    "nginx",
    (config.NGINX_HTTPS_PORT, config.NGINX_HTTP_PORT),
    lambda: _nginx_cmd("-g", "daemon off;"),
    lambda: _both(nginx_https_check(), nginx_http_check()),
    prepare=_prepare_nginx,
    refresh=reload_nginx,
)
SLACK = Daemon(
    "slack-standin",
    f"http://{H}:{config.SLACK_PORT}",
    "sandbox.slack_standin",
    (config.SLACK_PORT,),
    lambda: [sys.executable, "-m", "sandbox.slack_standin"],
    slack_check,
    cwd=config.REPO_ROOT,
    env=lambda: {"PYTHONPATH": str(config.REPO_ROOT), "SANDBOX_STATE": str(config.STATE_DIR)},
)
PREFECT_SERVER = Daemon(
    "prefect-server",
    f"http://{H}:{config.PREFECT_PORT}",
    "prefect server start",
    (config.PREFECT_PORT,),
    lambda: [sys.executable, "-m", "prefect", "server", "start", "--host", H, "--port", str(config.PREFECT_PORT)],
    lambda: http_check(f"{config.PREFECT_API_URL}/health", contains="true"),
    prepare=_prefect_server_lease_env_stale,
    refresh=_restart_prefect_server,
    env=_prefect_server_env,
    cwd=config.REPO_ROOT,
    start_timeout=120,
)
SIGNOFF_RECEIVER = Daemon(
    "signoff-receiver",
    config.SIGNOFF_RECEIVER_URL,
    "deployments.signoff_receiver",
    (config.SIGNOFF_RECEIVER_PORT,),
    lambda: [
        sys.executable,
        "-m",
        "deployments.signoff_receiver",
        "--config",
        str(config.SIGNOFF_RECEIVER_CONFIG),
        "--host",
        H,
        "--port",
        str(config.SIGNOFF_RECEIVER_PORT),
    ],
    lambda: http_check(f"{config.SIGNOFF_RECEIVER_URL}/health", contains='"ok":true'),
    prepare=_prepare_signoff_receiver,
    cwd=config.REPO_ROOT,
    env=lambda: {**config.PREFECT_ENV, "PYTHONPATH": str(config.REPO_ROOT)},
)
WORKER = Daemon(
    "prefect-worker",
    config.PREFECT_WORK_POOL,
    "deployments.worker",
    (),
    # Our wrapper of `prefect worker start`: on SIGTERM it cancels the pool's runs and waits for
    # them to roll back before it stops the worker (deployments/worker.py).
    lambda: [
        sys.executable,
        "-m",
        "deployments.worker",
        "--pool",
        config.PREFECT_WORK_POOL,
        "--name",
        config.PREFECT_WORKER_NAME,
    ],
    _worker_check,
    env=_worker_env,
    cwd=config.REPO_ROOT,
    reset_sigint=True,
    start_timeout=90,
    # The wrapper waits up to 50 s for the runs to roll back, then up to 15 s for the worker.
    stop_grace=75,
)

# Start order; `down` stops in reverse.
ALL = [
    REDIS,
    DOCKER,
    REGISTRY,
    POSTGRES_EXPORTER,
    REDIS_EXPORTER,
    PROMETHEUS,
    NGINX,
    SLACK,
    PREFECT_SERVER,
    SIGNOFF_RECEIVER,
    WORKER,
]
