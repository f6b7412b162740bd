"""The Docker target's engine: rolling updates, rollbacks, one-offs and logs on one Docker engine.

A rolling update here does what the guide's RollingUpdate (maxSurge 1, maxUnavailable 0)
does in Kubernetes: start one new replica on a free port slot, wait for its own ``/health``,
only then stop one old replica, and so on. The load balancer lists every slot and routes
around the ones that are down, so the service never has fewer healthy replicas than asked.
Containers carry labels saying whose they are (app, revision, version, port slot); the
revisions themselves are in ``RevisionHistory``.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from contextlib import AbstractContextManager
from functools import cached_property
from typing import TYPE_CHECKING

import docker
import httpx
from docker.errors import DockerException, NotFound
from docker.models.containers import Container

from blocks.docker.errors import docker_errors
from blocks.docker.history import RevisionHistory
from blocks.docker.secret_files import remove_volume, run_with_secret_files
from blocks.target import TargetEngine
from tasks.core.errors import DeployError, TemporaryError, one_line
from tasks.core.models import DeployPlan, ObjectPlan, OneOffResult, ReplicaState, ReplicaStatus, Revision, RolloutResult
from tasks.core.redaction import redact

if TYPE_CHECKING:
    from blocks.docker.target import DockerTarget

APP_LABEL = "architect.app"
REVISION_LABEL = "architect.revision"
VERSION_LABEL = "architect.version"
PORT_LABEL = "architect.port"
ONE_OFF_LABEL = "architect.one-off"
REPLICA_PROBE_TIMEOUT_S = 2.0  # one /health of a replica while the release is watched
RESTART_RETRIES = 3  # the restart policy's bound on restarts of one crashed replica


class DockerEngine(TargetEngine):
    """The work of one ``DockerTarget``: its settings, its engine's client, its revision history."""

    def __init__(self, settings: DockerTarget, history: RevisionHistory):
        self.settings = settings
        self.revisions = history

    @cached_property
    def client(self) -> docker.DockerClient:
        # Made on first use: reading the history needs no engine.
        return self.settings.get_client()

    def _engine_calls(self, doing: str) -> AbstractContextManager[None]:
        return docker_errors(doing, self.settings.docker_host)

    # -- reading -------------------------------------------------------------------------

    def history(self) -> list[Revision]:
        return self.revisions.revisions()

    def _containers(self, *, all_states: bool = False) -> list[Container]:
        found = self.client.containers.list(all=all_states, filters={"label": f"{APP_LABEL}={self.settings.app_name}"})
        return [c for c in found if ONE_OFF_LABEL not in c.labels]

    def current_revision(self) -> Revision | None:
        with self._engine_calls("listing replicas"):
            running = self._containers()
        numbers = {int(c.labels[REVISION_LABEL]) for c in running if REVISION_LABEL in c.labels}
        return self.revisions.find(max(numbers)) if numbers else None

    def check_reachable(self) -> str:
        with self._engine_calls("asking its version"):
            info = self.client.version()
        return f"Docker engine {info.get('Version', '?')} at {self.settings.docker_host}"

    def replica_urls(self) -> list[str]:
        with self._engine_calls("listing replicas"):
            return sorted(f"http://{self.settings.bind_host}:{c.labels[PORT_LABEL]}" for c in self._containers())

    def fetch_logs(self, tail: int = 100) -> dict[str, str]:
        with self._engine_calls("listing replicas"):
            return {c.name: _logs(c, tail) for c in self._containers(all_states=True)}

    def replica_states(self) -> list[ReplicaState]:
        """Every replica container (stopped ones included; a rollout leaves only the live
        release's): running or not and why (exit status), its restarts (``RestartCount``, counted
        by the restart policy), and ready when its own health endpoint answers 200 (the image has
        no HEALTHCHECK; where a container has one, Docker's verdict is used instead)."""
        with self._engine_calls("listing replicas"):
            containers = self._containers(all_states=True)
        with httpx.Client(timeout=REPLICA_PROBE_TIMEOUT_S) as http:
            return [self._replica_state(c, http) for c in sorted(containers, key=lambda c: c.name)]

    def _replica_state(self, container: Container, http: httpx.Client) -> ReplicaState:
        state = container.attrs.get("State", {})
        restarts = int(container.attrs.get("RestartCount", 0) or 0)
        started = {"started_at": state.get("StartedAt") or None}  # `docker restart` changes it, not RestartCount
        if container.status != "running":
            code, error = state.get("ExitCode"), state.get("Error") or ""
            if container.status == "restarting":  # the restart policy brings it back after a crash
                why = f"restarting after it exited with status {code} (restart {restarts})"
            elif container.status in ("exited", "dead"):
                why = f"{container.status} with status {code}"
            else:
                why = container.status
            why += f" ({one_line(error)[:200]})" if error else ""
            return ReplicaState(
                name=container.name, running=False, ready=False, restarts=restarts, detail=why, **started
            )
        if health := state.get("Health"):
            healthy = health.get("Status") == "healthy"
            detail = "" if healthy else f"Docker health check: {health.get('Status')}"
            return ReplicaState(
                name=container.name, running=True, ready=healthy, restarts=restarts, detail=detail, **started
            )
        url = f"http://{self.settings.bind_host}:{container.labels.get(PORT_LABEL)}{self.settings.health_path}"
        try:
            response = http.get(url)
        except httpx.HTTPError as exc:  # not answering: unready (the watcher allows a grace)
            return ReplicaState(
                name=container.name,
                running=True,
                ready=False,
                restarts=restarts,
                detail=f"{self.settings.health_path} unreachable ({type(exc).__name__})",
                **started,
            )
        ready = response.status_code == 200
        detail = "" if ready else f"{self.settings.health_path} answered {response.status_code}"
        return ReplicaState(name=container.name, running=True, ready=ready, restarts=restarts, detail=detail, **started)

    # -- rollouts ------------------------------------------------------------------------

    def deploy(self, image: str, version: str, env: Mapping[str, str], timeout_s: float) -> RolloutResult:
        with self._engine_calls(f"rolling out {version}"):
            return self._roll_out(image, version, env, timeout_s)

    def plan(self, image: str, version: str, env: Mapping[str, str]) -> DeployPlan:
        """Which replicas a rollout to ``image`` would replace; nothing is started or stopped."""
        with self._engine_calls("listing replicas"):
            running = self._containers()
            current = {c.name: _image_of(c) for c in running}
        plan = DeployPlan(image=image, version=version)
        for name, running_image in current.items():
            plan.objects.append(
                ObjectPlan(
                    kind="Container",
                    name=name,
                    action="unchanged" if running_image == image else "update",
                    diff="" if running_image == image else f"- image: {running_image}\n+ image: {image}",
                )
            )
        for slot in range(len(running), self.settings.replicas):
            plan.objects.append(
                ObjectPlan(kind="Container", name=f"replica {slot + 1}", action="create", diff=f"+ image: {image}")
            )
        return plan

    def rollback(self, to_revision: int | None, env: Mapping[str, str], timeout_s: float) -> RolloutResult:
        target = self.revisions.undo_target(to_revision)
        with self._engine_calls(f"rolling back to {target.version}"):
            return self._roll_out(target.image, target.version, env, timeout_s)

    def _roll_out(self, image: str, version: str, env: Mapping[str, str], timeout_s: float) -> RolloutResult:
        settings = self.settings
        started = time.monotonic()
        deadline = started + timeout_s
        with self._engine_calls(f"pulling {image}"):
            self.client.images.pull(image)
        previous = self.current_revision()
        self._remove_stopped()
        # Replicas already running this image stay: an undo after a half-done rollout only
        # replaces what is not on the wanted image yet.
        running = self._containers()
        keep = [c for c in running if _image_of(c) == image][: settings.replicas]
        old = [c for c in running if c not in keep]
        if previous and len(keep) == settings.replicas and not old:
            # Nothing to change (a failed rollout already put the old replicas back).
            return RolloutResult(
                revision=previous,
                previous=previous,
                replicas=self._statuses(),
                complete=True,
                reason="already running this image",
                duration_s=time.monotonic() - started,
            )
        revision = self.revisions.record(image, version)
        started_new: list[Container] = []

        def outcome(**result) -> RolloutResult:
            return RolloutResult(
                revision=revision,
                previous=previous,
                replicas=self._statuses(),
                duration_s=time.monotonic() - started,
                **result,
            )

        while len(keep) + len(started_new) < settings.replicas:
            port = self._free_port()
            container = self._start_replica(image, version, revision.number, port, env)
            started_new.append(container)
            failure = self._wait_ready(container, port, min(deadline, time.monotonic() + settings.ready_timeout_s))
            if failure:
                logs = {container.name: _logs(container, 200)}
                for new in started_new:
                    _remove(new, settings.stop_timeout_s)
                # The replica's own last words say why; the whole log is in the rollout's artifact.
                said = _last_line(logs[container.name])
                reason = f"replica {container.name}: {failure}" + (f"; it said: {said}" if said else "")
                return outcome(complete=False, reason=reason, logs=logs)
            if old:
                _remove(old.pop(0), settings.stop_timeout_s)
        for container in old:
            _remove(container, settings.stop_timeout_s)
        lost = [c.name for c in [*keep, *started_new] if _reloaded_status(c) != "running"]
        if lost:  # ready once, gone before the rollout ended: not a complete rollout
            return outcome(complete=False, reason=f"replica {', '.join(lost)} stopped running during the rollout")
        return outcome(complete=True)

    def _remove_stopped(self) -> None:
        """Replicas that exited (killed, crashed, or stopped by an engine restart) serve nothing but
        hold a port slot, and one-offs whose run died before removing them are litter: remove both."""
        mine = {"label": f"{APP_LABEL}={self.settings.app_name}"}
        for container in self.client.containers.list(all=True, filters=mine):
            if container.status not in ("running", "restarting", "paused"):
                _remove(container, 1)

    def _free_port(self) -> int:
        used = {int(c.labels[PORT_LABEL]) for c in self._containers(all_states=True) if PORT_LABEL in c.labels}
        free = [p for p in self.settings.ports if p not in used]
        if not free:
            raise TemporaryError(f"no free port slot among {self.settings.ports}: every slot holds a container")
        return free[0]

    def _start_replica(self, image: str, version: str, number: int, port: int, env: Mapping[str, str]) -> Container:
        settings = self.settings
        # The app's environment goes as files on a tmpfs shared by the revision's replicas, never
        # in the container's configuration (docker inspect); HOST and PORT are nothing secret.
        return run_with_secret_files(
            self.client,
            image,
            app_env=env,
            volume=f"{settings.app_name}-secrets-r{number}",
            app=settings.app_name,
            command=["serve"],
            name=f"{settings.app_name}-r{number}-{port}",
            detach=True,
            network_mode="host",
            environment={"HOST": settings.bind_host, "PORT": str(port)},
            labels={
                **settings.labels,
                APP_LABEL: settings.app_name,
                REVISION_LABEL: str(number),
                VERSION_LABEL: version,
                PORT_LABEL: str(port),
            },
            read_only=True,  # the guide's readOnlyRootFilesystem
            # As the kubelet restarts a crashed container: a crash shows as a restart the release
            # watch sees, not as a hole. on-failure, because a replica that exits 0 was stopped on
            # purpose; few retries, so a crash-looping release still exits within about a second
            # (backoff 0.1, 0.2, 0.4 s) and the rollout's readiness wait reports its exit status.
            restart_policy={"Name": "on-failure", "MaximumRetryCount": RESTART_RETRIES},
        )

    def _wait_ready(self, container: Container, port: int, deadline: float) -> str | None:
        """None once the replica answers healthy; otherwise why it never did."""
        health_path = self.settings.health_path
        url = f"http://{self.settings.bind_host}:{port}{health_path}"
        last = "no answer yet"
        with httpx.Client(timeout=2.0) as http:
            while time.monotonic() < deadline:
                container.reload()
                restarts = int(container.attrs.get("RestartCount", 0) or 0)
                # A crash during the readiness wait fails it at once, even though the restart
                # policy brings the replica back (a crash loop must not wait out the deadline).
                if container.status in ("exited", "dead", "restarting") or restarts:
                    code = container.attrs.get("State", {}).get("ExitCode")  # 0 again once restarted
                    how = f" with status {code}" if code else ""
                    again = f" (restarted {restarts} time{'s' if restarts > 1 else ''})" if restarts else ""
                    return f"exited{how} before becoming healthy{again}"
                try:
                    response = http.get(url)
                    if response.status_code == 200:
                        return None
                    last = f"{health_path} answered {response.status_code}: {response.text[:200]}"
                except httpx.HTTPError as exc:  # not listening yet: what the readiness wait is for
                    last = f"{health_path} unreachable ({type(exc).__name__})"
                time.sleep(0.25)
        return f"not healthy within the deadline; last: {last}"

    def _statuses(self) -> list[ReplicaStatus]:
        return [
            ReplicaStatus(
                name=c.name,
                url=f"http://{self.settings.bind_host}:{c.labels.get(PORT_LABEL)}",
                image=_image_of(c),
                ready=c.status == "running",
                detail=f"revision {c.labels.get(REVISION_LABEL)}, {c.status}",
            )
            for c in self._containers()
        ]

    # -- removal -------------------------------------------------------------------------

    def remove_release(self, timeout_s: float) -> str:
        """A release with no earlier revision to go back to (a failed first deploy): stop and remove
        every container of the app, replicas gracefully (the app drains) and one-offs too. The
        revision history stays: it is the record of what ran."""
        deadline = time.monotonic() + timeout_s
        mine = {"label": f"{APP_LABEL}={self.settings.app_name}"}
        with self._engine_calls("removing the release"):
            found = self.client.containers.list(all=True, filters=mine)
            for container in found:
                grace = max(1, min(self.settings.stop_timeout_s, int(deadline - time.monotonic())))
                _remove(container, grace)
            left = [c.name for c in self.client.containers.list(all=True, filters=mine)]
        if left:
            raise TemporaryError(f"containers of {self.settings.app_name} still there after removal: {', '.join(left)}")
        replicas = sorted(c.name for c in found if ONE_OFF_LABEL not in c.labels)
        return f"removed {len(replicas)} replica container(s)" + (f": {', '.join(replicas)}" if replicas else "")

    # -- one-offs ------------------------------------------------------------------------

    def run_one_off(self, image: str, args: Sequence[str], env: Mapping[str, str], timeout_s: float) -> OneOffResult:
        settings = self.settings
        started = time.monotonic()
        name = f"{settings.app_name}-oneoff-{int(time.time() * 1000)}"
        with self._engine_calls(f"starting a one-off from {image}"):
            # The app's environment as files on the one-off's own tmpfs volume (never in docker inspect).
            container = run_with_secret_files(
                self.client,
                image,
                app_env=env,
                volume=f"{name}-secrets",
                app=settings.app_name,
                command=list(args),
                name=name,
                detach=True,
                network_mode="host",
                labels={**settings.labels, APP_LABEL: settings.app_name, ONE_OFF_LABEL: "1"},
                read_only=True,
            )
        try:
            return OneOffResult(
                args=list(args),
                exit_code=self._exit_code(container, timeout_s),
                logs=_logs(container, 500),
                duration_s=time.monotonic() - started,
            )
        finally:
            with self._engine_calls(f"removing the one-off {container.name}"):
                _remove(container, 1)
                remove_volume(self.client, f"{name}-secrets")

    def _exit_code(self, container: Container, timeout_s: float) -> int:
        """The one-off's exit status; -1 when it gave none within ``timeout_s``."""
        try:
            with self._engine_calls(f"waiting for the one-off {container.name}"):
                outcome = container.wait(timeout=timeout_s)
        except DeployError:  # the engine's read timeout: the one-off overran its deadline
            return -1
        return int(outcome.get("StatusCode", -1))


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
        return redact(container.logs(tail=tail, stdout=True, stderr=True).decode(errors="replace"))
    except DockerException as exc:  # logs are evidence for a report, never a reason to fail it
        return f"(logs unavailable: {one_line(exc)})"


def _last_line(logs: str, limit: int = 300) -> str:
    lines = [line.strip() for line in logs.splitlines() if line.strip()]
    return lines[-1][:limit] if lines else ""


def _remove(container: Container, stop_timeout_s: int) -> None:
    """Stop gracefully (SIGTERM, the app drains), then remove. Gone already is fine."""
    try:
        container.stop(timeout=stop_timeout_s)
        container.remove(force=True)
    except NotFound:
        pass
