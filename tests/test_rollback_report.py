"""The rollback report: what it says after a removal, and outside text kept inside its table cells."""

from __future__ import annotations

import pytest

from flows.rollback import RollbackReport, _markdown
from tasks.core.stages import Stage
from tasks.release.deploy import ReleaseRemoval

pytestmark = pytest.mark.unit


def removed(replicas: int = 3, healthy: bool = True) -> RollbackReport:
    return RollbackReport(
        failed_stage=Stage.SIGN_OFF,
        reason="not signed off: rejected by Sam Security (security)",
        rolled_back_to=None,
        app_undone=True,
        removed=ReleaseRemoval(replicas=replicas, urls=[], detail=f"removed {replicas} replica container(s)"),
        database="kept (no migration was applied since the backup)",
        healthy=healthy,
        detail="health: 1/1 checks passed",
    )


def test_a_removed_first_release_says_so_and_counts_its_replicas():
    assert removed().summary() == (
        "no earlier release: removed the release (3 replicas), nothing left serving; "
        "database kept (no migration was applied since the backup)"
    )
    assert "(1 replica)," in removed(1).summary()
    assert "NOT removed, still serving" in removed(healthy=False).summary()


def test_outside_text_stays_in_its_cell():
    report = removed().model_copy(update={"reason": "boom | injected | cells\n# heading <!channel> [x](http://e)"})
    markdown = _markdown(report)
    [row] = [line for line in markdown.splitlines() if line.startswith("| reason |")]
    assert row.count("|") - row.count("\\|") == 3, row  # two cells: the name and the escaped reason
    assert "<!channel>" not in markdown and "\n# heading" not in markdown and "](http" not in markdown
    assert "| removal |" in markdown and "| what the target did | removed 3 replica container\\(s\\) |" in markdown
