"""The unit/sandbox rule (tests/support/marker_rule.py), run on a small project of its own."""

from __future__ import annotations

import pytest

pytest_plugins = ["pytester"]
pytestmark = pytest.mark.unit

CONFTEST = """
import pytest

from tests.support.marker_rule import check_kinds


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(items):
    check_kinds(items)


@pytest.fixture(scope="session")
def sandbox_up():
    raise AssertionError("no test of this project may reach the sandbox")


@pytest.fixture
def built_on_the_sandbox(sandbox_up):
    return 1


@pytest.fixture
def deeper(built_on_the_sandbox):
    return 2


@pytest.fixture
def pure():
    return 3
"""

TESTS = """
import pytest


@pytest.mark.unit
def test_pure_unit(pure):
    assert pure == 3


@pytest.mark.sandbox
def test_sandbox_with_its_fixture(deeper):
    pass


def test_unmarked():
    pass


@pytest.mark.unit
@pytest.mark.sandbox
def test_both():
    pass


@pytest.mark.unit
@pytest.mark.parametrize("n", [1, 2])
def test_unit_reaching_the_sandbox_two_levels_down(deeper, pure, n):
    pass


@pytest.mark.unit
@pytest.mark.usefixtures("sandbox_up")
def test_unit_using_the_sandbox_by_usefixtures():
    pass
"""


@pytest.fixture
def project(pytester: pytest.Pytester, request: pytest.FixtureRequest, monkeypatch) -> pytest.Pytester:
    monkeypatch.setenv("PYTHONPATH", str(request.config.rootpath))  # so its conftest imports tests.support
    pytester.makeini(
        "[pytest]\nmarkers =\n    unit: u\n    sandbox: s\naddopts = --strict-markers -p no:cacheprovider\n"
    )
    pytester.makeconftest(CONFTEST)
    return pytester


def test_each_test_that_breaks_the_rule_is_named_once_with_why_and_nothing_runs(project):
    project.makepyfile(test_kinds=TESTS)
    result = project.runpytest("-m", "unit")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    errors = [line.strip() for line in result.errlines if line.startswith("  test_kinds.py::")]
    assert errors == [
        "test_kinds.py::test_unmarked: marked neither; mark it exactly one of unit, sandbox",
        "test_kinds.py::test_both: marked unit and sandbox; mark it exactly one of unit, sandbox",
        "test_kinds.py::test_unit_reaching_the_sandbox_two_levels_down: marked unit but requests deeper, "
        "which needs the sandbox",
        "test_kinds.py::test_unit_using_the_sandbox_by_usefixtures: marked unit but requests sandbox_up, "
        "which needs the sandbox",
    ], result.errlines
    assert "passed" not in result.stdout.str()


def test_a_project_that_keeps_the_rule_runs_its_unit_tests_only(project):
    project.makepyfile(test_kinds=TESTS.split("def test_unmarked")[0])
    result = project.runpytest("-m", "unit")
    result.assert_outcomes(passed=1, deselected=1)
