"""A small Kubernetes API emulator for tests: the real ``kubernetes`` client and ``kubectl`` talk to it.

    from tests.k8s_emulator import running_emulator

    with running_emulator() as (base_url, emulator):
        ...  # http://127.0.0.1:<port>; emulator.dump() shows every object, emulator.job_runs() every Job run

It serves plain HTTP on 127.0.0.1 (a free port): discovery, a minimal OpenAPI v3 index,
namespaces, secrets, configmaps, services, ingresses, pods (+ log), events, deployments,
replicasets, jobs;
GET/LIST with label and field selectors, POST, PUT, PATCH (JSON, merge, strategic merge,
server-side apply that creates), DELETE with propagation, ``dryRun=All``, watches with
``timeoutSeconds``; uid/resourceVersion/generation/creationTimestamp bookkeeping. A fake control
plane (``cluster.py``) plays the Deployment, ReplicaSet and Job controllers and the kubelet;
pod behaviour is chosen by the image reference (``crash``, ``nopull``, ``stuck``, ``failmigrate`` or
``badmigration``); ``emulator.restart_container(namespace, pod)`` restarts a healthy pod's container
once (restartCount up). Scaling is a write of ``spec.replicas`` (the ``scale`` subresource is not
served); ConfigMaps and Ingresses are stored objects only: nothing reads them (no ingress
controller, no pod sees a ConfigMap's values), so a test checks what is stored, not its effect.

What it cannot show, so tests against it prove nothing about these:

- strategic merge patch and apply use a small fixed table of list merge keys, not the API schema;
  apply merges into the live object: no managedFields, no conflicts, fields dropped from a
  manifest are never removed;
- no validation beyond names and kinds, no admission (webhooks, quotas, limit ranges, pod
  security), no defaulting beyond the few fields controllers read;
- no authentication or RBAC: every request is allowed (docs/kubernetes.md lists the Role a real
  cluster needs);
- garbage collection and pod termination are immediate (no grace period, no finalizers);
- no scheduling, nodes, resources or networking: pods "run" on one fake node and have no IP;
- probes are not run: readiness follows from the image reference, logs are canned text;
- the progress deadline is measured on the controller's tick (0.2 s), not to the second;
- watches do not send bookmarks (except the initial-events one) nor 410 Gone for old versions.
"""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator

from .cluster import FakeCluster
from .resources import BY_KIND
from .server import EmulatorHTTPServer
from .store import Store

__all__ = ["Emulator", "running_emulator"]


class Emulator:
    """The store, the fake control plane and the HTTP server, started and stopped together."""

    def __init__(self, tick_s: float = 0.2, ready_delay_s: float = 0.3, crash_period_s: float = 0.5):
        self.store = Store()
        self.cluster = FakeCluster(self.store, tick_s, ready_delay_s, crash_period_s)
        self.requests: list[tuple[str, str, int]] = []
        self.unhandled: list[tuple[str, str]] = []
        self.store.create(BY_KIND[("", "Namespace")], "", {"metadata": {"name": "default"}})
        self._server: EmulatorHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        assert self._server is not None, "not started"
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def start(self, port: int = 0) -> str:
        self._server = EmulatorHTTPServer(("127.0.0.1", port), self)
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.1}, name="k8s-emulator-http", daemon=True
        )
        self._thread.start()
        self.cluster.start()
        return self.url

    def stop(self) -> None:
        self.cluster.stop()
        self.store.close()
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def dump(self) -> dict[str, dict]:
        return self.store.dump()

    def restart_container(self, namespace: str, pod: str) -> int:
        """Restart ``pod``'s container once (see ``FakeCluster.restart_container``); its new restartCount."""
        return self.cluster.restart_container(namespace, pod)

    def job_runs(self) -> list[dict]:
        """Every Job the fake Job controller started (image, args, outcome), deleted ones included."""
        with self.store.lock:
            return [dict(run) for run in self.cluster.job_runs]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running_emulator(**kwargs) -> Iterator[tuple[str, Emulator]]:
    """Start an emulator on a free loopback port; yield (base URL, emulator); stop it."""
    emulator = Emulator(**kwargs)
    url = emulator.start()
    try:
        yield url, emulator
    finally:
        emulator.stop()
