"""The Kubernetes target's engine: what the guide's kubectl steps do, as API calls.

The namespace and the app's Secret, server-side apply of the app repo's ``k8s/staging/``
manifests with the pushed image, the rollout watched with ``kubectl rollout status``'s rule,
``kubectl rollout undo`` (the old ReplicaSet's pod template patched back into the Deployment),
and a Job for one-off commands.

Before a deploy applies anything it writes the undo record: every object it is about to apply,
as it is now (or that it is absent), in a Secret of the pipeline's own in the namespace, so a
worker that dies mid-deploy leaves it behind for the next run's recovery. ``rollback`` puts
those objects back (deletes the ones that are new) besides undoing the pod template, and
``remove_release`` does the same for a first release. The record is a Secret, not a ConfigMap,
because the manifests may hold Secrets of their own, whose previous values it then keeps.

Every call goes through ``blocks.kubernetes.api.call`` (its failures mapped by
``blocks.kubernetes.errors``); what is built without the API is in ``blocks.kubernetes.manifests``,
what is judged from objects read in ``blocks.kubernetes.rollout``.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping, Sequence
from functools import cached_property
from typing import TYPE_CHECKING, Any

from kubernetes import client as k8s

from blocks.kubernetes.api import call
from blocks.kubernetes.manifests import (
    JOB_TEMPLATE,
    KINDS,
    job_manifest,
    load_manifests,
    read_undo_record,
    refuse_own_secrets,
    secret_manifest,
    undo_record,
    undo_record_name,
)
from blocks.kubernetes.rollout import (
    REVISION,
    as_revision,
    deployment_spec_patch,
    job_exit_code,
    object_plan,
    replica_state,
    replica_status,
    restorable,
    revision_number,
    rollout_verdict,
    secret_plan,
    spec_observed,
    undo_patch,
    undo_target,
)
from blocks.target import TargetEngine
from tasks.core.errors import NoEarlierRevision, PermanentError, RolloutFailed
from tasks.core.models import DeployPlan, ObjectPlan, OneOffResult, ReplicaState, Revision, RolloutResult
from tasks.core.run_log import run_logger

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
        self._put_secret(self._secret_body(env), f"secret {name} ({len(env)} keys)")

    def _put_secret(self, body: dict, what: str) -> None:
        """Create or replace a Secret of the pipeline's own (values never logged)."""
        name = body["metadata"]["name"]
        path = self._ns("/api/v1", "secrets")
        if self._request("GET", f"{path}/{name}", what, missing_ok=True, secret=True) is None:
            self._request("POST", path, f"create {what}", body=body, secret=True)
        else:
            self._request("PUT", f"{path}/{name}", f"replace {what}", body=body, secret=True)

    def _manifests(self, image: str, version: str) -> list[dict]:
        """The release's objects; refused (before anything changes) if one would replace the pipeline's Secrets."""
        s = self.settings
        objects = load_manifests(s.manifests_path(), s.namespace, s.deployment_name, s.container_name, image, version)
        refuse_own_secrets(objects, {s.secret_name, undo_record_name(s.deployment_name)})
        return objects

    def _object_path(self, kind: str, name: str) -> str:
        prefix, plural = KINDS[kind]
        return self._ns(prefix, plural, name)

    def _read(self, kind: str, name: str) -> dict | None:
        return self._request(
            "GET", self._object_path(kind, name), f"{kind} {name}", missing_ok=True, secret=kind == "Secret"
        )

    # ---- the undo record --------------------------------------------------------------------------

    def _read_record(self) -> dict | None:
        name = undo_record_name(self.settings.deployment_name)
        return read_undo_record(self._read("Secret", name))

    def _write_record(self, objects: list[dict], image: str, version: str, previous: Revision | None) -> None:
        """Keep each object as it is now (None: absent) before the deploy changes it.

        A deploy of the same release over the same revision (the deploy asked again after it
        stopped half-way) keeps what the first attempt found: by now some objects are its own.
        """
        s = self.settings
        number = previous.number if previous else 0
        old = self._read_record()
        kept: dict[tuple[str, str], dict | None] = {}
        if old and (old.get("previous_revision"), old.get("image"), old.get("version")) == (number, image, version):
            kept = {(o["kind"], o["name"]): o["before"] for o in old.get("objects", [])}
        entries = []
        for obj in objects:
            key = (obj["kind"], obj["metadata"]["name"])
            before = kept[key] if key in kept else self._read(*key)
            entries.append({"kind": key[0], "name": key[1], "before": restorable(before) if before else None})
        record = {"previous_revision": number, "image": image, "version": version, "objects": entries}
        name = undo_record_name(s.deployment_name)
        self._put_secret(undo_record(name, s.namespace, s.field_manager, record), f"undo record {name}")

    def _restore_objects(self, record: dict) -> list[str]:
        """Put every recorded object back as it was; delete those the deploy created. What was done."""
        done = []
        for entry in record.get("objects", []):
            kind, name, before = entry["kind"], entry["name"], entry["before"]
            if kind == "Deployment" and name == self.settings.deployment_name:
                continue  # the app's Deployment goes back through its revisions (rollback) or to 0 (remove)
            path, secret = self._object_path(kind, name), kind == "Secret"
            live = self._read(kind, name)
            if before is None:
                if live is not None:
                    self._request(
                        "DELETE",
                        path,
                        f"delete {kind} {name} (new in the release)",
                        query={"propagationPolicy": "Background"},
                        missing_ok=True,
                        secret=secret,
                    )
                    done.append(f"deleted {kind} {name}")
                continue
            query = {"fieldManager": self.settings.field_manager}
            if live is None:
                self._request(
                    "POST", path.rsplit("/", 1)[0], f"re-create {kind} {name}", query=query, body=before, secret=secret
                )
            else:
                # A whole replace, not an apply: fields the release added must go too.
                self._request("PUT", path, f"restore {kind} {name}", query=query, body=before, secret=secret)
            done.append(f"restored {kind} {name}")
        return done

    def _drop_record(self) -> None:
        name = undo_record_name(self.settings.deployment_name)
        self._request(
            "DELETE", self._object_path("Secret", name), f"delete undo record {name}", missing_ok=True, secret=True
        )

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
        """The revision serving now; None also for a Deployment scaled to zero (a removed release):
        it serves nothing, so a failed run after it removes its release rather than bring that back."""
        deployment = self._deployment()
        if deployment is None or deployment["spec"].get("replicas", 1) == 0:
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
        """Record the objects as they are, then apply: the other objects, the pipeline's Secret
        (after them: nothing of the repo's replaces it), the Deployments last (their new pods
        start with the Secret and ConfigMaps of this release already in place)."""
        started = time.monotonic()
        objects = self._manifests(image, version)
        previous = self.current_revision()
        self._ensure_namespace()
        self._write_record(objects, image, version, previous)
        workloads = [o for o in objects if o["kind"] == "Deployment"]
        for obj in objects:
            if obj["kind"] != "Deployment":
                self._apply(obj)
        self._write_secret(env)
        for obj in workloads:
            self._apply(obj)
        return self._wait_rollout(started, timeout_s, previous)

    def rollback(self, to_revision: int | None, env: Mapping[str, str], timeout_s: float) -> RolloutResult:
        """``kubectl rollout undo [--to-revision]`` (the old pod template patched back in), and every
        other object the last deploy applied put back as the undo record has it."""
        name = self.settings.deployment_name
        started = time.monotonic()
        deployment = self._deployment()
        if deployment is None:
            raise NoEarlierRevision(f"deployment {name} does not exist: nothing to roll back")
        previous = self.current_revision()
        target = undo_target(deployment, self._replicasets(deployment), to_revision)
        record = self._read_record()
        if record and record.get("previous_revision") != revision_number(target):
            # Left by an earlier release (this deploy stopped before it wrote its own): not ours to undo.
            run_logger(__name__).info("undo record of %s is not about this undo: kept", record.get("version"))
            record = None
        # The objects first: the old pods start with their own ConfigMaps and Services back.
        done = self._restore_objects(record) if record else []
        if env:
            self._write_secret(env)
        patch = undo_patch(deployment, target)
        before = next(
            (o["before"] for o in (record or {}).get("objects", []) if (o["kind"], o["name"]) == ("Deployment", name)),
            None,
        )
        if before:
            patch += deployment_spec_patch(before, deployment)
        self._request(
            "PATCH",
            self._ns("/apis/apps/v1", "deployments", name),
            f"undo {name} to revision {revision_number(target)}",
            body=patch,
            content_type="application/json-patch+json",
        )
        if record:
            self._drop_record()  # only now: a rollback asked again redoes the same, harmlessly
            run_logger(__name__).info("undo of %s: %s", record.get("version"), ", ".join(done) or "no other objects")
        result = self._wait_rollout(started, timeout_s, previous)
        if done:
            result.reason += f"; {', '.join(done)}"
        return result

    def remove_release(self, timeout_s: float) -> str:
        """A release with nothing before it: the Deployment scaled to zero (its history kept), the
        objects the deploy created deleted and the ones it changed put back, until no pod serves."""
        s = self.settings
        name = s.deployment_name
        deployment = self._deployment()
        if deployment is None:
            return f"deployment {name} does not exist: nothing was serving"
        record = self._read_record()
        if record and record.get("previous_revision") != 0:
            record = None  # the record of a release that had one before it: not this first release's
        done = self._restore_objects(record) if record else []
        self._request(
            "PATCH",
            self._ns("/apis/apps/v1", "deployments", name),
            f"scale {name} to 0",
            query={"fieldManager": s.field_manager},
            body={"spec": {"replicas": 0}},
            content_type="application/merge-patch+json",
        )
        if record:
            self._drop_record()
        labels = deployment["spec"]["selector"].get("matchLabels", {})
        deadline = time.monotonic() + timeout_s
        while pods := self._pods(labels, "!job-name"):
            if time.monotonic() >= deadline:
                raise RolloutFailed(
                    f"deployment {name} scaled to 0, but after {timeout_s:.0f}s {len(pods)} pods are still there: "
                    + ", ".join(p["metadata"]["name"] for p in pods)
                )
            time.sleep(s.poll_interval_s)
        return f"deployment {name} scaled to 0, no pod left" + "".join(f"; {d}" for d in done)

    def replica_states(self) -> list[ReplicaState]:
        """The pods of the Deployment's current ReplicaSet (phase, Ready, restartCount, reason)."""
        deployment = self._deployment()
        new_rs = self._new_replicaset(deployment) if deployment else None
        if new_rs is None:
            return []
        pods = self._pods(new_rs["spec"]["selector"]["matchLabels"], "!job-name")
        return [replica_state(p, self.settings.container_name) for p in pods]

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
