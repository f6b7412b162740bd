"""The Kubernetes target's engine: what the guide's kubectl steps do, as API calls.

The namespace and the app's Secret, server-side apply of the app repo's ``k8s/staging/``
manifests with the pushed image, the rollout watched with ``kubectl rollout status``'s rule,
``kubectl rollout undo`` (the old ReplicaSet's pod template patched back into the Deployment),
and a Job for one-off commands. Every call goes through ``blocks.kubernetes.api.call`` (its
failures mapped by ``blocks.kubernetes.errors``); what is built without the API is in
``blocks.kubernetes.manifests``, what is judged from objects read in ``blocks.kubernetes.rollout``.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping, Sequence
from functools import cached_property
from typing import TYPE_CHECKING, Any

from kubernetes import client as k8s

from blocks.kubernetes.api import call
from blocks.kubernetes.manifests import JOB_TEMPLATE, KINDS, job_manifest, load_manifests, secret_manifest
from blocks.kubernetes.rollout import (
    REVISION,
    as_revision,
    job_exit_code,
    object_plan,
    replica_status,
    revision_number,
    rollout_verdict,
    secret_plan,
    spec_observed,
    undo_patch,
    undo_target,
)
from blocks.target import TargetEngine
from tasks.core.errors import NoEarlierRevision, PermanentError
from tasks.core.models import DeployPlan, ObjectPlan, OneOffResult, Revision, RolloutResult

if TYPE_CHECKING:
    from blocks.kubernetes.target import KubernetesTarget


class KubernetesEngine(TargetEngine):
    """The work of one ``KubernetesTarget``: its settings and one ApiClient, made on first use."""

    def __init__(self, settings: KubernetesTarget):
        self.settings = settings

    @cached_property
    def api(self) -> k8s.ApiClient:
        return self.settings.get_client()

    # ---- one HTTP call --------------------------------------------------------------------------

    def _request(self, method: str, path: str, what: str, **options: Any) -> Any:
        """One API call through this engine's client; see ``blocks.kubernetes.api.call``."""
        return call(self.api, method, path, what, timeout_s=self.settings.request_timeout_s, **options)

    def _ns(self, prefix: str, plural: str, name: str = "") -> str:
        return f"{prefix}/namespaces/{self.settings.namespace}/{plural}" + (f"/{name}" if name else "")

    # ---- objects this target writes ---------------------------------------------------------------

    def _namespace(self) -> dict | None:
        namespace = self.settings.namespace
        return self._request("GET", f"/api/v1/namespaces/{namespace}", f"namespace {namespace}", missing_ok=True)

    def _ensure_namespace(self) -> None:
        if self._namespace():
            return
        namespace = self.settings.namespace
        self._request(
            "POST",
            "/api/v1/namespaces",
            f"create namespace {namespace}",
            body={"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": namespace}},
        )

    def _secret_body(self, env: Mapping[str, str]) -> dict:
        s = self.settings
        return secret_manifest(s.secret_name, s.namespace, s.field_manager, env)

    def _write_secret(self, env: Mapping[str, str]) -> None:
        """Create or replace the app's Secret from ``env`` (values never logged)."""
        name = self.settings.secret_name
        body = self._secret_body(env)
        path = self._ns("/api/v1", "secrets")
        what = f"secret {name} ({len(env)} keys)"
        if self._request("GET", f"{path}/{name}", what, missing_ok=True, secret=True) is None:
            self._request("POST", path, f"create {what}", body=body, secret=True)
        else:
            self._request("PUT", f"{path}/{name}", f"replace {what}", body=body, secret=True)

    def _manifests(self, image: str, version: str) -> list[dict]:
        s = self.settings
        return load_manifests(s.manifests_path(), s.namespace, s.deployment_name, s.container_name, image, version)

    def _apply(self, obj: dict, dry_run: bool = False) -> dict | None:
        """Server-side apply (force: this pipeline owns the fields it applies)."""
        prefix, plural = KINDS[obj["kind"]]
        name = obj["metadata"]["name"]
        query = {"fieldManager": self.settings.field_manager, "force": True}
        if dry_run:
            query["dryRun"] = "All"
        return self._request(
            "PATCH",
            self._ns(prefix, plural, name),
            f"apply {obj['kind']} {name}" + (" (dry run)" if dry_run else ""),
            query=query,
            body=obj,
            content_type="application/apply-patch+yaml",
        )

    # ---- reading the Deployment -------------------------------------------------------------------

    def _deployment(self) -> dict | None:
        name = self.settings.deployment_name
        return self._request(
            "GET", self._ns("/apis/apps/v1", "deployments", name), f"deployment {name}", missing_ok=True
        )

    def _replicasets(self, deployment: dict) -> list[dict]:
        """The Deployment's ReplicaSets (owner reference), by revision."""
        query = {"labelSelector": _selector(deployment["spec"]["selector"].get("matchLabels", {}))}
        items = self._request("GET", self._ns("/apis/apps/v1", "replicasets"), "replicasets", query=query)["items"]
        uid = deployment["metadata"]["uid"]
        owned = [
            rs
            for rs in items
            if any(r.get("uid") == uid and r.get("controller") for r in rs["metadata"].get("ownerReferences") or [])
        ]
        return sorted(owned, key=revision_number)

    def history(self) -> list[Revision]:
        deployment = self._deployment()
        if deployment is None:
            return []
        container = self.settings.container_name
        return [as_revision(rs, container) for rs in self._replicasets(deployment) if revision_number(rs) > 0]

    def current_revision(self) -> Revision | None:
        deployment = self._deployment()
        if deployment is None:
            return None
        new_rs = self._new_replicaset(deployment)
        return as_revision(new_rs, self.settings.container_name) if new_rs else None

    def _pods(self, labels: Mapping[str, str], *requirements: str) -> list[dict]:
        query = {"labelSelector": _selector(labels, *requirements)}
        return self._request("GET", self._ns("/api/v1", "pods"), "pods", query=query)["items"]

    def _pod_log(self, pod: str, tail: int) -> str:
        try:
            return self._request(
                "GET",
                self._ns("/api/v1", "pods", pod) + "/log",
                f"log of pod {pod}",
                query={"tailLines": tail},
                text=True,
            )
        except PermanentError as exc:  # a log is evidence for the report, never a reason to fail it
            return f"(no log: {exc})"

    def _diagnose(self, pods: list[dict]) -> dict[str, str]:
        """Each pod's recent events and log tail, for the rollout report."""
        found = {}
        for pod in pods:
            name = pod["metadata"]["name"]
            events = self._request(
                "GET",
                self._ns("/api/v1", "events"),
                f"events of pod {name}",
                query={"fieldSelector": f"involvedObject.name={name}"},
            )["items"]
            lines = [f"{e.get('type', '')} {e.get('reason', '')}: {e.get('message', '')}" for e in events[-10:]]
            found[name] = "events:\n" + "\n".join(lines) + "\nlogs:\n" + self._pod_log(name, self.settings.log_tail)
        return found

    # ---- the rollout ------------------------------------------------------------------------------

    def _wait_rollout(self, started: float, timeout_s: float, previous: Revision | None) -> RolloutResult:
        """Poll until ``kubectl rollout status`` would say done, or the rollout has failed."""
        deadline = started + timeout_s
        container = self.settings.container_name
        while True:
            deployment = self._deployment()
            if deployment is None:
                raise PermanentError(f"deployment {self.settings.deployment_name} disappeared during the rollout")
            verdict, reason, pods, new_rs = self._rollout_state(deployment)
            if verdict is None and time.monotonic() >= deadline:
                verdict, reason = False, f"timed out after {timeout_s:.0f}s: {reason}"
            if verdict is not None:
                replicas = [replica_status(p, container) for p in pods]
                revision = as_revision(new_rs, container) if new_rs else Revision(number=0, image="")
                return RolloutResult(
                    revision=revision,
                    previous=previous,
                    replicas=replicas,
                    complete=verdict,
                    reason=reason,
                    duration_s=round(time.monotonic() - started, 2),
                    logs={} if verdict else self._diagnose(pods),
                )
            time.sleep(self.settings.poll_interval_s)

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
        return (*rollout_verdict(d, pods, self.settings.deployment_name), pods, new_rs)

    # ---- TargetEngine -----------------------------------------------------------------------------

    def check_reachable(self) -> str:
        s = self.settings
        version = self._request("GET", "/version", "server version")
        self._namespace()
        host = s.host or ("in-cluster" if s.in_cluster else f"kubeconfig context {s.context or '(current)'}")
        return f"Kubernetes {version.get('gitVersion', '?')} at {host}, namespace {s.namespace}"

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
        name = self.settings.deployment_name
        started = time.monotonic()
        deployment = self._deployment()
        if deployment is None:
            raise NoEarlierRevision(f"deployment {name} does not exist: nothing to roll back")
        previous = self.current_revision()
        target = undo_target(deployment, self._replicasets(deployment), to_revision)
        if env:
            self._write_secret(env)
        self._request(
            "PATCH",
            self._ns("/apis/apps/v1", "deployments", name),
            f"undo {name} to revision {revision_number(target)}",
            body=undo_patch(deployment, target),
            content_type="application/json-patch+json",
        )
        return self._wait_rollout(started, timeout_s, previous)

    def run_one_off(self, image: str, args: Sequence[str], env: Mapping[str, str], timeout_s: float) -> OneOffResult:
        """A Job from ``job-template.yaml`` (or built here); its log captured; Job and pods deleted."""
        s = self.settings
        started = time.monotonic()
        self._ensure_namespace()
        self._write_secret(env)
        template = s.manifests_path() / JOB_TEMPLATE if s.repo_dir else None
        job = job_manifest(
            template,
            f"{s.deployment_name}-oneoff-{uuid.uuid4().hex[:6]}",
            s.namespace,
            s.field_manager,
            s.container_name,
            s.secret_name,
            image,
            list(args),
            timeout_s,
        )
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
                time.sleep(s.poll_interval_s)
            pod = (self._pods({"job-name": name}) or [None])[-1]
            logs = self._pod_log(pod["metadata"]["name"], 1000) if pod else ""
            exit_code = job_exit_code(done, pod)
            if not done:
                logs += f"\n(timed out after {timeout_s:.0f}s)"
        finally:
            self._request(
                "DELETE",
                f"{jobs}/{name}",
                f"delete job {name}",
                query={"propagationPolicy": "Background"},
                missing_ok=True,
            )
            for pod in self._pods({"job-name": name}):
                self._request(
                    "DELETE",
                    self._ns("/api/v1", "pods", pod["metadata"]["name"]),
                    f"delete pod {pod['metadata']['name']}",
                    missing_ok=True,
                )
        return OneOffResult(
            args=list(args), exit_code=exit_code, logs=logs, duration_s=round(time.monotonic() - started, 2)
        )

    def fetch_logs(self, tail: int = 100) -> dict[str, str]:
        deployment = self._deployment()
        if deployment is None:
            return {}
        # One-off Job pods may carry the app's labels too; they are not replicas.
        pods = self._pods(deployment["spec"]["selector"].get("matchLabels", {}), "!job-name")
        return {p["metadata"]["name"]: self._pod_log(p["metadata"]["name"], tail) for p in pods}

    def replica_urls(self) -> list[str]:
        return list(self.settings.reachable_replica_urls)

    # ---- dry run ----------------------------------------------------------------------------------

    def plan(self, image: str, version: str, env: Mapping[str, str]) -> DeployPlan:
        """What ``deploy`` would change, from server-side dry-run applies; nothing is changed."""
        s = self.settings
        plan = DeployPlan(namespace=s.namespace, image=image, version=version)
        objects = self._manifests(image, version)
        ns_live = self._namespace()
        if ns_live is None:
            plan.objects.append(ObjectPlan(kind="Namespace", name=s.namespace, action="create"))
        live_secret = (
            None
            if ns_live is None
            else self._request(
                "GET",
                self._ns("/api/v1", "secrets", s.secret_name),
                f"secret {s.secret_name}",
                missing_ok=True,
                secret=True,
            )
        )
        plan.objects.append(secret_plan(s.secret_name, live_secret, self._secret_body(env)["data"]))
        for obj in objects:
            prefix, plural = KINDS[obj["kind"]]
            name = obj["metadata"]["name"]
            live = (
                None
                if ns_live is None
                else self._request("GET", self._ns(prefix, plural, name), f"{obj['kind']} {name}", missing_ok=True)
            )
            after = obj if ns_live is None else self._apply(obj, dry_run=True)
            plan.objects.append(object_plan(obj["kind"], name, live, after))
        return plan


def _selector(labels: Mapping[str, str], *requirements: str) -> str:
    """A label selector: ``k=v`` for each label, then requirements such as ``!job-name``."""
    return ",".join([f"{k}={v}" for k, v in labels.items()] + list(requirements))
