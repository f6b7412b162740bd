"""The real kubectl (v1.32) against the API emulator, and KubernetesTarget reading the result.

This checks the emulator itself: if kubectl's own apply, rollout status, set image, rollout
history and rollout undo behave against it as against a cluster, the target tests that run against
it mean something. It also checks that our target and kubectl agree on revisions both ways: a
rollout kubectl made is read by the target, an undo the target made is read by kubectl.
Not shown here (the emulator does not model them): typed protobuf bodies (``kubectl create
namespace``/``create secret`` — the test uses ``apply -f``), ``kubectl get`` server-side table
columns, schema-driven list merging, RBAC.
"""

from __future__ import annotations

import pytest

from blocks.kubernetes.target import KubernetesTarget
from tests.k8s_emulator import testing
from tests.k8s_emulator.testing import IMAGES, SLOW

# The emulator runs in the test process: no sandbox needed.
pytestmark = pytest.mark.unit


@pytest.fixture
def k8s(tmp_path):
    with testing.cluster(tmp_path) as c:
        yield c


@pytest.fixture
def setup(k8s, tmp_path):
    namespace = testing.unique_namespace()
    repo = testing.app_repo(tmp_path, progress_deadline_s=int(2 * SLOW))
    ns_file, deployment_file, service_file = testing.namespaced_manifests(repo, namespace)
    target = KubernetesTarget(host=k8s.url, namespace=namespace, repo_dir=str(repo), poll_interval_s=0.2)
    yield namespace, (ns_file, deployment_file, service_file), target
    if testing.REAL_URL:
        k8s.kubectl("delete", "namespace", namespace, "--wait=false", check=False)


def rollout_status(k8s, namespace, check=True):
    return k8s.kubectl(
        "rollout",
        "status",
        "deployment/architect-api",
        f"--timeout={int(30 * SLOW)}s",
        namespace=namespace,
        check=check,
    )


def test_kubectl_apply_rollout_history_undo_agree_with_the_target(k8s, setup):
    namespace, (ns_file, deployment_file, service_file), target = setup
    k8s.kubectl("apply", "--server-side", "-f", str(ns_file))
    applied = k8s.kubectl(
        "apply", "--server-side", "-f", str(deployment_file), "-f", str(service_file), namespace=namespace
    ).stdout
    assert "deployment.apps/architect-api serverside-applied" in applied
    assert "service/architect-api serverside-applied" in applied
    k8s.kubectl("set", "image", "deployment/architect-api", f"architect-api={IMAGES['v1']}", namespace=namespace)
    assert "successfully rolled out" in rollout_status(k8s, namespace).stdout

    k8s.kubectl("set", "image", "deployment/architect-api", f"architect-api={IMAGES['v2']}", namespace=namespace)
    assert "successfully rolled out" in rollout_status(k8s, namespace).stdout
    revisions = testing.kubectl_revisions(k8s, namespace)
    history = target.history()
    assert [r.number for r in history] == revisions
    assert history[-1].image == IMAGES["v2"] == testing.kubectl_revision_image(k8s, namespace, revisions[-1])
    assert target.current_revision().number == revisions[-1]

    k8s.kubectl("rollout", "undo", "deployment/architect-api", namespace=namespace)
    assert "successfully rolled out" in rollout_status(k8s, namespace).stdout
    after = testing.kubectl_revisions(k8s, namespace)
    # The undo reuses the previous ReplicaSet, which becomes the newest revision.
    assert after == [r for r in revisions if r != revisions[-2]] + [revisions[-1] + 1]
    assert [r.number for r in target.history()] == after
    assert target.current_revision().image == IMAGES["v1"] == testing.kubectl_revision_image(k8s, namespace, after[-1])
    # The ReplicaSets kubectl counts are the ones the target counts: nothing was created by the undo.
    replicasets = k8s.kubectl("get", "replicasets", "-o", "name", namespace=namespace).stdout.split()
    assert len(replicasets) == len(after)


def test_kubectl_sees_a_failed_rollout_and_the_targets_undo(k8s, setup):
    namespace, (ns_file, deployment_file, service_file), target = setup
    assert target.deploy(IMAGES["v1"], "3.2.0", {"K": "v"}, 30 * SLOW).complete
    k8s.kubectl("set", "image", "deployment/architect-api", f"architect-api={IMAGES['stuck']}", namespace=namespace)
    failed = rollout_status(k8s, namespace, check=False)
    assert failed.returncode != 0 and "exceeded its progress deadline" in failed.stderr

    result = target.rollback(None, {}, 30 * SLOW)
    assert result.complete and result.revision.image == IMAGES["v1"]
    assert "successfully rolled out" in rollout_status(k8s, namespace).stdout
    assert testing.kubectl_revisions(k8s, namespace) == [r.number for r in target.history()] == [2, 3]
    assert testing.kubectl_revision_image(k8s, namespace, 3) == IMAGES["v1"]


def test_kubectl_undo_to_revision_and_server_side_apply_again(k8s, setup):
    namespace, (ns_file, deployment_file, service_file), target = setup
    for key, version in (("v1", "3.2.0"), ("v2", "3.2.1")):
        assert target.deploy(IMAGES[key], version, {"K": "v"}, 30 * SLOW).complete
    k8s.kubectl("rollout", "undo", "deployment/architect-api", "--to-revision=1", namespace=namespace)
    assert "successfully rolled out" in rollout_status(k8s, namespace).stdout
    current = target.current_revision()
    assert (current.number, current.image, current.version) == (3, IMAGES["v1"], "3.2.0")
    # Re-applying the same manifests with kubectl is a no-op for the rollout: no new revision.
    k8s.kubectl("apply", "--server-side", "--force-conflicts", "-f", str(service_file), namespace=namespace)
    assert testing.kubectl_revisions(k8s, namespace) == [2, 3]


@pytest.mark.skipif(bool(testing.REAL_URL), reason="inspects the emulator's request log")
def test_kubectl_needs_no_endpoint_the_emulator_lacks(k8s, setup):
    namespace, (ns_file, deployment_file, service_file), _ = setup
    k8s.kubectl("apply", "--server-side", "-f", str(ns_file))
    k8s.kubectl("apply", "--server-side", "-f", str(deployment_file), "-f", str(service_file), namespace=namespace)
    rollout_status(k8s, namespace)
    k8s.kubectl("rollout", "history", "deployment/architect-api", namespace=namespace)
    k8s.kubectl("get", "pods,replicasets,events", "-o", "json", namespace=namespace)
    k8s.kubectl("logs", "-l", "app=architect-api", "--tail=5", namespace=namespace)
    assert k8s.emulator.unhandled == []
