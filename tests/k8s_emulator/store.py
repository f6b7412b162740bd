"""The emulator's object store: what etcd plus the API server's generic registry do.

One lock guards everything; a condition variable wakes watchers. Every write gets the next
``resourceVersion`` and is appended to an event log that watches replay from a given version.
Bookkeeping as the real registry does it: ``uid``, ``creationTimestamp``, ``generation`` bumped
on spec changes of workload kinds, status kept on main-resource writes (status subresource),
``dryRun`` computes the answer without storing it, deletes cascade to owned objects
(``Background``/``Foreground`` at once, ``Orphan`` strips owner references; Jobs orphan by default
as the batch/v1 API does).
"""

from __future__ import annotations

import base64
import copy
import threading
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from .patching import (
    PatchError,
    drop_nulls,
    field_selector_matches,
    json_patch,
    label_selector_matches,
    merge_patch,
    strategic_merge,
)
from .resources import BY_KIND, ResourceType


class ApiError(Exception):
    def __init__(self, code: int, reason: str, message: str, details: dict | None = None):
        super().__init__(message)
        self.code, self.reason, self.message, self.details = code, reason, message, details or {}

    def status(self) -> dict:
        return {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "details": self.details,
            "code": self.code,
        }


def not_found(rt: ResourceType, name: str) -> ApiError:
    qualified = f"{rt.plural}.{rt.group}" if rt.group else rt.plural
    return ApiError(
        404, "NotFound", f'{qualified} "{name}" not found', {"name": name, "group": rt.group, "kind": rt.plural}
    )


def now_rfc3339() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass
class WatchEvent:
    rv: int
    type: str
    rt: ResourceType
    obj: dict


class Store:
    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.changed = threading.Condition(self.lock)
        self.objects: dict[tuple[str, str, str, str], dict] = {}
        self.log: list[WatchEvent] = []
        self.rv = 100
        self.closed = False
        # Controller-side callbacks run after each committed write (under the lock).
        self.on_delete: list = []

    # ---- reads --------------------------------------------------------------------------------

    def get(self, rt: ResourceType, namespace: str, name: str) -> dict:
        with self.lock:
            obj = self.objects.get((rt.group, rt.plural, namespace if rt.namespaced else "", name))
            if obj is None:
                raise not_found(rt, name)
            return copy.deepcopy(obj)

    def find(self, rt: ResourceType, namespace: str, name: str) -> dict | None:
        try:
            return self.get(rt, namespace, name)
        except ApiError:
            return None

    def list(
        self,
        rt: ResourceType,
        namespace: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
    ) -> list[dict]:
        with self.lock:
            found = []
            for (group, plural, ns, _), obj in self.objects.items():
                if group != rt.group or plural != rt.plural or (namespace and ns != namespace):
                    continue
                if not label_selector_matches(label_selector, obj["metadata"].get("labels")):
                    continue
                if not field_selector_matches(field_selector, obj):
                    continue
                found.append(copy.deepcopy(obj))
            return sorted(found, key=lambda o: (o["metadata"].get("namespace", ""), o["metadata"]["name"]))

    def dump(self) -> dict[str, dict]:
        """Every stored object by ``kind/namespace/name``: for before/after comparisons in tests."""
        with self.lock:
            return {f"{o['kind']}/{ns}/{name}": copy.deepcopy(o) for (_, _, ns, name), o in self.objects.items()}

    # ---- writes -------------------------------------------------------------------------------

    def _commit(self, rt: ResourceType, obj: dict, event: str) -> dict:
        self.rv += 1
        obj["metadata"]["resourceVersion"] = str(self.rv)
        key = (
            rt.group,
            rt.plural,
            obj["metadata"].get("namespace", "") if rt.namespaced else "",
            obj["metadata"]["name"],
        )
        if event == "DELETED":
            self.objects.pop(key, None)
        else:
            self.objects[key] = obj
        self.log.append(WatchEvent(self.rv, event, rt, copy.deepcopy(obj)))
        if len(self.log) > 20000:
            del self.log[:5000]
        self.changed.notify_all()
        return copy.deepcopy(obj)

    def _prepare_new(self, rt: ResourceType, obj: dict, namespace: str) -> dict:
        obj = drop_nulls(copy.deepcopy(obj))
        obj["apiVersion"], obj["kind"] = rt.group_version, rt.kind
        meta = obj.setdefault("metadata", {})
        if not meta.get("name"):
            if not meta.get("generateName"):
                raise ApiError(422, "Invalid", f"{rt.kind} is invalid: metadata.name: Required value")
            meta["name"] = meta["generateName"] + uuid.uuid4().hex[:5]
        if rt.namespaced:
            if meta.get("namespace") and meta["namespace"] != namespace:
                raise ApiError(
                    400,
                    "BadRequest",
                    "the namespace of the provided object does not match the namespace sent on the request",
                )
            meta["namespace"] = namespace
            ns_type = BY_KIND[("", "Namespace")]
            if (ns_type.group, ns_type.plural, "", namespace) not in self.objects:
                raise ApiError(
                    404, "NotFound", f'namespaces "{namespace}" not found', {"name": namespace, "kind": "namespaces"}
                )
        else:
            meta.pop("namespace", None)
        meta["uid"] = str(uuid.uuid4())
        meta["creationTimestamp"] = now_rfc3339()
        for volatile in ("resourceVersion", "deletionTimestamp", "managedFields"):
            meta.pop(volatile, None)
        if rt.has_generation:
            meta["generation"] = 1
        if rt.status_subresource:
            obj.pop("status", None)
        _defaults(rt, obj)
        return obj

    def create(self, rt: ResourceType, namespace: str, obj: dict, dry_run: bool = False) -> dict:
        with self.lock:
            obj = self._prepare_new(rt, obj, namespace)
            if self.find(rt, namespace, obj["metadata"]["name"]) is not None:
                qualified = f"{rt.plural}.{rt.group}" if rt.group else rt.plural
                raise ApiError(
                    409,
                    "AlreadyExists",
                    f'{qualified} "{obj["metadata"]["name"]}" already exists',
                    {"name": obj["metadata"]["name"], "kind": rt.plural},
                )
            return copy.deepcopy(obj) if dry_run else self._commit(rt, obj, "ADDED")

    def _prepare_update(self, rt: ResourceType, old: dict, new: dict, subresource: str | None) -> dict:
        new = drop_nulls(copy.deepcopy(new))
        new["apiVersion"], new["kind"] = rt.group_version, rt.kind
        meta, old_meta = new.setdefault("metadata", {}), old["metadata"]
        if meta.get("name", old_meta["name"]) != old_meta["name"]:
            raise ApiError(400, "BadRequest", "the name of the object does not match the name on the URL")
        want_rv = meta.get("resourceVersion")
        if want_rv and want_rv != old_meta["resourceVersion"]:
            raise ApiError(
                409,
                "Conflict",
                f'Operation cannot be fulfilled on {rt.plural} "{old_meta["name"]}": '
                "the object has been modified; please apply your changes to the latest version and try again",
            )
        meta["resourceVersion"] = old_meta["resourceVersion"]
        for kept in ("name", "namespace", "uid", "creationTimestamp", "generation", "deletionTimestamp"):
            if kept in old_meta:
                meta[kept] = old_meta[kept]
        meta.pop("managedFields", None)
        if subresource == "status":
            # Only status changes through the status subresource.
            new = {**copy.deepcopy(old), "status": new.get("status", {})}
        elif rt.status_subresource and "status" in old:
            new["status"] = copy.deepcopy(old["status"])
        elif rt.status_subresource:
            new.pop("status", None)
        _defaults(rt, new)
        if rt.has_generation and new.get("spec") != old.get("spec"):
            new["metadata"]["generation"] = old_meta.get("generation", 1) + 1
        return new

    def replace(
        self,
        rt: ResourceType,
        namespace: str,
        name: str,
        obj: dict,
        subresource: str | None = None,
        dry_run: bool = False,
    ) -> dict:
        with self.lock:
            old = self.get(rt, namespace, name)
            new = self._prepare_update(rt, old, obj, subresource)
            if dry_run or new == old:
                return new if dry_run else old
            return self._commit(rt, new, "MODIFIED")

    def patch(
        self,
        rt: ResourceType,
        namespace: str,
        name: str,
        content_type: str,
        patch: Any,
        subresource: str | None = None,
        dry_run: bool = False,
    ) -> tuple[dict, bool]:
        """Apply a patch; returns (object, created)."""
        with self.lock:
            old = self.find(rt, namespace, name)
            apply = content_type.startswith("application/apply-patch")
            if old is None:
                if not apply:
                    raise not_found(rt, name)
                if not isinstance(patch, dict) or patch.get("kind") != rt.kind:
                    raise ApiError(400, "BadRequest", f"apply patch must be a {rt.kind}")
                patch = {**patch, "metadata": {**patch.get("metadata", {}), "name": name}}
                return self.create(rt, namespace, patch, dry_run=dry_run), True
            try:
                if apply or "strategic-merge-patch" in content_type:
                    if apply and (patch.get("apiVersion"), patch.get("kind")) != (rt.group_version, rt.kind):
                        raise PatchError(f"apply patch has the wrong apiVersion/kind for {rt.kind}")
                    merged = strategic_merge(old, patch)
                elif "merge-patch" in content_type:
                    merged = merge_patch(old, patch)
                elif "json-patch" in content_type:
                    merged = json_patch(old, patch)
                else:
                    raise ApiError(
                        415, "UnsupportedMediaType", f"the body of the request was in an unknown format: {content_type}"
                    )
            except PatchError as exc:
                raise ApiError(422, "Invalid", str(exc)) from exc
            if not isinstance(merged, dict):
                raise ApiError(422, "Invalid", "patch did not produce an object")
            merged.setdefault("metadata", {})["resourceVersion"] = old["metadata"]["resourceVersion"]
            return self.replace(rt, namespace, name, merged, subresource, dry_run=dry_run), False

    def delete(
        self, rt: ResourceType, namespace: str, name: str, propagation: str | None = None, dry_run: bool = False
    ) -> dict:
        with self.lock:
            obj = self.get(rt, namespace, name)
            if dry_run:
                return obj
            if propagation is None:
                propagation = "Orphan" if rt.kind == "Job" else "Background"
            self._delete_tree(rt, obj, propagation)
            return obj

    def _delete_tree(self, rt: ResourceType, obj: dict, propagation: str) -> None:
        uid = obj["metadata"]["uid"]
        self._commit(rt, copy.deepcopy(obj), "DELETED")
        for cb in self.on_delete:
            cb(rt, obj)
        if rt.kind == "Namespace":
            for (group, _plural, ns, _), child in list(self.objects.items()):
                if ns == obj["metadata"]["name"]:
                    self._commit(BY_KIND[(group, child["kind"])], copy.deepcopy(child), "DELETED")
            return
        for (group, _, _, _), child in list(self.objects.items()):
            refs = child["metadata"].get("ownerReferences") or []
            if not any(r.get("uid") == uid for r in refs):
                continue
            child_rt = BY_KIND[(group, child["kind"])]
            if propagation == "Orphan":
                child = copy.deepcopy(child)
                child["metadata"]["ownerReferences"] = [r for r in refs if r.get("uid") != uid]
                self._commit(child_rt, child, "MODIFIED")
            else:
                self._delete_tree(child_rt, child, propagation)

    # ---- controller helpers -------------------------------------------------------------------

    def put(self, rt: ResourceType, obj: dict) -> dict:
        """Store a controller's new or changed object; writes nothing when nothing changed."""
        with self.lock:
            meta = obj["metadata"]
            old = self.find(rt, meta.get("namespace", ""), meta["name"])
            if old is None:
                return self._commit(rt, self._prepare_new(rt, obj, meta.get("namespace", "")), "ADDED")
            obj = copy.deepcopy(obj)
            obj["metadata"]["resourceVersion"] = old["metadata"]["resourceVersion"]
            if rt.has_generation and obj.get("spec") != old.get("spec"):
                obj["metadata"]["generation"] = old["metadata"].get("generation", 1) + 1
            if obj == old:
                return old
            return self._commit(rt, obj, "MODIFIED")

    def events_since(self, rv: int) -> list[WatchEvent]:
        with self.lock:
            return [e for e in self.log if e.rv > rv]

    def close(self) -> None:
        with self.lock:
            self.closed = True
            self.changed.notify_all()


def _defaults(rt: ResourceType, obj: dict) -> None:
    """The few defaults the API server sets that controllers and kubectl rely on."""
    spec = obj.get("spec")
    if rt.kind == "Secret":
        string_data = obj.pop("stringData", None) or {}
        obj.setdefault("type", "Opaque")
        if string_data:
            data = obj.setdefault("data", {})
            for key, value in string_data.items():
                data[key] = base64.b64encode(str(value).encode()).decode()
    elif rt.kind == "Namespace":
        obj.setdefault("spec", {"finalizers": ["kubernetes"]})
        obj.setdefault("status", {"phase": "Active"})
        obj["metadata"].setdefault("labels", {})["kubernetes.io/metadata.name"] = obj["metadata"]["name"]
    elif rt.kind == "Deployment" and isinstance(spec, dict):
        spec.setdefault("replicas", 1)
        spec.setdefault("revisionHistoryLimit", 10)
        spec.setdefault("progressDeadlineSeconds", 600)
        strategy = spec.setdefault("strategy", {"type": "RollingUpdate"})
        if strategy.get("type", "RollingUpdate") == "RollingUpdate":
            strategy["type"] = "RollingUpdate"
            rolling = strategy.setdefault("rollingUpdate", {})
            rolling.setdefault("maxSurge", "25%")
            rolling.setdefault("maxUnavailable", "25%")
        _pod_defaults(spec.get("template", {}).get("spec"))
    elif rt.kind == "ReplicaSet" and isinstance(spec, dict):
        spec.setdefault("replicas", 1)
    elif rt.kind == "Job" and isinstance(spec, dict):
        spec.setdefault("backoffLimit", 6)
        spec.setdefault("completions", 1)
        spec.setdefault("parallelism", 1)
        _pod_defaults(spec.get("template", {}).get("spec"))
    elif rt.kind == "Pod":
        _pod_defaults(spec)
        obj.setdefault("status", {"phase": "Pending"})
    elif rt.kind == "Service" and isinstance(spec, dict):
        spec.setdefault("type", "ClusterIP")
        spec.setdefault("sessionAffinity", "None")
        for port in spec.get("ports") or []:
            port.setdefault("protocol", "TCP")
            port.setdefault("targetPort", port.get("port"))


def _pod_defaults(spec: Any) -> None:
    if isinstance(spec, dict):
        spec.setdefault("restartPolicy", "Always")
        spec.setdefault("terminationGracePeriodSeconds", 30)
        spec.setdefault("dnsPolicy", "ClusterFirst")
        for container in spec.get("containers") or []:
            container.setdefault("resources", {})
