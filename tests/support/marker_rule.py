"""The rule every test follows: marked exactly one of ``unit`` or ``sandbox``, and a ``unit`` test
requests no sandbox fixture (``sandbox_up``, or any fixture that depends on it, however deep).

tests/conftest.py runs ``check_kinds`` on the collected tests before ``-m`` deselects any, so a
broken rule fails every run, `pytest -m unit` included, naming each test and why.
"""

from __future__ import annotations

import pytest

KINDS = ("unit", "sandbox")
SANDBOX_FIXTURE = "sandbox_up"


def sandbox_fixtures_requested(item: pytest.Item) -> list[str]:
    """The fixtures ``item`` requests (by argument, usefixtures or autouse) that need ``SANDBOX_FIXTURE``."""
    info = getattr(item, "_fixtureinfo", None)
    if info is None or SANDBOX_FIXTURE not in getattr(item, "fixturenames", ()):
        return []
    needing = []
    for name in info.initialnames:
        seen, todo = set(), [name]
        while todo:  # the closure of one requested fixture, through the arguments of its definitions
            current = todo.pop()
            if current not in seen:
                seen.add(current)
                for definition in info.name2fixturedefs.get(current, ()):
                    todo.extend(definition.argnames)
        if SANDBOX_FIXTURE in seen:
            needing.append(name)
    return needing


def kind_problems(items: list[pytest.Item]) -> dict[str, str]:
    """Each test (once, however many parametrized cases it has) that breaks the rule, and why."""
    wrong: dict[str, str] = {}
    for item in items:
        kinds = [kind for kind in KINDS if item.get_closest_marker(kind)]
        test = item.nodeid.split("[", 1)[0]
        if len(kinds) != 1:
            wrong.setdefault(test, f"marked {' and '.join(kinds) or 'neither'}; mark it exactly one of unit, sandbox")
        elif kinds == ["unit"] and (needing := sandbox_fixtures_requested(item)):
            wrong.setdefault(test, f"marked unit but requests {', '.join(needing)}, which needs the sandbox")
    return wrong


def check_kinds(items: list[pytest.Item]) -> None:
    """Fail the collection when any test breaks the rule."""
    if wrong := kind_problems(items):
        raise pytest.UsageError(
            "tests that break the unit/sandbox rule (tests/support/marker_rule.py):\n"
            + "\n".join(f"  {test}: {why}" for test, why in wrong.items())
        )
