"""Bring the whole sandbox up, down, or report its health.

from sandbox import services
services.up()          # idempotent: starts what is missing, leaves healthy things alone
services.status()      # list of {"service", "address", "healthy", "detail"}
services.down()        # stops exactly what up started, in reverse order; keeps data
services.reload_nginx()
"""

from __future__ import annotations

import contextlib
import fcntl
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import httpx

from deployments import system_packages

from . import config, daemons, postgres, procs
from .daemons import reload_nginx  # noqa: F401  (public API)
from .procs import SandboxError

CONTAINER_LABEL = "architect.sandbox=1"  # the pipeline labels app replicas with it


def log(message: str) -> None:
    print(f"[sandbox] {message}", flush=True)


@contextlib.contextmanager
def _lock() -> Iterator[None]:
    """One up/down at a time: two engineers running `make sandbox-up` must not race."""
    config.STATE_DIR.mkdir(parents=True, exist_ok=True)
    with open(config.STATE_DIR / ".lock", "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        yield


def ensure_packages() -> None:
    """Everything of system-packages.txt; `make` has usually installed it already."""
    if system_packages.install(system_packages.read_list()) != 0:
        raise SandboxError("system packages are missing; see the messages above")


SANDBOX_PORTS = (
    config.REGISTRY_PORT,
    config.PG_PRIMARY_PORT,
    config.PG_REPLICA_PORT,
    config.PG_PREFECT_PORT,
    config.REDIS_PORT,
    config.NGINX_HTTP_PORT,
    config.NGINX_HTTPS_PORT,
    config.SLACK_PORT,
    config.SIGNOFF_RECEIVER_PORT,
    config.PROMETHEUS_PORT,
    config.REDIS_EXPORTER_PORT,
    config.POSTGRES_EXPORTER_PORT,
    config.PREFECT_PORT,
    *config.APP_SLOT_PORTS,
)
RESERVED_PORTS = "/proc/sys/net/ipv4/ip_local_reserved_ports"


def reserve_ports() -> str:
    """Keep the kernel from using our fixed ports as ephemeral source ports.

    Most sandbox ports lie in Linux's ephemeral range (32768-60999). A client
    opening thousands of connections (a load test, a pg connection storm) can hold
    e.g. 127.0.0.1:55432 as the source port of an outgoing socket, and the server
    then fails with "address already in use". Reserving them prevents that; the
    setting only affects automatic port choice, never explicit binds.
    """
    try:
        with open(RESERVED_PORTS) as fh:
            current = fh.read().strip()
    except OSError:
        return "skipped (no " + RESERVED_PORTS + ")"
    have: set[int] = set()
    for part in filter(None, current.split(",")):
        low, _, high = part.partition("-")
        have.update(range(int(low), int(high or low) + 1))
    missing = [p for p in SANDBOX_PORTS if p not in have]
    if not missing:
        return "already reserved"
    try:
        with open(RESERVED_PORTS, "w") as fh:
            fh.write(",".join(filter(None, [current, *map(str, missing)])))
    except OSError as exc:
        log(f"WARNING: could not reserve ports {missing}: {exc}")
        return "not reserved"
    return f"reserved {len(missing)} ports"


def write_prefect_env() -> None:
    lines = ["# Prefect settings of the sandbox; `. .sandbox/prefect.env` in a shell."]
    lines += [f"export {key}={shlex.quote(value)}" for key, value in config.PREFECT_ENV.items()]
    config.PREFECT_ENV_FILE.write_text("\n".join(lines) + "\n")
    config.PREFECT_HOME.mkdir(parents=True, exist_ok=True)


def ensure_work_pool() -> str:
    url = f"{config.PREFECT_API_URL}/work_pools/{config.PREFECT_WORK_POOL}"
    if httpx.get(url, timeout=10).status_code == 200:
        return "exists"
    # The CLI fills in the process worker's default base job template.
    procs.run(
        [sys.executable, "-m", "prefect", "work-pool", "create", config.PREFECT_WORK_POOL, "--type", "process"],
        env=dict(config.PREFECT_ENV),
        cwd=config.REPO_ROOT,
    )
    return "created"


def _hook_env() -> dict[str, str]:
    return {**config.PREFECT_ENV, "PYTHONPATH": str(config.REPO_ROOT), "SANDBOX_STATE": str(config.STATE_DIR)}


def make_app_repo() -> str:
    script = config.PACKAGE_DIR / "make_app_repo.sh"
    if not script.exists():
        log(f"WARNING: {script.relative_to(config.REPO_ROOT)} does not exist yet; app repo not created")
        return "skipped (script missing)"
    procs.run(["bash", str(script), str(config.APP_REPO_DIR)], env=_hook_env(), cwd=config.REPO_ROOT, timeout=900)
    return f"ready at {config.APP_REPO_DIR}"


def run_blocks_hook() -> str:
    procs.run([sys.executable, "-m", "sandbox.environment_block"], env=_hook_env(), cwd=config.REPO_ROOT, timeout=300)
    return "blocks saved"


def _step(name: str, action: Callable[[], object]) -> None:
    started = time.monotonic()
    result = action()
    log(f"{name:<18} {result if isinstance(result, str) else 'ok'} ({time.monotonic() - started:.1f}s)")


def _hook(name: str, action: Callable[[], str], problems: list[str]) -> None:
    """Run a hook owned by another part of the project; its failure is reported, not fatal
    to the servers (they are up and healthy by then)."""
    try:
        _step(name, action)
    except (SandboxError, OSError, subprocess.TimeoutExpired) as exc:
        log(f"WARNING: {name} failed: {exc}")
        problems.append(f"{name}: {str(exc).strip().splitlines()[-1] if str(exc).strip() else exc}")


def up() -> list[str]:
    """Start everything that is not healthy (idempotent).

    Raises SandboxError when a server cannot be made healthy. Returns the problems of
    the hooks (app repo script, blocks hook), empty when everything worked.
    """
    started = time.monotonic()
    ensure_packages()
    with _lock():
        for directory in (config.RUN_DIR, config.LOG_DIR):
            directory.mkdir(parents=True, exist_ok=True)
        _step("ports", reserve_ports)
        secrets = config.ensure_secrets()
        write_prefect_env()
        # Slow starters boot in the background while PostgreSQL initialises.
        for daemon in (
            daemons.DOCKER,
            daemons.PROMETHEUS,
            daemons.NGINX,
            daemons.REDIS,
            daemons.REGISTRY,
            daemons.SLACK,
        ):
            daemon.kick()
        _step("postgres-prefect", postgres.ensure_prefect_database)
        daemons.PREFECT_SERVER.kick()  # it migrates its database as it starts
        _step(
            "postgres",
            lambda: ", ".join(postgres.ensure_up(secrets["architect_db_password"])) or "healthy, left running",
        )
        for daemon in daemons.ALL:
            if daemon is daemons.WORKER:
                _step("work-pool", ensure_work_pool)
            _step(daemon.name, daemon.ensure)
        problems: list[str] = []
        _hook("app-repo", make_app_repo, problems)
        _hook("blocks-hook", run_blocks_hook, problems)
    log(f"up in {time.monotonic() - started:.1f}s")
    return problems


def remove_app_containers() -> int:
    """Remove containers the pipeline labelled architect.sandbox=1 (app replicas, one-offs)."""
    if not daemons.docker_check()[0]:
        return 0
    import docker  # imported here: only down needs the SDK

    client = docker.DockerClient(base_url=config.DOCKER_HOST, timeout=60)
    try:
        containers = client.containers.list(all=True, filters={"label": CONTAINER_LABEL})
        for container in containers:
            container.remove(force=True)
        return len(containers)
    finally:
        client.close()


def down(purge: bool = False) -> None:
    """Stop what up started, in reverse order; with purge also delete $STATE (all data)."""
    with _lock():
        for daemon in reversed(daemons.ALL):
            if daemon is daemons.DOCKER:
                removed = remove_app_containers()
                if removed:
                    log(f"removed {removed} container(s) labelled {CONTAINER_LABEL}")
            if daemon.stop():
                log(f"stopped {daemon.name}")
            if daemon is daemons.DOCKER and procs.unmount(config.DOCKER_DATA):
                # With --live-restore dockerd leaves its data root bind-mounted on itself.
                log(f"unmounted {config.DOCKER_DATA}")
        for inst in (postgres.REPLICA, postgres.PRIMARY, postgres.PREFECT):
            if inst.data.exists() and postgres.stop(inst):
                log(f"stopped {inst.name}")
    if purge and config.STATE_DIR.exists():
        shutil.rmtree(config.STATE_DIR)
        log(f"purged {config.STATE_DIR}")


def _work_pool_check() -> tuple[bool, str]:
    try:
        resp = httpx.get(f"{config.PREFECT_API_URL}/work_pools/{config.PREFECT_WORK_POOL}", timeout=5)
    except httpx.HTTPError as exc:
        return False, f"GET failed: {type(exc).__name__}"
    if resp.status_code != 200:
        return False, f"GET -> {resp.status_code}"
    return True, f"type {resp.json().get('type')}"


def _rows() -> list[tuple[str, str, Callable[[], tuple[bool, str]]]]:
    h = config.HOST
    rows = [
        ("postgres-primary", f"{h}:{config.PG_PRIMARY_PORT}", postgres.check_primary),
        ("postgres-replica", f"{h}:{config.PG_REPLICA_PORT}", postgres.check_replica),
        ("postgres-prefect", f"{h}:{config.PG_PREFECT_PORT}", postgres.check_prefect),
    ]
    for daemon in daemons.ALL:
        if daemon is daemons.NGINX:
            rows.append(("nginx-https", config.API_URL, daemons.nginx_https_check))
            rows.append(("nginx-http", config.API_HTTP_URL, daemons.nginx_http_check))
            continue
        if daemon is daemons.WORKER:
            rows.append(("prefect-work-pool", config.PREFECT_WORK_POOL, _work_pool_check))
        rows.append((daemon.name, daemon.address, daemon.check))
    return rows


def status() -> list[dict]:
    """Health of every service, each checked with a real request."""
    result = []
    for name, address, check in _rows():
        try:
            healthy, detail = check()
        except Exception as exc:  # a check must never crash the report
            healthy, detail = False, f"{type(exc).__name__}: {exc}"
        result.append({"service": name, "address": address, "healthy": bool(healthy), "detail": detail})
    return result


def format_status(rows: list[dict]) -> str:
    widths = [max(len(r["service"]) for r in rows), max(len(r["address"]) for r in rows)]
    lines = [f"{'SERVICE':<{widths[0]}}  {'ADDRESS':<{widths[1]}}  HEALTHY  DETAIL"]
    for r in rows:
        detail = " ".join(str(r["detail"]).split())  # one line per service
        lines.append(
            f"{r['service']:<{widths[0]}}  {r['address']:<{widths[1]}}  {'yes' if r['healthy'] else 'NO':<7}  {detail}"
        )
    return "\n".join(lines)


__all__ = ["up", "down", "status", "format_status", "reload_nginx", "remove_app_containers", "SandboxError"]
