"""The app's environment as files on a tmpfs, never in a container's configuration.

``docker inspect`` shows a container's environment to anyone who can reach the engine, and the
engine keeps it on disk (``config.v2.json``). So a container of the app gets, as environment,
only ``NAME_FILE=/run/secrets/NAME`` for each variable of the app's environment, and the values
as files on a tmpfs volume mounted at ``/run/secrets``: mode 0400, owned by the image's user.

The files are copied (``put_archive``) just after the container starts, and the app waits for
them (``NAME_FILE`` that does not exist yet, up to 5 s). They cannot go in before the start: a
tmpfs volume is mounted only while a container uses it, so whatever was written into it before
would be gone. Docker 20.10 cannot copy into a ``--tmpfs`` mount at all (the copy goes to the
layer under it), hence a volume whose driver options make it a tmpfs.

Replicas of one revision share one volume: while one of them runs, the volume stays mounted, so
a replica the restart policy restarts finds its files again. A replica restarted while it is the
only one of its revision finds the tmpfs empty (Docker unmounts a volume nobody uses) and exits
after the 5 s wait: a restart is a failure the release watch reports anyway. A one-off has a volume of its own,
removed with it. Volumes nobody has used for a while are removed when the next one is made.

An image that does not say it reads ``NAME_FILE`` (the label ``SECRET_FILES_LABEL``; images
built before the app learnt it) gets the plain environment, as before.
"""

from __future__ import annotations

import io
import logging
import re
import tarfile
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta
from typing import Any

import docker
from docker.errors import APIError, ImageNotFound, NotFound
from docker.models.containers import Container
from docker.types import DriverConfig, Mount

from tasks.core.errors import one_line

SECRETS_DIR = "/run/secrets"
SECRET_FILES_LABEL = "io.architect.secret-files"  # set by the app's Dockerfile: it reads NAME_FILE
VOLUME_LABEL = "architect.secrets-of"  # on each secrets volume: the app it belongs to
TMPFS_SIZE = "1m"
VOLUME_GRACE = timedelta(minutes=10)  # an unused volume younger than this may be about to be mounted

log = logging.getLogger(__name__)


def reads_secret_files(client: docker.DockerClient, image: str) -> tuple[bool, int, int]:
    """Whether ``image`` reads ``NAME_FILE``, and the uid and gid its process runs as."""
    try:
        found = client.images.get(image)
    except ImageNotFound:
        found = client.images.pull(image)
    config = found.attrs.get("Config") or {}
    uid, gid = _user_ids(config.get("User") or "")
    return (config.get("Labels") or {}).get(SECRET_FILES_LABEL) == "1", uid, gid


def _user_ids(user: str) -> tuple[int, int]:
    """``USER 65532:65532`` as numbers; a name (no /etc/passwd to read in a scratch image) or none is root."""
    match = re.fullmatch(r"(\d+)(?::(\d+))?", user.strip())
    if not match:
        return 0, 0
    uid = int(match.group(1))
    return uid, int(match.group(2) or uid)


def secrets_tar(values: Mapping[str, str], uid: int, gid: int) -> bytes:
    """A tar of one file per variable: mode 0400, owned by ``uid``:``gid``."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, value in sorted(values.items()):
            data = str(value).encode()
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.uid, info.gid, info.mtime = len(data), 0o400, uid, gid, 0
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def _secrets_mount(client: docker.DockerClient, volume: str, app: str, uid: int, gid: int) -> Mount:
    """The tmpfs volume at SECRETS_DIR. The driver options go with the mount, so the volume is a
    tmpfs even if the engine has to make it (it makes a missing named volume when mounting it)."""
    _remove_unused_volumes(client, app)
    options = {"type": "tmpfs", "device": "tmpfs", "o": f"size={TMPFS_SIZE},uid={uid},gid={gid},mode=0500"}
    return Mount(
        target=SECRETS_DIR,
        source=volume,
        type="volume",
        no_copy=True,
        labels={VOLUME_LABEL: app},
        driver_config=DriverConfig("local", options),
    )


def _remove_unused_volumes(client: docker.DockerClient, app: str) -> None:
    """Secrets volumes of ``app`` made a while ago that no container uses any more (their tmpfs is
    empty: unmounted when the last container stopped). A recent one may be about to be mounted."""
    cutoff = datetime.now(UTC) - VOLUME_GRACE
    for volume in client.volumes.list(filters={"label": f"{VOLUME_LABEL}={app}"}):
        created = _created(volume.attrs.get("CreatedAt") or "")
        if created is None or created >= cutoff or client.containers.list(all=True, filters={"volume": volume.name}):
            continue
        try:
            remove_volume(client, volume.name)
        except APIError as exc:  # tidying up is never a reason to fail the deploy that made a new one
            log.warning("left the secrets volume %s: %s", volume.name, one_line(exc)[:200])


def _created(stamp: str) -> datetime | None:
    try:
        return datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        return None


def remove_volume(client: docker.DockerClient, name: str) -> None:
    """Remove a secrets volume; one still in use (409) or gone already stays as it is."""
    try:
        client.volumes.get(name).remove()
    except NotFound:
        pass
    except APIError as exc:
        # Docker 20.10 answers 500 "volume has active mounts" where newer engines answer 409.
        if exc.status_code != 409 and "active mounts" not in str(exc) and "in use" not in str(exc):
            raise


def run_with_secret_files(
    client: docker.DockerClient,
    image: str,
    *,
    app_env: Mapping[str, str],
    volume: str,
    app: str,
    environment: Mapping[str, str] | None = None,
    **create: Any,
) -> Container:
    """``docker run -d`` of ``image`` (``create`` as for ``containers.create``) whose ``app_env``
    reaches it as files on the tmpfs ``volume``; ``environment`` (HOST, PORT: nothing secret) stays env."""
    files, uid, gid = reads_secret_files(client, image)
    if not files:
        log.warning("%s does not read NAME_FILE (label %s): its environment goes in plain", image, SECRET_FILES_LABEL)
        container = client.containers.create(image, environment={**app_env, **(environment or {})}, **create)
        container.start()
        return container
    pointers = {f"{name}_FILE": f"{SECRETS_DIR}/{name}" for name in app_env}
    container = client.containers.create(
        image,
        environment={**pointers, **(environment or {})},
        mounts=[_secrets_mount(client, volume, app, uid, gid)],
        **create,
    )
    try:
        container.start()
        if not container.put_archive(SECRETS_DIR, secrets_tar(app_env, uid, gid)):
            raise APIError(f"the engine refused the secrets of {container.name}")
    except BaseException:  # a container that never got its files is no use to anyone: gone
        container.remove(force=True)
        raise
    return container
