"""Fixed addresses, paths and secrets of the local sandbox.

Other parts of the project (blocks, tests, benchmarks) import this module to find
the sandbox: the ports below are a contract, change them only together with
everything that depends on them.  Nothing here starts or touches a process.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
from pathlib import Path

# --- where things live -------------------------------------------------------
REPO_ROOT = Path(__file__).resolve().parent.parent
PACKAGE_DIR = Path(__file__).resolve().parent
CONF_DIR = PACKAGE_DIR / "conf"
MONITORING_DIR = REPO_ROOT / "monitoring"

# All data, logs, PID files and generated configs go under the state directory,
# so a checkout stays clean and `down --purge` is a single rm -rf.
STATE_DIR = Path(os.environ.get("SANDBOX_STATE") or (REPO_ROOT / ".sandbox")).resolve()
RUN_DIR = STATE_DIR / "run"  # our PID files
LOG_DIR = STATE_DIR / "logs"
SECRETS_FILE = STATE_DIR / "secrets.json"
TLS_DIR = STATE_DIR / "tls"
CA_CERT = TLS_DIR / "ca.crt"
CA_KEY = TLS_DIR / "ca.key"
SERVER_CERT = TLS_DIR / "server.crt"
SERVER_KEY = TLS_DIR / "server.key"
PG_DIR = STATE_DIR / "pg"  # owned by the postgres OS user
PG_SOCKET_DIR = PG_DIR / "run"
PG_PRIMARY_DATA = PG_DIR / "primary"
PG_REPLICA_DATA = PG_DIR / "replica"
PG_PREFECT_DATA = PG_DIR / "prefect"  # the Prefect server's own database
REDIS_DIR = STATE_DIR / "redis"
DOCKER_DATA = STATE_DIR / "docker"
REGISTRY_DIR = STATE_DIR / "registry"
PROMETHEUS_DIR = STATE_DIR / "prometheus"
NGINX_DIR = STATE_DIR / "nginx"
SLACK_DIR = STATE_DIR / "slack"
SLACK_MESSAGES = SLACK_DIR / "messages.jsonl"
PREFECT_HOME = STATE_DIR / "prefect"
PREFECT_ENV_FILE = STATE_DIR / "prefect.env"
APP_REPO_DIR = STATE_DIR / "app-repo"
SIGNOFF_DIR = STATE_DIR / "signoff"
SIGNOFF_RECEIVER_CONFIG = SIGNOFF_DIR / "receiver.json"  # the receiver's secrets (0600)
SIGNOFF_LEADS_DIR = SIGNOFF_DIR / "leads"  # the sandbox leads' SSH keys (a real lead keeps their own)

PG_BIN = Path("/usr/lib/postgresql/15/bin")

# --- fixed ports (all on 127.0.0.1) -------------------------------------------
HOST = "127.0.0.1"
PG_PRIMARY_PORT = 55432
PG_REPLICA_PORT = 55433
PG_DATABASE = "architect_staging"
PG_USER = "architect"
PG_REPLICATION_SLOT = "sandbox_replica"
PG_PREFECT_PORT = 55434
PREFECT_DATABASE = "prefect"  # database and role
REDIS_PORT = 56379
DOCKER_SOCKET = Path("/var/run/docker.sock")
DOCKER_HOST = f"unix://{DOCKER_SOCKET}"
REGISTRY_PORT = 55000
REGISTRY = f"{HOST}:{REGISTRY_PORT}"  # image prefix: 127.0.0.1:55000/name:tag
PROMETHEUS_PORT = 59090
PROMETHEUS_URL = f"http://{HOST}:{PROMETHEUS_PORT}"
POSTGRES_EXPORTER_PORT = 59187
REDIS_EXPORTER_PORT = 59121
NGINX_HTTPS_PORT = 58443
NGINX_HTTP_PORT = 58080
API_URL = f"https://localhost:{NGINX_HTTPS_PORT}"  # the load balancer; cert covers localhost and 127.0.0.1
API_HTTP_URL = f"http://localhost:{NGINX_HTTP_PORT}"
# App replica slots behind nginx: three replicas plus one surge slot for rolling updates.
APP_REPLICA_PORTS = (18081, 18082, 18083)
APP_SURGE_PORT = 18084
APP_SLOT_PORTS = APP_REPLICA_PORTS + (APP_SURGE_PORT,)
SLACK_PORT = 58090
SLACK_API_URL = f"http://{HOST}:{SLACK_PORT}/api/"  # slack_sdk WebClient(base_url=...)
SLACK_WEBHOOK_URL = f"http://{HOST}:{SLACK_PORT}/services/T0SANDBOX/B0SANDBOX/sandbox"
SLACK_CONTROL_URL = f"http://{HOST}:{SLACK_PORT}/_standin"
SIGNOFF_RECEIVER_PORT = 58091
SIGNOFF_RECEIVER_URL = f"http://{HOST}:{SIGNOFF_RECEIVER_PORT}"
SLACK_INTERACTIVITY_URL = f"{SIGNOFF_RECEIVER_URL}/slack/interactions"  # the Slack app's "Request URL"
PREFECT_PORT = 4200
PREFECT_API_URL = f"http://{HOST}:{PREFECT_PORT}/api"
PREFECT_WORK_POOL = "sandbox-pool"
PREFECT_WORKER_NAME = "sandbox-worker"

# Environment for every Prefect process of the sandbox (server, worker, CLI calls);
# also written to $STATE/prefect.env for shells: `. .sandbox/prefect.env`.
PREFECT_ENV = {
    "PREFECT_HOME": str(PREFECT_HOME),
    "PREFECT_API_URL": PREFECT_API_URL,
    "PREFECT_UI_API_URL": PREFECT_API_URL,
    "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
}


# --- secrets -------------------------------------------------------------------
def load_secrets() -> dict[str, str]:
    """The generated secrets: architect_db_password, slack_bot_token, registry_http_secret.

    Raises FileNotFoundError when the sandbox was never brought up.
    """
    return json.loads(SECRETS_FILE.read_text())


def ensure_secrets() -> dict[str, str]:
    """Create secrets.json (mode 0600) on first use; later calls return the same values."""
    current: dict[str, str] = {}
    if SECRETS_FILE.exists():
        current = load_secrets()
    wanted = {
        "architect_db_password": lambda: secrets.token_urlsafe(24),
        "slack_bot_token": lambda: "xoxb-sandbox-" + secrets.token_hex(16),
        "registry_http_secret": lambda: secrets.token_hex(16),
        # The app's own secrets and the smoke user's password (saved into the sandbox blocks).
        "jwt_secret": lambda: secrets.token_urlsafe(32),
        "encryption_key": lambda: secrets.token_urlsafe(32),
        "smoke_password": lambda: secrets.token_urlsafe(18),
        # Slack signs its interaction requests with this; the stand-in and the sign-off receiver share it.
        "slack_signing_secret": lambda: secrets.token_hex(16),
        # The sign-off receiver's Ed25519 key (its 32-byte seed); only the receiver reads it.
        "signoff_receiver_key": lambda: base64.b64encode(secrets.token_bytes(32)).decode(),
    }
    missing = [key for key in wanted if key not in current]
    if missing:
        for key in missing:
            current[key] = wanted[key]()
        STATE_DIR.mkdir(parents=True, exist_ok=True)
        tmp = SECRETS_FILE.with_suffix(".tmp")
        # Create with 0600 from the start so the password is never world-readable.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            json.dump(current, fh, indent=2)
        os.replace(tmp, SECRETS_FILE)
    os.chmod(SECRETS_FILE, 0o600)
    return current


# --- connection helpers --------------------------------------------------------
def database_url(port: int = PG_PRIMARY_PORT, password: str | None = None) -> str:
    """postgres:// URL for the architect role over TCP (what the app and pg_dump use)."""
    pw = password if password is not None else load_secrets()["architect_db_password"]
    return f"postgres://{PG_USER}:{pw}@{HOST}:{port}/{PG_DATABASE}?sslmode=disable"


def pg_conninfo(port: int = PG_PRIMARY_PORT, password: str | None = None) -> str:
    """libpq key/value conninfo for psycopg.connect() as architect."""
    pw = password if password is not None else load_secrets()["architect_db_password"]
    return f"host={HOST} port={port} dbname={PG_DATABASE} user={PG_USER} password={pw} sslmode=disable"


def prefect_database_url() -> str:
    """The Prefect server's database: role prefect through the unix socket (peer auth, no password)."""
    # host and port as query parameters: the form both SQLAlchemy and Prefect's own LISTEN/NOTIFY
    # connection (a raw asyncpg DSN) read as a socket directory and port.
    return f"postgresql+asyncpg://{PREFECT_DATABASE}@/{PREFECT_DATABASE}?host={PG_SOCKET_DIR}&port={PG_PREFECT_PORT}"


def prefect_conninfo() -> str:
    """The same database for libpq tools (psycopg, pg_dump)."""
    return f"host={PG_SOCKET_DIR} port={PG_PREFECT_PORT} dbname={PREFECT_DATABASE} user={PREFECT_DATABASE}"


def pg_superuser_conninfo(port: int = PG_PRIMARY_PORT, dbname: str = "postgres") -> str:
    """Superuser over the unix socket (peer auth maps root and postgres to `postgres`)."""
    return f"host={PG_SOCKET_DIR} port={port} dbname={dbname} user=postgres"


def redis_url() -> str:
    return f"redis://{HOST}:{REDIS_PORT}/0"
