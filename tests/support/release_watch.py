"""What the release watch's sandbox tests need: a replica crashed from outside, a deploy run in the
background until it pauses for sign-off, a run's artifacts, and a throwaway Docker target."""

from __future__ import annotations

import contextvars
import os
import signal
import threading

import docker
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
)

from tests.support.deploys import deploy
from tests.support.run_records import wait_for_paused_deploy  # noqa: F401 (the watch tests use it)


def crash(container) -> None:
    """SIGKILL the replica's process from the host, as the kernel's OOM killer would: the engine
    sees a crash (exit 137), not a stop it was asked for, so the restart policy applies."""
    container.reload()
    os.kill(int(container.attrs["State"]["Pid"]), signal.SIGKILL)


class BackgroundDeploy(threading.Thread):
    """``deploy(...)`` in a thread with the test's context (its Prefect settings); ``state`` once done."""

    def __init__(self, *args, **parameters):
        super().__init__(daemon=True)
        self.args, self.parameters, self.state = args, parameters, None
        self.context = contextvars.copy_context()

    def run(self) -> None:
        self.state = self.context.run(deploy, *self.args, **self.parameters)


def artifacts_of(flow_run_id) -> dict[str, object]:
    """The keyed artifacts of one flow run, the latest of each key."""
    with get_client(sync_client=True) as client:
        found = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
    return {a.key: a for a in sorted(found, key=lambda a: a.created) if a.key}


def remove_app_containers(docker_host: str, app_name: str) -> None:
    """Every container labelled as ``app_name``'s, whatever state it is in."""
    client = docker.DockerClient(base_url=docker_host, timeout=30)
    try:
        for container in client.containers.list(all=True, filters={"label": f"architect.app={app_name}"}):
            container.remove(force=True)
    finally:
        client.close()
