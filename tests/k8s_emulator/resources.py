"""The resource types the emulator serves, and the discovery and OpenAPI documents built from them.

kubectl reads discovery (``/api``, ``/apis``, ``/api/v1``, ``/apis/<group>/<version>``) to map a
kind to a URL, and the OpenAPI v3 index to learn that the server validates fields itself
(``fieldValidation``); with that answered it skips client-side schema validation, so the emulator
needs no full schema. Aggregated discovery is not offered: kubectl falls back to the legacy form.
"""

from __future__ import annotations

from dataclasses import dataclass, field

EMULATED_VERSION = {"major": "1", "minor": "32", "gitVersion": "v1.32.0-architect-emulator"}


@dataclass(frozen=True)
class ResourceType:
    group: str
    version: str
    plural: str
    kind: str
    namespaced: bool = True
    short_names: tuple[str, ...] = ()
    subresources: tuple[str, ...] = ()
    # Kinds whose spec changes bump metadata.generation (workload controllers read it).
    has_generation: bool = False
    # Writes to the main resource keep the stored status, as with a real status subresource.
    status_subresource: bool = False
    categories: tuple[str, ...] = field(default=())

    @property
    def group_version(self) -> str:
        return f"{self.group}/{self.version}" if self.group else self.version

    @property
    def singular(self) -> str:
        return self.kind.lower()


VERBS = ["create", "delete", "get", "list", "patch", "update", "watch"]

RESOURCE_TYPES: list[ResourceType] = [
    ResourceType("", "v1", "namespaces", "Namespace", namespaced=False, short_names=("ns",), status_subresource=True),
    ResourceType("", "v1", "secrets", "Secret"),
    ResourceType("", "v1", "configmaps", "ConfigMap", short_names=("cm",)),
    ResourceType("", "v1", "services", "Service", short_names=("svc",), status_subresource=True, categories=("all",)),
    ResourceType(
        "",
        "v1",
        "pods",
        "Pod",
        short_names=("po",),
        subresources=("log", "status"),
        status_subresource=True,
        categories=("all",),
    ),
    ResourceType("", "v1", "events", "Event", short_names=("ev",)),
    ResourceType(
        "apps",
        "v1",
        "deployments",
        "Deployment",
        short_names=("deploy",),
        subresources=("status",),
        has_generation=True,
        status_subresource=True,
        categories=("all",),
    ),
    ResourceType(
        "apps",
        "v1",
        "replicasets",
        "ReplicaSet",
        short_names=("rs",),
        subresources=("status",),
        has_generation=True,
        status_subresource=True,
        categories=("all",),
    ),
    ResourceType(
        "networking.k8s.io",
        "v1",
        "ingresses",
        "Ingress",
        short_names=("ing",),
        subresources=("status",),
        status_subresource=True,
    ),
    ResourceType(
        "batch",
        "v1",
        "jobs",
        "Job",
        subresources=("status",),
        has_generation=True,
        status_subresource=True,
        categories=("all",),
    ),
]

BY_PLURAL = {(r.group, r.plural): r for r in RESOURCE_TYPES}
BY_KIND = {(r.group, r.kind): r for r in RESOURCE_TYPES}
GROUPS = sorted({r.group for r in RESOURCE_TYPES if r.group})


def api_versions(server_address: str) -> dict:
    return {
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [{"clientCIDR": "0.0.0.0/0", "serverAddress": server_address}],
    }


def api_group_list() -> dict:
    groups = []
    for group in GROUPS:
        gv = {"groupVersion": f"{group}/v1", "version": "v1"}
        groups.append({"name": group, "versions": [gv], "preferredVersion": gv})
    return {"kind": "APIGroupList", "apiVersion": "v1", "groups": groups}


def api_group(group: str) -> dict | None:
    if group not in GROUPS:
        return None
    gv = {"groupVersion": f"{group}/v1", "version": "v1"}
    return {"kind": "APIGroup", "apiVersion": "v1", "name": group, "versions": [gv], "preferredVersion": gv}


def api_resource_list(group: str, version: str) -> dict | None:
    types = [r for r in RESOURCE_TYPES if r.group == group and r.version == version]
    if not types:
        return None
    resources = []
    for r in types:
        entry = {
            "name": r.plural,
            "singularName": r.singular,
            "namespaced": r.namespaced,
            "kind": r.kind,
            "verbs": VERBS,
            "storageVersionHash": r.kind.lower(),
        }
        if r.short_names:
            entry["shortNames"] = list(r.short_names)
        if r.categories:
            entry["categories"] = list(r.categories)
        resources.append(entry)
        for sub in r.subresources:
            verbs = ["get"] if sub == "log" else ["get", "patch", "update"]
            resources.append(
                {
                    "name": f"{r.plural}/{sub}",
                    "singularName": "",
                    "namespaced": r.namespaced,
                    "kind": "Pod" if sub == "log" else r.kind,
                    "verbs": verbs,
                }
            )
    gv = f"{group}/{version}" if group else version
    return {"kind": "APIResourceList", "apiVersion": "v1", "groupVersion": gv, "resources": resources}


def _openapi_path(r: ResourceType) -> str:
    prefix = f"/apis/{r.group}/{r.version}" if r.group else f"/api/{r.version}"
    if r.namespaced:
        return f"{prefix}/namespaces/{{namespace}}/{r.plural}/{{name}}"
    return f"{prefix}/{r.plural}/{{name}}"


def openapi_v3_index() -> dict:
    paths = {}
    for gv_path in ["api/v1"] + [f"apis/{g}/v1" for g in GROUPS]:
        paths[gv_path] = {"serverRelativeURL": f"/openapi/v3/{gv_path}?hash=EMULATOR"}
    return {"paths": paths}


def openapi_v3_document(gv_path: str) -> dict | None:
    """A minimal document: one PATCH operation per kind that declares ``fieldValidation``.

    That is all kubectl's QueryParamVerifierV3 looks for before it trusts the server to validate.
    """
    types = [r for r in RESOURCE_TYPES if (f"apis/{r.group}/{r.version}" if r.group else f"api/{r.version}") == gv_path]
    if not types:
        return None
    paths = {}
    for r in types:
        paths[_openapi_path(r)] = {
            "patch": {
                "operationId": f"patch{r.kind}",
                "x-kubernetes-group-version-kind": {"group": r.group, "version": r.version, "kind": r.kind},
                "x-kubernetes-action": "patch",
                "parameters": [
                    {"name": "fieldValidation", "in": "query", "schema": {"type": "string", "uniqueItems": True}},
                    {"name": "fieldManager", "in": "query", "schema": {"type": "string", "uniqueItems": True}},
                ],
                "responses": {"200": {"description": "OK"}},
            }
        }
    return {
        "openapi": "3.0.0",
        "info": {"title": "Kubernetes (architect emulator)", "version": EMULATED_VERSION["gitVersion"]},
        "paths": paths,
        "components": {"schemas": {}},
    }
