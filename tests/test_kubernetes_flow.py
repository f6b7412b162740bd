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
- a good release becomes revision 1; it has nothing to go back to, so the failed health gate
  removes it (the Deployment scaled to zero, its Service deleted); over a live revision 2 a
  second build becomes revision 3, which the failed health gate undoes to revision 2's template
  (revision 4, as ``kubectl rollout undo`` numbers it);
- the migrate stage runs ``migrate --direction up`` as a Job from the new, digest-pinned image;
- a crash-looping release (reason CrashLoopBackOff, before the deadline) and a stuck one (the
  rollout deadline) fail the deploy stage and are undone to the previous revision, after which
  ``kubectl rollout history`` and ``target.history()`` agree;
- a failing migration Job stops the run before deploy ("migrate failed: ..."), the Deployment
  unchanged, the database's tables unchanged;
- the dry run changes no object (not even the Secret, with a changed environment) and leaves
  its dry-run-diff artifact; pending migrations are listed by the new image on the build engine.

- the worker (and its flow run) killed mid-deploy of a release that adds a ConfigMap and changes
  the Ingress: the next run finds the journal and rolls every object back from the undo record
  the dead deploy left in the cluster (the ConfigMap deleted, the Ingress as before, the pod
  template undone). That run then fails its preflight, as the dead api_url makes the rollback's
  health check fail ("NOT healthy"): what is checked is the cluster.

Only at the target level (tests/test_kubernetes_target.py, tests/test_kubernetes_undo.py):
image-pull failures, rollback to a named revision, the secret never logged, the plan's diff
lines, kubectl's rollout status, the progress-deadline condition itself (the app's manifest says
120 s, more than this module's 25 s rollout deadline, so here the target's own deadline catches
the stuck release); the undo of each object, the manifest Secret refused, remove_release,
replica_states.

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
from tasks.core.models import RolloutResult
from tasks.database.manifest import table_checksums
from tests.k8s_emulator import Emulator, running_emulator, testing
from tests.support.app_state import schema_version
from tests.support.blocks import saved_environment
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
def emulated_cluster(sandbox_env, tmp, **changes) -> Iterator[K8sFlowEnv]:
    """A fresh emulator, and a saved copy of the sandbox environment whose target is it (deleted after)."""
    with running_emulator() as (url, emulator):
        target = KubernetesTarget(host=url, namespace=NAMESPACE, poll_interval_s=0.5)
        cluster = testing.Cluster(url, emulator, testing.write_kubeconfig(url, tmp / "kubeconfig"), tmp / "kube-cache")
        with saved_environment(
            sandbox_env,
            target=target,
            api_url=AnyHttpUrl(_dead_url()),
            api_http_url=None,
            rollout_timeout_s=ROLLOUT_TIMEOUT_S,
            health_timeout_s=2.0,
            **changes,
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


def make_live_revision(env: K8sFlowEnv) -> RolloutResult:
    """A revision serving, applied straight from a checkout of the app's manifests: through the
    flow a first release fails its health gate (the dead api_url) and is removed."""
    checkout = testing.app_repo(env.cluster.kubeconfig.parent / f"live-{uuid.uuid4().hex[:6]}")
    _, version = good_release(env.database)
    live = env.target.with_checkout(checkout).deploy(testing.IMAGES["v1"], version, {"ENV": "staging"}, 30)
    assert live.complete, live.reason
    return live


def ensure_live_revision(env: K8sFlowEnv) -> None:
    """A good revision running: made here unless an earlier test of the module left one."""
    if env.target.current_revision() is None:
        make_live_revision(env)
    assert env.target.current_revision() is not None


def pinned(version: str) -> str:
    """The start of a digest-pinned image reference of ``version`` in the sandbox registry."""
    return f"127.0.0.1:55000/architect-api:{version}@sha256:"


def test_a_first_release_is_removed_and_a_later_one_undone_to_the_live_revision(empty_k8s_env):
    k8s_env = empty_k8s_env
    assert k8s_env.revisions() == [], "this test starts from an empty namespace"
    tag, version = good_release(k8s_env.database)

    first = run(k8s_env, tag, version)
    assert first.is_failed()
    assert first.message.startswith("health failed:") and "ConnectError" in first.message, first.message
    assert "no earlier release: removed the release (3 replicas), nothing left serving" in first.message
    [(number, image_a)] = k8s_env.revisions()
    assert number == 1 and image_a.startswith(pinned(version))
    assert k8s_env.deployment()["spec"]["replicas"] == 0 and k8s_env.target.current_revision() is None
    assert k8s_env.target.replica_states() == []
    assert f"Service/{NAMESPACE}/architect-api" not in k8s_env.emulator.dump(), "the release's Service was left"
    # The migration ran as a Job from exactly the image that was then rolled out.
    migrate = [j for j in k8s_env.emulator.job_runs() if j["args"] == ["migrate", "--direction", "up"]]
    assert [(j["image"], j["outcome"]) for j in migrate] == [(image_a, "Complete")]

    live = make_live_revision(k8s_env)
    assert live.revision.number == 2
    second = run(k8s_env, tag, version)
    assert second.is_failed()
    assert second.message.startswith("health failed:"), second.message
    assert f"rolled back to revision 2 ({version})" in second.message
    (rev1, _), (rev3, image_b), (rev4, image_c) = k8s_env.revisions()
    # A new build is a new digest, so revision 3; the undo brings revision 2's template back as 4.
    assert (rev1, rev3, rev4) == (1, 3, 4)
    assert image_b.startswith(pinned(version)) and image_b != image_a
    assert image_c == testing.IMAGES["v1"] == k8s_env.target.current_revision().image
    assert k8s_env.deployment()["spec"]["replicas"] == 3
    assert k8s_env.kubectl_revisions() == [1, 3, 4]
    assert testing.kubectl_revision_image(k8s_env.cluster, NAMESPACE, 4) == testing.IMAGES["v1"]


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
    allowed = ["005_error_fingerprint"]  # contract: refused at build unless the run names it
    state = deploy("v3.2.1-badmigration", "3.2.1-badmigration", environment=k8s_env.name, allow_migrations=allowed)
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
    with saved_environment(base, app_settings={**base.app_settings, "DRY_RUN_PROBE": uuid.uuid4().hex}) as changed:
        before = k8s_env.emulator.dump()[secret]["data"]
        state = run(k8s_env, tag, version, environment=changed, dry_run=True)
        assert state.is_completed(), state.message
        assert k8s_env.emulator.dump()[secret]["data"] == before


def _git(repo, *args: str) -> str:
    import subprocess

    done = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=120, check=True)
    return done.stdout


def app_repo_with_k8s_release(source: str, base_tag: str, dest) -> str:
    """A clone of the sandbox's app repo with branch ``k8s-next``: ``base_tag`` plus a ConfigMap and
    a changed Ingress (the base gets an Ingress too, in ``k8s-base``). Returns the clone's path."""
    import yaml

    from tests.support.k8s_releases import CONFIGMAP_V2, INGRESS_V1, ingress_v2

    _git(dest.parent, "clone", "--quiet", source, str(dest))
    _git(dest, "checkout", "--quiet", "-b", "k8s-base", base_tag)
    staging = dest / "k8s" / "staging"
    for branch, files in (
        ("k8s-base", {"ingress.yaml": INGRESS_V1}),
        ("k8s-next", {"ingress.yaml": ingress_v2(), "configmap.yaml": CONFIGMAP_V2}),
    ):
        if branch == "k8s-next":
            _git(dest, "checkout", "--quiet", "-b", branch)
        for name, doc in files.items():
            (staging / name).write_text(yaml.safe_dump(doc, sort_keys=False))
        _git(dest, "add", "k8s/staging")
        _git(dest, "-c", "user.name=test", "-c", "user.email=test@example.com", "commit", "--quiet", "-m", branch)
    return str(dest)


def test_worker_killed_mid_deploy_on_kubernetes_is_rolled_back_whole_by_the_next_run(
    sandbox_env, tmp_path, registered_deployments, broken_service
):
    """A release adding a ConfigMap and changing the Ingress is deployed through the worker; the
    worker and its run are killed once the Deployment has the new template. The next run rolls
    back every object the dead deploy applied, from the undo record it left in the cluster."""
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment

    from blocks.kubernetes.manifests import VERSION_ANNOTATION, undo_record_name
    from tests.support.cancels import kill_worker_and_its_run
    from tests.support.faults import Trigger

    tag, version = good_release(sandbox_env.database)
    repo = app_repo_with_k8s_release(sandbox_env.app_repo, tag, tmp_path / "app-repo")
    with emulated_cluster(sandbox_env, tmp_path, app_repo=repo) as env:
        # The release before: k8s-base, applied straight from a checkout (a deploy through the flow
        # would fail its health gate and be undone, see the module docstring).
        base = tmp_path / "base"
        _git(tmp_path, "clone", "--quiet", "--branch", "k8s-base", repo, str(base))
        before = env.target.with_checkout(base).deploy(testing.IMAGES["v1"], version, {"ENV": "staging"}, 30)
        assert before.complete, before.reason
        cluster_before = env.emulator.dump()
        ingress_key = f"Ingress/{NAMESPACE}/architect-api"
        configmap_key = f"ConfigMap/{NAMESPACE}/architect-features"

        def template_version() -> str:
            deployment = env.deployment() or {}
            meta = deployment.get("spec", {}).get("template", {}).get("metadata", {})
            return (meta.get("annotations") or {}).get(VERSION_ANNOTATION, "")

        new_version = f"{version}-stuck"  # never ready in the emulator: the rollout waits, the kill lands in it
        dead = run_deployment(
            "staging-deploy/manual",
            timeout=0,
            parameters={"git_ref": "k8s-next", "version": new_version, "skip_signoff": True, "environment": env.name},
        )
        dead_id = str(dead.id)
        polls = iter(range(10**9))

        def dead_run_applied_its_deployment() -> bool:
            if template_version() == new_version:
                return True
            if next(polls) % 20 == 0:  # every 2 s: a run that ended first will never get there
                with get_client(sync_client=True) as client:
                    ended = client.read_flow_run(dead_id).state
                assert not ended.is_final(), f"the run to kill ended first: {ended.type.value}: {ended.message}"
            return False

        broken_service("prefect-worker")
        with Trigger(dead_run_applied_its_deployment, lambda: kill_worker_and_its_run(dead_id), poll_s=0.1) as fault:
            fault.join(600)
        broken_service.restore_now()
        fault.assert_fired("the worker's run never applied the new Deployment")
        half_done = env.emulator.dump()
        assert configmap_key in half_done, "the dead deploy had applied the ConfigMap"
        assert half_done[ingress_key]["spec"] != cluster_before[ingress_key]["spec"]
        assert f"Secret/{NAMESPACE}/{undo_record_name('architect-api')}" in half_done, "no undo record was left"

        state = run(env, "k8s-base", version)
        print(f"final state: {state.type.value}: {state.message}")
        assert f"half-finished deploy of {new_version}" in state.message, state.message
        with get_client(sync_client=True) as client:
            closed = client.read_flow_run(dead_id).state
        assert closed.is_crashed() and "found and rolled back by run" in closed.message, (closed.type, closed.message)

        after = env.emulator.dump()
        assert configmap_key not in after, "the ConfigMap the dead release added is still there"
        assert after[ingress_key]["spec"] == cluster_before[ingress_key]["spec"]
        assert after[ingress_key]["metadata"].get("annotations") == cluster_before[ingress_key]["metadata"].get(
            "annotations"
        )
        assert template_version() == version and env.target.current_revision().image == testing.IMAGES["v1"]
        assert f"Secret/{NAMESPACE}/{undo_record_name('architect-api')}" not in after, "the record was not used up"
