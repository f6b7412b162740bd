"""Build stage: source at a git ref → tested Go binary → image pushed to the registry and verified.

The guide's "Build and Test" and "Container Deployment" steps, in that order: clone, `go test
./... -cover`, `go build`, `docker build` with VERSION / BUILD_TIME / GIT_COMMIT, push, and
`--version` run in the pushed image.
"""

from __future__ import annotations

import base64
import json
import os
import re
import subprocess
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path

from prefect import task
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger
from pydantic import BaseModel, Field, SecretStr

from blocks.database import PostgresDatabase
from blocks.docker.client import DockerConnection
from blocks.registry import ImageRegistry
from tasks.core.artifacts import table_artifact
from tasks.core.errors import PermanentError, TemporaryError, one_line, retry_if_temporary
from tasks.core.models import BuildResult
from tasks.core.redaction import redact, register
from tasks.core.stages import Stage
from tasks.database.migration_lint import review_migrations

GO_ENV = {"CGO_ENABLED": "0", "GOFLAGS": "-mod=mod", "GOPROXY": "off"}
BINARY = "architect-api"
COVERAGE = re.compile(r"coverage: ([\d.]+)% of statements")


class SourceCheckout(BaseModel):
    path: str
    commit: str
    version_file: str = Field("", description="The VERSION file at the ref, if the repo has one")


class PackageTests(BaseModel):
    package: str
    passed: int = 0
    failed: list[str] = Field(default_factory=list)
    coverage: float | None = None
    status: str = "pass"


class GoTestReport(BaseModel):
    packages: list[PackageTests]

    @property
    def failed(self) -> bool:
        return any(p.status == "fail" for p in self.packages)


def _run(args: list[str], cwd: Path | str | None = None, extra_env: dict[str, str] | None = None, timeout: float = 600):
    env = {**os.environ, **(extra_env or {})}
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)


# The code under review (its tests, its build) gets none of the worker's environment: no PREFECT_*, no
# credentials. Only what Go itself needs passes.
GO_ENV_KEPT = ("PATH", "HOME", "LANG", "LC_ALL", "TMPDIR", "GOCACHE", "GOPATH", "GOMODCACHE", "GOROOT")
# Neither go test nor go build needs a network: a namespace of its own, with only loopback, up (the app's
# tests listen on 127.0.0.1). unshare is util-linux's; as non-root it maps root in a user namespace.
OFFLINE = 'PATH="$PATH:/usr/sbin:/sbin"; ip link set lo up && exec "$@"'


def _run_code_under_review(args: list[str], cwd: str, timeout: float = 600) -> subprocess.CompletedProcess:
    env = {**{k: os.environ[k] for k in GO_ENV_KEPT if k in os.environ}, **GO_ENV}
    argv = [
        "unshare",
        "--net",
        *([] if os.geteuid() == 0 else ["--map-root-user"]),
        "--",
        "sh",
        "-c",
        OFFLINE,
        "offline",
        *args,
    ]
    try:
        return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)
    except FileNotFoundError as exc:
        raise PermanentError(
            f"cannot isolate the code under review: {exc.filename} is missing (util-linux)", stage=Stage.BUILD
        ) from exc


def _tail(output: str, chars: int) -> str:
    """The end of a tool's output, as an error may quote it: secrets cut out before it is shortened,
    so a cut can never leave half a secret unmatched."""
    return redact(output.strip())[-chars:]


def git_token_env(token: SecretStr | None) -> dict[str, str]:
    """Git's configuration, in its environment, that sends ``token`` to an https repository as
    HTTP Basic auth: never in the URL, never in argv (where ps and error messages show them)."""
    if token is None:
        return {}
    basic = base64.b64encode(f"x-access-token:{token.get_secret_value()}".encode()).decode()
    register([basic])  # the header as git could echo it
    return {
        "GIT_CONFIG_COUNT": "1",
        "GIT_CONFIG_KEY_0": "http.extraHeader",
        "GIT_CONFIG_VALUE_0": f"Authorization: Basic {basic}",
    }


@task(cache_policy=NO_CACHE)
def checkout_source(app_repo: str, git_ref: str, workspace: str, token: SecretStr | None = None) -> SourceCheckout:
    """Clone ``app_repo`` into a fresh ``workspace`` and check out ``git_ref`` (detached)."""
    logger = get_run_logger()
    dest = Path(workspace) / "src"
    logger.info("git clone %s at %s%s", redact(app_repo), git_ref, " (with the repo token)" if token else "")
    clone = ["git", "clone", "--quiet", "--no-checkout", "--", app_repo, str(dest)]
    cloned = _run(clone, extra_env=git_token_env(token), timeout=300)
    if cloned.returncode:
        raise TemporaryError(f"git clone of {redact(app_repo)} failed: {_tail(cloned.stderr, 500)}", stage=Stage.BUILD)
    # "--end-of-options" keeps a ref from ever being read as an option, whatever slipped past validation.
    resolved = _run(["git", "rev-parse", "--verify", "--end-of-options", f"{git_ref}^{{commit}}"], cwd=dest)
    if resolved.returncode:
        resolved = _run(["git", "rev-parse", "--verify", "--end-of-options", f"origin/{git_ref}^{{commit}}"], cwd=dest)
    if resolved.returncode:
        raise PermanentError(f"git ref {git_ref!r} does not exist in {redact(app_repo)}", stage=Stage.BUILD)
    commit = resolved.stdout.strip()
    checked = _run(["git", "-c", "advice.detachedHead=false", "checkout", "--quiet", "--detach", commit], cwd=dest)
    if checked.returncode:
        raise PermanentError(f"git checkout {commit} failed: {_tail(checked.stderr, 500)}", stage=Stage.BUILD)
    version_file = dest / "VERSION"
    return SourceCheckout(
        path=str(dest),
        commit=commit,
        version_file=version_file.read_text().strip() if version_file.exists() else "",
    )


def parse_go_test_json(lines: str) -> GoTestReport:
    """Per-package results from `go test -json -cover` output."""
    packages: dict[str, PackageTests] = {}
    for line in lines.splitlines():
        if not line.startswith("{"):
            continue
        event = json.loads(line)
        name = event.get("Package")
        if not name:
            continue
        pkg = packages.setdefault(name, PackageTests(package=name))
        action, test = event.get("Action"), event.get("Test")
        if test and action == "pass":
            pkg.passed += 1
        elif test and action == "fail":
            pkg.failed.append(test)
        elif not test and action in ("pass", "fail", "skip"):
            pkg.status = action
        if action == "output" and (match := COVERAGE.search(event.get("Output", ""))):
            pkg.coverage = float(match.group(1))
    return GoTestReport(packages=sorted(packages.values(), key=lambda p: p.package))


@task(cache_policy=NO_CACHE)
def run_go_tests(source: SourceCheckout) -> GoTestReport:
    """`go test ./... -cover`; a table artifact of every package; raises when any test fails."""
    logger = get_run_logger()
    logger.info("go test ./... -cover in %s", source.commit[:12])
    result = _run_code_under_review(["go", "test", "-json", "-cover", "./..."], cwd=source.path, timeout=900)
    report = parse_go_test_json(result.stdout)
    table_artifact(
        key="build-tests",
        table=[
            {
                "package": p.package,
                "status": p.status,
                "tests passed": p.passed,
                "failed": ", ".join(p.failed) or "",
                "coverage": "" if p.coverage is None else f"{p.coverage:.1f}%",
            }
            for p in report.packages
        ],
        description=f"go test ./... -cover at {source.commit[:12]}",
    )
    if result.returncode or report.failed:
        failed = [
            f"{p.package}: {', '.join(p.failed) or 'build failed'}" for p in report.packages if p.status == "fail"
        ]
        detail = redact("; ".join(failed)) or _tail(result.stderr, 500)
        raise PermanentError(f"go test failed: {detail}", stage=Stage.BUILD, result=report)
    return report


@task(cache_policy=NO_CACHE)
def build_binary(source: SourceCheckout, version: str, build_time: str) -> str:
    """`go build -o architect-api ./cmd/architect` with the version stamped in."""
    logger = get_run_logger()
    ldflags = f"-s -w -X main.version={version} -X main.buildTime={build_time} -X main.gitCommit={source.commit}"
    logger.info("go build %s (%s)", BINARY, version)
    result = _run_code_under_review(
        ["go", "build", "-trimpath", "-ldflags", ldflags, "-o", BINARY, "./cmd/architect"],
        cwd=source.path,
    )
    if result.returncode:
        raise PermanentError(f"go build failed: {_tail(result.stderr, 800)}", stage=Stage.BUILD)
    return str(Path(source.path) / BINARY)


@task(cache_policy=NO_CACHE)
def build_image(
    builder: DockerConnection, source: SourceCheckout, registry: ImageRegistry, version: str, build_time: str
) -> str:
    """`docker build` with the guide's build args; returns the local tag."""
    logger = get_run_logger()
    tag = registry.image(version)
    logger.info("docker build %s", tag)
    with builder.calls(f"docker build of {tag}", stage=Stage.BUILD):
        builder.client.images.build(
            path=source.path,
            tag=tag,
            buildargs={"VERSION": version, "BUILD_TIME": build_time, "GIT_COMMIT": source.commit},
            rm=True,
            forcerm=True,
            network_mode="none",  # nothing in the build needs a network
        )
    return tag


@task(cache_policy=NO_CACHE, retries=2, retry_delay_seconds=3, retry_condition_fn=retry_if_temporary)
def push_image(builder: DockerConnection, registry: ImageRegistry, version: str) -> str:
    """Push the tag (idempotent, so retried) and return the pinned ``repo:tag@sha256:...`` reference."""
    logger = get_run_logger()
    repository = f"{registry.address}/{registry.repository}"
    logger.info("docker push %s:%s", repository, version)
    digest = None
    with builder.calls(f"docker push of {repository}:{version}", stage=Stage.BUILD):
        for event in builder.client.images.push(
            repository, tag=version, stream=True, decode=True, auth_config=registry.auth_config()
        ):
            if "error" in event:  # the registry's refusal, relayed in the stream: a restarting registry says so too
                raise TemporaryError(f"docker push failed: {redact(one_line(event['error']))}", stage=Stage.BUILD)
            digest = (event.get("aux") or {}).get("Digest", digest)
    if not digest:
        raise TemporaryError("docker push reported no digest", stage=Stage.BUILD)
    return registry.pinned(version, digest)


@task(cache_policy=NO_CACHE)
def verify_image(builder: DockerConnection, pinned: str, version: str, commit: str) -> int | None:
    """Run `--version` in the pushed image (as the guide does); returns the schema version it reports."""
    logger = get_run_logger()
    logger.info("docker run --rm %s --version", pinned)
    with builder.calls(f"running --version in the pushed image {pinned}", stage=Stage.BUILD):
        builder.client.images.pull(pinned)
        output = builder.client.containers.run(pinned, ["--version"], remove=True, network_mode="none")
    output = output.decode().strip()
    if version not in output or commit[:7] not in output:
        raise PermanentError(
            f"the pushed image reports {redact(output)!r}, expected {version} at {commit[:7]}", stage=Stage.BUILD
        )
    match = re.search(r"schema (\d+)", output)
    return int(match.group(1)) if match else None


def release_version(requested: str | None, source: SourceCheckout, git_ref: str) -> str:
    """The requested version; else VERSION for its own tag (v3.2.1 at VERSION 3.2.1); else, for a
    branch build (nightly), VERSION plus the ref and commit."""
    if requested:
        return requested
    base = source.version_file or "0.0.0"
    if source.version_file and git_ref in (source.version_file, f"v{source.version_file}"):
        return source.version_file
    slug = re.sub(r"[^0-9A-Za-z-]+", "-", git_ref).strip("-") or "ref"
    return f"{base}-{slug}.g{source.commit[:7]}"


def build_release(
    app_repo: str,
    git_ref: str,
    version: str | None,
    registry: ImageRegistry,
    docker_host: str,
    workspace: str,
    database: PostgresDatabase | None = None,
    allow_migrations: Sequence[str] = (),
    repo_token: SecretStr | None = None,
) -> BuildResult:
    """The whole build stage, in the guide's order, in ``workspace`` (the caller removes it).

    With ``database``, the release's pending migrations are classified and linted first (read-only);
    a contract or dangerous one not named in ``allow_migrations`` stops the build before anything changed.
    """
    source = checkout_source(app_repo, git_ref, workspace, repo_token)
    migrations = review_migrations(source.path, database, allow_migrations) if database is not None else None
    version = release_version(version, source, git_ref)
    tests = run_go_tests(source)
    built_at = datetime.now(UTC).replace(microsecond=0).isoformat()
    build_binary(source, version, built_at)
    with DockerConnection(docker_host, timeout_s=300) as builder:  # one client for the build, push and verify
        tag = build_image(builder, source, registry, version, built_at)
        pinned = push_image(builder, registry, version)
        schema_version = verify_image(builder, pinned, version, source.commit)
    return BuildResult(
        version=version,
        git_ref=git_ref,
        commit=source.commit,
        image=tag,
        digest=pinned,
        build_time=built_at,
        coverage={p.package: p.coverage for p in tests.packages if p.coverage is not None},
        tests_passed=sum(p.passed for p in tests.packages),
        schema_version=schema_version,
        source_dir=source.path,
        migrations=migrations,
    )
