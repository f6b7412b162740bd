"""The fake control plane: Deployment, ReplicaSet and Job controllers and a kubelet, in one thread.

Each tick (``tick_s``, 0.2 s by default) runs, under the store's lock:

1. the kubelet: every pod's status follows from its image reference and age (see ``behaviour``);
2. the ReplicaSet controller: pods created or deleted to match ``spec.replicas``, status counted;
3. the Deployment controller: the ReplicaSet of the current pod template found or created (a
   template equal to an old ReplicaSet's reuses it and gives it the next revision, as on undo),
   RollingUpdate scaling by maxSurge/maxUnavailable, Recreate, status and the Available and
   Progressing conditions, with ``progressDeadlineSeconds`` measured on the real clock;
4. the Job controller: one pod at a time until success, or failures beyond ``backoffLimit``,
   or ``activeDeadlineSeconds``.

Pods' behaviour by image reference: ``crash`` → CrashLoopBackOff with a growing restartCount;
``nopull`` → ErrImagePull then ImagePullBackOff; ``stuck`` → running, never ready;
``failmigrate`` or ``badmigration`` (Job pods) → exit 1 with "migration 005 failed" (the
v3.2.1-badmigration release's failure; nothing touches a database); anything else → ready after
``ready_delay_s`` (Job pods: exit 0, logging the command). ``restart_container`` makes a healthy
pod's container restart once, as a replica that dies after the health gate would (restartCount
up, ``lastState.terminated``; the kubelet's back-off and the pod's brief unreadiness are skipped).
Events are recorded as a kubelet and controllers would (Scheduled, Pulled, Started, BackOff,
Failed, Unhealthy, ScalingReplicaSet, ...).
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import threading
import time
import uuid

from .resources import BY_KIND
from .store import ApiError, Store, now_rfc3339

DEPLOY = BY_KIND[("apps", "Deployment")]
RS = BY_KIND[("apps", "ReplicaSet")]
POD = BY_KIND[("", "Pod")]
JOB = BY_KIND[("batch", "Job")]
EVENT = BY_KIND[("", "Event")]
REVISION = "deployment.kubernetes.io/revision"
HASH_LABEL = "pod-template-hash"
# Deployment annotations the controller does not copy to its ReplicaSets (as in the real one).
SKIP_ANNOTATIONS = {
    "kubectl.kubernetes.io/last-applied-configuration",
    REVISION,
    "deployment.kubernetes.io/revision-history",
    "deployment.kubernetes.io/desired-replicas",
    "deployment.kubernetes.io/max-replicas",
    "deprecated.deployment.rollback.to",
}


# Image markers of a release whose migration Job fails (the app's own tag is v3.2.1-badmigration).
FAILING_MIGRATION = ("failmigrate", "badmigration")


def behaviour(image: str) -> str:
    if any(marker in image for marker in FAILING_MIGRATION):
        return "failmigrate"
    for marker in ("crash", "nopull", "stuck"):
        if marker in image:
            return marker
    return "ok"


def _drop_empty(value):
    if isinstance(value, dict):
        value = {k: _drop_empty(v) for k, v in value.items()}
        return {k: v for k, v in value.items() if v not in (None, {}, [])}
    if isinstance(value, list):
        return [_drop_empty(v) for v in value]
    return value


def template_key(template: dict) -> str:
    """Compare pod templates as the controller does: without the hash label; empty fields ignored."""
    template = copy.deepcopy(template or {})
    template.setdefault("metadata", {}).setdefault("labels", {}).pop(HASH_LABEL, None)
    template["metadata"].pop("creationTimestamp", None)
    return json.dumps(_drop_empty(template), sort_keys=True)


def resolve(value, total: int, round_up: bool) -> int:
    if isinstance(value, str) and value.endswith("%"):
        raw = int(value[:-1]) * total / 100
        return math.ceil(raw) if round_up else math.floor(raw)
    return int(value)


def owned_by(obj: dict, owner: dict) -> bool:
    return any(
        r.get("uid") == owner["metadata"]["uid"] and r.get("controller")
        for r in obj["metadata"].get("ownerReferences") or []
    )


def owner_ref(owner: dict) -> dict:
    return {
        "apiVersion": owner["apiVersion"],
        "kind": owner["kind"],
        "name": owner["metadata"]["name"],
        "uid": owner["metadata"]["uid"],
        "controller": True,
        "blockOwnerDeletion": True,
    }


class FakeCluster:
    def __init__(self, store: Store, tick_s: float = 0.2, ready_delay_s: float = 0.3, crash_period_s: float = 0.5):
        self.store, self.tick_s, self.ready_delay_s, self.crash_period_s = store, tick_s, ready_delay_s, crash_period_s
        self.pod_started: dict[str, float] = {}  # pod uid -> monotonic creation time
        self.logs: dict[str, str] = {}  # pod uid -> log text
        self.progress_at: dict[str, float] = {}  # deployment uid -> last progress (monotonic)
        # Restarts of healthy containers asked for by a test (restart_container): pod uid -> (count, when).
        self.restarts: dict[str, tuple[int, str]] = {}
        # Every Job the controller saw, kept after the Job is deleted: {name, namespace, image, args, outcome}.
        self.job_runs: list[dict] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="k8s-emulator-controller", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _run(self) -> None:
        while not self._stop.wait(self.tick_s):
            with self.store.lock:
                self.tick()

    def tick(self) -> None:
        for pod in self.store.list(POD):
            self._kubelet(pod)
        for rs in self.store.list(RS):
            self._sync_replicaset(rs)
        for deployment in self.store.list(DEPLOY):
            self._sync_deployment(deployment)
        for rs in self.store.list(RS):
            self._sync_replicaset(rs)
        for job in self.store.list(JOB):
            self._sync_job(job)

    # ---- events and logs ----------------------------------------------------------------------

    def event(
        self,
        obj: dict,
        event_type: str,
        reason: str,
        message: str,
        component: str = "kubelet",
        count: int | None = None,
    ) -> None:
        """Record an event once per object and reason; ``count`` updates a repeating one (BackOff)."""
        meta = obj["metadata"]
        name = f"{meta['name']}.{hashlib.sha1((meta['uid'] + reason).encode()).hexdigest()[:16]}"
        existing = self.store.find(EVENT, meta["namespace"], name)
        stamp = now_rfc3339()
        if existing:
            if count is not None and existing.get("count") != count:
                existing.update(count=count, message=message, lastTimestamp=stamp)
                self.store.put(EVENT, existing)
            return
        self.store.put(
            EVENT,
            {
                "apiVersion": "v1",
                "kind": "Event",
                "metadata": {"name": name, "namespace": meta["namespace"]},
                "involvedObject": {
                    "apiVersion": obj["apiVersion"],
                    "kind": obj["kind"],
                    "name": meta["name"],
                    "namespace": meta["namespace"],
                    "uid": meta["uid"],
                },
                "type": event_type,
                "reason": reason,
                "message": message,
                "count": count or 1,
                "firstTimestamp": stamp,
                "lastTimestamp": stamp,
                "source": {"component": component},
                "reportingComponent": component,
            },
        )

    def pod_log(self, pod: dict, container: str | None, previous: bool) -> str:
        """A container's output; a crash-looping one shows its last run, as the kubelet does."""
        statuses = pod.get("status", {}).get("containerStatuses") or []
        waiting = statuses[0].get("state", {}).get("waiting", {}).get("reason") if statuses else "ContainerCreating"
        if waiting in ("ContainerCreating", "ErrImagePull", "ImagePullBackOff"):
            name = container or (statuses[0]["name"] if statuses else "")
            raise ApiError(
                400,
                "BadRequest",
                f'container "{name}" in pod "{pod["metadata"]["name"]}" is waiting to start: {waiting}',
            )
        return self.logs.get(pod["metadata"]["uid"], "")

    # ---- kubelet ------------------------------------------------------------------------------

    def _kubelet(self, pod: dict) -> None:
        meta, spec = pod["metadata"], pod.get("spec", {})
        uid = meta["uid"]
        if uid not in self.pod_started:
            self.pod_started[uid] = time.monotonic()
            self.event(
                pod,
                "Normal",
                "Scheduled",
                f"Successfully assigned {meta['namespace']}/{meta['name']} to emulator-node",
                "default-scheduler",
            )
        phase = pod.get("status", {}).get("phase")
        if phase in ("Succeeded", "Failed"):
            return
        containers = spec.get("containers") or [{}]
        c = containers[0]
        image, name = c.get("image", ""), c.get("name", "main")
        mode = behaviour(image)
        age = time.monotonic() - self.pod_started[uid]
        is_job = any(r.get("kind") == "Job" for r in meta.get("ownerReferences") or [])
        status = {
            "phase": "Pending",
            "startTime": pod.get("status", {}).get("startTime") or now_rfc3339(),
            "hostIP": "127.0.0.1",
            "qosClass": "Burstable",
        }
        cs = {"name": name, "image": image, "imageID": "", "ready": False, "restartCount": 0, "started": False}
        ready = False
        if mode == "nopull":
            reason = "ErrImagePull" if age < 2 * self.crash_period_s else "ImagePullBackOff"
            cs["state"] = {"waiting": {"reason": reason, "message": f'Back-off pulling image "{image}"'}}
            self.event(pod, "Warning", "Failed", f'Failed to pull image "{image}": manifest unknown: not found')
        elif age < self.ready_delay_s:
            cs["state"] = {"waiting": {"reason": "ContainerCreating"}}
        else:
            self.event(pod, "Normal", "Pulled", f'Container image "{image}" already present on machine')
            self.event(pod, "Normal", "Started", f"Started container {name}")
            started = now_rfc3339()
            command = " ".join((c.get("command") or []) + (c.get("args") or []))
            if is_job:
                failed = mode == "failmigrate"
                code = 1 if failed else 0
                # The canned lines of v3.2.1-badmigration: 004 applies, 005 fails (no database is touched).
                self.logs[uid] = (
                    (
                        f"running: {command}\napplying migration 004_event_tags\n"
                        "applying migration 005_error_fingerprint\n"
                        '{"level":"error","msg":"migration 005 failed","migration_version":5,'
                        '"error":"pq: column \\"stack_trace\\" does not exist"}\n'
                    )
                    if failed
                    else f"running: {command}\n" + "".join(f"arg: {a}\n" for a in c.get("args") or []) + "done\n"
                )
                cs["state"] = {
                    "terminated": {
                        "exitCode": code,
                        "reason": "Error" if failed else "Completed",
                        "startedAt": started,
                        "finishedAt": started,
                    }
                }
                status["phase"] = "Failed" if failed else "Succeeded"
            elif mode == "crash":
                restarts = int((age - self.ready_delay_s) / self.crash_period_s) + 1
                cs.update(
                    restartCount=restarts,
                    state={
                        "waiting": {
                            "reason": "CrashLoopBackOff",
                            "message": f"back-off restarting failed container {name}",
                        }
                    },
                    lastState={"terminated": {"exitCode": 1, "reason": "Error"}},
                )
                self.logs[uid] = f"architect-api starting ({image})\npanic: crash on start: bad configuration\n"
                status["phase"] = "Running"
                self.event(
                    pod,
                    "Warning",
                    "BackOff",
                    f"Back-off restarting failed container {name} in pod {meta['name']}",
                    count=restarts,
                )
            else:
                prior = pod.get("status", {}).get("containerStatuses") or [{}]
                since = prior[0].get("state", {}).get("running", {}).get("startedAt", started)
                cs.update(started=True, state={"running": {"startedAt": since}})
                if uid in self.restarts:  # a test killed the container; the kubelet started it again
                    count, when = self.restarts[uid]
                    cs.update(
                        restartCount=count,
                        state={"running": {"startedAt": when}},
                        lastState={"terminated": {"exitCode": 137, "reason": "Error", "finishedAt": when}},
                    )
                status["phase"] = "Running"
                self.logs[uid] = f"architect-api starting ({image})\nlistening on :8080\n"
                if mode == "stuck":
                    self.logs[uid] += "health: database unreachable\n"
                    self.event(
                        pod, "Warning", "Unhealthy", "Readiness probe failed: HTTP probe failed with statuscode: 503"
                    )
                else:
                    ready = True
                    cs["ready"] = True
        flag = "True" if ready else "False"
        status["conditions"] = [
            {"type": "PodScheduled", "status": "True"},
            {"type": "Initialized", "status": "True"},
            {"type": "ContainersReady", "status": flag},
            {"type": "Ready", "status": flag},
        ]
        status["containerStatuses"] = [cs]
        before = {c["type"]: c for c in pod.get("status", {}).get("conditions") or []}
        for cond in status["conditions"]:
            kept = before.get(cond["type"], {})
            same = kept.get("status") == cond["status"] and kept.get("lastTransitionTime")
            cond["lastTransitionTime"] = kept["lastTransitionTime"] if same else now_rfc3339()
        pod["status"] = status
        self.store.put(POD, pod)

    def restart_container(self, namespace: str, pod_name: str) -> int:
        """The pod's container exits once and is started again at once (no back-off): its
        restartCount goes up and lastState says it was killed. Returns the new count."""
        with self.store.lock:
            uid = self.store.get(POD, namespace, pod_name)["metadata"]["uid"]
            count = self.restarts.get(uid, (0, ""))[0] + 1
            self.restarts[uid] = (count, now_rfc3339())
            return count

    def _available(self, pod: dict, min_ready_s: int) -> bool:
        ready = next((c for c in pod.get("status", {}).get("conditions") or [] if c["type"] == "Ready"), None)
        if not ready or ready["status"] != "True":
            return False
        if not min_ready_s:
            return True
        stamp = time.mktime(time.strptime(ready["lastTransitionTime"], "%Y-%m-%dT%H:%M:%SZ")) - time.timezone
        return time.time() - stamp >= min_ready_s

    # ---- ReplicaSets --------------------------------------------------------------------------

    def _sync_replicaset(self, rs: dict) -> None:
        rs = self.store.find(RS, rs["metadata"]["namespace"], rs["metadata"]["name"])
        if rs is None:
            return
        ns = rs["metadata"]["namespace"]
        pods = [p for p in self.store.list(POD, ns) if owned_by(p, rs)]
        want = rs["spec"].get("replicas", 1)
        if len(pods) < want:
            for _ in range(want - len(pods)):
                template = copy.deepcopy(rs["spec"]["template"])
                name = f"{rs['metadata']['name']}-{uuid.uuid4().hex[:5]}"
                self.store.put(
                    POD,
                    {
                        "apiVersion": "v1",
                        "kind": "Pod",
                        "metadata": {
                            **template.get("metadata", {}),
                            "name": name,
                            "namespace": ns,
                            "ownerReferences": [owner_ref(rs)],
                        },
                        "spec": {**template.get("spec", {}), "nodeName": "emulator-node"},
                    },
                )
                self.event(rs, "Normal", "SuccessfulCreate", f"Created pod: {name}", "replicaset-controller")
        elif len(pods) > want:
            # Not-ready pods go first, then the newest, as the real controller ranks them.
            pods.sort(key=lambda p: (self._available(p, 0), p["metadata"]["creationTimestamp"]))
            for pod in pods[: len(pods) - want]:
                self.store.delete(POD, ns, pod["metadata"]["name"], "Background")
                self.event(
                    rs, "Normal", "SuccessfulDelete", f"Deleted pod: {pod['metadata']['name']}", "replicaset-controller"
                )
        pods = [p for p in self.store.list(POD, ns) if owned_by(p, rs)]
        min_ready = rs["spec"].get("minReadySeconds", 0)
        ready = sum(1 for p in pods if self._available(p, 0))
        rs["status"] = {
            "replicas": len(pods),
            "fullyLabeledReplicas": len(pods),
            "readyReplicas": ready,
            "availableReplicas": sum(1 for p in pods if self._available(p, min_ready)),
            "observedGeneration": rs["metadata"].get("generation", 1),
        }
        self.store.put(RS, rs)

    # ---- Deployments --------------------------------------------------------------------------

    def _sync_deployment(self, d: dict) -> None:
        meta, spec = d["metadata"], d["spec"]
        ns, now = meta["namespace"], time.monotonic()
        rss = sorted(
            (rs for rs in self.store.list(RS, ns) if owned_by(rs, d)),
            key=lambda rs: int(rs["metadata"].get("annotations", {}).get(REVISION, "0")),
        )
        key = template_key(spec["template"])
        new = next((rs for rs in rss if template_key(rs["spec"]["template"]) == key), None)
        max_rev = max((int(rs["metadata"].get("annotations", {}).get(REVISION, "0")) for rs in rss), default=0)
        desired = spec.get("replicas", 1)
        progressed, reason = False, None
        copied = {k: v for k, v in (meta.get("annotations") or {}).items() if k not in SKIP_ANNOTATIONS}
        if new is None:
            pod_hash = hashlib.sha256(key.encode()).hexdigest()[:10]
            template = copy.deepcopy(spec["template"])
            template.setdefault("metadata", {}).setdefault("labels", {})[HASH_LABEL] = pod_hash
            selector = copy.deepcopy(spec.get("selector") or {})
            selector.setdefault("matchLabels", {})[HASH_LABEL] = pod_hash
            new = self.store.put(
                RS,
                {
                    "apiVersion": "apps/v1",
                    "kind": "ReplicaSet",
                    "metadata": {
                        "name": f"{meta['name']}-{pod_hash}",
                        "namespace": ns,
                        "labels": template["metadata"]["labels"],
                        "ownerReferences": [owner_ref(d)],
                        "annotations": {
                            **copied,
                            REVISION: str(max_rev + 1),
                            "deployment.kubernetes.io/desired-replicas": str(desired),
                        },
                    },
                    "spec": {
                        "replicas": 0,
                        "selector": selector,
                        "template": template,
                        "minReadySeconds": spec.get("minReadySeconds", 0),
                    },
                },
            )
            rss.append(new)
            progressed, reason = True, "NewReplicaSetCreated"
        else:
            annotations = new["metadata"].setdefault("annotations", {})
            if int(annotations.get(REVISION, "0")) < max_rev:
                # An undo: the old ReplicaSet becomes the newest revision.
                annotations[REVISION] = str(max_rev + 1)
                progressed, reason = True, "FoundNewReplicaSet"
            annotations.update(copied)
            new = self.store.put(RS, new)
            rss = [new if rs["metadata"]["uid"] == new["metadata"]["uid"] else rs for rs in rss]
        meta.setdefault("annotations", {})[REVISION] = new["metadata"]["annotations"][REVISION]
        old = [rs for rs in rss if rs["metadata"]["uid"] != new["metadata"]["uid"]]
        progressed |= self._scale(d, new, old, desired)
        self._status(d, new, old, desired, progressed, reason, now)
        self._prune_history(d, old)

    def _scale(self, d: dict, new: dict, old: list[dict], desired: int) -> bool:
        strategy = d["spec"].get("strategy", {})
        changed = False

        def set_replicas(rs: dict, n: int) -> None:
            nonlocal changed
            if rs["spec"].get("replicas", 0) != n:
                verb = "up" if n > rs["spec"].get("replicas", 0) else "down"
                self.event(
                    d,
                    "Normal",
                    "ScalingReplicaSet",
                    f"Scaled {verb} replica set {rs['metadata']['name']} from {rs['spec'].get('replicas', 0)} to {n}",
                    "deployment-controller",
                )
                rs["spec"]["replicas"] = n
                self.store.put(RS, rs)
                changed = True

        if strategy.get("type") == "Recreate":
            for rs in old:
                set_replicas(rs, 0)
            if all(rs.get("status", {}).get("replicas", 0) == 0 for rs in old):
                set_replicas(new, desired)
            return changed
        rolling = strategy.get("rollingUpdate", {})
        surge = resolve(rolling.get("maxSurge", "25%"), desired, True)
        unavailable = resolve(rolling.get("maxUnavailable", "25%"), desired, False)
        if surge == 0 and unavailable == 0:
            unavailable = 1
        total = sum(rs["spec"].get("replicas", 0) for rs in [new, *old])
        current = new["spec"].get("replicas", 0)
        if current > desired:
            set_replicas(new, desired)
        elif current < desired and total < desired + surge:
            set_replicas(new, min(desired, current + desired + surge - total))
        min_available = desired - unavailable
        new_unavailable = new["spec"].get("replicas", 0) - new.get("status", {}).get("availableReplicas", 0)
        all_pods = sum(rs["spec"].get("replicas", 0) for rs in [new, *old])
        budget = all_pods - min_available - new_unavailable
        for rs in old:  # unhealthy old replicas go first
            unhealthy = rs["spec"].get("replicas", 0) - rs.get("status", {}).get("availableReplicas", 0)
            cut = max(0, min(unhealthy, budget))
            if cut:
                set_replicas(rs, rs["spec"]["replicas"] - cut)
                budget -= cut
        available = sum(rs.get("status", {}).get("availableReplicas", 0) for rs in [new, *old])
        budget = min(budget, available - min_available)
        for rs in old:
            cut = max(0, min(rs["spec"].get("replicas", 0), budget))
            if cut:
                set_replicas(rs, rs["spec"]["replicas"] - cut)
                budget -= cut
        return changed

    def _set_progressing(self, d: dict, status: str, reason: str, message: str) -> None:
        conditions = d.setdefault("status", {}).setdefault("conditions", [])
        stamp = now_rfc3339()
        cond = next((c for c in conditions if c["type"] == "Progressing"), None)
        if cond is None:
            conditions.append(
                {
                    "type": "Progressing",
                    "status": status,
                    "reason": reason,
                    "message": message,
                    "lastUpdateTime": stamp,
                    "lastTransitionTime": stamp,
                }
            )
            return
        if cond["status"] != status:
            cond["lastTransitionTime"] = stamp
        cond.update(status=status, reason=reason, message=message, lastUpdateTime=stamp)

    def _status(
        self, d: dict, new: dict, old: list[dict], desired: int, progressed: bool, reason: str | None, now: float
    ) -> None:
        uid = d["metadata"]["uid"]
        everything = [new, *old]
        previous = copy.deepcopy(d.get("status", {}))
        st = d.setdefault("status", {})
        st.update(
            observedGeneration=d["metadata"].get("generation", 1),
            replicas=sum(rs.get("status", {}).get("replicas", 0) for rs in everything),
            updatedReplicas=new.get("status", {}).get("replicas", 0),
            readyReplicas=sum(rs.get("status", {}).get("readyReplicas", 0) for rs in everything),
            availableReplicas=sum(rs.get("status", {}).get("availableReplicas", 0) for rs in everything),
        )
        st["unavailableReplicas"] = max(
            0, sum(rs["spec"].get("replicas", 0) for rs in everything) - st["availableReplicas"]
        )
        for field in ("readyReplicas", "availableReplicas", "unavailableReplicas", "updatedReplicas"):
            if not st[field]:
                st.pop(field)  # the API omits zero counts
        rolling = d["spec"].get("strategy", {}).get("rollingUpdate", {})
        min_available = desired - resolve(rolling.get("maxUnavailable", "25%"), desired, False)
        available_ok = st.get("availableReplicas", 0) >= min_available
        conditions = st.setdefault("conditions", [])
        avail = next((c for c in conditions if c["type"] == "Available"), None)
        flag = "True" if available_ok else "False"
        if avail is None or avail["status"] != flag:
            stamp = now_rfc3339()
            conditions[:] = [c for c in conditions if c["type"] != "Available"]
            conditions.insert(
                0,
                {
                    "type": "Available",
                    "status": flag,
                    "reason": "MinimumReplicasAvailable" if available_ok else "MinimumReplicasUnavailable",
                    "message": "Deployment has minimum availability."
                    if available_ok
                    else "Deployment does not have minimum availability.",
                    "lastUpdateTime": stamp,
                    "lastTransitionTime": stamp,
                },
            )
        counts = ("updatedReplicas", "readyReplicas", "availableReplicas")
        progressed |= any(st.get(k, 0) > previous.get(k, 0) for k in counts) or st["replicas"] < previous.get(
            "replicas", 0
        )
        complete = (
            st.get("updatedReplicas", 0) == desired
            and st["replicas"] == desired
            and st.get("availableReplicas", 0) == desired
        )
        name = new["metadata"]["name"]
        cond = next((c for c in conditions if c["type"] == "Progressing"), {})
        if complete:
            if cond.get("reason") != "NewReplicaSetAvailable":
                self._set_progressing(
                    d, "True", "NewReplicaSetAvailable", f'ReplicaSet "{name}" has successfully progressed.'
                )
            self.progress_at[uid] = now
        elif progressed or uid not in self.progress_at:
            self.progress_at[uid] = now
            if reason == "NewReplicaSetCreated":
                self._set_progressing(d, "True", reason, f'Created new replica set "{name}"')
            else:
                self._set_progressing(d, "True", reason or "ReplicaSetUpdated", f'ReplicaSet "{name}" is progressing.')
        elif cond.get("reason") != "ProgressDeadlineExceeded" and now - self.progress_at[uid] > d["spec"].get(
            "progressDeadlineSeconds", 600
        ):
            self._set_progressing(
                d, "False", "ProgressDeadlineExceeded", f'ReplicaSet "{name}" has timed out progressing.'
            )
            self.event(
                d,
                "Warning",
                "ProgressDeadlineExceeded",
                f'ReplicaSet "{name}" has timed out progressing.',
                "deployment-controller",
            )
        self.store.put(DEPLOY, d)

    def _prune_history(self, d: dict, old: list[dict]) -> None:
        limit = d["spec"].get("revisionHistoryLimit", 10)
        idle = [rs for rs in old if rs["spec"].get("replicas", 0) == 0 and rs.get("status", {}).get("replicas", 0) == 0]
        for rs in idle[: max(0, len(idle) - limit)]:
            self.store.delete(RS, rs["metadata"]["namespace"], rs["metadata"]["name"], "Background")

    # ---- Jobs ---------------------------------------------------------------------------------

    def _job_run(self, job: dict) -> dict:
        uid = job["metadata"]["uid"]
        run = next((r for r in self.job_runs if r["uid"] == uid), None)
        if run is None:
            container = (job["spec"].get("template", {}).get("spec", {}).get("containers") or [{}])[0]
            run = {
                "uid": uid,
                "name": job["metadata"]["name"],
                "namespace": job["metadata"]["namespace"],
                "image": container.get("image", ""),
                "args": list(container.get("args") or []),
                "outcome": "Running",
            }
            self.job_runs.append(run)
        return run

    def _sync_job(self, job: dict) -> None:
        st = job.setdefault("status", {})
        if any(c["type"] in ("Complete", "Failed") and c["status"] == "True" for c in st.get("conditions") or []):
            return
        ns, spec = job["metadata"]["namespace"], job["spec"]
        run = self._job_run(job)
        pods = [p for p in self.store.list(POD, ns) if owned_by(p, job)]
        phases = [p.get("status", {}).get("phase") for p in pods]
        succeeded, failed = phases.count("Succeeded"), phases.count("Failed")
        active = [p for p in pods if p.get("status", {}).get("phase") not in ("Succeeded", "Failed")]
        st.setdefault("startTime", now_rfc3339())
        st.update(active=len(active), succeeded=succeeded, failed=failed)
        stamp = now_rfc3339()
        started = self.pod_started.setdefault(job["metadata"]["uid"], time.monotonic())
        deadline = spec.get("activeDeadlineSeconds")
        finish = None
        if succeeded >= spec.get("completions", 1):
            finish = ("Complete", "", "")
            st["completionTime"] = stamp
        elif failed > spec.get("backoffLimit", 6):
            finish = ("Failed", "BackoffLimitExceeded", "Job has reached the specified backoff limit")
        elif deadline and time.monotonic() - started > deadline:
            finish = ("Failed", "DeadlineExceeded", "Job was active longer than specified deadline")
            for pod in active:
                self.store.delete(POD, ns, pod["metadata"]["name"], "Background")
            st["active"] = 0
        elif not active:
            template = copy.deepcopy(spec["template"])
            labels = {
                **template.get("metadata", {}).get("labels", {}),
                "job-name": job["metadata"]["name"],
                "batch.kubernetes.io/job-name": job["metadata"]["name"],
                "controller-uid": job["metadata"]["uid"],
                "batch.kubernetes.io/controller-uid": job["metadata"]["uid"],
            }
            name = f"{job['metadata']['name']}-{uuid.uuid4().hex[:5]}"
            self.store.put(
                POD,
                {
                    "apiVersion": "v1",
                    "kind": "Pod",
                    "metadata": {"name": name, "namespace": ns, "labels": labels, "ownerReferences": [owner_ref(job)]},
                    "spec": {**template.get("spec", {}), "nodeName": "emulator-node"},
                },
            )
            self.event(job, "Normal", "SuccessfulCreate", f"Created pod: {name}", "job-controller")
            st["active"] = 1
        if finish:
            kind, reason, message = finish
            run["outcome"] = kind
            target = "SuccessCriteriaMet" if kind == "Complete" else "FailureTarget"
            st["conditions"] = [
                {
                    "type": target,
                    "status": "True",
                    "reason": reason,
                    "message": message,
                    "lastProbeTime": stamp,
                    "lastTransitionTime": stamp,
                },
                {
                    "type": kind,
                    "status": "True",
                    "reason": reason,
                    "message": message,
                    "lastProbeTime": stamp,
                    "lastTransitionTime": stamp,
                },
            ]
            self.event(
                job,
                "Normal" if kind == "Complete" else "Warning",
                "Completed" if kind == "Complete" else reason,
                "Job completed" if kind == "Complete" else message,
                "job-controller",
            )
        self.store.put(JOB, job)
