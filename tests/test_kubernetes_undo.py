"""KubernetesTarget's undo of a whole release, its removal, its Secret and its replicas, against the emulator.

A release is more than its pod template: the manifests' ConfigMaps, Ingress and Services change
with it. These tests deploy a release that adds a ConfigMap and changes the Ingress (and the
Deployment's replica count) and show the undo puts every object back, from the undo record the
deploy left in the cluster (read by a target with no checkout, as the rollback flow's is);
that a manifest Secret named like the pipeline's is refused before anything changes; that
``remove_release`` scales a first release to zero; and that ``replica_states`` sees restarts.

Against the emulator nothing reads a ConfigMap or an Ingress (tests/k8s_emulator/__init__.py):
what is shown is what is stored, not that traffic follows it.
"""

from __future__ import annotations

import base64
import shutil
import time
from pathlib import Path

import pytest
import yaml

from blocks.kubernetes.manifests import read_undo_record, undo_record_name
from blocks.kubernetes.target import KubernetesTarget
from tasks.core.errors import PermanentError
from tests.k8s_emulator import testing
from tests.k8s_emulator.testing import IMAGES, SLOW
from tests.support.k8s_releases import CONFIGMAP_V2, INGRESS_V1, ingress_v2

pytestmark = pytest.mark.unit

ENV = {"JWT_SECRET": "pipeline-value-7d1e", "ENV": "staging"}
TIMEOUT = 30 * SLOW


def write_manifest(repo: Path, name: str, doc: dict) -> None:
    (repo / "k8s" / "staging" / name).write_text(yaml.safe_dump(doc, sort_keys=False))


def set_replicas(repo: Path, replicas: int) -> None:
    path = repo / "k8s" / "staging" / "deployment.yaml"
    docs = [d for d in yaml.safe_load_all(path.read_text()) if d]
    for doc in docs:
        if doc["kind"] == "Deployment":
            doc["spec"]["replicas"] = replicas
    path.write_text(yaml.safe_dump_all(docs, sort_keys=False))


@pytest.fixture
def k8s(tmp_path):
    with testing.cluster(tmp_path) as c:
        yield c


@pytest.fixture
def releases(tmp_path) -> tuple[Path, Path]:
    """Two checkouts: release 1 (Deployment, Service, Ingress) and release 2 (ConfigMap added,
    Ingress changed, four replicas instead of three)."""
    one = testing.app_repo(tmp_path / "one")
    write_manifest(one, "ingress.yaml", INGRESS_V1)
    two = tmp_path / "two" / "app"
    shutil.copytree(one, two)
    write_manifest(two, "ingress.yaml", ingress_v2())
    write_manifest(two, "configmap.yaml", CONFIGMAP_V2)
    set_replicas(two, 4)
    return one, two


@pytest.fixture
def target(k8s, tmp_path) -> KubernetesTarget:
    t = KubernetesTarget(host=k8s.url, namespace=testing.unique_namespace(), poll_interval_s=0.2)
    yield t
    if testing.REAL_URL:
        k8s.kubectl("delete", "namespace", t.namespace, "--wait=false", check=False)


def stored(k8s, target: KubernetesTarget, kind: str, name: str) -> dict | None:
    out = k8s.kubectl("get", kind, name, "-o", "yaml", "--ignore-not-found", namespace=target.namespace).stdout
    return yaml.safe_load(out) if out.strip() else None


def comparable(obj: dict) -> dict:
    return {"metadata": {"annotations": obj["metadata"].get("annotations")}, "spec": obj["spec"]}


def test_undo_deletes_the_new_configmap_and_puts_the_ingress_back(target, k8s, releases):
    one, two = releases
    first = target.with_checkout(one).deploy(IMAGES["v1"], "3.2.0", ENV, TIMEOUT)
    assert first.complete, first.reason
    ingress_before = stored(k8s, target, "ingress", "architect-api")
    assert ingress_before["spec"]["rules"][0]["host"] == "staging.example.com"

    second = target.with_checkout(two).deploy(IMAGES["v2"], "3.2.1", ENV, TIMEOUT)
    assert second.complete, second.reason
    assert stored(k8s, target, "configmap", "architect-features")["data"] == {"FEATURE_TAGS": "on"}
    changed = stored(k8s, target, "ingress", "architect-api")
    assert changed["spec"]["rules"][0]["host"] == "v2.staging.example.com"
    assert stored(k8s, target, "deployment", "architect-api")["spec"]["replicas"] == 4

    # The rollback flow's target has no checkout: all it knows is in the cluster.
    undone = KubernetesTarget(host=k8s.url, namespace=target.namespace, poll_interval_s=0.2).rollback(
        first.revision.number, ENV, TIMEOUT
    )
    assert undone.complete, undone.reason
    assert undone.revision.image == IMAGES["v1"]
    assert "deleted ConfigMap architect-features" in undone.reason
    assert "restored Ingress architect-api" in undone.reason
    assert stored(k8s, target, "configmap", "architect-features") is None
    ingress_after = stored(k8s, target, "ingress", "architect-api")
    assert comparable(ingress_after) == comparable(ingress_before)
    assert len(ingress_after["spec"]["rules"][0]["http"]["paths"]) == 1, "the path the release added is gone"
    deployment = stored(k8s, target, "deployment", "architect-api")
    assert deployment["spec"]["replicas"] == 3, "the replica count the release set is undone too"
    assert stored(k8s, target, "secret", undo_record_name("architect-api")) is None, "the record is used up"

    # Asked again (a retried rollback), it only undoes the pod template: the objects stay as restored.
    again = target.rollback(None, ENV, TIMEOUT)
    assert again.complete and stored(k8s, target, "configmap", "architect-features") is None


def test_a_first_release_is_recorded_as_new(target, k8s, releases):
    """The record says what was there before the release: for a first release, nothing."""
    _, two = releases
    assert target.with_checkout(two).deploy(IMAGES["v1"], "3.2.0", ENV, TIMEOUT).complete
    record = stored(k8s, target, "secret", undo_record_name("architect-api"))
    entries = read_undo_record(record)["objects"]
    assert {(e["kind"], e["name"]) for e in entries} == {
        ("Deployment", "architect-api"),
        ("Service", "architect-api"),
        ("Ingress", "architect-api"),
        ("ConfigMap", "architect-features"),
    }
    assert all(e["before"] is None for e in entries), entries


def test_a_manifest_secret_named_like_the_pipelines_is_refused_before_anything_changes(target, k8s, releases):
    one, two = releases
    assert target.with_checkout(one).deploy(IMAGES["v1"], "3.2.0", ENV, TIMEOUT).complete
    snapshot = k8s.snapshot(target.namespace)
    override = {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": "architect-secrets"},
        "stringData": {"JWT_SECRET": "from-the-repo"},
    }
    write_manifest(two, "secret.yaml", override)

    with pytest.raises(PermanentError, match="Secret architect-secrets, which the pipeline writes itself"):
        target.with_checkout(two).deploy(IMAGES["v2"], "3.2.1", ENV, TIMEOUT)
    with pytest.raises(PermanentError, match="architect-secrets"):
        target.with_checkout(two).plan(IMAGES["v2"], "3.2.1", ENV)

    assert k8s.snapshot(target.namespace) == snapshot, "nothing was applied"
    secret = stored(k8s, target, "secret", "architect-secrets")
    assert base64.b64decode(secret["data"]["JWT_SECRET"]).decode() == ENV["JWT_SECRET"]
    assert stored(k8s, target, "configmap", "architect-features") is None


def test_a_refused_release_rolled_back_leaves_the_live_release_whole(target, k8s, releases):
    """The refused deploy wrote no record; the record the live release's deploy left (about the
    release before it) must not be used by this rollback, which goes back to the live revision."""
    one, two = releases
    assert target.with_checkout(one).deploy(IMAGES["v1"], "3.2.0", ENV, TIMEOUT).complete
    live = target.with_checkout(two).deploy(IMAGES["v2"], "3.2.1", ENV, TIMEOUT)
    assert live.complete
    three = two.parent.parent / "three" / "app"
    shutil.copytree(two, three)
    write_manifest(
        three, "secret.yaml", {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "architect-secrets"}}
    )
    with pytest.raises(PermanentError):
        target.with_checkout(three).deploy(IMAGES["v1"], "3.2.2", ENV, TIMEOUT)

    undone = target.rollback(live.revision.number, ENV, TIMEOUT)  # what the flow's rollback asks
    assert undone.complete and undone.revision.image == IMAGES["v2"]
    assert stored(k8s, target, "configmap", "architect-features") is not None
    assert stored(k8s, target, "ingress", "architect-api")["spec"]["rules"][0]["host"] == "v2.staging.example.com"


def test_a_manifest_secret_of_another_name_is_applied_and_undone(target, k8s, releases):
    """The record keeps Secrets' previous values too (it is a Secret itself)."""
    one, two = releases
    own = {"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "architect-tls"}, "stringData": {"k": "one"}}
    write_manifest(one, "tls.yaml", own)
    write_manifest(two, "tls.yaml", {**own, "stringData": {"k": "two"}})
    first = target.with_checkout(one).deploy(IMAGES["v1"], "3.2.0", ENV, TIMEOUT)
    assert target.with_checkout(two).deploy(IMAGES["v2"], "3.2.1", ENV, TIMEOUT).complete
    assert base64.b64decode(stored(k8s, target, "secret", "architect-tls")["data"]["k"]).decode() == "two"
    assert target.rollback(first.revision.number, ENV, TIMEOUT).complete
    assert base64.b64decode(stored(k8s, target, "secret", "architect-tls")["data"]["k"]).decode() == "one"


def test_remove_release_scales_a_first_release_to_zero(target, k8s, releases):
    _, two = releases
    first = target.with_checkout(two).deploy(IMAGES["v1"], "3.2.0", ENV, TIMEOUT)
    assert first.complete and len(first.replicas) == 4
    assert target.replica_states()

    done = KubernetesTarget(host=k8s.url, namespace=target.namespace, poll_interval_s=0.2).remove_release(TIMEOUT)
    assert "scaled to 0, no pod left" in done and "deleted ConfigMap architect-features" in done, done
    deployment = stored(k8s, target, "deployment", "architect-api")
    assert deployment["spec"]["replicas"] == 0
    pods = k8s.kubectl("get", "pods", "-l", "app=architect-api", "-o", "name", namespace=target.namespace).stdout
    assert pods.strip() == ""
    assert target.replica_states() == []
    assert stored(k8s, target, "configmap", "architect-features") is None
    assert stored(k8s, target, "ingress", "architect-api") is None
    assert [r.number for r in target.history()] == [1], "the revision history stays"


def test_remove_release_without_a_deployment_says_nothing_was_serving(target):
    assert "nothing was serving" in target.remove_release(5)


def test_replica_states_report_a_crash_loop_and_a_restart(target, k8s, tmp_path):
    repo = testing.app_repo(tmp_path / "crash")
    release = target.with_checkout(repo)
    assert release.deploy(IMAGES["v1"], "3.2.0", ENV, TIMEOUT).complete
    healthy = target.replica_states()
    assert len(healthy) == 3 and all(r.running and r.ready and r.restarts == 0 for r in healthy), healthy

    if k8s.emulator is not None:  # a container that dies after the rollout, and is started again
        victim = healthy[0].name
        assert k8s.emulator.restart_container(target.namespace, victim) == 1
        deadline = time.monotonic() + 5
        while (states := {r.name: r for r in target.replica_states()})[victim].restarts == 0:
            assert time.monotonic() < deadline, "the restart never showed"
            time.sleep(0.1)
        assert states[victim].running and "last exit: Error" in states[victim].detail

    bad = release.deploy(IMAGES["crash"], "3.2.2", ENV, TIMEOUT)
    assert not bad.complete
    deadline = time.monotonic() + 10 * SLOW
    while not (crashing := [r for r in target.replica_states() if r.restarts >= 2]):
        assert time.monotonic() < deadline, target.replica_states()
        time.sleep(0.2)
    state = crashing[0]
    assert not state.running and not state.ready
    assert state.detail.startswith("CrashLoopBackOff"), state.detail
    # Only the current ReplicaSet's pods: the old release's healthy pods (still serving) are not listed.
    assert not {r.name for r in target.replica_states()} & {r.name for r in healthy}
    assert not any(r.ready for r in target.replica_states())
