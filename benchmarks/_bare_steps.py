"""The staging deploy's steps run bare, for benchmarks/pipeline_overhead.py: the commands and API
calls the tasks make, in the flow's order, with no Prefect, no reports and no checks beyond the
status codes (so a broken run cannot pass for a fast one).

Isolated from the shared sandbox: containers are named ``bench-bare-*`` and carry no
``architect.app`` label (the flow's target counts its replicas by it), replicas listen on their
own ports, use a scratch copy of the staging database (``bench_bare``) and their own Redis
database index. The flow's replica slots, nginx and the flow's containers are never touched.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable
from http.cookies import SimpleCookie
from pathlib import Path

import docker
import httpx
import psycopg
import redis
from psycopg import sql

from blocks.environment import StagingEnvironment
from sandbox import config
from tasks.gates.load.generator import GeneratorConfig, run_profile
from tasks.gates.load.model import API_MIX, ProfileRun, profiles_from_targets
from tasks.release.build import BINARY, GO_ENV

PREFIX = "bench-bare-"
PORTS = (18191, 18192, 18193, 18194)  # three replicas and one surge slot, like the flow's target
SCRATCH_DB = "bench_bare"
REDIS_DB = 15  # nothing else in the project uses it; the rate limiter and session cache stay apart
LABEL = "architect.benchmark"  # never architect.app: that label makes a container one of the flow's replicas
FLOW_APP_LABEL = "architect.app=architect-api"


class BareStepFailed(RuntimeError):
    pass


def flow_replicas(client: docker.DockerClient) -> list:
    """The flow's running replicas (read only: to mirror how many the bare deploy replaces)."""
    found = client.containers.list(filters={"label": FLOW_APP_LABEL})
    return [c for c in found if "architect.one-off" not in c.labels]


def _check(result: subprocess.CompletedProcess, what: str) -> subprocess.CompletedProcess:
    if result.returncode:
        raise BareStepFailed(f"{what} exited {result.returncode}: {(result.stderr or '').strip()[-500:]}")
    return result


def _run(args: list[str], what: str, cwd: Path | None = None, extra_env: dict | None = None, timeout: float = 900):
    env = {**os.environ, **(extra_env or {})}
    return _check(
        subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False), what
    )


def _superuser(dbname: str = "postgres") -> psycopg.Connection:
    return psycopg.connect(config.pg_superuser_conninfo(dbname=dbname), autocommit=True, connect_timeout=5)


class BareDeploy:
    """One bare deploy: ``setup()`` (untimed), ``run()`` (timed step by step), ``teardown()``."""

    def __init__(self, env: StagingEnvironment, git_ref: str, version: str, load_duration_s: float):
        self.env, self.git_ref, self.version, self.load_duration_s = env, git_ref, version, load_duration_s
        self.database = env.database.model_copy(update={"dbname": SCRATCH_DB})
        self.app_env = {
            **env.app_environment(),
            "DATABASE_URL": self.database.app_database_url(),
            "REDIS_DB": str(REDIS_DB),
        }
        self.docker = docker.DockerClient(base_url=env.target.docker_host, timeout=300)
        self.builder = docker.DockerClient(base_url=env.builder_docker_host, timeout=300)
        self.workdir = Path(tempfile.mkdtemp(prefix=PREFIX))
        self.tag = f"{PREFIX}{version}"  # its own tag in the same repository: the flow's tags stay as they are
        self.repository = f"{env.registry.address}/{env.registry.repository}"
        self.steps: list[tuple[str, str, float]] = []  # (stage, step, seconds)
        self.started: list = []  # every container this run started, whatever became of it
        self.slots: dict[int, object] = {}  # port -> running replica
        self.notes: dict[str, object] = {}
        self.load: ProfileRun | None = None
        self.db_created = False

    # -- untimed ------------------------------------------------------------------------

    def setup(self) -> None:
        """Ports free; the scratch database as a copy of staging; as many old replicas as the flow has."""
        for port in PORTS:
            with socket.socket() as probe:
                try:
                    probe.bind((config.HOST, port))
                except OSError as exc:
                    raise BareStepFailed(f"port {port} is not free ({exc}); is another benchmark running?") from exc
        with _superuser() as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(SCRATCH_DB)))
            conn.execute(
                sql.SQL("CREATE DATABASE {} OWNER {}").format(
                    sql.Identifier(SCRATCH_DB), sql.Identifier(self.database.user)
                )
            )
        self.db_created = True
        with self.database.connect() as conn:
            self.major = conn.info.server_version // 10000
        copy = self.workdir / "staging-copy.dump"
        tool_env = self.env.database.tool_env()
        _run(
            [self.env.database.pg_tool("pg_dump", self.major), "--format=custom", "--no-password", f"--file={copy}"],
            "pg_dump of the staging database",
            extra_env=tool_env,
        )
        _run(
            [
                self.database.pg_tool("pg_restore", self.major),
                "--no-owner",
                "--exit-on-error",
                "--no-password",
                f"--dbname={SCRATCH_DB}",
                str(copy),
            ],
            "pg_restore into the scratch database",
            extra_env=self.database.tool_env(),
        )
        copy.unlink()
        self.notes["schema before migrate"] = self.schema_version()
        running = flow_replicas(self.docker)
        self.notes["old replicas"] = len(running)
        if running:
            old_image = running[0].attrs["Config"]["Image"]
            for port in PORTS[: len(running)]:
                self.slots[port] = self._start_replica(old_image, port, "old")
            for port in list(self.slots):
                self.notes.setdefault("old replicas healthy", 0)
                self.notes["old replicas healthy"] += self._wait_ready(port, 30) is None
        with redis.Redis(host=config.HOST, port=config.REDIS_PORT, db=REDIS_DB) as r:
            self.notes["redis keys before"] = r.dbsize()

    def schema_version(self) -> int:
        with self.database.connect() as conn:
            return conn.execute("SELECT coalesce(max(version), 0) FROM schema_migrations").fetchone()[0]

    def teardown(self) -> list[str]:
        """Stop and remove exactly what this run started; drop the scratch database. Returns what failed."""
        problems = []
        for container in self.started:
            try:
                container.remove(force=True)
            except docker.errors.NotFound:
                pass
            except docker.errors.DockerException as exc:
                problems.append(f"container {container.name}: {exc}")
        if self.db_created:
            try:
                with _superuser() as conn:
                    conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(SCRATCH_DB)))
            except psycopg.Error as exc:
                problems.append(f"drop {SCRATCH_DB}: {exc}")
        try:  # only the bare replicas wrote here (rate limiter, sessions): nothing else uses this index
            with redis.Redis(host=config.HOST, port=config.REDIS_PORT, db=REDIS_DB) as r:
                keys = list(r.scan_iter(count=1000))
                if keys:
                    r.delete(*keys)
        except redis.RedisError as exc:
            problems.append(f"redis db {REDIS_DB}: {exc}")
        try:
            self.builder.images.remove(f"{self.repository}:{self.tag}")
        except docker.errors.DockerException:
            pass  # never built, or still used by a stopped container the engine keeps: harmless
        subprocess.run(["rm", "-rf", "--", str(self.workdir)], check=False)
        return problems

    # -- timed --------------------------------------------------------------------------

    def _timed(self, stage: str, step: str, fn: Callable[[], object]):
        started = time.perf_counter()
        result = fn()
        self.steps.append((stage, step, time.perf_counter() - started))
        return result

    def run(self) -> float:
        """Every step in the flow's order; returns the wall time of the whole."""
        started = time.perf_counter()
        src = self.workdir / "src"
        commit = self._timed("build", "git clone + checkout", lambda: self._checkout(src))
        built_at = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime())
        self._timed(
            "build",
            "go test -json -cover",
            lambda: _run(["go", "test", "-json", "-cover", "./..."], "go test", cwd=src, extra_env=GO_ENV),
        )
        ldflags = f"-s -w -X main.version={self.version} -X main.buildTime={built_at} -X main.gitCommit={commit}"
        self._timed(
            "build",
            "go build",
            lambda: _run(
                ["go", "build", "-trimpath", "-ldflags", ldflags, "-o", BINARY, "./cmd/architect"],
                "go build",
                cwd=src,
                extra_env=GO_ENV,
                timeout=600,
            ),
        )
        self._timed(
            "build",
            "docker build",
            lambda: self.builder.images.build(
                path=str(src),
                tag=f"{self.repository}:{self.tag}",
                rm=True,
                forcerm=True,
                network_mode="none",
                buildargs={"VERSION": self.version, "BUILD_TIME": built_at, "GIT_COMMIT": commit},
            ),
        )
        pinned = self._timed("build", "docker push", self._push)
        self._timed("build", "docker run --version", lambda: self._verify(pinned, commit))
        self._timed(
            "backup",
            "pg_dump -Fc",
            lambda: _run(
                [
                    self.database.pg_tool("pg_dump", self.major),
                    "--format=custom",
                    "--no-password",
                    f"--lock-wait-timeout={self.database.lock_timeout_ms}",
                    f"--file={self.workdir / 'backup.dump'}",
                ],
                "pg_dump",
                extra_env=self.database.tool_env(),
                timeout=3600,
            ),
        )
        self._timed(
            "migrate", "migrate --direction up", lambda: self._one_off(pinned, ["migrate", "--direction", "up"])
        )
        self._timed("migrate", "migrate status --json", lambda: self._one_off(pinned, ["migrate", "status", "--json"]))
        self._timed("deploy", "pull + replace replicas", lambda: self._replace(pinned))
        urls = [f"http://{config.HOST}:{p}" for p in sorted(self.slots)]
        self._timed("health", "GET /health per replica", lambda: [self._get_health(u) for u in urls])
        self.notes["smoke requests"] = self._timed(
            "smoke",
            "smoke requests",
            lambda: smoke_requests(
                urls, self.env.smoke_user, self.env.smoke_password.get_secret_value(), self.env.allowed_origin
            ),
        )
        self.load = self._timed("load", "light profile", lambda: self._load(urls[0]))
        return time.perf_counter() - started

    def _checkout(self, dest: Path) -> str:
        _run(["git", "clone", "--quiet", "--no-checkout", "--", self.env.app_repo, str(dest)], "git clone", timeout=300)
        commit = _run(
            ["git", "rev-parse", "--verify", "--end-of-options", f"{self.git_ref}^{{commit}}"],
            "git rev-parse",
            cwd=dest,
        ).stdout.strip()
        _run(
            ["git", "-c", "advice.detachedHead=false", "checkout", "--quiet", "--detach", commit],
            "git checkout",
            cwd=dest,
        )
        return commit

    def _push(self) -> str:
        digest = None
        for event in self.builder.images.push(
            self.repository, tag=self.tag, stream=True, decode=True, auth_config=self.env.registry.auth_config()
        ):
            if "error" in event:
                raise BareStepFailed(f"docker push: {event['error']}")
            digest = (event.get("aux") or {}).get("Digest", digest)
        if not digest:
            raise BareStepFailed("docker push reported no digest")
        return f"{self.repository}:{self.tag}@{digest}"

    def _verify(self, pinned: str, commit: str) -> None:
        self.builder.images.pull(pinned)
        output = self.builder.containers.run(pinned, ["--version"], remove=True, network_mode="none").decode()
        if self.version not in output or commit[:7] not in output:
            raise BareStepFailed(f"--version printed {output!r}")

    def _container(self, image: str, args: list[str], name: str, env: dict) -> object:
        container = self.docker.containers.run(
            image,
            command=args,
            name=name,
            detach=True,
            network_mode="host",
            environment=env,
            labels={LABEL: str(os.getpid())},
            read_only=True,
        )
        self.started.append(container)
        return container

    def _one_off(self, image: str, args: list[str]) -> str:
        container = self._container(image, args, f"{PREFIX}oneoff-{int(time.time() * 1000)}", self.app_env)
        code = container.wait(timeout=300).get("StatusCode", -1)
        logs = container.logs(tail=500).decode(errors="replace")
        container.remove(force=True)
        if code != 0:
            raise BareStepFailed(f"{' '.join(args)} exited {code}: {logs[-500:]}")
        if args[1] == "status":
            self.notes["migrate status"] = next(
                (
                    json.loads(line)
                    for line in reversed(logs.splitlines())
                    if line.startswith("{") and '"current"' in line
                ),
                {},
            )
        return logs

    def _start_replica(self, image: str, port: int, kind: str):
        env = {**self.app_env, "HOST": self.env.target.bind_host, "PORT": str(port)}
        return self._container(image, ["serve"], f"{PREFIX}{kind}-{port}", env)

    def _wait_ready(self, port: int, timeout_s: float) -> str | None:
        """curl-style: GET /health every 0.25 s until 200."""
        deadline, last = time.monotonic() + timeout_s, "no answer"
        with httpx.Client(timeout=2.0) as http:
            while time.monotonic() < deadline:
                try:
                    response = http.get(f"http://{config.HOST}:{port}/health")
                    if response.status_code == 200:
                        return None
                    last = f"HTTP {response.status_code}"
                except httpx.HTTPError as exc:
                    last = type(exc).__name__
                time.sleep(0.25)
        return last

    def _replace(self, image: str) -> None:
        """The rolling update: one new replica on a free slot, healthy, then one old one stopped."""
        self.docker.images.pull(image)
        old = list(self.slots.items())
        new_ports = []
        for _ in range(self.env.target.replicas):
            port = next(p for p in PORTS if p not in self.slots)
            self.slots[port] = self._start_replica(image, port, "new")
            new_ports.append(port)
            failure = self._wait_ready(port, self.env.target.ready_timeout_s)
            if failure:
                raise BareStepFailed(f"replica on {port} never became healthy: {failure}")
            if old:
                old_port, container = old.pop(0)
                container.stop(timeout=self.env.target.stop_timeout_s)
                container.remove(force=True)
                del self.slots[old_port]
        for old_port, container in old:
            container.stop(timeout=self.env.target.stop_timeout_s)
            container.remove(force=True)
            del self.slots[old_port]

    def _get_health(self, url: str) -> None:
        response = httpx.get(f"{url}/health", timeout=5.0)
        if response.status_code != 200 or response.json().get("status") != "healthy":
            raise BareStepFailed(f"{url}/health answered {response.status_code}")

    def _load(self, url: str) -> ProfileRun:
        profile = profiles_from_targets(self.env.performance, self.load_duration_s, 2.0)["light"]
        generator = GeneratorConfig(
            base_url=url,
            mix=API_MIX,
            username=self.env.smoke_user,
            password=self.env.smoke_password.get_secret_value(),
            slot_s=max(0.5, profile.duration_s / 150),
        )
        return run_profile(generator, profile)


def login_token(response: httpx.Response) -> str:
    for header in response.headers.get_list("set-cookie"):
        cookie = SimpleCookie()
        cookie.load(header)
        if "session" in cookie and cookie["session"].value:
            return cookie["session"].value
    raise BareStepFailed(f"login answered {response.status_code} without a session cookie")


def smoke_requests(urls: list[str], user: str, password: str, origin: str) -> int:
    """The HTTP requests of tasks/gates/smoke/suite.py's suite, once each and in its order, plain HTTP to the
    replicas; returns how many were made. Not made: the plain-HTTP redirect request and the TLS
    handshake of the certificate check (both are nginx's)."""
    made = [0]
    tag = f"bare{os.getpid()}"

    def call(client: httpx.Client, method: str, path: str, *codes: int, **kwargs) -> httpx.Response:
        made[0] += 1
        response = client.request(method, path, **kwargs)
        if codes and response.status_code not in codes:
            raise BareStepFailed(f"smoke {method} {path} answered {response.status_code}")
        return response

    def fresh(i: int = 0) -> httpx.Client:  # the suite's new_client(): a new connection
        return httpx.Client(base_url=urls[i % len(urls)], timeout=10.0)

    creds = {"username": user, "password": password}
    with fresh() as s:
        s.headers["Cookie"] = f"session={login_token(call(s, 'POST', '/api/v1/auth/login', 200, json=creds))}"
        call(s, "GET", "/api/v1/auth/me", 200)
        with fresh() as anon:
            call(anon, "POST", "/api/v1/auth/login", 401, json={"username": user, "password": f"wrong-{tag}"})
        with fresh() as own:
            own.headers["Cookie"] = f"session={login_token(call(own, 'POST', '/api/v1/auth/login', 200, json=creds))}"
            call(own, "POST", "/api/v1/auth/logout", 200, 204)
            call(own, "GET", "/api/v1/auth/me", 401)
        event = lambda **payload: str(
            call(
                s,
                "POST",
                "/api/v1/events",
                201,
                json={"type": "smoke.check", "source": f"smoke-{tag}", "payload": payload or {"run": tag}},
            ).json()["id"]
        )
        created = [event() for _ in range(3)]
        call(s, "GET", "/api/v1/events", 200, params={"limit": 2, "offset": 0})
        call(s, "GET", "/api/v1/events", 200, params={"limit": 1, "offset": 1})
        call(s, "GET", f"/api/v1/events/{created[0]}", 200)
        call(s, "DELETE", f"/api/v1/events/{created[0]}", 200, 204)
        call(s, "GET", f"/api/v1/events/{created[0]}", 404)

        def report_error(kind: str) -> str:
            with fresh() as anon:
                body = {"kind": kind, "message": "smoke probe", "stack": "smoke"}
                return str(call(anon, "POST", "/api/v1/errors", 201, json=body).json()["id"])

        error_id = report_error(f"smoke-{tag}")
        call(s, "GET", "/api/v1/errors", 200, params={"limit": 100})
        call(s, "POST", f"/api/v1/errors/{error_id}/resolve", 200, 204)
        for _ in range(2):
            report_error(f"smoke-agg-{tag}")
        call(s, "GET", "/api/v1/errors/aggregate", 200)
        note = str(
            call(s, "POST", "/api/v1/notifications", 201, json={"title": f"smoke {tag}", "body": "smoke probe"}).json()[
                "id"
            ]
        )
        call(s, "GET", "/api/v1/notifications", 200, params={"limit": 100})
        call(s, "POST", f"/api/v1/notifications/{note}/read", 200, 204)
        call(s, "GET", "/api/v1/notifications", 200, params={"limit": 100})
        call(s, "DELETE", f"/api/v1/notifications/{note}", 200, 204)
        call(s, "GET", "/api/v1/notifications", 200, params={"limit": 100})
        for path in ("/health", "/health", "/metrics"):
            call(s, "GET", path, 200)
        created.append(event(persisted=tag))
        for i in range(4):  # fresh connections, spread over the replicas as the balancer would
            with fresh(i) as other:
                call(other, "GET", f"/api/v1/events/{created[-1]}", 200, headers={"Cookie": s.headers["Cookie"]})
        call(s, "GET", "/health", 200)  # the HSTS half of "HTTPS enforced"
        for allowed in (origin, "https://evil.example"):
            call(s, "GET", "/api/v1/auth/me", 200, headers={"Origin": allowed})
            call(s, "OPTIONS", "/api/v1/events", headers={"Origin": allowed, "Access-Control-Request-Method": "POST"})
        json_body = {"Content-Type": "application/json"}
        call(s, "POST", "/api/v1/events", 400, content=b'{"type": "smoke", ', headers=json_body)
        call(
            s,
            "POST",
            "/api/v1/events",
            400,
            413,
            headers=json_body,
            content=json.dumps({"type": "smoke", "payload": {"pad": "x" * 70_000}}).encode(),
        )
        probe = "' OR 1=1 --"
        call(s, "GET", "/api/v1/events", 200, params={"limit": 1})
        created.append(
            str(
                call(
                    s, "POST", "/api/v1/events", 201, json={"type": probe, "source": f"smoke-{tag}", "payload": {}}
                ).json()["id"]
            )
        )
        call(s, "GET", "/api/v1/events", params={"limit": "1;DROP TABLE events"})
        call(s, "GET", "/api/v1/events", params={"severity": probe, "type": probe, "limit": 1})
        call(s, "GET", f"/api/v1/events/{probe}")
        call(s, "GET", "/api/v1/events", 200, params={"limit": 1})
        created.append(event(note="<script>alert(1)</script>"))
        call(s, "GET", f"/api/v1/events/{created[-1]}", 200)
        with fresh() as anon:  # bad logins until 429, then wait out Retry-After (at most 10 s)
            body = {"username": f"smoke-ratelimit-{tag}", "password": "not-the-password"}
            for _ in range(100):
                response = call(anon, "POST", "/api/v1/auth/login", json=body)
                if response.status_code == 429 or response.status_code >= 500:
                    break
        if response.status_code != 429:
            raise BareStepFailed(f"no 429 from the login rate limit (last {response.status_code})")
        time.sleep(min(max(float(response.headers.get("retry-after", "0")), 0.0), 10.0))
        for event_id in created:  # the suite's cleanup: every event it made, the deleted one too
            call(s, "DELETE", f"/api/v1/events/{event_id}")
    return made[0]
