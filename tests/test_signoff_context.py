"""What the leads see beside the gates: the comparison with the live release and the migrations' review.

Built from hand-made reports (no sandbox): the description above the Resume form, the Slack
message's blocks and the filled document carry one line each and the full sections, and a changed
comparison changes the evidence the leads sign.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime

import pytest

from blocks.approvers import Role
from tasks.core.migration_review import (
    ClassReason,
    LintFinding,
    MigrationClass,
    MigrationEffect,
    MigrationReview,
    ReviewedMigration,
    TableDelta,
)
from tasks.core.models import Verdict
from tasks.gates.baseline import Comparison
from tasks.gates.load.gate import LoadReport
from tasks.gates.load.judge import LoadBaselineComparison, ProfileComparison
from tasks.gates.metrics.report import MetricsBaseline, MetricsReport
from tasks.signoff.approval import evidence_of, release_context
from tasks.signoff.document import NO_BASELINE, GateSummary, Ledger, SignOffRecord, describe
from tasks.signoff.messages import waiting_blocks
from tests.support.signoff import GATES, LEADS, RELEASE

DEPLOY = datetime(2024, 2, 17, 12, 0, tzinfo=UTC)


def metrics_report(p95_baseline: float) -> MetricsReport:
    p95 = Comparison(
        name="p95 latency",
        unit="ms",
        baseline=p95_baseline,
        candidate=300.0,
        threshold="< 500 ms",
        tolerance="+20% and +5 ms",
        absolute=Verdict.PASS,
        vs_baseline=Verdict.FAIL,
        why="300 ms is over the allowed 9.8 ms",
    )
    return MetricsReport(
        stage="metrics", baseline=MetricsBaseline(window="300s", ends_at=DEPLOY, releases=["3.1.0"], comparisons=[p95])
    )


def load_report() -> LoadReport:
    row = Comparison(
        name="p99",
        unit="ms",
        baseline=12.0,
        candidate=13.0,
        threshold="< 1000 ms",
        tolerance="+20% and +5 ms",
        absolute=Verdict.PASS,
        vs_baseline=Verdict.PASS,
        why="within",
    )
    return LoadReport(
        verdict=Verdict.PASS,
        reason="every profile met its targets",
        baseline=LoadBaselineComparison(
            source="run 3.1.0 <!channel>", profiles=[ProfileComparison(profile="light", rows=[row])]
        ),
    )


def migration_review() -> MigrationReview:
    deletes = ReviewedMigration(
        version=5,
        name="purge_old_sessions",
        classification=MigrationClass.DANGEROUS,
        allowed=True,
        reasons=[
            ClassReason(
                rule="deletes-rows", classification=MigrationClass.DANGEROUS, detail="DELETE FROM sessions", statement=1
            )
        ],
        findings=[LintFinding(rule="ban-delete-without-where", message="deletes every row", line=3)],
    )
    effect = MigrationEffect(
        measured_at=DEPLOY,
        tables=[TableDelta(table="sessions", rows_before=1200, rows_after=200, bytes_before=65536, bytes_after=16384)],
    )
    return MigrationReview(
        current_version=4, target_version=5, pending=[deletes], allow=[deletes.id], linter="squawk 1.0", effect=effect
    )


def ledger_and_record(context) -> tuple[Ledger, SignOffRecord]:
    ledger = Ledger(
        flow_run_id="00000000-0000-0000-0000-000000000001",
        pause_key="sign-off-1",
        environment="sandbox",
        version=RELEASE.version,
        commit=RELEASE.commit,
        digest=RELEASE.digest,
        approvers={Role(r): [n] for r, n in LEADS.items()},
        deadline=DEPLOY,
        context=context,
    )
    record = SignOffRecord(
        environment="sandbox",
        environment_kind="sandbox",
        version=RELEASE.version,
        commit=RELEASE.commit,
        digest=RELEASE.digest,
        outcome="approved",
        gates=[GateSummary.of(g) for g in GATES],
        context=context,
    )
    return ledger, record


@pytest.mark.unit
def test_leads_see_the_baseline_comparison_and_the_migrations():
    metrics, load, review = metrics_report(4.0), load_report(), migration_review()
    context = release_context([metrics], load, review)
    ledger, record = ledger_and_record(context)

    text = describe(ledger, record)
    assert "**Metrics:** vs baseline: regression in p95 latency" in text
    assert "**Load:** vs run 3\\.1\\.0 &lt;\\!channel\\>: pass" in text, "the source is outside text: escaped"
    assert "**Migrations:** 1 pending migration\\(s\\), schema 4 \\-\\> 5: 1 dangerous" in text
    assert "rows LOST: sessions \\-1,000" in text

    slack = json.dumps(waiting_blocks(ledger, record.gates, None))
    assert "vs baseline: regression in p95 latency" in slack and "rows LOST: sessions -1,000" in slack
    assert "<!channel>" not in slack and "&lt;!channel&gt;" in slack

    doc = record.document()
    live = doc.split("## Against the live release")[1].split("## Migrations")[0]
    assert metrics.baseline.markdown() in live and load.baseline.markdown() in live
    migrations = doc.split("## Migrations")[1]
    assert review.markdown() in migrations
    assert "**dangerous (allowed by the run)**" in migrations
    assert "ban\\-delete\\-without\\-where \\(line 3\\)" in migrations
    assert "| `sessions` | 1,200 | 200 | -1,000 |" in migrations and "**LOST ROWS**" in migrations


@pytest.mark.unit
def test_a_changed_comparison_changes_the_evidence():
    gates = [GateSummary.of(g) for g in GATES]
    load, review = load_report(), migration_review()
    signed = evidence_of(RELEASE, gates, release_context([metrics_report(4.0)], load, review)).sha256()
    assert signed == evidence_of(RELEASE, gates, release_context([metrics_report(4.0)], load, review)).sha256()
    changed_baseline = evidence_of(RELEASE, gates, release_context([metrics_report(5.0)], load, review)).sha256()
    review.effect.tables[0].rows_after = 199
    changed_rows = evidence_of(RELEASE, gates, release_context([metrics_report(4.0)], load, review)).sha256()
    assert len({signed, changed_baseline, changed_rows}) == 3
    # Without any comparison the evidence hashes as it did before comparisons were shown.
    assert evidence_of(RELEASE, gates).sha256() != signed


@pytest.mark.unit
def test_no_baseline_and_no_review_are_said_not_left_out():
    context = release_context([MetricsReport(stage="metrics")], None, None)
    ledger, record = ledger_and_record(context)
    text = describe(ledger, record)
    assert f"**Metrics:** {NO_BASELINE}" in text and f"**Load:** {NO_BASELINE}" in text
    assert "**Migrations:** no migration review" in text
    doc = record.document()
    assert "## Against the live release" in doc and f"- Metrics: {NO_BASELINE}" in doc
    assert "## Migrations" in doc.split("## Against the live release")[1]
