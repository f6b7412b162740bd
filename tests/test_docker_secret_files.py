"""On the Docker target the app's secrets travel as files on a tmpfs, never as container environment.

The image is built here from the app as it is in sandbox/architect-api (it reads ``NAME_FILE`` and
says so with its ``io.architect.secret-files`` label) and pushed to the sandbox's registry. A
replica and a one-off run with the sandbox's real app environment through the Docker target's
own engine, under an app name and ports of their own: the replica becomes healthy (it read its
database URL from the file) and the one-off's `migrate status` reaches the database, while
``docker inspect`` of each, taken as it was made, holds no secret.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import tarfile
import uuid
from datetime import timedelta
from pathlib import Path

import docker
import pytest

from blocks.docker.secret_files import SECRET_FILES_LABEL, SECRETS_DIR, VOLUME_LABEL, _user_ids, secrets_tar
from sandbox import config
from tests.support.first_deploy import FRESH_PORTS, _listening, _remove_app
from tests.support.secret_search import ContainerInspections, find_leaks, secret_values

APP_DIR = config.REPO_ROOT / "sandbox" / "architect-api"
APP_UID = 65532  # the Dockerfile's USER


@pytest.fixture(scope="module")
def file_reading_image(sandbox_up, tmp_path_factory) -> str:
    """The app of this tree, built and pushed as ``REGISTRY/sandbox-test/secret-files:<random>``."""
    context = tmp_path_factory.mktemp("secret-files-image")
    env = {
        "PATH": os.environ["PATH"],
        "HOME": str(context),
        "GOCACHE": str(context / ".gocache"),
        "CGO_ENABLED": "0",
        "GOFLAGS": "-mod=mod",
        "GOPROXY": "off",
    }
    subprocess.run(
        ["go", "build", "-trimpath", "-o", str(context / "architect-api"), "./cmd/architect"],
        cwd=APP_DIR,
        env=env,
        check=True,
        timeout=600,
    )
    shutil.copy(APP_DIR / "Dockerfile", context / "Dockerfile")
    repository, tag = f"{config.REGISTRY}/sandbox-test/secret-files", uuid.uuid4().hex[:10]
    client = docker.DockerClient(base_url=config.DOCKER_HOST)
    try:
        client.images.build(path=str(context), tag=f"{repository}:{tag}", rm=True, network_mode="none")
        errors = [e for e in client.images.push(repository, tag=tag, stream=True, decode=True) if "error" in e]
        assert not errors, errors
        yield f"{repository}:{tag}"
        client.images.remove(f"{repository}:{tag}", force=True)
    finally:
        client.close()


@pytest.fixture
def own_target(sandbox_env, tmp_path):
    """The sandbox's Docker target under an app name, ports and a history of its own, one replica."""
    busy = [p for p in FRESH_PORTS if _listening(p)]
    assert not busy, f"the port slots are taken: {busy}"
    target = sandbox_env.target.model_copy(
        update={
            "app_name": f"secrets-{uuid.uuid4().hex[:8]}",
            "ports": FRESH_PORTS,
            "replicas": 1,
            "history_file": str(tmp_path / "history.json"),
        }
    )
    yield target
    _remove_app(target)
    client = target.get_client()
    try:
        for volume in client.volumes.list(filters={"label": f"{VOLUME_LABEL}={target.app_name}"}):
            volume.remove(force=True)
    finally:
        client.close()


@pytest.fixture
def inspections(sandbox_up):
    recorder = ContainerInspections()
    yield recorder
    recorder.stop()


def _mine(inspections: ContainerInspections, app: str) -> dict[str, bytes]:
    return {where: data for where, data in inspections.haystacks().items() if f" {app}-" in where}


@pytest.mark.sandbox
def test_a_replica_reads_its_secrets_from_files_and_docker_inspect_shows_none(
    file_reading_image, own_target, sandbox_env, inspections
):
    result = own_target.deploy(file_reading_image, "secret-files", sandbox_env.app_environment(), 120)
    assert result.complete, (result.reason, result.logs)  # healthy: it read DATABASE_URL from its file
    client = own_target.get_client()
    try:
        (replica,) = client.containers.list(filters={"label": f"architect.app={own_target.app_name}"})
        env = dict(item.split("=", 1) for item in replica.attrs["Config"]["Env"])
        assert env["DATABASE_URL_FILE"] == f"{SECRETS_DIR}/DATABASE_URL" and "DATABASE_URL" not in env
        assert env["JWT_SECRET_FILE"] == f"{SECRETS_DIR}/JWT_SECRET" and "SMOKE_PASSWORD_FILE" in env
        (mount,) = [m for m in replica.attrs["Mounts"] if m["Destination"] == SECRETS_DIR]
        volume = client.volumes.get(mount["Name"]).attrs
        assert volume["Options"]["type"] == "tmpfs", volume  # in memory only, gone when unmounted
        stream, _ = replica.get_archive(f"{SECRETS_DIR}/.")
        with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
            files = {m.name.removeprefix("./"): m for m in tar.getmembers() if m.isfile()}
        assert {"DATABASE_URL", "JWT_SECRET", "SMOKE_PASSWORD"} <= set(files), sorted(files)
        assert {(m.mode & 0o7777, m.uid) for m in files.values()} == {(0o400, APP_UID)}
    finally:
        client.close()
    haystacks = _mine(inspections, own_target.app_name)
    assert haystacks, "the replica was never inspected"
    assert find_leaks(haystacks, secret_values()) == []


@pytest.mark.sandbox
def test_a_one_off_gets_its_secrets_as_files_and_its_volume_goes_with_it(
    file_reading_image, own_target, sandbox_env, inspections
):
    ran = own_target.run_one_off(file_reading_image, ["migrate", "status", "--json"], sandbox_env.app_environment(), 60)
    assert ran.exit_code == 0, ran.logs  # it reached the database with the URL from its file
    status = json.loads([line for line in ran.logs.splitlines() if '"current"' in line][-1])
    assert status["current"] >= 1
    haystacks = _mine(inspections, own_target.app_name)
    assert len(haystacks) == 1 and "oneoff" in next(iter(haystacks)), sorted(haystacks)
    data = next(iter(haystacks.values()))
    assert b"DATABASE_URL_FILE" in data
    assert find_leaks(haystacks, secret_values()) == []
    client = own_target.get_client()
    try:
        assert client.volumes.list(filters={"label": f"{VOLUME_LABEL}={own_target.app_name}"}) == []
    finally:
        client.close()


@pytest.mark.sandbox
def test_tidying_old_volumes_never_touches_a_live_replicas_nor_fails_the_one_off(
    file_reading_image, own_target, sandbox_env, monkeypatch
):
    """A release live for longer than the grace keeps its volume when a one-off makes a new one
    (this engine answers 500 "volume has active mounts" to removing it, which once failed migrate)."""
    from blocks.docker import secret_files

    result = own_target.deploy(file_reading_image, "secret-files", sandbox_env.app_environment(), 120)
    assert result.complete, (result.reason, result.logs)
    monkeypatch.setattr(secret_files, "VOLUME_GRACE", timedelta(0))  # as if the release were live for hours
    client = own_target.get_client()
    try:
        live = {v.name for v in client.volumes.list(filters={"label": f"{VOLUME_LABEL}={own_target.app_name}"})}
        assert live, "the replica has no secrets volume"
        status = ["migrate", "status", "--json"]
        ran = own_target.run_one_off(file_reading_image, status, sandbox_env.app_environment(), 60)
        assert ran.exit_code == 0, ran.logs
        left = {v.name for v in client.volumes.list(filters={"label": f"{VOLUME_LABEL}={own_target.app_name}"})}
        assert live <= left, f"a live replica's secrets volume was removed: {live - left}"
    finally:
        client.close()


@pytest.mark.unit
def test_the_secrets_tar_holds_one_read_only_file_per_variable_owned_by_the_apps_user():
    data = secrets_tar({"DATABASE_URL": "postgres://u:p@h/d", "JWT_SECRET": "j" * 32}, 65532, 65533)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        members = {m.name: m for m in tar.getmembers()}
        assert tar.extractfile(members["DATABASE_URL"]).read() == b"postgres://u:p@h/d"
    assert {(m.mode, m.uid, m.gid) for m in members.values()} == {(0o400, 65532, 65533)}


@pytest.mark.unit
def test_the_images_user_decides_who_owns_the_files_and_the_dockerfile_says_it_reads_them():
    assert _user_ids("65532:65532") == (65532, 65532)
    assert _user_ids("1000") == (1000, 1000)
    assert _user_ids("app") == (0, 0) and _user_ids("") == (0, 0)
    dockerfile = Path(APP_DIR / "Dockerfile").read_text()
    assert f'{SECRET_FILES_LABEL}="1"' in dockerfile and f"USER {APP_UID}:{APP_UID}" in dockerfile
