"""Deploy target: the guide's Kubernetes cluster, through the official ``kubernetes`` client.

It does what the guide's kubectl steps do, as API calls: the namespace and the
``architect-secrets`` Secret, server-side apply of the app repo's ``k8s/staging/`` manifests with
the pushed image, the rollout watched with ``kubectl rollout status``'s rule, ``kubectl rollout
undo`` (the old ReplicaSet's pod template patched back into the Deployment), and a Job for
one-off commands. One method hands out the ``ApiClient``; every call goes through ``_request``
(``kubernetes_api``: "cannot reach the API" is ``TemporaryError``, refusals ``PermanentError``).
What is built without the API lives in ``kubernetes_manifests``; what is judged from objects read
(rollout status, undo, the dry-run diff) in ``kubernetes_rollout``.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from kubernetes import client as k8s
from kubernetes import config as k8s_config
from pydantic import Field, PrivateAttr, SecretStr, field_validator, model_validator

from blocks.kubernetes.api import call
from blocks.kubernetes.manifests import JOB_TEMPLATE, KINDS, job_manifest, load_manifests, secret_manifest
from blocks.kubernetes.rollout import (
    REVISION, as_revision, job_exit_code, object_plan, replica_status,
    revision_number, rollout_verdict, secret_plan, spec_observed, undo_patch, undo_target,
)
from blocks.target import DeployTarget
from blocks.validation import check_name, check_relative_path, check_text, check_url_text
from tasks.core.errors import PermanentError
from tasks.core.models import DeployPlan, ObjectPlan, OneOffResult, Revision, RolloutResult

LOOPBACK = {"127.0.0.1", "localhost", "::1"}


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

    _validate_manifest_dir = field_validator("manifest_dir")(check_relative_path)
    _validate_text = field_validator("kubeconfig_path", "context", "ca_cert_path", "repo_dir")(check_text)

    @field_validator("field_manager")
    @classmethod
    def _field_manager(cls, value: str) -> str:
        if len(value) > 128 or not value.isprintable():  # the API's limits for fieldManager
            raise ValueError(f"{value!r} is not a field manager (printable, at most 128 characters)")
        return value

    @field_validator("reachable_replica_urls")
    @classmethod
    def _replica_urls(cls, value: list[str]) -> list[str]:
        return [check_url_text(url) for url in value]

    _validate_host = field_validator("host")(check_url_text)

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
                raise ValueError(f"host {self.host!r}: plain http is only allowed to a loopback address (kubectl proxy, tests)")
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

    def _request(self, method: str, path: str, what: str, **options: Any) -> Any:
        """One API call through this block's client (created on first use); see ``kubernetes_api.call``."""
        if self._api is None:
            self._api = self.get_client()
        return call(self._api, method, path, what, timeout_s=self.request_timeout_s, **options)

    def _ns(self, prefix: str, plural: str, name: str = "") -> str:
        return f"{prefix}/namespaces/{self.namespace}/{plural}" + (f"/{name}" if name else "")

    # ---- objects this target writes ---------------------------------------------------------------

    def _namespace(self) -> dict | None:
        return self._request("GET", f"/api/v1/namespaces/{self.namespace}", f"namespace {self.namespace}",
                             missing_ok=True)

    def _ensure_namespace(self) -> None:
        if self._namespace():
            return
        self._request("POST", "/api/v1/namespaces", f"create namespace {self.namespace}",
                      body={"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": self.namespace}})

    def _secret_body(self, env: Mapping[str, str]) -> dict:
        return secret_manifest(self.secret_name, self.namespace, self.field_manager, env)

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
        return load_manifests(self.manifests_path(), self.namespace, self.deployment_name, self.container_name,
                              image, version)

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
        query = {"labelSelector": _selector(deployment["spec"]["selector"].get("matchLabels", {}))}
        items = self._request("GET", self._ns("/apis/apps/v1", "replicasets"), "replicasets", query=query)["items"]
        uid = deployment["metadata"]["uid"]
        owned = [rs for rs in items if any(r.get("uid") == uid and r.get("controller")
                                           for r in rs["metadata"].get("ownerReferences") or [])]
        return sorted(owned, key=revision_number)

    def history(self) -> list[Revision]:
        deployment = self._deployment()
        if deployment is None:
            return []
        return [as_revision(rs, self.container_name) for rs in self._replicasets(deployment) if revision_number(rs) > 0]

    def current_revision(self) -> Revision | None:
        deployment = self._deployment()
        if deployment is None:
            return None
        new_rs = self._new_replicaset(deployment)
        return as_revision(new_rs, self.container_name) if new_rs else None

    def _pods(self, labels: Mapping[str, str], *requirements: str) -> list[dict]:
        query = {"labelSelector": _selector(labels, *requirements)}
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
                replicas = [replica_status(p, self.container_name) for p in pods]
                revision = as_revision(new_rs, self.container_name) if new_rs else Revision(number=0, image="")
                return RolloutResult(
                    revision=revision, previous=previous, replicas=replicas, complete=verdict, reason=reason,
                    duration_s=round(time.monotonic() - started, 2), logs={} if verdict else self._diagnose(pods),
                )
            time.sleep(self.poll_interval_s)

    def _new_replicaset(self, deployment: dict) -> dict | None:
        """The ReplicaSet of the Deployment's current revision, if it exists yet."""
        wanted = (deployment["metadata"].get("annotations") or {}).get(REVISION)
        return next((rs for rs in self._replicasets(deployment) if str(revision_number(rs)) == wanted), None)

    def _rollout_state(self, d: dict) -> tuple[bool | None, str, list[dict], dict | None]:
        """(True done | False failed | None in progress, why, pods of the new ReplicaSet, new ReplicaSet)."""
        if not spec_observed(d):
            return None, "waiting for the deployment spec update to be observed", [], None
        new_rs = self._new_replicaset(d)
        pods = self._pods(new_rs["spec"]["selector"]["matchLabels"]) if new_rs else []
        return (*rollout_verdict(d, pods, self.deployment_name), pods, new_rs)

    # ---- DeployTarget -----------------------------------------------------------------------------

    def check_reachable(self) -> str:
        version = self._request("GET", "/version", "server version")
        self._namespace()
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
        target = undo_target(deployment, self._replicasets(deployment), to_revision)
        if env:
            self._write_secret(env)
        self._request("PATCH", self._ns("/apis/apps/v1", "deployments", self.deployment_name),
                      f"undo {self.deployment_name} to revision {revision_number(target)}",
                      body=undo_patch(deployment, target),
                      content_type="application/json-patch+json")
        return self._wait_rollout(started, timeout_s, previous)

    def run_one_off(self, image: str, args: Sequence[str], env: Mapping[str, str], timeout_s: float) -> OneOffResult:
        """A Job from ``job-template.yaml`` (or built here); its log captured; Job and pods deleted."""
        started = time.monotonic()
        self._ensure_namespace()
        self._write_secret(env)
        template = self.manifests_path() / JOB_TEMPLATE if self.repo_dir else None
        job = job_manifest(template, f"{self.deployment_name}-oneoff-{uuid.uuid4().hex[:6]}", self.namespace,
                           self.field_manager, self.container_name, self.secret_name, image, list(args), timeout_s)
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
            pod = (self._pods({"job-name": name}) or [None])[-1]
            logs = self._pod_log(pod["metadata"]["name"], 1000) if pod else ""
            exit_code = job_exit_code(done, pod)
            if not done:
                logs += f"\n(timed out after {timeout_s:.0f}s)"
        finally:
            self._request("DELETE", f"{jobs}/{name}", f"delete job {name}", query={"propagationPolicy": "Background"},
                          missing_ok=True)
            for pod in self._pods({"job-name": name}):
                self._request("DELETE", self._ns("/api/v1", "pods", pod["metadata"]["name"]),
                              f"delete pod {pod['metadata']['name']}", missing_ok=True)
        return OneOffResult(args=list(args), exit_code=exit_code, logs=logs,
                            duration_s=round(time.monotonic() - started, 2))

    def fetch_logs(self, tail: int = 100) -> dict[str, str]:
        deployment = self._deployment()
        if deployment is None:
            return {}
        # One-off Job pods may carry the app's labels too; they are not replicas.
        pods = self._pods(deployment["spec"]["selector"].get("matchLabels", {}), "!job-name")
        return {p["metadata"]["name"]: self._pod_log(p["metadata"]["name"], tail) for p in pods}

    def replica_urls(self) -> list[str]:
        return list(self.reachable_replica_urls)

    def replicas_to_check(self, rollout: RolloutResult) -> int | None:
        return None  # pods are reached through the configured URLs, not one URL per pod

    # ---- dry run ----------------------------------------------------------------------------------

    def plan(self, image: str, version: str, env: Mapping[str, str]) -> DeployPlan:
        """What ``deploy`` would change, from server-side dry-run applies; nothing is changed."""
        plan = DeployPlan(namespace=self.namespace, image=image, version=version)
        objects = self._manifests(image, version)
        ns_live = self._namespace()
        if ns_live is None:
            plan.objects.append(ObjectPlan(kind="Namespace", name=self.namespace, action="create"))
        live_secret = None if ns_live is None else self._request(
            "GET", self._ns("/api/v1", "secrets", self.secret_name), f"secret {self.secret_name}",
            missing_ok=True, secret=True)
        plan.objects.append(secret_plan(self.secret_name, live_secret, self._secret_body(env)["data"]))
        for obj in objects:
            prefix, plural = KINDS[obj["kind"]]
            name = obj["metadata"]["name"]
            live = None if ns_live is None else self._request(
                "GET", self._ns(prefix, plural, name), f"{obj['kind']} {name}", missing_ok=True)
            after = obj if ns_live is None else self._apply(obj, dry_run=True)
            plan.objects.append(object_plan(obj["kind"], name, live, after))
        return plan


def _selector(labels: Mapping[str, str], *requirements: str) -> str:
    """A label selector: ``k=v`` for each label, then requirements such as ``!job-name``."""
    return ",".join([f"{k}={v}" for k, v in labels.items()] + list(requirements))


__all__ = ["KubernetesTarget"]
