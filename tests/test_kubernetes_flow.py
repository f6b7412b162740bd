"""The Kubernetes target through the WHOLE staging-deploy flow, against the API emulator.

Each test runs the real flow in this process (``deploy`` from tests/support/deploys.py: real build and push
to the sandbox registry, real backup of and schema check on the sandbox database) with an
environment block that is the sandbox's in everything but two fields: ``target`` is a
``KubernetesTarget`` pointed at the emulator (namespace architect-staging, 25 s rollout
deadline) and ``api_url`` is a loopback port where nothing listens.

Why api_url points at nothing: the emulator does not run the app, so its pods serve no HTTP, and
``KubernetesTarget.replica_urls()`` is empty, so the health gate would only ask api_url. The
sandbox's api_url is nginx in front of the *Docker* replicas, which may well be healthy: the
gate would then pass on the wrong app, and smoke, load and metrics after it too. With a dead
api_url the health gate fails at once with "ConnectError", which starts the real rollback: the
Kubernetes rollout is undone. So a good release can NOT complete here, by construction; every
good-release run below ends "health failed", and what is checked is what happened on the cluster.

Shown through the whole flow (flow -> tasks -> KubernetesTarget -> HTTP -> emulator):
- a good release becomes revision 1; a second build of it revision 2, which the failed health
  gate undoes to revision 1's template (revision 3, as ``kubectl rollout undo`` numbers it);
  the first run has nothing to go back to and says so;
- the migrate stage runs ``migrate --direction up`` as a Job from the new, digest-pinned image;
- a crash-looping release (reason CrashLoopBackOff, before the deadline) and a stuck one (the
  rollout deadline) fail the deploy stage and are undone to the previous revision, after which
  ``kubectl rollout history`` and ``target.history()`` agree;
- a failing migration Job stops the run before deploy ("migrate failed: ..."), the Deployment
  unchanged, the database's tables unchanged;
- the dry run changes no object (not even the Secret, with a changed environment) and leaves
  its dry-run-diff artifact; pending migrations are listed by the new image on the build engine.

Only at the target level (tests/test_kubernetes_target.py): image-pull failures, rollback to a
named revision, the secret never logged, the plan's diff lines, kubectl's rollout status, the
progress-deadline condition itself (the app's manifest says 120 s, more than this module's 25 s
rollout deadline, so here the target's own deadline catches the stuck release).

Not shown anywhere against the emulator: that the pods serve (health, smoke, load, metrics
against Kubernetes pods), real probes, RBAC, admission, scheduling; a migration Job never
touches the database (so the schema check passes only because each test deploys a release
whose schema version is the database's current one, read at the start of the test).

While a test runs it holds the ``sandbox`` environment's deploy lock: this environment copy
has its own lock but shares the sandbox database, and a sandbox deploy changing the schema
in between would make the schema and checksum assertions (and the rollback's restore
decision) about someone else's run.
"""

from __future__ import annotations

import socket
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import pytest
from pydantic import AnyHttpUrl

from blocks.kubernetes.target import KubernetesTarget
from tasks.database.manifest import table_checksums
from tests.k8s_emulator import Emulator, running_emulator, testing
from tests.support.app_state import schema_version
from tests.support.deploys import deploy

pytestmark = pytest.mark.sandbox

NAMESPACE = "architect-staging"
ROLLOUT_TIMEOUT_S = 25.0
# Tags whose image expects each schema version (sandbox/releases/RELEASES.md).
GOOD_BY_SCHEMA = {2: "v3.1.0", 3: "v3.2.0"}


@dataclass
class K8sFlowEnv:
    name: str
    emulator: Emulator
    target: KubernetesTarget
    cluster: testing.Cluster
    database: object

    def revisions(self) -> list[tuple[int, str]]:
        return [(r.number, r.image) for r in self.target.history()]

    def deployment(self) -> dict | None:
        return self.emulator.dump().get(f"Deployment/{NAMESPACE}/architect-api")

    def kubectl_revisions(self) -> list[int]:
        return testing.kubectl_revisions(self.cluster, NAMESPACE)


def _dead_url() -> str:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"https://127.0.0.1:{s.getsockname()[1]}"


@contextmanager
def saved_copy(base, **changes) -> Iterator[str]:
    """``base`` with ``changes`` saved as a fresh environment block; its name; deleted afterwards."""
    from prefect.client.orchestration import get_client

    env = base.model_copy(update=changes)
    env._block_document_id = None
    env._block_document_name = None
    name = f"test-k8s-{uuid.uuid4().hex[:8]}"
    env.save(name, overwrite=True)
    try:
        yield name
    finally:
        with get_client(sync_client=True) as client:
            doc = client.read_block_document_by_name(name, "architect-staging-environment")
            client.delete_block_document(doc.id)


@contextmanager
def emulated_cluster(sandbox_env, tmp) -> Iterator[K8sFlowEnv]:
    """A fresh emulator, and a saved copy of the sandbox environment whose target is it (deleted after)."""
    with running_emulator() as (url, emulator):
        target = KubernetesTarget(host=url, namespace=NAMESPACE, poll_interval_s=0.5)
        cluster = testing.Cluster(url, emulator, testing.write_kubeconfig(url, tmp / "kubeconfig"), tmp / "kube-cache")
        with saved_copy(
            sandbox_env,
            target=target,
            api_url=AnyHttpUrl(_dead_url()),
            api_http_url=None,
            rollout_timeout_s=ROLLOUT_TIMEOUT_S,
            health_timeout_s=2.0,
        ) as name:
            yield K8sFlowEnv(name, emulator, target, cluster, sandbox_env.database)


@pytest.fixture(scope="module")
def k8s_env(sandbox_env, tmp_path_factory) -> Iterator[K8sFlowEnv]:
    """One emulated cluster for the module's tests; each makes sure of a live revision itself."""
    with emulated_cluster(sandbox_env, tmp_path_factory.mktemp("k8s-flow")) as env:
        yield env


@pytest.fixture
def empty_k8s_env(sandbox_env, tmp_path) -> Iterator[K8sFlowEnv]:
    """An emulated cluster of the test's own, its namespace empty."""
    with emulated_cluster(sandbox_env, tmp_path) as env:
        yield env


def good_release(database) -> tuple[str, str]:
    """(tag, version) of the good release whose schema version is the database's now."""
    current = schema_version(database)
    assert current in GOOD_BY_SCHEMA, f"the sandbox database is at schema {current}; no good release expects it"
    tag = GOOD_BY_SCHEMA[current]
    return tag, tag[1:]


def run(env: K8sFlowEnv, git_ref: str, version: str, **parameters):
    parameters.setdefault("environment", env.name)
    # The flow's database lock keeps sandbox deploys (same database) out meanwhile.
    return deploy(git_ref, version, **parameters)


def ensure_live_revision(env: K8sFlowEnv) -> None:
    """A good revision running: made here unless an earlier test of the module left one."""
    if env.target.current_revision() is None:
        state = run(env, *good_release(env.database))
        assert state.is_failed() and "no earlier revision" in state.message, state.message
    assert env.target.current_revision() is not None


def pinned(version: str) -> str:
    """The start of a digest-pinned image reference of ``version`` in the sandbox registry."""
    return f"127.0.0.1:55000/architect-api:{version}@sha256:"


def test_good_release_rolls_out_as_revision_1_then_2_and_the_failed_health_gate_undoes_it(empty_k8s_env):
    k8s_env = empty_k8s_env
    assert k8s_env.revisions() == [], "this test starts from an empty namespace"
    tag, version = good_release(k8s_env.database)

    first = run(k8s_env, tag, version)
    assert first.is_failed()
    assert first.message.startswith("health failed:") and "ConnectError" in first.message, first.message
    assert "no earlier revision to roll back to" in first.message
    [(number, image_a)] = k8s_env.revisions()
    assert number == 1 and image_a.startswith(pinned(version))
    assert k8s_env.deployment()["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "1"
    # The migration ran as a Job from exactly the image that was then rolled out.
    migrate = [j for j in k8s_env.emulator.job_runs() if j["args"] == ["migrate", "--direction", "up"]]
    assert [(j["image"], j["outcome"]) for j in migrate] == [(image_a, "Complete")]

    second = run(k8s_env, tag, version)
    assert second.is_failed()
    assert second.message.startswith("health failed:"), second.message
    assert f"rolled back to revision 1 ({version})" in second.message
    (rev2, image_b), (rev3, image_c) = k8s_env.revisions()
    # A new build is a new digest, so revision 2; the undo brings revision 1's template back as 3.
    assert (rev2, rev3) == (2, 3)
    assert image_b.startswith(pinned(version)) and image_b != image_a
    assert image_c == image_a == k8s_env.target.current_revision().image
    assert k8s_env.kubectl_revisions() == [2, 3]
    assert testing.kubectl_revision_image(k8s_env.cluster, NAMESPACE, 3) == image_a


def test_crash_looping_release_is_detected_and_undone(k8s_env):
    ensure_live_revision(k8s_env)
    before = k8s_env.target.current_revision()
    current = schema_version(k8s_env.database)
    # v3.2.1-crash expects schema 3; at schema 2 a good tag stamped "-crash" crash-loops the same
    # way in the emulator (it never runs either binary; the image name decides).
    tag, version = ("v3.2.1-crash", "3.2.1-crash") if current == 3 else ("v3.1.0", "3.1.0-crash")

    state = run(k8s_env, tag, version)
    assert state.is_failed()
    assert state.message.startswith("deploy failed:"), state.message
    assert "CrashLoopBackOff" in state.message and "timed out" not in state.message, state.message
    assert f"rolled back to revision {before.number} ({before.version})" in state.message

    history = k8s_env.target.history()
    assert history[-1].image == before.image == k8s_env.target.current_revision().image
    assert any(r.image.startswith(pinned(version)) for r in history), "the crash revision stays in the history"
    assert [r.number for r in history] == k8s_env.kubectl_revisions()
    assert testing.kubectl_revision_image(k8s_env.cluster, NAMESPACE, history[-1].number) == before.image


def test_stuck_release_is_caught_by_the_rollout_deadline_and_undone(k8s_env):
    ensure_live_revision(k8s_env)
    before = k8s_env.target.current_revision()
    tag, version = good_release(k8s_env.database)
    version += "-stuck"

    state = run(k8s_env, tag, version)
    assert state.is_failed()
    assert state.message.startswith("deploy failed:"), state.message
    assert f"timed out after {ROLLOUT_TIMEOUT_S:.0f}s" in state.message, state.message
    assert f"rolled back to revision {before.number} ({before.version})" in state.message

    history = k8s_env.target.history()
    assert history[-1].image == before.image == k8s_env.target.current_revision().image
    assert any(r.image.startswith(pinned(version)) for r in history)
    assert [r.number for r in history] == k8s_env.kubectl_revisions()
    assert k8s_env.deployment()["status"].get("availableReplicas") == 3


def test_failing_migration_job_stops_the_run_before_deploy(k8s_env):
    ensure_live_revision(k8s_env)
    deployment = k8s_env.deployment()
    history = k8s_env.revisions()
    checksums, schema = table_checksums(k8s_env.database), schema_version(k8s_env.database)
    jobs_before = len(k8s_env.emulator.job_runs())
    state = deploy("v3.2.1-badmigration", "3.2.1-badmigration", environment=k8s_env.name)
    checksums_after, schema_after = table_checksums(k8s_env.database), schema_version(k8s_env.database)

    assert state.is_failed()
    assert state.message.startswith("migrate failed:"), state.message
    assert "migration 005 failed" in state.message
    assert "the app was not changed" in state.message and "database kept" in state.message, state.message
    jobs = k8s_env.emulator.job_runs()[jobs_before:]
    up = [j for j in jobs if j["args"] == ["migrate", "--direction", "up"]]
    assert len(up) == 1 and up[0]["image"].startswith(pinned("3.2.1-badmigration"))
    assert up[0]["outcome"] == "Failed"

    after = k8s_env.deployment()
    assert after["spec"] == deployment["spec"]
    assert after["metadata"]["generation"] == deployment["metadata"]["generation"]
    assert k8s_env.revisions() == history
    # The Job failed in the emulator without touching the database, and nothing restored it.
    assert (schema_after, checksums_after) == (schema, checksums)


def test_dry_run_changes_nothing_and_leaves_the_diff(k8s_env):
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    ensure_live_revision(k8s_env)
    tag, version = good_release(k8s_env.database)
    live = k8s_env.target.current_revision()
    before, jobs_before = k8s_env.emulator.dump(), len(k8s_env.emulator.job_runs())

    state = run(k8s_env, tag, version, dry_run=True)
    assert state.is_completed(), state.message
    assert "nothing was changed" in state.message

    # Pending migrations are listed by the new image on the build engine, not by a Job on the
    # cluster: the dry run leaves every object of the emulator exactly as it was.
    assert k8s_env.emulator.dump() == before
    assert len(k8s_env.emulator.job_runs()) == jobs_before
    assert k8s_env.target.current_revision() == live

    with get_client(sync_client=True) as client:
        artifacts = client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[state.state_details.flow_run_id]))
        )
    diff = next((a for a in artifacts if a.key == "dry-run-diff"), None)
    assert diff is not None, [a.key for a in artifacts]
    assert "Deployment architect-api: update" in diff.data and pinned(version) in diff.data


def test_dry_run_with_a_changed_environment_leaves_the_live_secret_alone(k8s_env):
    from blocks.environment import StagingEnvironment

    ensure_live_revision(k8s_env)
    tag, version = good_release(k8s_env.database)
    secret = f"Secret/{NAMESPACE}/architect-secrets"
    base = StagingEnvironment.load(k8s_env.name)
    with saved_copy(base, app_settings={**base.app_settings, "DRY_RUN_PROBE": uuid.uuid4().hex}) as changed:
        before = k8s_env.emulator.dump()[secret]["data"]
        state = run(k8s_env, tag, version, environment=changed, dry_run=True)
        assert state.is_completed(), state.message
        assert k8s_env.emulator.dump()[secret]["data"] == before
