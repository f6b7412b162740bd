"""Typed results passed between tasks, targets and flows.

Checks return verdicts; the flow decides what a verdict means for the run.
Models that only one module uses live in that module.
"""

from __future__ import annotations

from datetime import UTC, datetime
from enum import StrEnum
from typing import Any, Literal

from pydantic import BaseModel, Field

from tasks.core.migration_review import MigrationReview


def utcnow() -> datetime:
    return datetime.now(UTC)


class Verdict(StrEnum):
    PASS = "pass"
    FAIL = "fail"
    # No data, too few samples, or a generator that could not keep up: never a pass.
    INCONCLUSIVE = "inconclusive"


class CheckResult(BaseModel):
    """One named check of a gate."""

    name: str
    verdict: Verdict
    detail: str = ""
    request: str = ""
    response: str = ""
    required: bool = Field(True, description="False for checks that inform but never block (Slack)")


class GateReport(BaseModel):
    """What a verification gate saw. ``verdict`` is PASS only when every check passed."""

    stage: str
    checks: list[CheckResult] = Field(default_factory=list)

    @property
    def verdict(self) -> Verdict:
        verdicts = {c.verdict for c in self.checks if c.required}
        if Verdict.FAIL in verdicts:
            return Verdict.FAIL
        if Verdict.INCONCLUSIVE in verdicts or not self.checks:
            return Verdict.INCONCLUSIVE
        return Verdict.PASS

    @property
    def failures(self) -> list[CheckResult]:
        return [c for c in self.checks if c.required and c.verdict != Verdict.PASS]

    def summary(self) -> str:
        if self.verdict == Verdict.PASS:
            return f"{self.stage}: {len(self.checks)}/{len(self.checks)} checks passed"
        # Checks that failed for one reason (Prometheus unreachable, say) share it: said once.
        by_reason: dict[str, list[str]] = {}
        for check in self.failures:
            by_reason.setdefault(check.detail or str(check.verdict), []).append(check.name)
        return f"{self.stage}: " + "; ".join(f"{', '.join(names)}: {why}" for why, names in by_reason.items())


class BuildResult(BaseModel):
    """A release built, tested, pushed and verified."""

    version: str
    git_ref: str
    commit: str
    image: str = Field(description="registry/repository:tag as pushed")
    digest: str = Field(description="registry/repository:tag@sha256:... of the pushed image (pinned by digest)")
    build_time: str
    coverage: dict[str, float] = Field(default_factory=dict, description="package -> statement coverage %")
    tests_passed: int = 0
    schema_version: int | None = Field(None, description="schema version the image's migrations reach")
    source_dir: str = Field("", description="The checkout it was built from (kept until the run ends)")
    migrations: MigrationReview | None = Field(
        None, description="The pending migrations, classified and linted before anything changed"
    )


class Revision(BaseModel):
    """One revision of the app on a deploy target."""

    number: int
    image: str
    version: str = ""
    created_at: datetime = Field(default_factory=utcnow)


class ReplicaStatus(BaseModel):
    name: str
    url: str | None = None
    image: str
    ready: bool
    detail: str = ""


class ReplicaState(BaseModel):
    """One replica of the live release as the target sees it now (the release watcher reads these)."""

    name: str
    running: bool
    ready: bool | None = None  # None where the target has no readiness of its own
    restarts: int = 0  # since the replica was created
    started_at: str | None = None  # when its process last started, as the target says it (a restart changes it)
    detail: str = ""  # why it is not running or not ready, as the target says it


class RolloutResult(BaseModel):
    """The outcome of a rolling update or an undo."""

    revision: Revision
    previous: Revision | None = None
    replicas: list[ReplicaStatus] = Field(default_factory=list)
    complete: bool
    reason: str = ""
    duration_s: float = 0.0
    logs: dict[str, str] = Field(default_factory=dict, description="replica -> recent log lines, on failure")


class OneOffResult(BaseModel):
    """A one-off command (a migration) run from an image on the target."""

    args: list[str]
    exit_code: int
    logs: str = ""
    duration_s: float = 0.0

    @property
    def succeeded(self) -> bool:
        return self.exit_code == 0


class ObjectPlan(BaseModel):
    """What a deploy would do to one object (a Kubernetes object, a replica)."""

    kind: str
    name: str
    action: Literal["create", "update", "unchanged"]
    diff: str = Field("", description="unified diff live -> applied (Secret: key names only)")


class DeployPlan(BaseModel):
    """A dry run of ``deploy``: nothing was changed."""

    namespace: str = ""
    image: str
    version: str
    objects: list[ObjectPlan] = Field(default_factory=list)
    pending_migrations: list[dict[str, Any]] = Field(default_factory=list)

    @property
    def changes(self) -> list[ObjectPlan]:
        return [o for o in self.objects if o.action != "unchanged"]
