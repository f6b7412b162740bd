"""Build stage: source at a git ref → tested Go binary → image pushed to the registry and verified.

The guide's "Build and Test" and "Container Deployment" steps, in that order: clone, `go test
./... -cover`, `go build`, `docker build` with VERSION / BUILD_TIME / GIT_COMMIT, push, and
`--version` run in the pushed image.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from datetime import datetime, timezone
from pathlib import Path

import docker
from docker.errors import APIError, BuildError, DockerException
from prefect import task
from prefect.artifacts import create_table_artifact
from prefect.cache_policies import NO_CACHE
from prefect.logging import get_run_logger
from pydantic import BaseModel, Field

from blocks.registry import ImageRegistry
from tasks.core.errors import PermanentError, TemporaryError, retry_if_temporary
from tasks.core.models import BuildResult

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


@task(cache_policy=NO_CACHE)
def checkout_source(app_repo: str, git_ref: str, workspace: str) -> SourceCheckout:
    """Clone ``app_repo`` into a fresh ``workspace`` and check out ``git_ref`` (detached)."""
    logger = get_run_logger()
    dest = Path(workspace) / "src"
    logger.info("git clone %s at %s", app_repo, git_ref)
    cloned = _run(["git", "clone", "--quiet", "--no-checkout", "--", app_repo, str(dest)], timeout=300)
    if cloned.returncode:
        raise TemporaryError(f"git clone of {app_repo} failed: {cloned.stderr.strip()[-500:]}", stage="build")
    # "--end-of-options" keeps a ref from ever being read as an option, whatever slipped past validation.
    resolved = _run(["git", "rev-parse", "--verify", "--end-of-options", f"{git_ref}^{{commit}}"], cwd=dest)
    if resolved.returncode:
        resolved = _run(["git", "rev-parse", "--verify", "--end-of-options", f"origin/{git_ref}^{{commit}}"], cwd=dest)
    if resolved.returncode:
        raise PermanentError(f"git ref {git_ref!r} does not exist in {app_repo}", stage="build")
    commit = resolved.stdout.strip()
    checked = _run(["git", "-c", "advice.detachedHead=false", "checkout", "--quiet", "--detach", commit], cwd=dest)
    if checked.returncode:
        raise PermanentError(f"git checkout {commit} failed: {checked.stderr.strip()[-500:]}", stage="build")
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
    result = _run(["go", "test", "-json", "-cover", "./..."], cwd=source.path, extra_env=GO_ENV, timeout=900)
    report = parse_go_test_json(result.stdout)
    create_table_artifact(
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
        failed = [f"{p.package}: {', '.join(p.failed) or 'build failed'}" for p in report.packages if p.status == "fail"]
        detail = "; ".join(failed) or result.stderr.strip()[-500:]
        raise PermanentError(f"go test failed: {detail}", stage="build", result=report)
    return report


@task(cache_policy=NO_CACHE)
def build_binary(source: SourceCheckout, version: str, build_time: str) -> str:
    """`go build -o architect-api ./cmd/architect` with the version stamped in."""
    logger = get_run_logger()
    ldflags = f"-s -w -X main.version={version} -X main.buildTime={build_time} -X main.gitCommit={source.commit}"
    logger.info("go build %s (%s)", BINARY, version)
    result = _run(
        ["go", "build", "-trimpath", "-ldflags", ldflags, "-o", BINARY, "./cmd/architect"],
        cwd=source.path,
        extra_env=GO_ENV,
    )
    if result.returncode:
        raise PermanentError(f"go build failed: {result.stderr.strip()[-800:]}", stage="build")
    return str(Path(source.path) / BINARY)


@task(cache_policy=NO_CACHE)
def build_image(
    docker_host: str, source: SourceCheckout, registry: ImageRegistry, version: str, build_time: str
) -> str:
    """`docker build` with the guide's build args; returns the local tag."""
    logger = get_run_logger()
    tag = registry.image(version)
    logger.info("docker build %s", tag)
    client = docker.DockerClient(base_url=docker_host, timeout=300)
    try:
        client.images.build(
            path=source.path,
            tag=tag,
            buildargs={"VERSION": version, "BUILD_TIME": build_time, "GIT_COMMIT": source.commit},
            rm=True,
            forcerm=True,
            network_mode="none",  # nothing in the build needs a network
        )
    except BuildError as exc:
        raise PermanentError(f"docker build failed: {exc.msg}", stage="build") from exc
    except DockerException as exc:
        raise TemporaryError(f"docker build could not run: {exc}", stage="build") from exc
    return tag


@task(cache_policy=NO_CACHE, retries=2, retry_delay_seconds=3, retry_condition_fn=retry_if_temporary)
def push_image(docker_host: str, registry: ImageRegistry, version: str) -> str:
    """Push the tag (idempotent, so retried) and return the pinned ``repo:tag@sha256:...`` reference."""
    logger = get_run_logger()
    repository = f"{registry.address}/{registry.repository}"
    logger.info("docker push %s:%s", repository, version)
    client = docker.DockerClient(base_url=docker_host, timeout=300)
    digest = None
    try:
        for event in client.images.push(
            repository, tag=version, stream=True, decode=True, auth_config=registry.auth_config()
        ):
            if "error" in event:
                raise TemporaryError(f"docker push failed: {event['error']}", stage="build")
            digest = (event.get("aux") or {}).get("Digest", digest)
    except (APIError, DockerException) as exc:
        raise TemporaryError(f"docker push failed: {exc}", stage="build") from exc
    if not digest:
        raise TemporaryError("docker push reported no digest", stage="build")
    return registry.pinned(version, digest)


@task(cache_policy=NO_CACHE)
def verify_image(docker_host: str, pinned: str, version: str, commit: str) -> int | None:
    """Run `--version` in the pushed image (as the guide does); returns the schema version it reports."""
    logger = get_run_logger()
    logger.info("docker run --rm %s --version", pinned)
    client = docker.DockerClient(base_url=docker_host, timeout=120)
    try:
        client.images.pull(pinned)
        output = client.containers.run(pinned, ["--version"], remove=True, network_mode="none").decode().strip()
    except DockerException as exc:
        raise PermanentError(f"the pushed image does not run --version: {exc}", stage="build") from exc
    if version not in output or commit[:7] not in output:
        raise PermanentError(f"the pushed image reports {output!r}, expected {version} at {commit[:7]}", stage="build")
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
) -> BuildResult:
    """The whole build stage, in the guide's order, in ``workspace`` (the caller removes it)."""
    source = checkout_source(app_repo, git_ref, workspace)
    version = release_version(version, source, git_ref)
    tests = run_go_tests(source)
    built_at = datetime.now(timezone.utc).replace(microsecond=0).isoformat()
    build_binary(source, version, built_at)
    tag = build_image(docker_host, source, registry, version, built_at)
    pinned = push_image(docker_host, registry, version)
    schema_version = verify_image(docker_host, pinned, version, source.commit)
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
    )
