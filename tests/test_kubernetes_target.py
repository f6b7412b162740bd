"""KubernetesTarget through the real ``kubernetes`` client, against the API emulator.

Set ARCHITECT_K8S_URL (e.g. ``kubectl proxy`` in front of kind) to run the same tests against a
real cluster. Against the emulator these tests show that the target speaks the API correctly and
reads rollout state as kubectl does; they cannot show what the emulator does not model (see
tests/k8s_emulator/__init__.py): real probes, RBAC, admission, scheduling, list merging by schema.
"""

from __future__ import annotations

import base64
import logging

import pytest
from pydantic import ValidationError

from blocks.kubernetes.target import KubernetesTarget
from blocks.target import DeployTarget
from tasks.core.errors import PermanentError, TemporaryError
from tasks.core.models import DeployPlan
from tests.k8s_emulator import testing
from tests.k8s_emulator.testing import IMAGES, SLOW

# The emulator runs in the test process: no sandbox needed.
pytestmark = pytest.mark.unit

SECRET_VALUE = "s3cr3t-Pa55-do-not-leak-8f2c"
ENV = {
    "JWT_SECRET": SECRET_VALUE,
    "DATABASE_URL": f"postgres://architect:{SECRET_VALUE}@127.0.0.1:55432/x",
    "ENV": "staging",
}
TIMEOUT = 30 * SLOW


@pytest.fixture
def k8s(tmp_path):
    with testing.cluster(tmp_path) as c:
        yield c


def make_target(k8s, tmp_path, progress_deadline_s: int | None = None, **overrides) -> KubernetesTarget:
    repo = testing.app_repo(tmp_path, progress_deadline_s)
    fields = dict(host=k8s.url, namespace=testing.unique_namespace(), repo_dir=str(repo), poll_interval_s=0.2)
    fields.update(overrides)
    return KubernetesTarget(**fields)


@pytest.fixture
def target(k8s, tmp_path):
    t = make_target(k8s, tmp_path, progress_deadline_s=int(2 * SLOW))
    yield t
    if testing.REAL_URL:
        k8s.kubectl("delete", "namespace", t.namespace, "--wait=false", check=False)


def test_block_implements_the_interface():
    assert issubclass(KubernetesTarget, DeployTarget)
    assert not KubernetesTarget.__abstractmethods__
    assert KubernetesTarget.get_block_type_slug() == "architect-kubernetes-target"


def test_good_releases_roll_out_as_revisions_1_and_2(target):
    assert target.current_revision() is None and target.history() == []
    first = target.deploy(IMAGES["v1"], "3.2.0", ENV, TIMEOUT)
    assert first.complete, first.reason
    assert (first.revision.number, first.revision.image, first.revision.version) == (1, IMAGES["v1"], "3.2.0")
    assert first.previous is None
    assert len(first.replicas) == 3 and all(r.ready for r in first.replicas)

    second = target.deploy(IMAGES["v2"], "3.2.1", ENV, TIMEOUT)
    assert second.complete, second.reason
    assert second.revision.number == 2 and second.previous.number == 1
    assert [(r.number, r.image) for r in target.history()] == [(1, IMAGES["v1"]), (2, IMAGES["v2"])]
    assert target.current_revision().image == IMAGES["v2"]
    assert set(target.fetch_logs(tail=5)) == {r.name for r in second.replicas}


def test_deploying_the_same_release_again_changes_nothing(target):
    assert target.deploy(IMAGES["v1"], "3.2.0", ENV, TIMEOUT).complete
    again = target.deploy(IMAGES["v1"], "3.2.0", ENV, TIMEOUT)
    assert again.complete and again.revision.number == 1 and len(target.history()) == 1


def test_crash_looping_release_is_detected_and_undone(target, k8s):
    assert target.deploy(IMAGES["v1"], "3.2.0", ENV, TIMEOUT).complete
    bad = target.deploy(IMAGES["crash"], "3.2.2", ENV, TIMEOUT)
    assert not bad.complete
    assert "CrashLoopBackOff" in bad.reason
    assert bad.revision.number == 2 and bad.revision.image == IMAGES["crash"]
    assert bad.duration_s < TIMEOUT
    assert bad.logs, "pod logs and events are gathered on failure"
    text = "\n".join(bad.logs.values())
    assert "BackOff" in text and "logs:" in text

    undone = target.rollback(None, ENV, TIMEOUT)
    assert undone.complete, undone.reason
    # The undo is a new revision (3) with revision 1's template, as `kubectl rollout undo` makes it.
    assert (undone.revision.number, undone.revision.image) == (3, IMAGES["v1"])
    assert undone.previous.number == 2
    ours = [r.number for r in target.history()]
    assert ours == testing.kubectl_revisions(k8s, target.namespace) == [2, 3]
    assert testing.kubectl_revision_image(k8s, target.namespace, 3) == IMAGES["v1"]


def test_stuck_release_hits_the_progress_deadline_and_is_undone(target, k8s):
    assert target.deploy(IMAGES["v1"], "3.2.0", ENV, TIMEOUT).complete
    assert target.deploy(IMAGES["v2"], "3.2.1", ENV, TIMEOUT).complete
    stuck = target.deploy(IMAGES["stuck"], "3.2.2", ENV, TIMEOUT)
    assert not stuck.complete
    assert "progress deadline exceeded" in stuck.reason
    assert stuck.duration_s < TIMEOUT
    assert any(not r.ready for r in stuck.replicas)

    undone = target.rollback(None, ENV, TIMEOUT)
    assert undone.complete, undone.reason
    assert (undone.revision.number, undone.revision.image) == (4, IMAGES["v2"])
    assert [r.number for r in target.history()] == testing.kubectl_revisions(k8s, target.namespace) == [1, 3, 4]


def test_image_pull_failure_is_detected(target):
    assert target.deploy(IMAGES["v1"], "3.2.0", ENV, TIMEOUT).complete
    bad = target.deploy(IMAGES["nopull"], "3.2.2", ENV, TIMEOUT)
    assert not bad.complete and ("ImagePullBackOff" in bad.reason or "ErrImagePull" in bad.reason)


def test_rollback_to_a_named_revision(target):
    for key, version in (("v1", "3.2.0"), ("v2", "3.2.1")):
        assert target.deploy(IMAGES[key], version, ENV, TIMEOUT).complete
    result = target.rollback(1, ENV, TIMEOUT)
    assert result.complete and result.revision.image == IMAGES["v1"] and result.revision.version == "3.2.0"
    with pytest.raises(PermanentError, match="no revision 7"):
        target.rollback(7, ENV, TIMEOUT)


def test_own_deadline_fails_a_slow_rollout(target):
    result = target.deploy(IMAGES["stuck"], "3.2.2", ENV, timeout_s=0.5)
    assert not result.complete and result.reason.startswith("timed out")


def test_migration_job_runs_from_the_given_image_and_is_deleted(target, k8s):
    result = target.run_one_off(IMAGES["v2"], ["migrate", "--direction", "up"], ENV, TIMEOUT)
    assert result.succeeded, result.logs
    assert "migrate --direction up" in result.logs
    assert result.args == ["migrate", "--direction", "up"]
    left = k8s.kubectl("get", "jobs,pods", "-o", "name", namespace=target.namespace).stdout
    assert "job" not in left and "pod/" not in left


def test_failing_migration_reports_exit_and_logs_and_is_deleted(target, k8s):
    result = target.run_one_off(IMAGES["failmigrate"], ["migrate", "--direction", "up"], ENV, TIMEOUT)
    assert not result.succeeded and result.exit_code == 1
    assert "migration 005 failed" in result.logs
    left = k8s.kubectl("get", "jobs,pods", "-o", "name", namespace=target.namespace).stdout
    assert left.strip() == ""


def test_plan_shows_the_change_and_changes_nothing(target, k8s):
    fresh = target.plan(IMAGES["v1"], "3.2.0", ENV)
    assert isinstance(fresh, DeployPlan)
    assert {(o.kind, o.action) for o in fresh.objects} >= {("Namespace", "create"), ("Deployment", "create")}
    assert target.current_revision() is None, "a plan creates nothing"

    assert target.deploy(IMAGES["v1"], "3.2.0", ENV, TIMEOUT).complete
    before = k8s.snapshot(target.namespace)
    plan = target.plan(IMAGES["v2"], "3.2.1", {**ENV, "NEW_KEY": "x"})
    after = k8s.snapshot(target.namespace)
    assert before == after
    by_kind = {o.kind: o for o in plan.objects}
    assert by_kind["Deployment"].action == "update"
    diff_lines = [line.replace(" ", "") for line in by_kind["Deployment"].diff.splitlines()]
    assert f"+image:{IMAGES['v2']}" in diff_lines and f"-image:{IMAGES['v1']}" in diff_lines
    assert by_kind["Service"].action == "unchanged"
    assert by_kind["Secret"].action == "update" and by_kind["Secret"].diff == "+ NEW_KEY"
    assert SECRET_VALUE not in plan.model_dump_json()
    assert target.plan(IMAGES["v1"], "3.2.0", ENV).changes == []


def test_secret_values_never_reach_logs_or_results(target, k8s, caplog):
    caplog.set_level(logging.DEBUG)
    result = target.deploy(IMAGES["v1"], "3.2.0", ENV, TIMEOUT)
    bad = target.deploy(IMAGES["crash"], "3.2.2", ENV, TIMEOUT)
    oneoff = target.run_one_off(IMAGES["failmigrate"], ["migrate"], ENV, TIMEOUT)
    encoded = base64.b64encode(SECRET_VALUE.encode()).decode()
    for text in (caplog.text, result.model_dump_json(), bad.model_dump_json(), oneoff.model_dump_json()):
        assert SECRET_VALUE not in text and encoded[:16] not in text
    assert "secret architect-secrets" in caplog.text, "the calls are logged, by name only"
    # ... and yet the Secret holds them, and the pods read it with envFrom.
    stored = k8s.kubectl(
        "get", "secret", "architect-secrets", "-o", "jsonpath={.data.JWT_SECRET}", namespace=target.namespace
    ).stdout
    assert base64.b64decode(stored).decode() == SECRET_VALUE
    envfrom = k8s.kubectl(
        "get",
        "deployment",
        "architect-api",
        "-o",
        "jsonpath={.spec.template.spec.containers[0].envFrom[0].secretRef.name}",
        namespace=target.namespace,
    ).stdout
    assert envfrom == "architect-secrets"


def test_check_reachable_describes_the_cluster(target):
    assert "namespace" in target.check_reachable()


def test_unreachable_api_is_a_temporary_error(tmp_path):
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t = KubernetesTarget(host=f"http://127.0.0.1:{port}", repo_dir=str(testing.app_repo(tmp_path)))
    with pytest.raises(TemporaryError):
        t.deploy(IMAGES["v1"], "3.2.0", ENV, 5)
    with pytest.raises(TemporaryError):
        t.check_reachable()


def test_manifest_dir_may_not_leave_the_checkout(tmp_path):
    repo = testing.app_repo(tmp_path)
    with pytest.raises(ValidationError, match="manifest_dir"):
        KubernetesTarget(host="http://127.0.0.1:1", repo_dir=str(repo), manifest_dir="../../etc")
    # Defence in depth: a value that skipped validation (model_copy) is still refused at use.
    t = KubernetesTarget(host="http://127.0.0.1:1", repo_dir=str(repo)).model_copy(update={"manifest_dir": "../../etc"})
    with pytest.raises(PermanentError, match="leaves the repo checkout"):
        t.manifests_path()
    assert t.with_checkout(repo).model_copy(update={"manifest_dir": "k8s/staging"}).manifests_path().is_dir()


@pytest.mark.parametrize(
    "fields, message",
    [
        ({"host": "http://192.0.2.10:6443"}, "loopback"),
        ({"host": "https://127.0.0.1:6443", "verify_tls": False}, "cannot be turned off"),
        ({"namespace": "Bad_Namespace"}, "lowercase name"),
        ({"in_cluster": True, "host": "https://127.0.0.1:6443"}, "not both"),
    ],
)
def test_invalid_settings_are_refused(fields, message):
    with pytest.raises(ValidationError, match=message):
        KubernetesTarget(**fields)


def test_kubectl_sees_what_the_target_did(target, k8s):
    """Cross-check: kubectl's view of our rollout (status, revision) matches ours."""
    assert target.deploy(IMAGES["v1"], "3.2.0", ENV, TIMEOUT).complete
    status = k8s.kubectl("rollout", "status", "deployment/architect-api", "--timeout=10s", namespace=target.namespace)
    assert "successfully rolled out" in status.stdout
    history = k8s.kubectl("rollout", "history", "deployment/architect-api", namespace=target.namespace).stdout
    assert "architect-deploy 3.2.0" in history, "the change cause names the release"
