"""Property tests: every block field and every flow parameter refuses bad input, naming the field.

Each block test starts from a valid baseline (the sandbox environment, built by hand with
stand-in secrets: no server needed), changes one field to a generated bad value and checks that
pydantic refuses it with errors that name that field: in their location, or, for a check that
spans fields (a model validator has no location), in their message. Nothing is saved or started.

The flow's parameters are checked through ``Flow.validate_parameters``, the call the flow engine
makes before the run's first task, and through the deployment's parameter schema, which the
Prefect server enforces when a run is created (``enforce_parameter_schema`` in prefect.yaml).
The real flow call per kind of parameter proves the wiring: the run fails and no task ran.
tests/test_validation.py and test_staging_deploy's fixed list cover the validators themselves.
"""

from __future__ import annotations

import math
import string
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import (
    DeploymentFilter,
    DeploymentFilterId,
    FlowRunFilter,
    FlowRunFilterExpectedStartTime,
    FlowRunFilterId,
)
from prefect.deployments import run_deployment
from prefect.exceptions import ParameterTypeError, PrefectHTTPStatusError
from prefect.filesystems import RemoteFileSystem
from prefect.utilities.schema_tools.validation import validate as validate_against_schema
from pydantic import ValidationError

from blocks.database import PostgresDatabase
from blocks.docker.target import DockerTarget
from blocks.environment import PerformanceTargets, StagingEnvironment
from blocks.kubernetes.target import KubernetesTarget
from blocks.registry import ImageRegistry
from blocks.slack import SlackChannel
from flows.staging_deploy import staging_deploy
from sandbox.environment_block import sandbox_environment
from tasks.core.errors import PermanentError
from tests.support.deploys import deploy

STAND_IN_SECRETS = {
    key: f"stand-in-{key}"
    for key in ("architect_db_password", "slack_bot_token", "jwt_secret", "encryption_key", "smoke_password")
}
ENV = sandbox_environment(STAND_IN_SECRETS)
K8S = KubernetesTarget(host="https://127.0.0.1:6443", reachable_replica_urls=["http://127.0.0.1:18081"])
BASELINES = {
    StagingEnvironment: ENV,
    PostgresDatabase: ENV.database,
    DockerTarget: ENV.target,
    KubernetesTarget: K8S,
    ImageRegistry: ENV.registry,
    SlackChannel: ENV.slack,
    PerformanceTargets: ENV.performance,
}

SHELL_METACHARACTERS = ";|&$`<>(){}[]*?!\\\"' \n\t~#"
SAFE = string.ascii_lowercase + string.digits


def fields_of(model) -> dict:
    return {name: getattr(model, name) for name in type(model).model_fields}


def names_field(error: dict, field: str) -> bool:
    return field in [str(part) for part in error["loc"]] or field in error["msg"]


def refused(cls, field: str, value=None, *, drop: bool = False, **others) -> list[dict]:
    """Validate the baseline of ``cls`` with ``field`` changed (or dropped); return the errors,
    after checking that there are some and that each names the field."""
    data = {**fields_of(BASELINES[cls]), **others}
    if drop:
        del data[field]
    else:
        data[field] = value
    with pytest.raises(ValidationError) as caught:
        cls.model_validate(data)
    errors = caught.value.errors()
    for error in errors:
        assert names_field(error, field), f"{cls.__name__}.{field}={value!r}: error does not name it: {error}"
    return errors


@pytest.mark.unit
def test_the_baselines_are_valid():
    # Otherwise every refusal below could be the baseline's fault.
    for cls, baseline in BASELINES.items():
        assert cls.model_validate(fields_of(baseline)) is not None


# -- strategies ----------------------------------------------------------------------------


def _spliced(text: str, part: str) -> str:
    return text[: len(text) // 2] + part + text[len(text) // 2 :]


# At least 2 characters around it: a leading '#' would make a valid Slack channel name ("#0").
with_metacharacter = st.builds(_spliced, st.text(SAFE, min_size=2, max_size=20), st.sampled_from(SHELL_METACHARACTERS))
traversal = st.builds(lambda depth, rest: "../" * depth + rest, st.integers(1, 8), st.text(SAFE + "/", max_size=20))
# A Kubernetes/Docker name: lowercase DNS label, at most 63 characters.
bad_names = st.one_of(
    with_metacharacter,
    traversal,
    st.text(SAFE + "-", min_size=64, max_size=5000).map(lambda s: "a" + s),  # oversized
    st.text(SAFE, max_size=20).map(lambda s: f"-{s}"),  # read as an option
    st.text(string.ascii_uppercase, min_size=1, max_size=20),
    st.just(""),
    st.text(min_size=1, max_size=40).filter(lambda s: not s.isascii()),
)
hosts = st.text(SAFE, min_size=1, max_size=20)
not_http_urls = st.one_of(
    st.builds(
        lambda scheme, host: f"{scheme}://{host}/",
        st.sampled_from(["ftp", "file", "gopher", "ws", "wss", "ssh", "unix", "ldap", "smb", "git"]),
        hosts,
    ),
    st.sampled_from(["javascript:alert(1)", "data:text/plain,hi", "mailto:ops@example.com", "file:///etc/passwd"]),
    # No scheme at all (no ':' either: WHATWG parsing reads "http:host" as "http://host/").
    st.text(string.ascii_letters + string.digits + "./-_~ ", max_size=60),
)
bad_host_urls = st.builds(lambda host, meta: f"https://{host}{meta}x/", hosts, st.sampled_from(" <>^|"))


def bad_numbers(low: float | None, high: float | None, *, integer: bool = False, low_inclusive: bool = False):
    """Values outside [low, high] (low exclusive unless low_inclusive), NaN, and non-numbers."""
    choices = [st.sampled_from(["", "ten", "10s", "1,5", "[]"])]
    if low is not None:
        below = (
            st.integers(max_value=int(low) - (1 if low_inclusive else 0))
            if integer
            else st.floats(max_value=low, exclude_max=low_inclusive, allow_nan=False)
        )
        choices.append(below)
    if high is not None:
        choices.append(st.integers(min_value=int(high) + 1) if integer else st.floats(min_value=high, exclude_min=True))
    if integer:
        choices.append(st.floats(allow_nan=False, allow_infinity=False).filter(lambda x: x != int(x)))
    else:
        choices.append(st.just(math.nan))
    return st.one_of(choices)


# -- names, URLs, numbers ------------------------------------------------------------------

NAME_FIELDS = [
    (DockerTarget, "app_name"),
    (KubernetesTarget, "namespace"),
    (KubernetesTarget, "deployment_name"),
    (KubernetesTarget, "container_name"),
    (KubernetesTarget, "secret_name"),
    (ImageRegistry, "repository"),
]


@pytest.mark.unit
@pytest.mark.parametrize(("cls", "field"), NAME_FIELDS, ids=lambda v: getattr(v, "__name__", v))
@settings(max_examples=60)
@given(value=bad_names)
@example(value="app; rm -rf /")
@example(value="../../etc/passwd")
@example(value="$(touch /tmp/pwned)")
def test_names_refuse_metacharacters_traversal_and_oversized(cls, field, value):
    refused(cls, field, value)


URL_FIELDS = [
    (StagingEnvironment, "api_url"),
    (StagingEnvironment, "api_http_url"),
    (StagingEnvironment, "prometheus_url"),
    (SlackChannel, "api_url"),
    (KubernetesTarget, "host"),
]


@pytest.mark.unit
@pytest.mark.parametrize(("cls", "field"), URL_FIELDS, ids=lambda v: getattr(v, "__name__", v))
@settings(max_examples=60)
@given(value=not_http_urls)
def test_urls_must_be_http_or_https(cls, field, value):
    if cls is KubernetesTarget and value == "":
        return  # an empty host means "use the kubeconfig": a valid choice, not a bad URL
    refused(cls, field, value)


@pytest.mark.unit
@pytest.mark.parametrize(
    ("cls", "field"),
    [uf for uf in URL_FIELDS if uf[0] is not KubernetesTarget],
    ids=lambda v: getattr(v, "__name__", v),
)
@given(value=bad_host_urls)
def test_urls_with_a_malformed_host_are_refused(cls, field, value):
    refused(cls, field, value)


NUMBER_FIELDS = [
    # (block, field, lower bound, upper bound, integer, lower bound allowed)
    (StagingEnvironment, "rollout_timeout_s", 0, 3600, False, False),
    (StagingEnvironment, "health_timeout_s", 0, 3600, False, False),
    (PostgresDatabase, "port", 1, 65535, True, True),
    (PostgresDatabase, "replica_port", 1, 65535, True, True),
    (PostgresDatabase, "pool_max", 1, 10_000, True, True),
    (PostgresDatabase, "statement_timeout_ms", 100, None, True, True),
    (PostgresDatabase, "lock_timeout_ms", 100, None, True, True),
    (PostgresDatabase, "max_replication_lag_s", 0, None, False, False),
    (PostgresDatabase, "retention_hours", 0, None, False, False),
    (PostgresDatabase, "backup_size_ratio", 0, None, False, False),
    (PostgresDatabase, "restore_maintenance_work_mem_mb", 1, None, True, True),
    (DockerTarget, "replicas", 1, 20, True, True),
    (DockerTarget, "ready_timeout_s", 0, 600, False, False),
    (DockerTarget, "stop_timeout_s", 1, 120, True, True),
    (KubernetesTarget, "poll_interval_s", 0, 30, False, False),
    (KubernetesTarget, "request_timeout_s", 0, 300, False, False),
    (KubernetesTarget, "log_tail", 1, 5000, True, True),
    (SlackChannel, "timeout_s", 0, 30, False, False),
    *[
        (PerformanceTargets, f, 0, None, False, False)
        for f in ("p50_ms", "p95_ms", "p99_ms", "max_ms", "min_rps", "target_rps", "peak_rps")
    ],
    (PerformanceTargets, "error_rate_target", 0, 1, False, True),
    (PerformanceTargets, "error_rate_max", 0, 1, False, True),
    *[(PerformanceTargets, f, 0, 1, False, False) for f in ("cpu_max", "memory_max", "db_connections_max")],
]


@pytest.mark.unit
@pytest.mark.parametrize(
    ("cls", "field", "low", "high", "integer", "low_inclusive"),
    NUMBER_FIELDS,
    ids=[f"{c.__name__}.{f}" for c, f, *_ in NUMBER_FIELDS],
)
@settings(max_examples=40, suppress_health_check=[HealthCheck.filter_too_much])
@given(data=st.data())
def test_numbers_refuse_zero_negative_nan_and_out_of_range(cls, field, low, high, integer, low_inclusive, data):
    refused(cls, field, data.draw(bad_numbers(low, high, integer=integer, low_inclusive=low_inclusive)))


@pytest.mark.unit
@pytest.mark.parametrize(
    ("cls", "field"),
    [(c, f) for c, f, _, high, *_ in NUMBER_FIELDS if high is not None],
    ids=lambda v: getattr(v, "__name__", v),
)
def test_bounded_numbers_refuse_infinity(cls, field):
    refused(cls, field, math.inf)
    refused(cls, field, -math.inf)


# -- choices, required secrets, approvers --------------------------------------------------


@pytest.mark.unit
@given(st.text(max_size=30).filter(lambda s: s not in ("sandbox", "staging")))
def test_environment_kind_is_sandbox_or_staging(kind):
    refused(StagingEnvironment, "kind", kind)


@pytest.mark.unit
@given(
    st.lists(
        st.text(max_size=20).filter(lambda s: s not in ("light", "medium", "heavy", "sustained")),
        min_size=1,
        max_size=3,
    ),
    st.lists(st.sampled_from(["light", "medium"]), max_size=2),
)
def test_load_profiles_are_the_guides_four(bad, good):
    refused(StagingEnvironment, "load_profiles", good + bad)


@pytest.mark.unit
@given(st.text(max_size=30).filter(lambda s: s not in ("engineering", "devops", "security", "product")))
def test_approvers_are_listed_under_the_four_roles(role):
    refused(StagingEnvironment, "approvers", {**ENV.approvers, role: ["Sam Security"]})


@pytest.mark.unit
@given(
    st.sampled_from(["engineering", "devops", "security", "product"]), st.text(alphabet=" \t\n\r\x0b\x0c", max_size=10)
)
def test_approvers_may_not_be_blank(role, blank):
    refused(StagingEnvironment, "approvers", {**ENV.approvers, role: ["Someone Real", blank]})


@pytest.mark.unit
@given(st.one_of(st.text(max_size=10), st.integers(), st.lists(st.integers(), min_size=1)))
def test_approvers_are_lists_of_names(value):
    refused(StagingEnvironment, "approvers", {"security": value})


@pytest.mark.unit
@pytest.mark.parametrize(
    ("cls", "field"),
    [
        (StagingEnvironment, "smoke_password"),
        (PostgresDatabase, "password"),
        (SlackChannel, "bot_token"),
        (SlackChannel, "channel"),
        (StagingEnvironment, "app_repo"),
        (ImageRegistry, "address"),
    ],
    ids=lambda v: getattr(v, "__name__", v),
)
def test_required_fields_are_named_when_missing(cls, field):
    refused(cls, field, drop=True)
    refused(cls, field, None)


@pytest.mark.unit
def test_tls_verification_cannot_be_turned_off():
    refused(KubernetesTarget, "verify_tls", False)


@pytest.mark.unit
def test_in_cluster_and_host_are_exclusive():
    refused(KubernetesTarget, "in_cluster", True)  # the baseline has a host


@pytest.mark.unit
@given(st.text(SAFE + "/._-", max_size=30).filter(lambda s: "://" not in s))
def test_remote_backup_storage_needs_a_scheme(basepath):
    with pytest.raises(ValidationError) as caught:
        RemoteFileSystem(basepath=basepath)
    assert all(names_field(e, "basepath") for e in caught.value.errors())
    refused(PostgresDatabase, "backup_storage", {"block_type_slug": "remote-file-system", "basepath": basepath})


# -- nested blocks: a bad value deep inside the environment names its whole path ----------


@pytest.mark.unit
@pytest.mark.parametrize(
    ("block", "value", "path"),
    [
        ("database", {**fields_of(ENV.database), "port": 0}, ("database", "port")),
        ("registry", {"address": "127.0.0.1:55000", "repository": "App;rm"}, ("registry", "repository")),
        ("slack", {**fields_of(ENV.slack), "api_url": "file:///etc/passwd"}, ("slack", "api_url")),
        ("performance", {"p95_ms": math.nan}, ("performance", "p95_ms")),
        (
            "target",
            {"block_type_slug": "architect-docker-target", **fields_of(ENV.target), "replicas": 0},
            ("target", "replicas"),
        ),
        (
            "target",
            {"block_type_slug": "architect-kubernetes-target", "namespace": "../kube-system"},
            ("target", "namespace"),
        ),
    ],
)
def test_nested_blocks_name_the_path_to_the_bad_field(block, value, path):
    errors = refused(StagingEnvironment, block, value)
    assert any(path[-1] in map(str, e["loc"]) for e in errors), errors


# -- manifest paths: the checkout is the only place manifests come from --------------------

CHECKOUT = Path("/tmp/architect-checkout-that-need-not-exist")


@pytest.mark.unit
@settings(max_examples=60)
@given(
    st.one_of(
        traversal,
        st.builds(
            lambda inner, depth: f"{inner}/" + "../" * depth + "etc",
            st.text(SAFE, min_size=1, max_size=8),
            st.integers(2, 6),
        ),
        st.sampled_from(["/etc", "/etc/passwd", "/", "/root/.kube", "~/../../etc", "k8s/../../.."]),
        st.text(SAFE + "/", min_size=1, max_size=20).map(lambda s: "/" + s),
    )
)
@example("../../etc/passwd")
def test_manifest_paths_outside_the_checkout_are_refused(manifest_dir):
    target = K8S.model_copy(update={"repo_dir": str(CHECKOUT), "manifest_dir": manifest_dir})
    resolved = (CHECKOUT / Path(manifest_dir).expanduser()).resolve()
    if resolved == CHECKOUT or CHECKOUT in resolved.parents:
        return  # "a/../b" stays inside: allowed
    with pytest.raises(PermanentError, match="manifest_dir"):
        target.manifests_path()


# -- flow parameters: the UI's form fields -------------------------------------------------

BAD_PARAMETERS = {
    "git_ref": st.one_of(
        with_metacharacter.map(lambda s: "v" + s),
        traversal.map(lambda s: "main/" + s),
        st.text(SAFE, min_size=201, max_size=3000),
        st.text(SAFE, max_size=10).map(lambda s: "-" + s),
    ),
    "version": st.one_of(
        with_metacharacter.map(lambda s: "1.0.0-" + s),
        st.text(SAFE, min_size=1, max_size=20),
        st.just("1.0.0-" + "a" * 300),
        st.just("v3.2.0"),
    ),
    "environment": bad_names,
    "on_collision": st.text(max_size=20).filter(lambda s: s not in ("wait", "cancel")),
    "load_profiles": st.lists(
        st.text(max_size=15).filter(lambda s: s not in ("light", "medium", "heavy", "sustained")),
        min_size=1,
        max_size=3,
    ),
    "load_duration_s": bad_numbers(0, 3600),
    "sustained_duration_s": bad_numbers(0, 86400),
    "signoff_timeout_h": bad_numbers(0, 168),
    "skip_signoff": st.sampled_from(["maybe", "2", "sure", [], {}]),
    "restore_policy": st.text(max_size=20).filter(lambda s: s not in ("if-schema-changed", "always", "never")),
    "dry_run": st.sampled_from(["perhaps", "3", [1]]),
}


@pytest.mark.unit
@pytest.mark.parametrize("field", sorted(BAD_PARAMETERS))
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(data=st.data())
def test_flow_parameters_are_refused_naming_the_field(field, data):
    value = data.draw(BAD_PARAMETERS[field])
    with pytest.raises(ParameterTypeError) as caught:
        staging_deploy.validate_parameters({"git_ref": "v3.1.0", "environment": "sandbox", field: value})
    assert f" - {field}" in str(caught.value)


def _task_runs(state) -> list:
    with get_client(sync_client=True) as client:
        return client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[state.state_details.flow_run_id]))
        )


# One real run per kind of parameter (test_staging_deploy covers git_ref, version, environment).
@pytest.mark.sandbox
@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("signoff_timeout_h", math.inf),
        ("load_duration_s", -1.0),
        ("load_profiles", ["light", "extreme"]),
        ("on_collision", "queue"),
        ("restore_policy", "sometimes"),
        ("skip_signoff", "maybe"),
    ],
)
def test_a_bad_parameter_fails_the_run_before_any_task(sandbox_env, field, value):
    revisions_before = sandbox_env.target.history()
    state = deploy("v3.1.0", "3.1.0", **{field: value})
    assert state.is_failed()
    assert "Validation of flow parameters failed" in state.message and field in state.message, state.message
    assert _task_runs(state) == [], "a task ran although a parameter was invalid"
    assert sandbox_env.target.history() == revisions_before


# -- the deployment: the server checks the same fields before it creates a run -------------


@pytest.fixture(scope="module")
def manual_deployment(registered_deployments):
    with get_client(sync_client=True) as client:
        return client.read_deployment_by_name("staging-deploy/manual")


# Refused by the schema the UI's form and the server use.
SCHEMA_REFUSED = {
    "git_ref": st.one_of(
        with_metacharacter.map(lambda s: "v" + s),
        st.text(SAFE, min_size=101, max_size=3000),
        st.text(SAFE, max_size=10).map(lambda s: "-" + s),
    ),
    "version": st.one_of(with_metacharacter.map(lambda s: "1.0.0-" + s), st.text(SAFE, min_size=1, max_size=20)),
    "environment": bad_names.filter(lambda s: s != ""),
    "on_collision": BAD_PARAMETERS["on_collision"],
    "load_profiles": BAD_PARAMETERS["load_profiles"],
    "load_duration_s": st.one_of(
        st.floats(max_value=0, allow_nan=False), st.floats(min_value=3600, exclude_min=True, allow_infinity=False)
    ),
    "signoff_timeout_h": st.floats(min_value=168, exclude_min=True, allow_infinity=False),
    "restore_policy": BAD_PARAMETERS["restore_policy"],
}


@pytest.mark.sandbox
@pytest.mark.parametrize("field", sorted(SCHEMA_REFUSED))
@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.filter_too_much])
@given(data=st.data())
def test_the_deployment_schema_refuses_bad_parameters(manual_deployment, field, data):
    value = data.draw(SCHEMA_REFUSED[field])
    parameters = {**manual_deployment.parameters, field: value}  # merged as the server merges them
    errors = validate_against_schema(parameters, manual_deployment.parameter_openapi_schema, raise_on_error=False)
    assert errors and all(field in map(str, e.path) or field in e.message for e in errors), (value, errors)


@pytest.mark.sandbox
def test_refs_git_would_misread_are_refused_by_the_schema_too(manual_deployment):
    # The schema carries the full ref rule (look-arounds included) and the version's length limit,
    # so the UI's form and the server refuse these before a run exists, not only the flow.
    schema = manual_deployment.parameter_openapi_schema
    for field, value in [
        ("git_ref", "main..evil"),
        ("git_ref", "a//b"),
        ("git_ref", "v1.lock"),
        ("git_ref", "v1/"),
        ("git_ref", "HEAD@{1}"),
        ("version", "1.0.0-" + "a" * 300),
    ]:
        assert validate_against_schema({**manual_deployment.parameters, field: value}, schema, raise_on_error=False)
        with pytest.raises(ParameterTypeError, match=f" - {field}"):
            staging_deploy.validate_parameters({field: value})


@pytest.mark.sandbox
def test_an_empty_version_is_accepted_by_the_schema_as_an_absent_one_is(manual_deployment):
    # The UI's form sends "" for a cleared field; the server checks runs against this schema (409 otherwise).
    schema = manual_deployment.parameter_openapi_schema
    for parameters in ({"version": ""}, {}, {"version": "3.2.0"}):
        assert (
            validate_against_schema({**manual_deployment.parameters, **parameters}, schema, raise_on_error=False) == []
        )


@pytest.mark.sandbox
@settings(max_examples=8, deadline=None)
@given(field=st.sampled_from(["git_ref", "version", "load_duration_s", "load_profiles"]), data=st.data())
def test_run_deployment_with_a_bad_parameter_is_refused_and_creates_no_run(manual_deployment, field, data):
    value = data.draw(SCHEMA_REFUSED[field])
    since = datetime.now(UTC)
    with pytest.raises(PrefectHTTPStatusError) as caught:
        run_deployment("staging-deploy/manual", parameters={field: value}, timeout=0)
    assert caught.value.response.status_code == 409
    assert f"Validation failed for field '{field}" in caught.value.response.json()["detail"]  # or '{field}[0]'
    with get_client(sync_client=True) as client:
        runs = client.read_flow_runs(
            deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[manual_deployment.id])),
            flow_run_filter=FlowRunFilter(expected_start_time=FlowRunFilterExpectedStartTime(after_=since)),
        )
    assert [r for r in runs if r.parameters.get(field) == value] == []


# -- fields that had no validation before issue 8 ---------------------------------------------

credentials_urls = st.builds(lambda user, pw, host: f"https://{user}:{pw}@{host}/", hosts, hosts, hosts)
control = st.builds(
    lambda a, c: a + c + a,
    st.text(SAFE, min_size=1, max_size=10),
    st.sampled_from([chr(i) for i in range(32)] + ["\x7f"]),
)


@pytest.mark.unit
@pytest.mark.parametrize(
    ("cls", "field"),
    [
        (StagingEnvironment, "api_url"),
        (StagingEnvironment, "api_http_url"),
        (StagingEnvironment, "prometheus_url"),
        (SlackChannel, "api_url"),
        (KubernetesTarget, "host"),
    ],
)
@given(url=st.one_of(credentials_urls, hosts.map(lambda h: f"https://{h}/" + "a" * 2100)))
def test_urls_refuse_credentials_and_oversized(cls, field, url):
    refused(cls, field, url)


@pytest.mark.unit
@given(url=bad_host_urls)
def test_kubernetes_host_with_a_malformed_host_is_refused(url):
    refused(KubernetesTarget, "host", url)


@pytest.mark.unit
@given(
    host=st.one_of(
        st.ip_addresses(v=4).map(str).filter(lambda h: not h.startswith("127.")), hosts.map(lambda h: h + ".example")
    )
)
def test_kubernetes_plain_http_only_on_loopback_names_host(host):
    refused(KubernetesTarget, "host", f"http://{host}:6443")


@pytest.mark.unit
@settings(max_examples=60)
@given(
    value=st.one_of(traversal, st.sampled_from(["/etc", "/etc/passwd", "~/x", "k8s/../../..", "a/../../b"]), control)
)
def test_manifest_dir_is_refused_by_the_block(value):
    refused(KubernetesTarget, "manifest_dir", value)


@pytest.mark.unit
@pytest.mark.parametrize(
    ("cls", "field"),
    [
        (PostgresDatabase, "max_replication_lag_s"),
        (PostgresDatabase, "retention_hours"),
        (PostgresDatabase, "backup_size_ratio"),
        *[(PerformanceTargets, f) for f in ("max_ms", "peak_rps")],
    ],
)
def test_unbounded_numbers_refuse_infinity(cls, field):
    refused(cls, field, math.inf)


@pytest.mark.unit
@pytest.mark.parametrize(
    ("cls", "field"),
    [
        (PostgresDatabase, "statement_timeout_ms"),
        (PostgresDatabase, "lock_timeout_ms"),
        (PostgresDatabase, "restore_maintenance_work_mem_mb"),
    ],
)
@given(st.integers(min_value=2**31))
def test_absurd_integers_are_refused(cls, field, value):
    refused(cls, field, value)


@pytest.mark.unit
@pytest.mark.parametrize(
    ("cls", "field"),
    [
        (StagingEnvironment, "app_repo"),
        (StagingEnvironment, "ca_bundle"),
        (StagingEnvironment, "smoke_user"),
        (PostgresDatabase, "user"),
        (PostgresDatabase, "pg_bin_dir"),
        (DockerTarget, "history_file"),
        (KubernetesTarget, "kubeconfig_path"),
        (KubernetesTarget, "context"),
        (KubernetesTarget, "ca_cert_path"),
        (KubernetesTarget, "field_manager"),
        (ImageRegistry, "username"),
    ],
)
@given(value=st.one_of(control, st.text(SAFE, min_size=201, max_size=3000)))
def test_text_settings_refuse_control_characters_and_oversized(cls, field, value):
    refused(cls, field, value)


@pytest.mark.unit
@pytest.mark.parametrize(
    ("cls", "field"),
    [
        (StagingEnvironment, "builder_docker_host"),
        (DockerTarget, "docker_host"),
        (PostgresDatabase, "host"),
        (PostgresDatabase, "replica_host"),
        (PostgresDatabase, "dbname"),
        (PostgresDatabase, "sslmode"),
        (SlackChannel, "channel"),
        (StagingEnvironment, "allowed_origin"),
        (DockerTarget, "health_path"),
    ],
)
@given(
    value=st.one_of(with_metacharacter, traversal.map(lambda s: "x/" + s), st.text(SAFE, min_size=300, max_size=1000))
)
def test_addresses_and_names_refuse_metacharacters(cls, field, value):
    refused(cls, field, value)


@pytest.mark.unit
@given(st.sampled_from(["@evil.example/x", "health", "/health?x=1#"]))
def test_health_path_is_a_path(value):
    refused(DockerTarget, "health_path", value)


@pytest.mark.unit
@given(st.lists(st.integers(max_value=1023) | st.integers(min_value=65536), min_size=1, max_size=3))
def test_port_slots_out_of_range_name_ports(bad):
    refused(DockerTarget, "ports", [18081, 18082, 18083, 18084] + bad)


@pytest.mark.unit
@given(st.one_of(control, st.text(SAFE, min_size=101, max_size=500)))
def test_approver_names_are_what_the_form_accepts(name):
    refused(StagingEnvironment, "approvers", {**ENV.approvers, "security": [name]})


@pytest.mark.unit
@given(st.one_of(with_metacharacter.map(lambda s: "K" + s), st.sampled_from(["1ABC", "A=B", "PATH\x00"])))
def test_app_setting_names_are_environment_variable_names(key):
    refused(StagingEnvironment, "app_settings", {key: "x"})
    refused(StagingEnvironment, "app_secrets", {key: "x"})


@pytest.mark.unit
@given(st.one_of(with_metacharacter.map(lambda s: "a" + s), st.sampled_from(["Architect.Sandbox", "-x"])))
def test_docker_label_keys(key):
    refused(DockerTarget, "labels", {key: "1"})


@pytest.mark.unit
def test_plain_http_registry_only_on_loopback():
    refused(ImageRegistry, "use_tls", False, address="registry.example:5000")


# -- unknown fields: a misspelt setting is an error, never silently ignored -------------------


@pytest.mark.unit
@pytest.mark.parametrize("cls", list(BASELINES), ids=lambda c: c.__name__)
@settings(max_examples=30)
@given(name=st.from_regex(r"[a-z_][a-z0-9_]{0,30}", fullmatch=True))
def test_an_unknown_field_is_refused_naming_it(cls, name):
    if name in cls.model_fields or name == "block_type_slug":
        return
    refused(cls, name, 3)


@pytest.mark.unit
def test_a_misspelt_field_is_refused_not_ignored():
    errors = refused(DockerTarget, "replicass", 5)
    assert "replicas" in errors[0]["msg"], "the message lists the fields the block does have"


@pytest.mark.unit
def test_a_docker_target_without_its_slug_is_not_read_as_kubernetes():
    # A target dict with no block_type_slug is tried as each kind: a bad Docker value must not make
    # it pass as a Kubernetes target with every Docker setting dropped.
    target = {**fields_of(ENV.target), "replicas": 0}
    with pytest.raises(ValidationError) as caught:
        StagingEnvironment.model_validate({**fields_of(ENV), "target": target})
    messages = " ".join(str(e["loc"]) + e["msg"] for e in caught.value.errors())
    assert "replicas" in messages and "unknown field(s)" in messages, messages


# -- TLS by default: off loopback nothing travels in the clear (issue 16) ----------------------

remote_hosts = st.one_of(
    st.ip_addresses(v=4).map(str).filter(lambda h: not h.startswith("127.")),
    hosts.map(lambda h: h + ".example"),
)


@pytest.mark.unit
@pytest.mark.parametrize(
    ("cls", "field"),
    [(StagingEnvironment, "api_url"), (StagingEnvironment, "prometheus_url"), (SlackChannel, "api_url")],
    ids=lambda v: getattr(v, "__name__", v),
)
@given(host=remote_hosts)
def test_plain_http_off_loopback_is_refused_naming_the_field(cls, field, host):
    errors = refused(cls, field, f"http://{host}:9090/")
    assert any("https://" in e["msg"] for e in errors)


@pytest.mark.unit
@pytest.mark.parametrize(
    ("cls", "field"),
    [(StagingEnvironment, "api_url"), (StagingEnvironment, "prometheus_url"), (SlackChannel, "api_url")],
    ids=lambda v: getattr(v, "__name__", v),
)
@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "[::1]", "127.3.2.1"])
def test_plain_http_on_loopback_stays_usable_for_the_sandbox(cls, field, host):
    data = {**fields_of(BASELINES[cls]), field: f"http://{host}:9090/"}
    assert cls.model_validate(data) is not None


@pytest.mark.unit
def test_https_off_loopback_is_accepted():
    for cls, field in (
        (StagingEnvironment, "api_url"),
        (StagingEnvironment, "prometheus_url"),
        (SlackChannel, "api_url"),
    ):
        assert cls.model_validate({**fields_of(BASELINES[cls]), field: "https://ops.example/api/"}) is not None


@pytest.mark.unit
@given(
    url=st.builds(
        lambda user, token, host: f"https://{user}:{token}@{host}.example/architect/api.git",
        hosts,
        st.text(SAFE, min_size=1, max_size=30),
        hosts,
    )
    | st.sampled_from(
        [
            "https://x-access-token:ghp_abc@github.com/org/app.git",
            "https://oauth2@gitlab.example/org/app.git",
            "ssh://git:hunter2@git.example/org/app.git",
        ]
    )
)
def test_app_repo_with_credentials_is_refused_naming_the_field(url):
    errors = refused(StagingEnvironment, "app_repo", url)
    assert any("app_repo_token" in e["msg"] for e in errors)  # says where a token goes instead
    with pytest.raises(ValidationError) as caught:
        StagingEnvironment.model_validate({**fields_of(ENV), "app_repo": url})
    secret = url.split("://", 1)[1].split("@", 1)[0]
    assert secret not in str(caught.value)  # the refusal does not repeat the token


@pytest.mark.unit
@given(host=remote_hosts, scheme=st.sampled_from(["http", "git"]))
def test_app_repo_in_the_clear_off_loopback_is_refused(host, scheme):
    refused(StagingEnvironment, "app_repo", f"{scheme}://{host}/org/app.git")


@pytest.mark.unit
@pytest.mark.parametrize(
    "repo",
    ["/srv/app", "git@github.com:org/app.git", "ssh://git@git.example/org/app.git", "https://git.example/app.git"],
)
def test_app_repo_without_secrets_is_accepted_and_a_token_is_a_secret(repo):
    env = StagingEnvironment.model_validate({**fields_of(ENV), "app_repo": repo, "app_repo_token": "tok-not-in-url"})
    assert "tok-not-in-url" in env.secret_values() and "tok-not-in-url" not in env.model_dump_json()


@pytest.mark.unit
@given(host=remote_hosts, mode=st.sampled_from(["disable", "allow", "prefer", "require"]))
def test_a_database_off_loopback_needs_verify_full(host, mode):
    for field in ("host", "replica_host"):
        errors = refused(PostgresDatabase, "sslmode", mode, **{field: host})
        assert any("verify-full" in e["msg"] for e in errors)


@pytest.mark.unit
def test_verify_ca_needs_its_reason_written_in_the_block():
    errors = refused(PostgresDatabase, "sslmode_reason", None, host="db.example", sslmode="verify-ca")
    assert "verify-ca" in errors[0]["msg"]
    refused(PostgresDatabase, "sslmode_reason", "   ", host="db.example", sslmode="verify-ca")
    ok = {**fields_of(ENV.database), "host": "db.example", "sslmode": "verify-ca", "sslmode_reason": "VIP cert"}
    assert PostgresDatabase.model_validate(ok).sslmode == "verify-ca"


@pytest.mark.unit
def test_the_database_default_is_verify_full_off_loopback_and_prefer_on_it():
    base = {k: v for k, v in fields_of(ENV.database).items() if k != "sslmode"}
    assert PostgresDatabase.model_validate({**base, "host": "db.example"}).sslmode == "verify-full"
    assert PostgresDatabase.model_validate({**base, "host": "127.0.0.1"}).sslmode == "prefer"
    assert ENV.database.sslmode == "disable"  # the sandbox's loopback database stays as it is


@pytest.mark.unit
@given(host=remote_hosts, port=st.integers(1, 65535))
def test_a_tcp_docker_engine_off_loopback_needs_tls_client_certificates(host, port):
    errors = refused(DockerTarget, "docker_host", f"tcp://{host}:{port}")
    assert any("tls_ca_cert" in e["msg"] and "tls_client_key" in e["msg"] for e in errors)
    refused(StagingEnvironment, "builder_docker_host", f"tcp://{host}:{port}")  # the build engine takes none


@pytest.mark.unit
def test_docker_tls_files_come_all_together_and_only_for_tcp():
    files = {"tls_ca_cert": "/etc/docker/ca.pem", "tls_client_cert": "/etc/docker/cert.pem"}
    errors = refused(DockerTarget, "tls_client_key", None, docker_host="tcp://docker.example:2376", **files)
    assert "tls_client_key" in errors[0]["msg"]
    refused(DockerTarget, "tls_ca_cert", "/etc/docker/ca.pem", docker_host="unix:///var/run/docker.sock")
    remote = DockerTarget.model_validate(
        {**fields_of(ENV.target), "docker_host": "tcp://docker.example:2376", **files, "tls_client_key": "/k.pem"}
    )
    assert remote.tls_files() == ("/etc/docker/ca.pem", "/etc/docker/cert.pem", "/k.pem")
    loopback = DockerTarget.model_validate({**fields_of(ENV.target), "docker_host": "tcp://127.0.0.1:2375"})
    assert loopback.tls_files() is None  # loopback stays usable without certificates
