"""Deploy target: the guide's Kubernetes cluster, through the official ``kubernetes`` client.

It does what the guide's kubectl steps do, as API calls: the namespace and the
``architect-secrets`` Secret, server-side apply of the app repo's ``k8s/staging/`` manifests with
the pushed image, the rollout watched with ``kubectl rollout status``'s rule, ``kubectl rollout
undo`` (the old ReplicaSet's pod template patched back into the Deployment), and a Job for
one-off commands. One method hands out the ``ApiClient``; every call goes through ``_request``,
which maps "cannot reach the API" to ``TemporaryError`` and refusals to ``PermanentError``.
"""

from __future__ import annotations

import base64
import copy
import difflib
import json
import logging
import math
import time
import uuid
from collections.abc import Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import urllib3
import yaml
from kubernetes import client as k8s
from kubernetes import config as k8s_config
from kubernetes.client.exceptions import ApiException
from pydantic import BaseModel, Field, PrivateAttr, SecretStr, field_validator, model_validator

from blocks.target import DeployTarget
from blocks.validation import check_name
from tasks.errors import PermanentError, TemporaryError
from tasks.models import OneOffResult, ReplicaStatus, Revision, RolloutResult

REVISION = "deployment.kubernetes.io/revision"
HASH_LABEL = "pod-template-hash"
VERSION_ANNOTATION = "architect-deploy/version"
CHANGE_CAUSE = "kubernetes.io/change-cause"
# What kubectl rollout undo keeps from the Deployment and never copies from the ReplicaSet.
UNDO_SKIP = {
    "kubectl.kubernetes.io/last-applied-configuration", REVISION, "deployment.kubernetes.io/revision-history",
    "deployment.kubernetes.io/desired-replicas", "deployment.kubernetes.io/max-replicas",
    "deprecated.deployment.rollback.to",
}
FAILED_WAITING = {"CrashLoopBackOff", "ImagePullBackOff", "ErrImagePull", "InvalidImageName", "CreateContainerConfigError"}
# Kinds the manifests may hold: kind -> (API prefix, plural).
KINDS = {
    "Deployment": ("/apis/apps/v1", "deployments"), "Service": ("/api/v1", "services"),
    "ConfigMap": ("/api/v1", "configmaps"), "ServiceAccount": ("/api/v1", "serviceaccounts"),
    "Secret": ("/api/v1", "secrets"), "Job": ("/apis/batch/v1", "jobs"),
    "HorizontalPodAutoscaler": ("/apis/autoscaling/v2", "horizontalpodautoscalers"),
    "PodDisruptionBudget": ("/apis/policy/v1", "poddisruptionbudgets"),
    "Ingress": ("/apis/networking.k8s.io/v1", "ingresses"),
}
SKIPPED_FILES = {"job-template.yaml", "job-template.yml", "kustomization.yaml", "kustomization.yml"}
LOOPBACK = {"127.0.0.1", "localhost", "::1"}


def _logger() -> logging.Logger | logging.LoggerAdapter:
    from prefect import get_run_logger
    from prefect.exceptions import MissingContextError

    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger(__name__)


class ObjectPlan(BaseModel):
    """What a deploy would do to one object."""

    kind: str
    name: str
    action: Literal["create", "update", "unchanged"]
    diff: str = Field("", description="unified diff live -> applied (Secret: key names only)")


class DeployPlan(BaseModel):
    """A dry run of ``deploy``: nothing was changed."""

    namespace: str
    image: str
    version: str
    objects: list[ObjectPlan] = Field(default_factory=list)

    @property
    def changes(self) -> list[ObjectPlan]:
        return [o for o in self.objects if o.action != "unchanged"]


class KubernetesTarget(DeployTarget):
    """The app as a Deployment in one namespace of a Kubernetes cluster."""

    _block_type_name = "Architect Kubernetes Target"
    _block_type_slug = "architect-kubernetes-target"
    _description = (
        "Deploys the app to a Kubernetes namespace: Secret from the environment, server-side apply "
        "of the app repo's k8s/staging manifests with the pushed image, rollout watched like "
        "`kubectl rollout status`, undo like `kubectl rollout undo`, one-off commands as Jobs."
    )

    kubeconfig_path: str | None = Field(None, description="kubeconfig file; empty for ~/.kube/config")
    context: str | None = Field(None, description="kubeconfig context, e.g. 'staging'; empty for the current one")
    in_cluster: bool = Field(False, description="Use the pod's service account (when the worker runs in the cluster)")
    host: str | None = Field(None, description="API server URL; http:// only on loopback (kubectl proxy, tests)")
    token: SecretStr | None = Field(None, description="Bearer token for host (a service account token)")
    ca_cert_path: str | None = Field(None, description="PEM CA bundle for host's certificate")
    verify_tls: bool = Field(True, description="Always true: TLS is never unverified")
    namespace: str = Field("architect-staging", description="Namespace the app lives in")
    deployment_name: str = Field("architect-api", description="The Deployment in the manifests")
    container_name: str = Field("architect-api", description="The container whose image is set")
    repo_dir: str | None = Field(None, description="The app repo checkout; see with_checkout()")
    manifest_dir: str = Field("k8s/staging", description="Manifests, relative to repo_dir")
    secret_name: str = Field("architect-secrets", description="Secret the app's pods read with envFrom")
    field_manager: str = Field("architect-deploy", description="Server-side apply field manager")
    poll_interval_s: float = Field(1.0, gt=0, le=30, description="How often the rollout is looked at")
    request_timeout_s: float = Field(30, gt=0, le=300, description="Timeout of one API call")
    log_tail: int = Field(50, ge=1, le=5000, description="Log lines per pod gathered on failure")
    reachable_replica_urls: list[str] = Field(
        default_factory=list, description="Replica URLs reachable from the worker; empty: health goes through api_url"
    )
    _api: k8s.ApiClient | None = PrivateAttr(None)

    @field_validator("namespace", "deployment_name", "container_name", "secret_name")
    @classmethod
    def _names(cls, value: str) -> str:
        return check_name(value)

    @field_validator("verify_tls")
    @classmethod
    def _always_verify(cls, value: bool) -> bool:
        if not value:
            raise ValueError("TLS verification cannot be turned off; give ca_cert_path instead")
        return value

    @model_validator(mode="after")
    def _access(self) -> "KubernetesTarget":
        if self.in_cluster and self.host:
            raise ValueError("give either in_cluster or host, not both")
        if self.host:
            url = urlsplit(self.host)
            if url.scheme not in ("http", "https") or not url.hostname:
                raise ValueError(f"host {self.host!r} is not an http(s) URL")
            if url.scheme == "http" and url.hostname not in LOOPBACK:
                raise ValueError("plain http is only allowed to a loopback address (kubectl proxy, tests)")
        return self

    # ---- client factory ---------------------------------------------------------------------------

    def get_client(self) -> k8s.ApiClient:
        """An ApiClient for the configured cluster (kubeconfig, in-cluster, or host + token)."""
        cfg = k8s.Configuration()
        if self.in_cluster:
            k8s_config.load_incluster_config(client_configuration=cfg)
        elif self.host:
            cfg.host = self.host.rstrip("/")
            if self.token:
                cfg.api_key = {"authorization": f"Bearer {self.token.get_secret_value()}"}
            if self.ca_cert_path:
                cfg.ssl_ca_cert = str(Path(self.ca_cert_path).expanduser())
        else:
            path = str(Path(self.kubeconfig_path).expanduser()) if self.kubeconfig_path else None
            k8s_config.load_kube_config(config_file=path, context=self.context, client_configuration=cfg)
        cfg.verify_ssl = True
        cfg.retries = 1  # a down API answers TemporaryError quickly; the flow decides on retries
        return k8s.ApiClient(cfg)

    def with_checkout(self, repo_dir: str | Path) -> "KubernetesTarget":
        """A copy that reads manifests from this checkout of the app repo."""
        return self.model_copy(update={"repo_dir": str(repo_dir)})

    def manifests_path(self) -> Path:
        """``repo_dir/manifest_dir``, resolved; refused when it points outside the checkout."""
        if not self.repo_dir:
            raise PermanentError("repo_dir is not set: give the app repo checkout (with_checkout)")
        base = Path(self.repo_dir).expanduser().resolve()
        path = (base / self.manifest_dir).resolve()
        if path != base and base not in path.parents:
            raise PermanentError(f"manifest_dir {self.manifest_dir!r} leaves the repo checkout")
        return path

    # ---- one HTTP call --------------------------------------------------------------------------

    def _request(self, method: str, path: str, what: str, *, query: Mapping[str, Any] | None = None,
                 body: Any = None, content_type: str = "application/json", missing_ok: bool = False,
                 secret: bool = False, text: bool = False) -> Any:
        """One API call; JSON (or text) back, None for 404 when ``missing_ok``.

        ``secret`` keeps the server's message out of errors: it could quote what was sent.
        """
        _logger().info("kubernetes: %s %s", method, what)
        if self._api is None:
            self._api = self.get_client()
        api = self._api
        params = [(k, str(v).lower() if isinstance(v, bool) else str(v)) for k, v in (query or {}).items()]
        headers = {"Accept": "text/plain" if text else "application/json", "Content-Type": content_type}
        try:
            req = api.param_serialize(method, path, query_params=params, header_params=headers, body=body,
                                      auth_settings=["BearerToken"])
            resp = api.call_api(*req, _request_timeout=self.request_timeout_s)
            resp.read()
        except ApiException as exc:
            raise TemporaryError(f"Kubernetes API unreachable ({what}): {exc.reason}") from None
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            raise TemporaryError(f"Kubernetes API unreachable ({what}): {type(exc).__name__}") from None
        status = resp.status
        if status == 404 and missing_ok:
            return None
        if status >= 300:
            message = ""
            if not secret:
                try:
                    message = json.loads(resp.data).get("message", "")
                except (ValueError, AttributeError):
                    message = resp.data[:200].decode(errors="replace")
            error = TemporaryError if status >= 500 or status == 429 else PermanentError
            raise error(f"Kubernetes refused {what}: HTTP {status} {message}".rstrip())
        return resp.data.decode(errors="replace") if text else json.loads(resp.data or b"{}")

    def _ns(self, prefix: str, plural: str, name: str = "") -> str:
        return f"{prefix}/namespaces/{self.namespace}/{plural}" + (f"/{name}" if name else "")

    # ---- objects this target writes ---------------------------------------------------------------

    def _ensure_namespace(self) -> None:
        if self._request("GET", f"/api/v1/namespaces/{self.namespace}", f"namespace {self.namespace}", missing_ok=True):
            return
        self._request("POST", "/api/v1/namespaces", f"create namespace {self.namespace}",
                      body={"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": self.namespace}})

    def _secret_body(self, env: Mapping[str, str]) -> dict:
        return {
            "apiVersion": "v1", "kind": "Secret", "type": "Opaque",
            "metadata": {"name": self.secret_name, "namespace": self.namespace,
                         "labels": {"app.kubernetes.io/managed-by": self.field_manager}},
            "data": {k: base64.b64encode(str(v).encode()).decode() for k, v in env.items()},
        }

    def _write_secret(self, env: Mapping[str, str]) -> None:
        """Create or replace the app's Secret from ``env`` (values never logged)."""
        body = self._secret_body(env)
        path = self._ns("/api/v1", "secrets")
        what = f"secret {self.secret_name} ({len(env)} keys)"
        if self._request("GET", f"{path}/{self.secret_name}", what, missing_ok=True, secret=True) is None:
            self._request("POST", path, f"create {what}", body=body, secret=True)
        else:
            self._request("PUT", f"{path}/{self.secret_name}", f"replace {what}", body=body, secret=True)

    def _manifests(self, image: str, version: str) -> list[dict]:
        """The repo's manifests (job template skipped), namespaced, with the image and version set."""
        directory = self.manifests_path()
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
                doc.setdefault("metadata", {})["namespace"] = self.namespace
                objects.append(doc)
        deployment = next((o for o in objects if o["kind"] == "Deployment"
                           and o["metadata"].get("name") == self.deployment_name), None)
        if deployment is None:
            raise PermanentError(f"the manifests in {directory} hold no Deployment {self.deployment_name}")
        containers = deployment["spec"]["template"]["spec"]["containers"]
        container = next((c for c in containers if c.get("name") == self.container_name), None)
        if container is None:
            raise PermanentError(f"Deployment {self.deployment_name} has no container {self.container_name}")
        container["image"] = image
        deployment["metadata"].setdefault("annotations", {}).update(
            {CHANGE_CAUSE: f"architect-deploy {version} {image}", VERSION_ANNOTATION: version})
        template_meta = deployment["spec"]["template"].setdefault("metadata", {})
        template_meta.setdefault("annotations", {})[VERSION_ANNOTATION] = version
        return objects

    def _apply(self, obj: dict, dry_run: bool = False) -> dict | None:
        """Server-side apply (force: this pipeline owns the fields it applies)."""
        prefix, plural = KINDS[obj["kind"]]
        name = obj["metadata"]["name"]
        query = {"fieldManager": self.field_manager, "force": True}
        if dry_run:
            query["dryRun"] = "All"
        return self._request("PATCH", self._ns(prefix, plural, name), f"apply {obj['kind']} {name}"
                             + (" (dry run)" if dry_run else ""), query=query, body=obj,
                             content_type="application/apply-patch+yaml")

    # ---- reading the Deployment -------------------------------------------------------------------

    def _deployment(self) -> dict | None:
        return self._request("GET", self._ns("/apis/apps/v1", "deployments", self.deployment_name),
                             f"deployment {self.deployment_name}", missing_ok=True)

    def _replicasets(self, deployment: dict) -> list[dict]:
        """The Deployment's ReplicaSets (owner reference), by revision."""
        selector = ",".join(f"{k}={v}" for k, v in deployment["spec"]["selector"].get("matchLabels", {}).items())
        items = self._request("GET", self._ns("/apis/apps/v1", "replicasets"), "replicasets",
                              query={"labelSelector": selector})["items"]
        uid = deployment["metadata"]["uid"]
        owned = [rs for rs in items if any(r.get("uid") == uid and r.get("controller")
                                           for r in rs["metadata"].get("ownerReferences") or [])]
        return sorted(owned, key=_revision_number)

    def _as_revision(self, rs: dict) -> Revision:
        template = rs["spec"]["template"]
        containers = template["spec"]["containers"]
        container = next((c for c in containers if c.get("name") == self.container_name), containers[0])
        return Revision(
            number=_revision_number(rs), image=container.get("image", ""),
            version=(template.get("metadata", {}).get("annotations") or {}).get(VERSION_ANNOTATION, ""),
            created_at=datetime.fromisoformat(rs["metadata"]["creationTimestamp"].replace("Z", "+00:00")),
        )

    def history(self) -> list[Revision]:
        deployment = self._deployment()
        if deployment is None:
            return []
        return [self._as_revision(rs) for rs in self._replicasets(deployment) if _revision_number(rs) > 0]

    def current_revision(self) -> Revision | None:
        deployment = self._deployment()
        if deployment is None:
            return None
        wanted = (deployment["metadata"].get("annotations") or {}).get(REVISION)
        for rs in self._replicasets(deployment):
            if str(_revision_number(rs)) == wanted:
                return self._as_revision(rs)
        return None

    def _pods(self, selector: Mapping[str, str]) -> list[dict]:
        query = {"labelSelector": ",".join(f"{k}={v}" for k, v in selector.items())}
        return self._request("GET", self._ns("/api/v1", "pods"), "pods", query=query)["items"]

    def _pod_log(self, pod: str, tail: int) -> str:
        try:
            return self._request("GET", self._ns("/api/v1", "pods", pod) + "/log", f"log of pod {pod}",
                                 query={"tailLines": tail}, text=True)
        except PermanentError as exc:
            return f"(no log: {exc})"

    def _diagnose(self, pods: list[dict]) -> dict[str, str]:
        """Each pod's recent events and log tail, for the rollout report."""
        found = {}
        for pod in pods:
            name = pod["metadata"]["name"]
            events = self._request("GET", self._ns("/api/v1", "events"), f"events of pod {name}",
                                   query={"fieldSelector": f"involvedObject.name={name}"})["items"]
            lines = [f"{e.get('type', '')} {e.get('reason', '')}: {e.get('message', '')}" for e in events[-10:]]
            found[name] = "events:\n" + "\n".join(lines) + "\nlogs:\n" + self._pod_log(name, self.log_tail)
        return found

    # ---- the rollout ------------------------------------------------------------------------------

    def _wait_rollout(self, started: float, timeout_s: float, previous: Revision | None) -> RolloutResult:
        """Poll until ``kubectl rollout status`` would say done, or the rollout has failed."""
        deadline = started + timeout_s
        while True:
            deployment = self._deployment()
            if deployment is None:
                raise PermanentError(f"deployment {self.deployment_name} disappeared during the rollout")
            verdict, reason, pods, new_rs = self._rollout_state(deployment)
            if verdict is None and time.monotonic() >= deadline:
                verdict, reason = False, f"timed out after {timeout_s:.0f}s: {reason}"
            if verdict is not None:
                replicas = [_replica_status(p, self.container_name) for p in pods]
                revision = self._as_revision(new_rs) if new_rs else Revision(number=0, image="")
                return RolloutResult(
                    revision=revision, previous=previous, replicas=replicas, complete=verdict, reason=reason,
                    duration_s=round(time.monotonic() - started, 2), logs={} if verdict else self._diagnose(pods),
                )
            time.sleep(self.poll_interval_s)

    def _rollout_state(self, d: dict) -> tuple[bool | None, str, list[dict], dict | None]:
        """(True done | False failed | None in progress, why, pods of the new ReplicaSet, new ReplicaSet)."""
        status, spec = d.get("status") or {}, d["spec"]
        if status.get("observedGeneration", 0) < d["metadata"].get("generation", 1):
            return None, "waiting for the deployment spec update to be observed", [], None
        wanted = (d["metadata"].get("annotations") or {}).get(REVISION)
        new_rs = next((rs for rs in self._replicasets(d) if str(_revision_number(rs)) == wanted), None)
        pods = self._pods(new_rs["spec"]["selector"]["matchLabels"]) if new_rs else []
        progressing = next((c for c in status.get("conditions") or [] if c.get("type") == "Progressing"), {})
        if progressing.get("reason") == "ProgressDeadlineExceeded":
            return False, f"progress deadline exceeded: {progressing.get('message', '')}", pods, new_rs
        for pod in pods:
            for cs in (pod.get("status") or {}).get("containerStatuses") or []:
                waiting = (cs.get("state") or {}).get("waiting") or {}
                if waiting.get("reason") in FAILED_WAITING:
                    return (False, f"pod {pod['metadata']['name']}: {waiting['reason']} "
                            f"(restarts {cs.get('restartCount', 0)})", pods, new_rs)
        desired, updated = spec.get("replicas", 1), status.get("updatedReplicas", 0)
        total, available = status.get("replicas", 0), status.get("availableReplicas", 0)
        if updated < desired:
            return None, f"{updated} of {desired} new replicas updated", pods, new_rs
        if total > updated:
            return None, f"{total - updated} old replicas pending termination", pods, new_rs
        if available < updated:
            return None, f"{available} of {updated} updated replicas available", pods, new_rs
        return True, f"{self.deployment_name} rolled out: {available}/{desired} available", pods, new_rs

    # ---- DeployTarget -----------------------------------------------------------------------------

    def check_reachable(self) -> str:
        version = self._request("GET", "/version", "server version")
        self._request("GET", f"/api/v1/namespaces/{self.namespace}", f"namespace {self.namespace}", missing_ok=True)
        host = self.host or ("in-cluster" if self.in_cluster else f"kubeconfig context {self.context or '(current)'}")
        return f"Kubernetes {version.get('gitVersion', '?')} at {host}, namespace {self.namespace}"

    def deploy(self, image: str, version: str, env: Mapping[str, str], timeout_s: float) -> RolloutResult:
        started = time.monotonic()
        objects = self._manifests(image, version)
        previous = self.current_revision()
        self._ensure_namespace()
        self._write_secret(env)
        for obj in objects:
            self._apply(obj)
        return self._wait_rollout(started, timeout_s, previous)

    def rollback(self, to_revision: int | None, env: Mapping[str, str], timeout_s: float) -> RolloutResult:
        """``kubectl rollout undo [--to-revision]``: the old pod template patched back in."""
        started = time.monotonic()
        deployment = self._deployment()
        if deployment is None:
            raise PermanentError(f"deployment {self.deployment_name} does not exist: nothing to roll back")
        previous = self.current_revision()
        current = int((deployment["metadata"].get("annotations") or {}).get(REVISION, "0"))
        candidates = [rs for rs in self._replicasets(deployment) if _revision_number(rs) > 0]
        if to_revision:
            target = next((rs for rs in candidates if _revision_number(rs) == to_revision), None)
        else:
            target = next((rs for rs in reversed(candidates) if _revision_number(rs) < current), None)
        if target is None:
            raise PermanentError(f"no revision {to_revision or 'before ' + str(current)} to roll back to")
        if env:
            self._write_secret(env)
        template = copy.deepcopy(target["spec"]["template"])
        template.get("metadata", {}).get("labels", {}).pop(HASH_LABEL, None)
        live = deployment["metadata"].get("annotations") or {}
        annotations = {k: v for k, v in live.items() if k in UNDO_SKIP}
        annotations.update({k: v for k, v in (target["metadata"].get("annotations") or {}).items() if k not in UNDO_SKIP})
        patch = [{"op": "replace", "path": "/spec/template", "value": template},
                 {"op": "add", "path": "/metadata/annotations", "value": annotations}]
        self._request("PATCH", self._ns("/apis/apps/v1", "deployments", self.deployment_name),
                      f"undo {self.deployment_name} to revision {_revision_number(target)}", body=patch,
                      content_type="application/json-patch+json")
        return self._wait_rollout(started, timeout_s, previous)

    def run_one_off(self, image: str, args: Sequence[str], env: Mapping[str, str], timeout_s: float) -> OneOffResult:
        """A Job from ``job-template.yaml`` (or built here); its log captured; Job and pods deleted."""
        started = time.monotonic()
        self._ensure_namespace()
        self._write_secret(env)
        job = self._job(image, list(args), timeout_s)
        name = job["metadata"]["name"]
        jobs = self._ns("/apis/batch/v1", "jobs")
        self._request("POST", jobs, f"create job {name}", body=job)
        exit_code, logs = -1, ""
        try:
            deadline = started + timeout_s
            while True:
                status = self._request("GET", f"{jobs}/{name}", f"job {name}").get("status") or {}
                done = {c["type"] for c in status.get("conditions") or [] if c.get("status") == "True"}
                if done & {"Complete", "Failed"} or time.monotonic() >= deadline:
                    break
                time.sleep(self.poll_interval_s)
            pods = self._pods({"job-name": name})
            for pod in pods[-1:]:
                logs = self._pod_log(pod["metadata"]["name"], 1000)
                terminated = next(((cs.get("state") or {}).get("terminated") for cs in
                                   (pod.get("status") or {}).get("containerStatuses") or []), None)
                if terminated:
                    exit_code = int(terminated.get("exitCode", -1))
            if "Complete" in done:
                exit_code = 0
            elif "Failed" in done and exit_code <= 0:
                exit_code = 1
            elif not done:
                logs += f"\n(timed out after {timeout_s:.0f}s)"
        finally:
            self._request("DELETE", f"{jobs}/{name}", f"delete job {name}", query={"propagationPolicy": "Background"},
                          missing_ok=True)
            for pod in self._pods({"job-name": name}):
                self._request("DELETE", self._ns("/api/v1", "pods", pod["metadata"]["name"]),
                              f"delete pod {pod['metadata']['name']}", missing_ok=True)
        return OneOffResult(args=list(args), exit_code=exit_code, logs=logs,
                            duration_s=round(time.monotonic() - started, 2))

    def _job(self, image: str, args: list[str], timeout_s: float) -> dict:
        name = f"{self.deployment_name}-oneoff-{uuid.uuid4().hex[:6]}"
        job: dict | None = None
        if self.repo_dir:
            template = self.manifests_path() / "job-template.yaml"
            if template.is_file():
                job = yaml.safe_load(template.read_text())
        if not isinstance(job, dict) or job.get("kind") != "Job":
            job = {"apiVersion": "batch/v1", "kind": "Job", "metadata": {},
                   "spec": {"backoffLimit": 0, "template": {"spec": {"restartPolicy": "Never",
                                                                     "containers": [{"name": self.container_name}]}}}}
        job["metadata"] = {**(job.get("metadata") or {}), "name": name, "namespace": self.namespace}
        job["metadata"].setdefault("labels", {})["app.kubernetes.io/managed-by"] = self.field_manager
        spec = job["spec"]
        spec["activeDeadlineSeconds"] = max(1, math.ceil(timeout_s))
        pod_spec = spec["template"]["spec"]
        container = next((c for c in pod_spec["containers"] if c.get("name") == self.container_name),
                         pod_spec["containers"][0])
        container.update(image=image, args=args)
        refs = container.setdefault("envFrom", [])
        if not any((r.get("secretRef") or {}).get("name") == self.secret_name for r in refs):
            refs.append({"secretRef": {"name": self.secret_name}})
        return job

    def fetch_logs(self, tail: int = 100) -> dict[str, str]:
        deployment = self._deployment()
        if deployment is None:
            return {}
        selector = ",".join(f"{k}={v}" for k, v in deployment["spec"]["selector"].get("matchLabels", {}).items())
        # One-off Job pods may carry the app's labels too; they are not replicas.
        query = {"labelSelector": f"{selector},!job-name"}
        pods = self._request("GET", self._ns("/api/v1", "pods"), "pods", query=query)["items"]
        return {p["metadata"]["name"]: self._pod_log(p["metadata"]["name"], tail) for p in pods}

    def replica_urls(self) -> list[str]:
        return list(self.reachable_replica_urls)

    # ---- dry run ----------------------------------------------------------------------------------

    def plan(self, image: str, version: str, env: Mapping[str, str]) -> DeployPlan:
        """What ``deploy`` would change, from server-side dry-run applies; nothing is changed."""
        plan = DeployPlan(namespace=self.namespace, image=image, version=version)
        objects = self._manifests(image, version)
        ns_live = self._request("GET", f"/api/v1/namespaces/{self.namespace}", f"namespace {self.namespace}",
                                missing_ok=True)
        if ns_live is None:
            plan.objects.append(ObjectPlan(kind="Namespace", name=self.namespace, action="create"))
        live_secret = None if ns_live is None else self._request(
            "GET", self._ns("/api/v1", "secrets", self.secret_name), f"secret {self.secret_name}",
            missing_ok=True, secret=True)
        plan.objects.append(_secret_plan(self.secret_name, live_secret, self._secret_body(env)["data"]))
        for obj in objects:
            prefix, plural = KINDS[obj["kind"]]
            name = obj["metadata"]["name"]
            live = None if ns_live is None else self._request(
                "GET", self._ns(prefix, plural, name), f"{obj['kind']} {name}", missing_ok=True)
            after = obj if ns_live is None else self._apply(obj, dry_run=True)
            before_text = _yaml(_comparable(live)) if live else ""
            after_text = _yaml(_comparable(after))
            diff = "".join(difflib.unified_diff(before_text.splitlines(True), after_text.splitlines(True),
                                                f"live/{obj['kind']}/{name}", f"applied/{obj['kind']}/{name}"))
            action = "create" if live is None else ("update" if diff else "unchanged")
            plan.objects.append(ObjectPlan(kind=obj["kind"], name=name, action=action, diff=diff))
        return plan


def _revision_number(rs: dict) -> int:
    try:
        return int((rs["metadata"].get("annotations") or {}).get(REVISION, "0"))
    except ValueError:
        return 0


def _replica_status(pod: dict, container_name: str) -> ReplicaStatus:
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    cs = next((c for c in statuses if c.get("name") == container_name), statuses[0] if statuses else {})
    state = cs.get("state") or {}
    detail = ((state.get("waiting") or {}).get("reason") or ("terminated" if state.get("terminated") else "")
              or ("running" if state.get("running") else (pod.get("status") or {}).get("phase", "")))
    return ReplicaStatus(name=pod["metadata"]["name"], image=cs.get("image", ""), ready=bool(cs.get("ready")),
                         detail=detail)


def _comparable(obj: dict | None) -> dict:
    """An object without what the server changes on every write."""
    obj = copy.deepcopy(obj or {})
    obj.pop("status", None)
    meta = obj.get("metadata", {})
    for volatile in ("resourceVersion", "uid", "creationTimestamp", "generation", "managedFields"):
        meta.pop(volatile, None)
    return obj


def _yaml(obj: dict) -> str:
    return yaml.safe_dump(obj, sort_keys=True, default_flow_style=False)


def _secret_plan(name: str, live: dict | None, wanted: Mapping[str, str]) -> ObjectPlan:
    """Secret changes by key name only: values never reach a plan."""
    have = (live or {}).get("data") or {}
    lines = [f"+ {k}" for k in sorted(set(wanted) - set(have))]
    lines += [f"- {k}" for k in sorted(set(have) - set(wanted))]
    lines += [f"~ {k} (value changed)" for k in sorted(set(have) & set(wanted)) if have[k] != wanted[k]]
    action = "create" if live is None else ("update" if lines else "unchanged")
    return ObjectPlan(kind="Secret", name=name, action=action, diff="\n".join(lines))


__all__ = ["DeployPlan", "KubernetesTarget", "ObjectPlan"]
