"""The build's reading of `go test -json -cover` output (``parse_go_test_json``): no sandbox, no Go."""

from __future__ import annotations

import json

import pytest

from tasks.release.build import parse_go_test_json

pytestmark = pytest.mark.unit

MODULE = "github.com/architect-team/architect-go"
STORE, MIGRATE, CMD = f"{MODULE}/internal/store", f"{MODULE}/internal/migrate", f"{MODULE}/cmd/architect"


def event(action: str, package: str | None, test: str | None = None, output: str | None = None) -> str:
    """One line as `go test -json` (Go 1.19) writes it."""
    fields = {"Time": "2024-02-17T10:00:00.123456789Z", "Action": action}
    if package is not None:
        fields["Package"] = package
    if test is not None:
        fields["Test"] = test
    if output is not None:
        fields["Output"] = output
    if action in ("pass", "fail", "skip"):
        fields["Elapsed"] = 0.01
    return json.dumps(fields)


def passing_test(package: str, name: str) -> list[str]:
    return [
        event("run", package, name),
        event("output", package, name, f"=== RUN   {name}\n"),
        event("output", package, name, f"--- PASS: {name} (0.00s)\n"),
        event("pass", package, name),
    ]


def failing_test(package: str, name: str) -> list[str]:
    return [
        event("run", package, name),
        event("output", package, name, f"    {name}: store_test.go:41: boom\n"),
        event("output", package, name, f"--- FAIL: {name} (0.00s)\n"),
        event("fail", package, name),
    ]


def package_end(package: str, action: str, coverage: float | None) -> list[str]:
    covered = f"\tcoverage: {coverage}% of statements" if coverage is not None else ""
    lines = [event("output", package, output=f"{action.upper()}\n")]
    if coverage is not None:
        lines.append(event("output", package, output=f"coverage: {coverage}% of statements\n"))
    verdict = "ok  " if action == "pass" else "FAIL"
    return [*lines, event("output", package, output=f"{verdict}\t{package}\t0.012s{covered}\n"), event(action, package)]


def no_test_files(package: str) -> list[str]:
    return [event("output", package, output=f"?   \t{package}\t[no test files]\n"), event("skip", package)]


def lines(*groups: list[str]) -> str:
    return "\n".join(line for group in groups for line in group) + "\n"


def test_passing_packages_give_their_test_counts_and_coverage_sorted_by_name():
    output = lines(
        [event("start", STORE)],
        passing_test(STORE, "TestCreateEvent"),
        passing_test(STORE, "TestListEvents"),
        package_end(STORE, "pass", 81.4),
        [event("start", MIGRATE)],
        passing_test(MIGRATE, "TestUp"),
        package_end(MIGRATE, "pass", 66.7),
    )
    report = parse_go_test_json(output)
    assert [(p.package, p.status, p.passed, p.failed, p.coverage) for p in report.packages] == [
        (MIGRATE, "pass", 1, [], 66.7),
        (STORE, "pass", 2, [], 81.4),
    ]
    assert not report.failed


def test_a_failing_test_fails_its_package_and_is_named():
    output = lines(
        passing_test(STORE, "TestCreateEvent"),
        failing_test(STORE, "TestDeleteEvent"),
        package_end(STORE, "fail", 70.0),
        passing_test(MIGRATE, "TestUp"),
        package_end(MIGRATE, "pass", 50.0),
    )
    report = parse_go_test_json(output)
    by_name = {p.package: p for p in report.packages}
    assert by_name[STORE].status == "fail" and by_name[STORE].failed == ["TestDeleteEvent"]
    assert by_name[STORE].passed == 1
    assert by_name[MIGRATE].status == "pass" and by_name[MIGRATE].failed == []
    assert report.failed


def test_a_package_that_does_not_build_fails_with_no_test_named():
    # go writes the compiler's errors to stderr as plain text; on stdout only the package's end is JSON.
    output = lines([event("output", STORE, output=f"FAIL\t{STORE} [build failed]\n"), event("fail", STORE)])
    [store] = parse_go_test_json(output).packages
    assert (store.status, store.passed, store.failed, store.coverage) == ("fail", 0, [], None)
    assert parse_go_test_json(output).failed


def test_a_package_without_tests_is_skipped_without_coverage():
    output = lines(no_test_files(CMD), passing_test(STORE, "TestA"), package_end(STORE, "pass", 12.5))
    report = parse_go_test_json(output)
    by_name = {p.package: p for p in report.packages}
    assert (by_name[CMD].status, by_name[CMD].passed, by_name[CMD].coverage) == ("skip", 0, None)
    assert not report.failed, "a package without tests is not a failure"


def test_lines_that_are_not_test_events_are_ignored():
    noise = [
        "go: downloading github.com/lib/pq v1.10.9",
        f"# {STORE}",
        "./store.go:12:2: imported and not used",
        "",
        "   ",
        event("output", None, output="no package: a go-level message\n"),
    ]
    report = parse_go_test_json(lines(noise, passing_test(STORE, "TestA"), package_end(STORE, "pass", 90.0), noise))
    assert [(p.package, p.passed, p.coverage) for p in report.packages] == [(STORE, 1, 90.0)]


def test_no_output_is_no_packages_and_no_failure():
    report = parse_go_test_json("")
    assert report.packages == [] and not report.failed


def test_a_skipped_test_is_neither_passed_nor_failed():
    output = lines(
        [
            event("run", STORE, "TestNeedsDatabase"),
            event("output", STORE, "TestNeedsDatabase", "    store_test.go:20: TEST_DATABASE_URL not set\n"),
            event("skip", STORE, "TestNeedsDatabase"),
        ],
        passing_test(STORE, "TestA"),
        package_end(STORE, "pass", 40.0),
    )
    [store] = parse_go_test_json(output).packages
    assert (store.status, store.passed, store.failed) == ("pass", 1, [])
