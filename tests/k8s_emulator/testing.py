"""Test helpers around the emulator: a cluster to talk to, the app's manifests, kubectl.

``cluster()`` yields the emulator, or a real cluster when ``ARCHITECT_K8S_URL`` is set (for
example ``kubectl proxy`` in front of kind, see .github/workflows/kind.yml). On a real cluster
the test images must exist and behave like the emulator's image names do; their references are
``$ARCHITECT_K8S_IMAGE_PREFIX:<tag>`` with the tags in ``TAGS``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import yaml

from . import Emulator, running_emulator

REPO_ROOT = Path(__file__).resolve().parents[2]
APP_MANIFESTS = REPO_ROOT / "sandbox" / "architect-api" / "k8s" / "staging"
REAL_URL = os.environ.get("ARCHITECT_K8S_URL", "")
IMAGE_PREFIX = os.environ.get("ARCHITECT_K8S_IMAGE_PREFIX", "127.0.0.1:55000/architect-api")
TAGS = {
    "v1": "3.2.0",
    "v2": "3.2.1",
    "crash": "3.2.2-crash",
    "stuck": "3.2.2-stuck",
    "nopull": "3.2.2-nopull",
    "failmigrate": "3.2.2-failmigrate",
}
IMAGES = {key: f"{IMAGE_PREFIX}:{tag}" for key, tag in TAGS.items()}
# A real cluster pulls and starts containers for real; give it more time.
SLOW = 6.0 if REAL_URL else 1.0

# The guide's manifests, used when the app repo has none yet.
GUIDE_DEPLOYMENT = {
    "apiVersion": "apps/v1",
    "kind": "Deployment",
    "metadata": {
        "name": "architect-api",
        "namespace": "architect-staging",
        "labels": {"app": "architect-api", "environment": "staging"},
    },
    "spec": {
        "replicas": 3,
        "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0}},
        "selector": {"matchLabels": {"app": "architect-api"}},
        "template": {
            "metadata": {"labels": {"app": "architect-api", "environment": "staging"}},
            "spec": {
                "containers": [
                    {
                        "name": "architect-api",
                        "image": "staging-registry.example.com/architect-api:3.2.0",
                        "imagePullPolicy": "IfNotPresent",
                        "ports": [{"containerPort": 8080, "name": "http"}],
                        "env": [{"name": "ENV", "value": "staging"}],
                        "envFrom": [{"secretRef": {"name": "architect-secrets"}}],
                        "readinessProbe": {
                            "httpGet": {"path": "/health", "port": "http"},
                            "initialDelaySeconds": 1,
                            "periodSeconds": 1,
                            "failureThreshold": 2,
                        },
                        "resources": {
                            "requests": {"memory": "64Mi", "cpu": "50m"},
                            "limits": {"memory": "128Mi", "cpu": "250m"},
                        },
                        "securityContext": {"runAsNonRoot": True, "readOnlyRootFilesystem": True},
                    }
                ]
            },
        },
    },
}
GUIDE_SERVICE = {
    "apiVersion": "v1",
    "kind": "Service",
    "metadata": {"name": "architect-api", "namespace": "architect-staging"},
    "spec": {
        "type": "ClusterIP",
        "ports": [{"port": 443, "targetPort": "http", "protocol": "TCP", "name": "https"}],
        "selector": {"app": "architect-api"},
    },
}


@dataclass
class Cluster:
    url: str
    emulator: Emulator | None
    kubeconfig: Path
    cache_dir: Path

    def kubectl(
        self, *args: str, namespace: str | None = None, check: bool = True, timeout: float = 120
    ) -> subprocess.CompletedProcess:
        cmd = ["kubectl", "--kubeconfig", str(self.kubeconfig), "--cache-dir", str(self.cache_dir)]
        if namespace:
            cmd += ["-n", namespace]
        result = subprocess.run(cmd + list(args), capture_output=True, text=True, timeout=timeout)
        if check and result.returncode != 0:
            raise AssertionError(f"kubectl {' '.join(args)} failed ({result.returncode}): {result.stderr}")
        return result

    def snapshot(self, namespace: str) -> dict:
        """Every object: the emulator's full store, or (real cluster) each object's resourceVersion."""
        if self.emulator is not None:
            return self.emulator.dump()
        out = self.kubectl(
            "get", "deployments,replicasets,services,secrets,pods,jobs", "-o", "json", namespace=namespace
        )
        items = json.loads(out.stdout)["items"]
        return {f"{o['kind']}/{o['metadata']['name']}": o["metadata"]["resourceVersion"] for o in items}


def write_kubeconfig(url: str, path: Path) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "current-context": "test",
                "clusters": [{"name": "test", "cluster": {"server": url}}],
                "contexts": [{"name": "test", "context": {"cluster": "test", "user": "test"}}],
                "users": [{"name": "test", "user": {}}],
            }
        )
    )
    return path


@contextlib.contextmanager
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    """The emulator (default) or the real cluster at $ARCHITECT_K8S_URL."""
    cache = tmp_path / "kube-cache"
    if REAL_URL:
        yield Cluster(REAL_URL, None, write_kubeconfig(REAL_URL, tmp_path / "kubeconfig"), cache)
        return
    # A quicker clock than the defaults keeps the suite fast; the behaviour is the same.
    with running_emulator(tick_s=0.1, ready_delay_s=0.15, crash_period_s=0.3) as (url, emulator):
        yield Cluster(url, emulator, write_kubeconfig(url, tmp_path / "kubeconfig"), cache)


def unique_namespace() -> str:
    """A fresh namespace per test, so tests against one real cluster do not meet."""
    return f"architect-test-{uuid.uuid4().hex[:8]}"


def app_repo(tmp_path: Path, progress_deadline_s: int | None = None) -> Path:
    """A stand-in app checkout whose k8s/staging holds the app's manifests (or the guide's)."""
    repo = tmp_path / "app"
    staging = repo / "k8s" / "staging"
    staging.mkdir(parents=True)
    if (APP_MANIFESTS / "deployment.yaml").is_file() and (APP_MANIFESTS / "service.yaml").is_file():
        for file in APP_MANIFESTS.iterdir():
            if file.is_file():
                shutil.copy(file, staging / file.name)
    else:
        (staging / "deployment.yaml").write_text(yaml.safe_dump(GUIDE_DEPLOYMENT, sort_keys=False))
        (staging / "service.yaml").write_text(yaml.safe_dump(GUIDE_SERVICE, sort_keys=False))
    if progress_deadline_s is not None:
        # Tests shorten the deadline through the manifest, as an operator would.
        docs = list(yaml.safe_load_all((staging / "deployment.yaml").read_text()))
        for doc in docs:
            if doc and doc.get("kind") == "Deployment":
                doc["spec"]["progressDeadlineSeconds"] = progress_deadline_s
        (staging / "deployment.yaml").write_text(yaml.safe_dump_all(docs, sort_keys=False))
    return repo


def namespaced_manifests(repo: Path, namespace: str) -> list[Path]:
    """deployment.yaml and service.yaml rewritten into ``namespace`` (for kubectl apply -f)."""
    out = []
    for name in ("namespace.yaml", "deployment.yaml", "service.yaml"):
        target = repo / f"kubectl-{name}"
        if name == "namespace.yaml":
            docs = [{"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}}]
        else:
            docs = [d for d in yaml.safe_load_all((repo / "k8s" / "staging" / name).read_text()) if d]
            for doc in docs:
                doc["metadata"]["namespace"] = namespace
        target.write_text(yaml.safe_dump_all(docs, sort_keys=False))
        out.append(target)
    return out


def kubectl_revisions(c: Cluster, namespace: str, deployment: str = "architect-api") -> list[int]:
    """The REVISION column of ``kubectl rollout history``."""
    out = c.kubectl("rollout", "history", f"deployment/{deployment}", namespace=namespace).stdout
    return [int(line.split()[0]) for line in out.splitlines() if line.strip()[:1].isdigit()]


def kubectl_revision_image(c: Cluster, namespace: str, revision: int, deployment: str = "architect-api") -> str:
    out = c.kubectl(
        "rollout", "history", f"deployment/{deployment}", f"--revision={revision}", namespace=namespace
    ).stdout
    return next(line.split("Image:", 1)[1].strip() for line in out.splitlines() if "Image:" in line)
