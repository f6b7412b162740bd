"""Property tests: whatever a user types, bad input is refused with a message naming the field."""

from __future__ import annotations

import string

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from blocks.docker.target import DockerTarget
from blocks.environment import PerformanceTargets
from blocks.registry import ImageRegistry
from blocks.validation import MAX_INPUT_LENGTH, check_git_ref, check_semver

pytestmark = pytest.mark.unit

SHELL_METACHARACTERS = ";|&$`<>(){}[]*?!\\\"' \n\t~#"

numbers = st.integers(min_value=0, max_value=10_000).map(str)
identifiers = st.text(string.ascii_letters + string.digits + "-", min_size=1, max_size=8).filter(
    lambda s: not (s.isdigit() and len(s) > 1 and s[0] == "0")
)
semvers = st.builds(
    lambda major, minor, patch, pre: f"{major}.{minor}.{patch}" + (f"-{'.'.join(pre)}" if pre else ""),
    numbers,
    numbers,
    numbers,
    st.lists(identifiers, max_size=3),
)


@given(semvers)
def test_every_semantic_version_is_accepted(version):
    assert check_semver(version) == version


@given(st.text(min_size=1, max_size=40), st.sampled_from(SHELL_METACHARACTERS))
def test_a_version_with_a_shell_metacharacter_is_refused(text, meta):
    with pytest.raises(ValueError, match="not a semantic version"):
        check_semver(text[: len(text) // 2] + meta + text[len(text) // 2 :])


@given(
    st.text(alphabet=string.ascii_letters + string.digits + "._/-", min_size=1, max_size=30),
    st.sampled_from(SHELL_METACHARACTERS),
)
def test_a_ref_with_a_shell_metacharacter_is_refused(text, meta):
    with pytest.raises(ValueError, match="not a plain git branch"):
        check_git_ref(text + meta)


@given(st.text(alphabet=string.ascii_letters + string.digits + "._-", min_size=0, max_size=20))
def test_refs_that_git_or_a_shell_would_misread_are_refused(text):
    for bad in (f"-{text}", f"{text}/../etc", f"..{text}", f"{text}@{{1}}", f"{text}.lock", f"{text}/"):
        with pytest.raises(ValueError):
            check_git_ref(bad)


@given(st.integers(min_value=MAX_INPUT_LENGTH + 1, max_value=100_000))
def test_oversized_input_is_refused_with_its_length(size):
    with pytest.raises(ValueError, match=f"is {size} characters long"):
        check_git_ref("a" * size)
    with pytest.raises(ValueError, match=f"is {size} characters long"):
        check_semver("1" * size)


@given(st.text(min_size=1, max_size=30).filter(lambda s: ":" not in s or not s.rsplit(":", 1)[1].isdigit()))
def test_registry_address_must_be_host_and_port(address):
    with pytest.raises(ValidationError, match="address"):
        ImageRegistry(address=address)


@given(st.floats(min_value=1, max_value=5000), st.floats(min_value=1, max_value=5000))
def test_latency_targets_must_be_ordered(p50, p95):
    if p50 <= p95 <= 1000:
        PerformanceTargets(p50_ms=p50, p95_ms=p95)
    else:
        with pytest.raises(ValidationError, match="p50 <= p95 <= p99 <= max"):
            PerformanceTargets(p50_ms=p50, p95_ms=p95)


@settings(suppress_health_check=[HealthCheck.too_slow])
@given(st.integers(min_value=1, max_value=10), st.integers(min_value=0, max_value=12))
def test_docker_target_needs_a_surge_slot_per_rollout(replicas, slots):
    ports = list(range(20000, 20000 + slots))
    if slots >= replicas + 1:
        assert DockerTarget(replicas=replicas, ports=ports).replicas == replicas
    else:
        with pytest.raises(ValidationError, match="distinct port slots"):
            DockerTarget(replicas=replicas, ports=ports)


@pytest.mark.parametrize("host", ["0.0.0.0", "10.0.1.10", "192.168.1.5", "example.com"])
def test_replicas_listen_on_loopback_only(host):
    with pytest.raises(ValidationError, match="loopback only"):
        DockerTarget(bind_host=host)


# -- the version parameter: empty and absent are the same, a release tag gives its VERSION ----------


def test_an_empty_version_means_derive_it_as_absent_does():
    from flows.staging_deploy import staging_deploy

    checked = staging_deploy.validate_parameters
    base = {"git_ref": "v3.2.0", "environment": "sandbox"}
    assert checked({**base, "version": ""})["version"] is None
    assert checked(base)["version"] is None
    assert checked({**base, "version": "3.2.0"})["version"] == "3.2.0"


@given(version=semvers)
def test_a_tag_that_names_the_version_file_derives_that_version(version):
    from tasks.release.build import SourceCheckout, release_version

    source = SourceCheckout(path="/src", commit="0123456789abcdef" * 2 + "01234567", version_file=version)
    assert release_version(None, source, f"v{version}") == version
    assert release_version("", source, version) == version
    assert release_version("9.9.9", source, f"v{version}") == "9.9.9"
    branch = release_version(None, source, "main")
    assert branch == f"{version}-main.g0123456" and check_semver(branch) == branch


# -- TLS by default (issue 16): the validators behind the blocks' refusals ----------------------

from pydantic import AnyHttpUrl, TypeAdapter  # noqa: E402

from blocks.validation import (  # noqa: E402
    check_docker_host,
    check_docker_tls,
    check_repo_url,
    check_tls_url,
    docker_engine_is_remote_tcp,
)

remote = st.one_of(
    st.ip_addresses(v=4).map(str).filter(lambda h: not h.startswith("127.")),
    st.text(string.ascii_lowercase, min_size=1, max_size=12).map(lambda h: f"{h}.example"),
)


def url(text: str):
    return TypeAdapter(AnyHttpUrl).validate_python(text)


@given(remote)
def test_check_tls_url_refuses_http_off_loopback_and_keeps_https(host):
    with pytest.raises(ValueError, match="https://"):
        check_tls_url(url(f"http://{host}/"))
    assert check_tls_url(url(f"https://{host}/")) is not None


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "[::1]", "127.10.0.1"])
def test_check_tls_url_keeps_http_on_loopback(host):
    assert check_tls_url(url(f"http://{host}:9090/")) is not None


@pytest.mark.parametrize(
    "repo",
    [
        "https://user:token@github.com/org/app.git",
        "https://token@github.com/org/app.git",
        "ssh://git:pw@git.example/app.git",
        "http://git.example/app.git",
        "git://git.example/app.git",
    ],
)
def test_check_repo_url_refuses_credentials_and_clear_text(repo):
    with pytest.raises(ValueError):
        check_repo_url(repo)


@pytest.mark.parametrize(
    "repo",
    ["/srv/app", "git@github.com:org/app.git", "ssh://git@git.example/app.git", "http://127.0.0.1:8080/app.git"],
)
def test_check_repo_url_accepts_paths_ssh_and_loopback(repo):
    assert check_repo_url(repo) == repo


@given(remote, st.integers(1, 65535))
def test_a_remote_tcp_engine_needs_all_three_tls_files(host, port):
    address = check_docker_host(f"tcp://{host}:{port}")
    assert docker_engine_is_remote_tcp(address)
    with pytest.raises(ValueError, match="docker_host"):
        check_docker_tls(address, None, None, None)
    with pytest.raises(ValueError, match="tls_client_key"):
        check_docker_tls(address, "/ca.pem", "/cert.pem", None)
    check_docker_tls(address, "/ca.pem", "/cert.pem", "/key.pem")


@pytest.mark.parametrize("address", ["tcp://127.0.0.1:2375", "tcp://localhost:2375", "unix:///var/run/docker.sock"])
def test_local_engines_need_no_tls(address):
    assert not docker_engine_is_remote_tcp(address)
    check_docker_tls(address, None, None, None)


def test_tls_files_are_only_for_tcp():
    with pytest.raises(ValueError, match="tcp://"):
        check_docker_tls("ssh://builder.example", "/ca.pem", "/cert.pem", "/key.pem")
