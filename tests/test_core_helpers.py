"""The rules written once in tasks/core: what is loopback, what a Retry-After asks, when to make an artifact."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import pytest
from prefect.context import TaskRunContext
from pydantic import ValidationError

from blocks.docker.target import DockerTarget
from blocks.kubernetes.target import KubernetesTarget
from blocks.registry import ImageRegistry
from tasks.core.artifacts import in_task_run
from tasks.core.http import retry_after_seconds
from tasks.core.models import CheckResult, GateReport, Verdict
from tasks.core.net import is_loopback_host
from tasks.gates import evidence
from tasks.gates.load.generator import check_loopback

pytestmark = pytest.mark.unit

# --------------------------------------------------------------------------- loopback

LOOPBACK = ["127.0.0.1", "localhost", "LocalHost", "::1", "[::1]", "::1%lo", "127.0.0.2", "127.255.255.254"]
NOT_LOOPBACK = [
    "0.0.0.0",
    "::",
    "10.0.1.10",
    "192.168.1.5",
    "8.8.8.8",
    "::ffff:10.0.0.1",
    "example.com",
    "localhost.example",
    "127.0.0.1.example",
    "[127.0.0.1]",
    "",
    None,
]


@pytest.mark.parametrize("host", LOOPBACK)
def test_loopback_hosts(host):
    assert is_loopback_host(host)


@pytest.mark.parametrize("host", NOT_LOOPBACK)
def test_not_loopback_hosts(host):
    assert not is_loopback_host(host)


def accepted(make) -> bool:
    try:
        make()
    except (ValidationError, ValueError):
        return False
    return True


@pytest.mark.parametrize(
    "host", ["127.0.0.1", "localhost", "127.0.0.2", "10.0.1.10", "192.168.1.5", "0.0.0.0", "registry.example"]
)
def test_every_block_applies_the_one_rule(host):
    expected = is_loopback_host(host)
    assert accepted(lambda: DockerTarget(bind_host=host)) is expected
    assert accepted(lambda: KubernetesTarget(host=f"http://{host}:6443")) is expected
    assert accepted(lambda: ImageRegistry(address=f"{host}:5000", use_tls=False)) is expected
    assert accepted(lambda: ImageRegistry(address=f"{host}:5000", use_tls=True))  # TLS may go anywhere


@pytest.mark.parametrize("address", ["127.0.0.1", "127.0.0.2", "[::1]", "10.0.0.1", "192.168.1.1"])
def test_the_load_generator_applies_the_one_rule_to_resolved_addresses(address):
    assert accepted(lambda: check_loopback(f"http://{address}:9/")) is is_loopback_host(address)


# --------------------------------------------------------------------------- Retry-After

NOW = datetime(2026, 12, 1, 12, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    "value, seconds",
    [
        ("1", 1.0),
        (" 120 ", 120.0),
        ("0", 0.0),
        ("1.5", 1.5),
        ("-3", 0.0),
        (format_datetime(NOW + timedelta(seconds=30), usegmt=True), 30.0),
        (format_datetime(NOW - timedelta(minutes=5), usegmt=True), 0.0),  # already past: no wait
        ("Tue, 01 Dec 2026 12:01:00 GMT", 60.0),
    ],
)
def test_retry_after_seconds(value, seconds):
    assert retry_after_seconds(value, now=NOW) == pytest.approx(seconds)


@pytest.mark.parametrize("value", [None, "", "  ", "soon", "nan", "inf", "-inf", "Tuesday at noon"])
def test_retry_after_unusable_is_none(value):
    assert retry_after_seconds(value, now=NOW) is None


def test_retry_after_date_defaults_to_now():
    later = format_datetime(datetime.now(UTC) + timedelta(seconds=100), usegmt=True)
    assert 95 <= retry_after_seconds(later) <= 100


# --------------------------------------------------------------------------- the artifact guard


def test_in_task_run_only_inside_a_task_run():
    assert not in_task_run()
    with TaskRunContext.model_construct():  # what Prefect sets while a task runs
        assert in_task_run()
    assert not in_task_run()


def test_a_gate_table_is_made_only_inside_a_task_run(monkeypatch):
    made: list[dict] = []
    monkeypatch.setattr(evidence, "table_artifact", lambda **kwargs: made.append(kwargs))
    report = GateReport(stage="health", checks=[CheckResult(name="replica", verdict=Verdict.PASS, detail="ok")])
    columns = lambda c: c.model_dump(include={"name", "verdict"})  # noqa: E731
    evidence.publish_table(report, "health-gate", columns)
    assert made == []
    with TaskRunContext.model_construct():
        evidence.publish_table(report, "health-gate", columns)
    assert [m["key"] for m in made] == ["health-gate"] and made[0]["table"] == [{"name": "replica", "verdict": "pass"}]
