"""The Kubernetes target's judgements, called directly: ``rollout_verdict``, ``undo_patch``, ``undo_target``.

These are pure functions of objects read from the API (blocks/kubernetes/rollout.py); each
branch is fed the smallest Deployment, ReplicaSet and pod dicts that reach it. The emulator
tests (test_kubernetes_target.py) show the same rules against a served API.
"""

from __future__ import annotations

import copy

import pytest

from blocks.kubernetes.rollout import (
    FAILED_WAITING,
    HASH_LABEL,
    REVISION,
    UNDO_SKIP,
    rollout_verdict,
    undo_patch,
    undo_target,
)
from tasks.core.errors import NoEarlierRevision, PermanentError

pytestmark = pytest.mark.unit


def deployment(replicas: int | None = 3, annotations: dict | None = None, **status) -> dict:
    """A Deployment wanting ``replicas`` (None: unset), its ``status`` fields given by name; the
    status's own ``replicas`` (all pods, old and new) is ``total``."""
    spec = {} if replicas is None else {"replicas": replicas}
    if "total" in status:
        status["replicas"] = status.pop("total")
    return {"metadata": {"name": "architect-api", "annotations": annotations}, "spec": spec, "status": status}


def pod(name: str = "architect-api-abc", waiting: str | None = None, restarts: int = 0) -> dict:
    state = {"waiting": {"reason": waiting}} if waiting else {"running": {}}
    return {
        "metadata": {"name": name},
        "status": {"containerStatuses": [{"name": "architect-api", "state": state, "restartCount": restarts}]},
    }


# -- rollout_verdict ------------------------------------------------------------------------------


def test_progress_deadline_exceeded_fails():
    d = deployment(
        conditions=[
            {"type": "Available", "status": "True"},
            {
                "type": "Progressing",
                "status": "False",
                "reason": "ProgressDeadlineExceeded",
                "message": 'ReplicaSet "architect-api-7f" has timed out progressing.',
            },
        ],
        total=3,
        updatedReplicas=3,
        availableReplicas=3,
    )
    assert rollout_verdict(d, [pod()], "architect-api") == (
        False,
        'progress deadline exceeded: ReplicaSet "architect-api-7f" has timed out progressing.',
    )


def test_the_deadline_is_reported_before_a_crash_loop():
    d = deployment(conditions=[{"type": "Progressing", "reason": "ProgressDeadlineExceeded"}])
    verdict, reason = rollout_verdict(d, [pod(waiting="CrashLoopBackOff")], "architect-api")
    assert verdict is False and reason.startswith("progress deadline exceeded")


def test_progressing_without_the_deadline_is_not_a_failure():
    d = deployment(
        conditions=[{"type": "Progressing", "status": "True", "reason": "ReplicaSetUpdated"}],
        total=3,
        updatedReplicas=1,
        availableReplicas=1,
    )
    assert rollout_verdict(d, [pod()], "architect-api") == (None, "1 of 3 new replicas updated")


@pytest.mark.parametrize("reason", sorted(FAILED_WAITING))
def test_a_pod_waiting_for_a_reason_that_does_not_pass_fails(reason):
    pods = [pod("architect-api-ok"), pod("architect-api-bad", waiting=reason, restarts=4)]
    assert rollout_verdict(deployment(replicas=2, updatedReplicas=2), pods, "architect-api") == (
        False,
        f"pod architect-api-bad: {reason} (restarts 4)",
    )


def test_a_pod_waiting_to_start_is_still_in_progress():
    d = deployment(replicas=1, total=1, updatedReplicas=1, availableReplicas=0)
    verdict, reason = rollout_verdict(d, [pod(waiting="ContainerCreating")], "architect-api")
    assert (verdict, reason) == (None, "0 of 1 updated replicas available")


def test_a_pod_without_container_statuses_yet_is_still_in_progress():
    pending = {"metadata": {"name": "architect-api-new"}, "status": {"phase": "Pending"}}
    assert rollout_verdict(deployment(replicas=1), [pending], "architect-api") == (None, "0 of 1 new replicas updated")


def test_fewer_updated_replicas_than_wanted_is_in_progress():
    d = deployment(replicas=3, updatedReplicas=2, availableReplicas=2)
    assert rollout_verdict(d, [pod(), pod()], "architect-api") == (None, "2 of 3 new replicas updated")


def test_old_replicas_still_terminating_is_in_progress():
    d = deployment(replicas=3, total=4, updatedReplicas=3, availableReplicas=3)
    assert rollout_verdict(d, [pod()] * 3, "architect-api") == (None, "1 old replicas pending termination")


def test_updated_but_not_yet_available_is_in_progress():
    d = deployment(replicas=3, total=3, updatedReplicas=3, availableReplicas=2)
    assert rollout_verdict(d, [pod()] * 3, "architect-api") == (None, "2 of 3 updated replicas available")


def test_every_updated_replica_available_is_done():
    d = deployment(replicas=3, total=3, updatedReplicas=3, availableReplicas=3)
    assert rollout_verdict(d, [pod()] * 3, "architect-api") == (True, "architect-api rolled out: 3/3 available")


def test_a_deployment_without_replicas_means_one_and_without_status_means_nothing_yet():
    bare = {"metadata": {"name": "architect-api"}, "spec": {}}
    assert rollout_verdict(bare, [], "architect-api") == (None, "0 of 1 new replicas updated")
    d = deployment(replicas=None, total=1, updatedReplicas=1, availableReplicas=1)
    assert rollout_verdict(d, [pod()], "architect-api") == (True, "architect-api rolled out: 1/1 available")


# -- undo_patch -----------------------------------------------------------------------------------


def replicaset(revision: int, image: str, annotations: dict | None = None, labels: dict | None = None) -> dict:
    template = {
        "metadata": {
            "labels": {"app": "architect-api", HASH_LABEL: f"hash{revision}", **(labels or {})},
            "annotations": {"architect-deploy/version": f"3.2.{revision}"},
        },
        "spec": {"containers": [{"name": "architect-api", "image": image}]},
    }
    return {
        "metadata": {
            "name": f"architect-api-hash{revision}",
            "annotations": {REVISION: str(revision), **(annotations or {})},
        },
        "spec": {"template": template},
    }


def test_undo_patch_puts_the_old_template_back_without_its_hash_label():
    target = replicaset(1, "registry/app:3.2.1")
    live = deployment(annotations={REVISION: "2"})
    replace, add = undo_patch(live, target)
    assert replace["op"] == "replace" and replace["path"] == "/spec/template"
    assert replace["value"]["spec"]["containers"][0]["image"] == "registry/app:3.2.1"
    assert replace["value"]["metadata"]["labels"] == {"app": "architect-api"}
    assert add["op"] == "add" and add["path"] == "/metadata/annotations"


def test_undo_patch_leaves_the_replicaset_it_read_unchanged():
    target = replicaset(1, "registry/app:3.2.1")
    before = copy.deepcopy(target)
    replace, _ = undo_patch(deployment(annotations={}), target)
    replace["value"]["spec"]["containers"][0]["image"] = "changed"
    assert target == before and target["spec"]["template"]["metadata"]["labels"][HASH_LABEL] == "hash1"


def test_undo_patch_keeps_the_deployments_own_annotations_and_takes_the_rest_from_the_replicaset():
    live = deployment(
        annotations={
            REVISION: "5",
            "deployment.kubernetes.io/revision-history": "1,3",
            "kubectl.kubernetes.io/last-applied-configuration": "{}",
            "kubernetes.io/change-cause": "architect-deploy 3.2.2 registry/app:3.2.2",
            "architect-deploy/version": "3.2.2",
        }
    )
    target = replicaset(
        3,
        "registry/app:3.2.1",
        annotations={
            "kubernetes.io/change-cause": "architect-deploy 3.2.1 registry/app:3.2.1",
            "architect-deploy/version": "3.2.1",
            "deployment.kubernetes.io/desired-replicas": "3",
        },
    )
    _, add = undo_patch(live, target)
    assert add["value"] == {
        # kept from the Deployment: what kubectl rollout undo never copies from a ReplicaSet
        REVISION: "5",
        "deployment.kubernetes.io/revision-history": "1,3",
        "kubectl.kubernetes.io/last-applied-configuration": "{}",
        # taken from the ReplicaSet: everything else, its revision and replica counts excepted
        "kubernetes.io/change-cause": "architect-deploy 3.2.1 registry/app:3.2.1",
        "architect-deploy/version": "3.2.1",
    }
    assert not set(add["value"]) - set(live["metadata"]["annotations"]) - set(target["metadata"]["annotations"])


def test_undo_patch_with_no_annotations_on_either_side():
    target = replicaset(1, "registry/app:3.2.1")
    target["metadata"]["annotations"] = None
    _, add = undo_patch(deployment(annotations=None), target)
    assert add["value"] == {}


def test_undo_patch_of_a_template_without_labels():
    target = replicaset(1, "registry/app:3.2.1")
    del target["spec"]["template"]["metadata"]
    replace, add = undo_patch(deployment(annotations={REVISION: "2"}), target)
    assert "metadata" not in replace["value"] and add["value"] == {REVISION: "2"}


def test_undo_skip_names_what_kubectl_keeps():
    assert {REVISION, "kubectl.kubernetes.io/last-applied-configuration"} <= UNDO_SKIP


# -- undo_target ----------------------------------------------------------------------------------


def test_undo_target_is_the_revision_before_the_current_one():
    sets = [replicaset(1, "a"), replicaset(2, "b"), replicaset(3, "c")]
    assert undo_target(deployment(annotations={REVISION: "3"}), sets, None) is sets[1]


def test_undo_target_skips_replicasets_without_a_revision():
    unnumbered = replicaset(0, "x")
    unnumbered["metadata"]["annotations"] = {}
    sets = [unnumbered, replicaset(2, "b")]
    with pytest.raises(NoEarlierRevision, match="no revision before 2 to roll back to"):
        undo_target(deployment(annotations={REVISION: "2"}), sets, None)


def test_undo_target_to_a_named_revision():
    sets = [replicaset(1, "a"), replicaset(2, "b"), replicaset(3, "c")]
    assert undo_target(deployment(annotations={REVISION: "3"}), sets, 1) is sets[0]
    with pytest.raises(NoEarlierRevision, match="no revision 7 to roll back to") as caught:
        undo_target(deployment(annotations={REVISION: "3"}), sets, 7)
    assert isinstance(caught.value, PermanentError), "the tree's kind: asking again will not help"
