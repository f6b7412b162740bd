"""Deploy target: replicas on one Docker engine, on the host network, behind a load balancer.

A rolling update here does what the guide's RollingUpdate (maxSurge 1, maxUnavailable 0)
does in Kubernetes: start one new replica on a free port slot, wait for its own ``/health``,
only then stop one old replica, and so on. The load balancer lists every slot and routes
around the ones that are down, so the service never has fewer healthy replicas than asked.
"""

from __future__ import annotations

import json
import re
import os
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path

import docker
import httpx
import requests
from docker.errors import APIError, DockerException, NotFound
from docker.models.containers import Container
from pydantic import Field, field_validator, model_validator

from blocks.target import DeployTarget
from blocks.validation import check_docker_host, check_name, check_text
from tasks.core.errors import TemporaryError
from tasks.core.models import DeployPlan, ObjectPlan, OneOffResult, ReplicaStatus, Revision, RolloutResult

APP_LABEL = "architect.app"
REVISION_LABEL = "architect.revision"
VERSION_LABEL = "architect.version"
PORT_LABEL = "architect.port"
ONE_OFF_LABEL = "architect.one-off"


class DockerTarget(DeployTarget):
    """N replicas of the app on one Docker engine, replaced one at a time."""

    _block_type_name = "Docker Target"
    _block_type_slug = "architect-docker-target"
    _description = (
        "Runs the app as N containers on the host network of one Docker engine, behind a load "
        "balancer over fixed port slots; rolling updates one replica at a time; rollback redeploys "
        "the previous image."
    )

    docker_host: str = Field("unix:///var/run/docker.sock", description="Docker engine address")
    app_name: str = Field("architect-api", description="Name prefix and label of the app's containers")
    replicas: int = Field(3, ge=1, le=20, description="Replicas to run (the guide: 3)")
    ports: list[int] = Field(
        default_factory=lambda: [18081, 18082, 18083, 18084],
        description="Port slots the load balancer knows; one more than replicas, for the surge",
    )
    bind_host: str = Field("127.0.0.1", description="Address the app listens on (HOST)")
    health_path: str = Field("/health", description="Readiness endpoint of a replica")
    ready_timeout_s: float = Field(60, gt=0, le=600, description="How long one replica may take to become healthy")
    stop_timeout_s: int = Field(15, ge=1, le=120, description="Grace period for a replica to drain on stop")
    history_file: str = Field(
        "~/.architect-deploy/docker-history.json", description="Where the revision history is kept"
    )
    labels: dict[str, str] = Field(default_factory=dict, description="Extra labels on every container")

    _validate_app_name = field_validator("app_name")(check_name)
    _validate_docker_host = field_validator("docker_host")(check_docker_host)
    _validate_history_file = field_validator("history_file")(check_text)

    @field_validator("health_path")
    @classmethod
    def _path_only(cls, value: str) -> str:
        # Appended to http://host:port: anything but a path ("@evil/") would change the host.
        if not re.fullmatch(r"/[A-Za-z0-9._~/-]{0,200}", value):
            raise ValueError(f"{value!r} is not a URL path (starts with '/'; letters, digits, '.', '_', '~', '-', '/')")
        return value

    @field_validator("ports")
    @classmethod
    def _port_range(cls, value: list[int]) -> list[int]:
        if any(not 1024 <= p <= 65535 for p in value):
            raise ValueError("port slots must be between 1024 and 65535")
        return value

    @field_validator("labels")
    @classmethod
    def _label_keys(cls, value: dict[str, str]) -> dict[str, str]:
        for key in value:
            if not re.fullmatch(r"[a-z0-9]([a-z0-9._-]{0,126}[a-z0-9])?", key):
                raise ValueError(f"{key!r} is not a label key (lowercase letters, digits, '.', '_', '-')")
        return value

    @field_validator("bind_host")
    @classmethod
    def _loopback_only(cls, value: str) -> str:
        # Replicas are reached by this machine's load balancer and checks only.
        if value not in ("127.0.0.1", "localhost", "::1"):
            raise ValueError("replicas listen on loopback only (127.0.0.1, localhost or ::1)")
        return value

    @model_validator(mode="after")
    def _enough_slots(self) -> "DockerTarget":
        if len(set(self.ports)) < self.replicas + 1:
            raise ValueError(f"{self.replicas} replicas need {self.replicas + 1} distinct port slots (one for the surge)")
        return self

    # -- clients and state ---------------------------------------------------------------

    def get_client(self) -> docker.DockerClient:
        with self._engine_calls("connecting"):
            return docker.DockerClient(base_url=self.docker_host, timeout=60)

    @contextmanager
    def _engine_calls(self, doing: str) -> Iterator[None]:
        """An engine that does not answer (restarting, say) is a TemporaryError: asking again may work."""
        try:
            yield
        except APIError:
            raise  # the engine answered; its error says what is wrong
        except (DockerException, requests.ConnectionError, requests.Timeout) as exc:
            raise TemporaryError(f"Docker engine at {self.docker_host} did not answer while {doing}: "
                                 f"{type(exc).__name__}: {str(exc)[:160]}") from exc

    def _history_path(self) -> Path:
        return Path(self.history_file).expanduser()

    def history(self) -> list[Revision]:
        path = self._history_path()
        if not path.exists():
            return []
        return [Revision.model_validate(item) for item in json.loads(path.read_text())]

    def _record(self, image: str, version: str) -> Revision:
        revisions = self.history()
        revision = Revision(number=(revisions[-1].number + 1) if revisions else 1, image=image, version=version)
        path = self._history_path()
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps([r.model_dump(mode="json") for r in [*revisions, revision]], indent=1))
        os.replace(tmp, path)  # atomic: a killed deploy never leaves half a history
        return revision

    def _containers(self, client: docker.DockerClient, *, all_states: bool = False) -> list[Container]:
        found = client.containers.list(all=all_states, filters={"label": f"{APP_LABEL}={self.app_name}"})
        return [c for c in found if ONE_OFF_LABEL not in c.labels]

    def current_revision(self) -> Revision | None:
        with self._engine_calls("listing replicas"):
            running = self._containers(self.get_client())
        numbers = {int(c.labels[REVISION_LABEL]) for c in running if REVISION_LABEL in c.labels}
        if not numbers:
            return None
        newest = max(numbers)
        return next((r for r in self.history() if r.number == newest), None)

    def check_reachable(self) -> str:
        with self._engine_calls("asking its version"):
            info = self.get_client().version()
        return f"Docker engine {info.get('Version', '?')} at {self.docker_host}"

    def replica_urls(self) -> list[str]:
        client = self.get_client()
        with self._engine_calls("listing replicas"):
            return sorted(f"http://{self.bind_host}:{c.labels[PORT_LABEL]}" for c in self._containers(client))

    def fetch_logs(self, tail: int = 100) -> dict[str, str]:
        client = self.get_client()
        return {c.name: _logs(c, tail) for c in self._containers(client, all_states=True)}

    # -- rollouts ------------------------------------------------------------------------

    def deploy(self, image: str, version: str, env: Mapping[str, str], timeout_s: float) -> RolloutResult:
        with self._engine_calls(f"rolling out {version}"):
            return self._roll_out(image, version, env, timeout_s)

    def plan(self, image: str, version: str, env: Mapping[str, str]) -> DeployPlan:
        """Which replicas a rollout to ``image`` would replace; nothing is started or stopped."""
        running = self._containers(self.get_client())
        plan = DeployPlan(image=image, version=version)
        for container in running:
            current = _image_of(container)
            plan.objects.append(ObjectPlan(
                kind="Container", name=container.name,
                action="unchanged" if current == image else "update",
                diff="" if current == image else f"- image: {current}\n+ image: {image}",
            ))
        for slot in range(len(running), self.replicas):
            plan.objects.append(ObjectPlan(kind="Container", name=f"replica {slot + 1}", action="create",
                                           diff=f"+ image: {image}"))
        return plan

    def rollback(self, to_revision: int | None, env: Mapping[str, str], timeout_s: float) -> RolloutResult:
        revisions = self.history()
        if to_revision is None:
            if len(revisions) < 2:
                raise ValueError("there is no earlier revision to roll back to")
            target = revisions[-2]
        else:
            target = next((r for r in revisions if r.number == to_revision), None)
            if target is None:
                raise ValueError(f"revision {to_revision} is not in the history")
        with self._engine_calls(f"rolling back to {target.version}"):
            return self._roll_out(target.image, target.version, env, timeout_s)

    def _roll_out(self, image: str, version: str, env: Mapping[str, str], timeout_s: float) -> RolloutResult:
        started = time.monotonic()
        deadline = started + timeout_s
        client = self.get_client()
        try:
            client.images.pull(image)
        except DockerException as exc:
            raise TemporaryError(f"could not pull {image}: {exc}") from exc
        previous = self.current_revision()
        self._remove_stopped(client)
        # Replicas already running this image stay: an undo after a half-done rollout only
        # replaces what is not on the wanted image yet.
        running = self._containers(client)
        keep = [c for c in running if _image_of(c) == image][: self.replicas]
        old = [c for c in running if c not in keep]
        if previous and len(keep) == self.replicas and not old:
            # Nothing to change (a failed rollout already put the old replicas back).
            return RolloutResult(
                revision=previous, previous=previous, replicas=self._statuses(client), complete=True,
                reason="already running this image", duration_s=time.monotonic() - started,
            )
        revision = self._record(image, version)
        started_new: list[Container] = []

        def outcome(**result) -> RolloutResult:
            return RolloutResult(revision=revision, previous=previous, replicas=self._statuses(client),
                                 duration_s=time.monotonic() - started, **result)

        while len(keep) + len(started_new) < self.replicas:
            port = self._free_port(client)
            container = self._start_replica(client, image, version, revision.number, port, env)
            started_new.append(container)
            failure = self._wait_ready(container, port, min(deadline, time.monotonic() + self.ready_timeout_s))
            if failure:
                logs = {container.name: _logs(container, 200)}
                for new in started_new:
                    _remove(new, self.stop_timeout_s)
                return outcome(complete=False, reason=f"replica {container.name}: {failure}", logs=logs)
            if old:
                _remove(old.pop(0), self.stop_timeout_s)
        for container in old:
            _remove(container, self.stop_timeout_s)
        lost = [c.name for c in [*keep, *started_new] if _reloaded_status(c) != "running"]
        if lost:  # ready once, gone before the rollout ended: not a complete rollout
            return outcome(complete=False, reason=f"replica {', '.join(lost)} stopped running during the rollout")
        return outcome(complete=True)

    def _remove_stopped(self, client: docker.DockerClient) -> None:
        """Replicas that exited (killed, crashed, or stopped by an engine restart) serve nothing but
        hold a port slot, and one-offs whose run died before removing them are litter: remove both."""
        for container in client.containers.list(all=True, filters={"label": f"{APP_LABEL}={self.app_name}"}):
            if container.status not in ("running", "restarting", "paused"):
                _remove(container, 1)

    def _free_port(self, client: docker.DockerClient) -> int:
        used = {int(c.labels[PORT_LABEL]) for c in self._containers(client, all_states=True) if PORT_LABEL in c.labels}
        free = [p for p in self.ports if p not in used]
        if not free:
            raise TemporaryError(f"no free port slot among {self.ports}: every slot holds a container")
        return free[0]

    def _start_replica(
        self, client: docker.DockerClient, image: str, version: str, number: int, port: int, env: Mapping[str, str]
    ) -> Container:
        return client.containers.run(
            image,
            command=["serve"],
            name=f"{self.app_name}-r{number}-{port}",
            detach=True,
            network_mode="host",
            environment={**env, "HOST": self.bind_host, "PORT": str(port)},
            labels={
                **self.labels,
                APP_LABEL: self.app_name,
                REVISION_LABEL: str(number),
                VERSION_LABEL: version,
                PORT_LABEL: str(port),
            },
            read_only=True,  # the guide's readOnlyRootFilesystem
        )

    def _wait_ready(self, container: Container, port: int, deadline: float) -> str | None:
        """None once the replica answers healthy; otherwise why it never did."""
        url = f"http://{self.bind_host}:{port}{self.health_path}"
        last = "no answer yet"
        with httpx.Client(timeout=2.0) as http:
            while time.monotonic() < deadline:
                container.reload()
                if container.status in ("exited", "dead"):
                    code = container.attrs.get("State", {}).get("ExitCode")
                    return f"exited with status {code} before becoming healthy"
                try:
                    response = http.get(url)
                    if response.status_code == 200:
                        return None
                    last = f"{self.health_path} answered {response.status_code}: {response.text[:200]}"
                except httpx.HTTPError as exc:
                    last = f"{self.health_path} unreachable ({type(exc).__name__})"
                time.sleep(0.25)
        return f"not healthy within the deadline; last: {last}"

    def _statuses(self, client: docker.DockerClient) -> list[ReplicaStatus]:
        return [
            ReplicaStatus(
                name=c.name,
                url=f"http://{self.bind_host}:{c.labels.get(PORT_LABEL)}",
                image=_image_of(c),
                ready=c.status == "running",
                detail=f"revision {c.labels.get(REVISION_LABEL)}, {c.status}",
            )
            for c in self._containers(client)
        ]

    # -- one-offs ------------------------------------------------------------------------

    def run_one_off(
        self, image: str, args: Sequence[str], env: Mapping[str, str], timeout_s: float
    ) -> OneOffResult:
        client = self.get_client()
        started = time.monotonic()
        container = client.containers.run(
            image,
            command=list(args),
            name=f"{self.app_name}-oneoff-{int(time.time() * 1000)}",
            detach=True,
            network_mode="host",
            environment=dict(env),
            labels={**self.labels, APP_LABEL: self.app_name, ONE_OFF_LABEL: "1"},
            read_only=True,
        )
        try:
            try:
                outcome = container.wait(timeout=timeout_s)
                exit_code = int(outcome.get("StatusCode", -1))
            except Exception:  # the engine's read timeout: the one-off overran its deadline
                exit_code = -1
            return OneOffResult(
                args=list(args),
                exit_code=exit_code,
                logs=_logs(container, 500),
                duration_s=time.monotonic() - started,
            )
        finally:
            _remove(container, 1)


def _reloaded_status(container: Container) -> str:
    try:
        container.reload()
    except NotFound:
        return "removed"
    return container.status


def _image_of(container: Container) -> str:
    return container.attrs.get("Config", {}).get("Image", "")


def _logs(container: Container, tail: int) -> str:
    try:
        return container.logs(tail=tail, stdout=True, stderr=True).decode(errors="replace")
    except DockerException as exc:
        return f"(logs unavailable: {exc})"


def _remove(container: Container, stop_timeout_s: int) -> None:
    """Stop gracefully (SIGTERM, the app drains), then remove. Gone already is fine."""
    try:
        container.stop(timeout=stop_timeout_s)
        container.remove(force=True)
    except NotFound:
        pass

