"""The objects ``KubernetesTarget`` writes, built from the app repo and the run: no API calls here.

The repo's ``k8s/staging`` manifests with the pushed image and version set (a Secret that
would take the name of the pipeline's own is refused), the app's Secret from the environment,
the undo record (the objects as they were before a deploy), and the one-off Job from
``job-template.yaml`` (or a minimal one).
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Mapping
from pathlib import Path

import yaml

from tasks.core.errors import PermanentError

VERSION_ANNOTATION = "architect-deploy/version"
CHANGE_CAUSE = "kubernetes.io/change-cause"
MANAGED_BY = "app.kubernetes.io/managed-by"
# Kinds the manifests may hold: kind -> (API prefix, plural).
KINDS = {
    "Deployment": ("/apis/apps/v1", "deployments"),
    "Service": ("/api/v1", "services"),
    "ConfigMap": ("/api/v1", "configmaps"),
    "ServiceAccount": ("/api/v1", "serviceaccounts"),
    "Secret": ("/api/v1", "secrets"),
    "Job": ("/apis/batch/v1", "jobs"),
    "HorizontalPodAutoscaler": ("/apis/autoscaling/v2", "horizontalpodautoscalers"),
    "PodDisruptionBudget": ("/apis/policy/v1", "poddisruptionbudgets"),
    "Ingress": ("/apis/networking.k8s.io/v1", "ingresses"),
}
# Where the undo record keeps the previous objects, inside its Secret.
UNDO_RECORD_KEY = "undo-record.json"
JOB_TEMPLATE = "job-template.yaml"
SKIPPED_FILES = {JOB_TEMPLATE, "job-template.yml", "kustomization.yaml", "kustomization.yml"}


def load_manifests(
    directory: Path, namespace: str, deployment_name: str, container_name: str, image: str, version: str
) -> list[dict]:
    """The directory's manifests (job template skipped), namespaced, with the image and version set."""
    if not directory.is_dir():
        raise PermanentError(f"no manifests at {directory}")
    objects = []
    for file in sorted(directory.iterdir()):
        if file.suffix not in (".yaml", ".yml") or file.name in SKIPPED_FILES:
            continue
        for doc in yaml.safe_load_all(file.read_text()):
            if not doc or doc.get("kind") == "Namespace":
                continue
            if doc.get("kind") not in KINDS:
                raise PermanentError(f"{file.name}: kind {doc.get('kind')!r} is not supported")
            doc.setdefault("metadata", {})["namespace"] = namespace
            objects.append(doc)
    deployment = next(
        (o for o in objects if o["kind"] == "Deployment" and o["metadata"].get("name") == deployment_name), None
    )
    if deployment is None:
        raise PermanentError(f"the manifests in {directory} hold no Deployment {deployment_name}")
    containers = deployment["spec"]["template"]["spec"]["containers"]
    container = next((c for c in containers if c.get("name") == container_name), None)
    if container is None:
        raise PermanentError(f"Deployment {deployment_name} has no container {container_name}")
    container["image"] = image
    deployment["metadata"].setdefault("annotations", {}).update(
        {CHANGE_CAUSE: f"architect-deploy {version} {image}", VERSION_ANNOTATION: version}
    )
    template_meta = deployment["spec"]["template"].setdefault("metadata", {})
    template_meta.setdefault("annotations", {})[VERSION_ANNOTATION] = version
    return objects


def undo_record_name(deployment_name: str) -> str:
    """The Secret that holds the objects as they were before the last deploy (see ``undo_record``)."""
    return f"{deployment_name}-undo-record"


def refuse_own_secrets(objects: list[dict], reserved: set[str]) -> None:
    """Refuse manifests holding a Secret named like one the pipeline writes itself.

    The pipeline's Secret is written from the environment block; a manifest of the same name
    would replace its values with whatever the repo holds (or undo the undo record). Refused
    before anything is applied, so such a release changes nothing.
    """
    clash = sorted(o["metadata"].get("name", "") for o in objects if o["kind"] == "Secret")
    clash = [name for name in clash if name in reserved]
    if clash:
        raise PermanentError(
            f"the manifests hold Secret {', '.join(clash)}, which the pipeline writes itself from the "
            "environment block (secret_name); remove it from the manifests: nothing was applied"
        )


def undo_record(name: str, namespace: str, manager: str, record: dict) -> dict:
    """The undo record as a Secret: the previous objects may include the manifests' own Secrets."""
    data = json.dumps(record, sort_keys=True).encode()
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {"name": name, "namespace": namespace, "labels": {MANAGED_BY: manager}},
        "data": {UNDO_RECORD_KEY: base64.b64encode(data).decode()},
    }


def read_undo_record(secret: dict | None) -> dict | None:
    """The record an ``undo_record`` Secret holds; None when there is none."""
    raw = ((secret or {}).get("data") or {}).get(UNDO_RECORD_KEY)
    return json.loads(base64.b64decode(raw)) if raw else None


def secret_manifest(name: str, namespace: str, manager: str, env: Mapping[str, str]) -> dict:
    """The app's Secret holding ``env`` (base64, as the API wants it)."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "Opaque",
        "metadata": {"name": name, "namespace": namespace, "labels": {MANAGED_BY: manager}},
        "data": {k: base64.b64encode(str(v).encode()).decode() for k, v in env.items()},
    }


def job_manifest(
    template: Path | None,
    name: str,
    namespace: str,
    manager: str,
    container_name: str,
    secret_name: str,
    image: str,
    args: list[str],
    timeout_s: float,
) -> dict:
    """A one-off Job: the template file when it holds a Job, else a minimal one; image, args, Secret set."""
    job: dict | None = None
    if template is not None and template.is_file():
        job = yaml.safe_load(template.read_text())
    if not isinstance(job, dict) or job.get("kind") != "Job":
        job = {
            "apiVersion": "batch/v1",
            "kind": "Job",
            "metadata": {},
            "spec": {
                "backoffLimit": 0,
                "template": {"spec": {"restartPolicy": "Never", "containers": [{"name": container_name}]}},
            },
        }
    job["metadata"] = {**(job.get("metadata") or {}), "name": name, "namespace": namespace}
    job["metadata"].setdefault("labels", {})[MANAGED_BY] = manager
    spec = job["spec"]
    spec["activeDeadlineSeconds"] = max(1, math.ceil(timeout_s))
    pod_spec = spec["template"]["spec"]
    container = next((c for c in pod_spec["containers"] if c.get("name") == container_name), pod_spec["containers"][0])
    container.update(image=image, args=args)
    refs = container.setdefault("envFrom", [])
    if not any((r.get("secretRef") or {}).get("name") == secret_name for r in refs):
        refs.append({"secretRef": {"name": secret_name}})
    return job
