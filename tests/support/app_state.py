"""What the sandbox's app is now: the versions its replicas serve, its containers, its database schema."""

from __future__ import annotations

import docker
import httpx

from sandbox import config

APP_LABEL, VERSION_LABEL, ONE_OFF_LABEL = "architect.app", "architect.version", "architect.one-off"


def api_health(timeout: float = 5.0) -> dict:
    """What the load-balanced API answers on /health now (status code included)."""
    response = httpx.get(f"{config.API_URL}/health", verify=str(config.CA_CERT), timeout=timeout)
    return {"status_code": response.status_code, **response.json()}


def serving_versions(sandbox_env) -> set[str]:
    """The versions every replica reports, straight from each replica."""
    versions = set()
    for url in sandbox_env.target.replica_urls():
        versions.add(httpx.get(f"{url}/health", timeout=5).json().get("version"))
    return versions


def schema_version(database) -> int:
    with database.connect() as conn:
        return conn.execute("SELECT coalesce(max(version), 0) FROM schema_migrations").fetchone()[0]


def app_containers(sandbox_env, *labels: str, all_states: bool = True) -> list:
    """The app's containers on the sandbox's engine (replicas and one-offs), narrowed by ``labels``."""
    client = docker.DockerClient(base_url=sandbox_env.target.docker_host, timeout=30)
    try:
        return client.containers.list(all=all_states, filters={"label": [f"{APP_LABEL}=architect-api", *labels]})
    finally:
        client.close()


def replicas_of(sandbox_env, version: str) -> list:
    """Running containers of ``version``."""
    return app_containers(sandbox_env, f"{VERSION_LABEL}={version}", all_states=False)


def describe(containers: list) -> list[tuple]:
    return [(c.name, c.status, c.labels.get(VERSION_LABEL)) for c in containers]


def good_release_problems(sandbox_env, good: str) -> list[str]:
    """Why ``good`` is not the one release serving, healthy, with nothing else of the app around; [] if it is."""
    from tasks.release.journal import read_journal

    problems = []
    containers = app_containers(sandbox_env)
    if one_offs := [c for c in containers if ONE_OFF_LABEL in c.labels]:
        problems.append(f"one-off containers left: {describe(one_offs)}")
    replicas = [c for c in containers if ONE_OFF_LABEL not in c.labels]
    if others := [c for c in replicas if c.labels.get(VERSION_LABEL) != good or c.status != "running"]:
        problems.append(f"containers other than running replicas of {good}: {describe(others)}")
    if len(replicas) != sandbox_env.target.replicas:
        problems.append(f"{len(replicas)} replicas, not {sandbox_env.target.replicas}")
    for url in sandbox_env.target.replica_urls():
        try:
            response = httpx.get(f"{url}/health", timeout=5)
            answer = (response.status_code, response.json().get("version"))
        except (httpx.HTTPError, ValueError) as exc:
            answer = (None, repr(exc))
        if answer != (200, good):
            problems.append(f"{url}/health answers {answer}")
    try:
        status = api_health()["status_code"]
    except (httpx.HTTPError, ValueError) as exc:
        status = repr(exc)
    if status != 200:
        problems.append(f"the balanced API's /health answers {status}")
    if (journal := read_journal("sandbox")) is not None:  # the next deploy would first roll that back
        problems.append(f"a half-finished deploy is on record: {journal.describe()}")
    return problems


def assert_only_good_replicas(sandbox_env, good: str) -> None:
    """The good release serves, and the only app containers are its replicas (no one-offs,
    no replica of the failed release, nothing stopped left behind)."""
    assert serving_versions(sandbox_env) == {good}
    containers = app_containers(sandbox_env)
    described = describe(containers)
    assert not [c for c in containers if ONE_OFF_LABEL in c.labels], f"one-off containers left: {described}"
    assert {c.labels.get(VERSION_LABEL) for c in containers} == {good}, described
    assert all(c.status == "running" for c in containers), described
    assert len(containers) == sandbox_env.target.replicas, described
