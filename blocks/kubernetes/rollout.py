"""What ``KubernetesTarget`` judges and plans from objects it has read: no API calls here.

``kubectl rollout status``'s rule for when a Deployment's rollout is done or has failed, the
ReplicaSet revision annotations, the JSON patch of ``kubectl rollout undo``, and the dry-run
plan (a diff per object; the Secret by key names only).
"""

from __future__ import annotations

import copy
import difflib
from collections.abc import Mapping
from datetime import datetime

import yaml

from blocks.kubernetes.manifests import VERSION_ANNOTATION
from tasks.core.errors import NoEarlierRevision
from tasks.core.models import ObjectPlan, ReplicaState, ReplicaStatus, Revision

REVISION = "deployment.kubernetes.io/revision"
HASH_LABEL = "pod-template-hash"
# What kubectl rollout undo keeps from the Deployment and never copies from the ReplicaSet.
UNDO_SKIP = {
    "kubectl.kubernetes.io/last-applied-configuration",
    REVISION,
    "deployment.kubernetes.io/revision-history",
    "deployment.kubernetes.io/desired-replicas",
    "deployment.kubernetes.io/max-replicas",
    "deprecated.deployment.rollback.to",
}
FAILED_WAITING = {
    "CrashLoopBackOff",
    "ImagePullBackOff",
    "ErrImagePull",
    "InvalidImageName",
    "CreateContainerConfigError",
}


# ---- revisions and the rollout ------------------------------------------------------------------


def revision_number(obj: dict) -> int:
    """The revision annotation of a ReplicaSet (or Deployment); 0 when missing or not a number."""
    try:
        return int((obj["metadata"].get("annotations") or {}).get(REVISION, "0"))
    except ValueError:
        return 0


def as_revision(rs: dict, container_name: str) -> Revision:
    """A ReplicaSet as a history entry: its revision, the container's image, the version annotation."""
    template = rs["spec"]["template"]
    containers = template["spec"]["containers"]
    container = next((c for c in containers if c.get("name") == container_name), containers[0])
    return Revision(
        number=revision_number(rs),
        image=container.get("image", ""),
        version=(template.get("metadata", {}).get("annotations") or {}).get(VERSION_ANNOTATION, ""),
        created_at=datetime.fromisoformat(rs["metadata"]["creationTimestamp"].replace("Z", "+00:00")),
    )


def spec_observed(deployment: dict) -> bool:
    """Whether the controller has seen the latest spec: until then status speaks of the old one."""
    status = deployment.get("status") or {}
    return status.get("observedGeneration", 0) >= deployment["metadata"].get("generation", 1)


def rollout_verdict(deployment: dict, pods: list[dict], name: str) -> tuple[bool | None, str]:
    """(True done | False failed | None in progress, why) for an observed spec and its new pods."""
    status, spec = deployment.get("status") or {}, deployment["spec"]
    progressing = next((c for c in status.get("conditions") or [] if c.get("type") == "Progressing"), {})
    if progressing.get("reason") == "ProgressDeadlineExceeded":
        return False, f"progress deadline exceeded: {progressing.get('message', '')}"
    for pod in pods:
        for cs in (pod.get("status") or {}).get("containerStatuses") or []:
            waiting = (cs.get("state") or {}).get("waiting") or {}
            if waiting.get("reason") in FAILED_WAITING:
                return (
                    False,
                    f"pod {pod['metadata']['name']}: {waiting['reason']} (restarts {cs.get('restartCount', 0)})",
                )
    desired, updated = spec.get("replicas", 1), status.get("updatedReplicas", 0)
    total, available = status.get("replicas", 0), status.get("availableReplicas", 0)
    if updated < desired:
        return None, f"{updated} of {desired} new replicas updated"
    if total > updated:
        return None, f"{total - updated} old replicas pending termination"
    if available < updated:
        return None, f"{available} of {updated} updated replicas available"
    return True, f"{name} rolled out: {available}/{desired} available"


def replica_status(pod: dict, container_name: str) -> ReplicaStatus:
    statuses = (pod.get("status") or {}).get("containerStatuses") or []
    cs = next((c for c in statuses if c.get("name") == container_name), statuses[0] if statuses else {})
    state = cs.get("state") or {}
    detail = (
        (state.get("waiting") or {}).get("reason")
        or ("terminated" if state.get("terminated") else "")
        or ("running" if state.get("running") else (pod.get("status") or {}).get("phase", ""))
    )
    return ReplicaStatus(
        name=pod["metadata"]["name"], image=cs.get("image", ""), ready=bool(cs.get("ready")), detail=detail
    )


def undo_target(deployment: dict, replicasets: list[dict], to_revision: int | None) -> dict:
    """The ReplicaSet ``kubectl rollout undo [--to-revision]`` goes back to: the given one, else the one before."""
    current = revision_number(deployment)
    candidates = [rs for rs in replicasets if revision_number(rs) > 0]
    if to_revision:
        target = next((rs for rs in candidates if revision_number(rs) == to_revision), None)
    else:
        target = next((rs for rs in reversed(candidates) if revision_number(rs) < current), None)
    if target is None:
        raise NoEarlierRevision(f"no revision {to_revision or 'before ' + str(current)} to roll back to")
    return target


def undo_patch(deployment: dict, target: dict) -> list[dict]:
    """``kubectl rollout undo``'s change: the ReplicaSet's pod template and annotations patched back in."""
    template = copy.deepcopy(target["spec"]["template"])
    template.get("metadata", {}).get("labels", {}).pop(HASH_LABEL, None)
    live = deployment["metadata"].get("annotations") or {}
    annotations = {k: v for k, v in live.items() if k in UNDO_SKIP}
    annotations.update({k: v for k, v in (target["metadata"].get("annotations") or {}).items() if k not in UNDO_SKIP})
    return [
        {"op": "replace", "path": "/spec/template", "value": template},
        {"op": "add", "path": "/metadata/annotations", "value": annotations},
    ]


def job_exit_code(conditions: set[str], pod: dict | None) -> int:
    """A one-off Job's exit code: 0 when Complete, the container's code (at least 1) when Failed, else -1."""
    statuses = ((pod or {}).get("status") or {}).get("containerStatuses") or []
    terminated = next(((cs.get("state") or {}).get("terminated") for cs in statuses), None)
    exit_code = int(terminated.get("exitCode", -1)) if terminated else -1
    if "Complete" in conditions:
        return 0
    if "Failed" in conditions and exit_code <= 0:
        return 1
    return exit_code


# ---- the dry-run plan ---------------------------------------------------------------------------


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


def object_plan(kind: str, name: str, live: dict | None, applied: dict) -> ObjectPlan:
    """The change from the live object (None: absent) to what an apply makes of it, as a diff."""
    before_text = _yaml(_comparable(live)) if live else ""
    after_text = _yaml(_comparable(applied))
    diff = "".join(
        difflib.unified_diff(
            before_text.splitlines(True), after_text.splitlines(True), f"live/{kind}/{name}", f"applied/{kind}/{name}"
        )
    )
    action = "create" if live is None else ("update" if diff else "unchanged")
    return ObjectPlan(kind=kind, name=name, action=action, diff=diff)


def secret_plan(name: str, live: dict | None, wanted: Mapping[str, str]) -> ObjectPlan:
    """Secret changes by key name only: values never reach a plan."""
    have = (live or {}).get("data") or {}
    lines = [f"+ {k}" for k in sorted(set(wanted) - set(have))]
    lines += [f"- {k}" for k in sorted(set(have) - set(wanted))]
    lines += [f"~ {k} (value changed)" for k in sorted(set(have) & set(wanted)) if have[k] != wanted[k]]
    action = "create" if live is None else ("update" if lines else "unchanged")
    return ObjectPlan(kind="Secret", name=name, action=action, diff="\n".join(lines))


# ---- the undo of the other objects a release applied ----------------------------------------------

# What the server sets on each write; a restored object is sent without it.
VOLATILE_METADATA = ("resourceVersion", "uid", "creationTimestamp", "generation", "managedFields", "selfLink")
# Deployment spec fields the revision mechanism owns (the template) or that may never change.
DEPLOYMENT_SPEC_KEPT = {"template", "selector"}


def restorable(obj: dict) -> dict:
    """``obj`` as it can be written back: without status and the server's bookkeeping."""
    obj = copy.deepcopy(obj)
    obj.pop("status", None)
    meta = obj.get("metadata", {})
    for volatile in VOLATILE_METADATA + ("deletionTimestamp", "deletionGracePeriodSeconds"):
        meta.pop(volatile, None)
    return obj


def deployment_spec_patch(before: dict, live: dict) -> list[dict]:
    """JSON patch ops that give ``live`` the spec of ``before`` outside the pod template
    (replicas, strategy, deadlines): what ``kubectl rollout undo`` leaves as the release set it."""
    old, new = before.get("spec") or {}, live.get("spec") or {}
    ops = [
        {"op": "add", "path": f"/spec/{key}", "value": value}
        for key, value in old.items()
        if key not in DEPLOYMENT_SPEC_KEPT and new.get(key) != value
    ]
    gone = [key for key in new if key not in old and key not in DEPLOYMENT_SPEC_KEPT]
    ops += [{"op": "remove", "path": f"/spec/{key}"} for key in gone]
    return ops


def replica_state(pod: dict, container_name: str) -> ReplicaState:
    """A pod as the release watcher sees it: phase, Ready condition, restarts, why it is down."""
    status = pod.get("status") or {}
    statuses = status.get("containerStatuses") or []
    cs = next((c for c in statuses if c.get("name") == container_name), statuses[0] if statuses else {})
    state = cs.get("state") or {}
    ready = next((c.get("status") == "True" for c in status.get("conditions") or [] if c.get("type") == "Ready"), False)
    running = status.get("phase") == "Running" and bool(state.get("running"))
    detail = (
        ("terminating" if pod["metadata"].get("deletionTimestamp") else "")
        or (state.get("waiting") or {}).get("reason", "")
        or (state.get("terminated") or {}).get("reason", "")
        or ("" if running else status.get("phase", ""))
    )
    last = ((cs.get("lastState") or {}).get("terminated") or {}).get("reason")
    if last:  # a container that restarted says why its previous run ended
        detail = f"{detail} (last exit: {last})" if detail else f"last exit: {last}"
    return ReplicaState(
        name=pod["metadata"]["name"],
        running=running,
        ready=ready,
        restarts=int(cs.get("restartCount", 0)),
        detail=detail,
    )
