"""What the build learnt about a release's pending migrations, before any of them ran.

Plain data (the linter is ``tasks.database.migration_lint``): each pending migration is classified

- **expand**: additive, safe for the previous release (new tables, nullable or defaulted columns);
- **contract**: removes or renames something the previous release uses (a table, a column), or
  changes a column's type under it;
- **dangerous**: deletes rows, rewrites a table, or takes a lock that blocks traffic on a large table;

with the rules that decided it and the lint findings (squawk's). A contract or dangerous migration
runs only when the run names it in ``allow_migrations``. After the migrations ran, ``effect`` holds
every table's rows and size before and after. The rollback's "schema changed" test asks
``restore_needed``: only what a previous release cannot live with needs the backup back.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from pydantic import BaseModel, Field

from tasks.core.escaping import for_markdown


class MigrationClass(StrEnum):
    EXPAND = "expand"
    CONTRACT = "contract"
    DANGEROUS = "dangerous"


SEVERITY = {MigrationClass.EXPAND: 0, MigrationClass.CONTRACT: 1, MigrationClass.DANGEROUS: 2}


class ClassReason(BaseModel):
    """One statement's contribution to a migration's class."""

    rule: str = Field(description="e.g. renames-column, deletes-rows, locks-large-table")
    classification: MigrationClass
    detail: str
    statement: int = Field(0, description="1-based position of the statement in the file; 0: the whole file")


class LintFinding(BaseModel):
    """One finding of the PostgreSQL migration linter (squawk)."""

    rule: str
    level: str = "warning"
    message: str
    line: int | None = Field(None, description="1-based line in the migration file")
    help: str = ""


class TableStats(BaseModel):
    rows: int
    bytes: int
    columns: list[str] = Field(default_factory=list)


class ReviewedMigration(BaseModel):
    version: int
    name: str
    classification: MigrationClass
    reasons: list[ClassReason] = Field(default_factory=list)
    findings: list[LintFinding] = Field(default_factory=list)
    allowed: bool = Field(False, description="named in the run's allow_migrations")

    @property
    def id(self) -> str:
        """How the run names it in ``allow_migrations`` (the file name without .up.sql)."""
        return f"{self.version:03d}_{self.name}"

    @property
    def needs_permission(self) -> bool:
        return self.classification is not MigrationClass.EXPAND

    def why(self) -> str:
        decisive = [r for r in self.reasons if r.classification is self.classification]
        return "; ".join(f"{r.rule}: {r.detail}" for r in decisive) or "additive only"


class TableDelta(BaseModel):
    table: str
    rows_before: int | None = Field(None, description="None: the table did not exist")
    rows_after: int | None = Field(None, description="None: the table is gone")
    bytes_before: int | None = None
    bytes_after: int | None = None

    @property
    def lost_rows(self) -> int:
        return max((self.rows_before or 0) - (self.rows_after or 0), 0)


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    if n < 1024:
        return f"{n:,} B"
    value = float(n)
    for unit in ("kB", "MB", "GB"):
        value /= 1024
        if value < 1024 or unit == "GB":
            break
    return f"{value:,.1f} {unit}"


class MigrationEffect(BaseModel):
    """Every table's rows and size before and after the migrations ran."""

    measured_at: datetime
    tables: list[TableDelta] = Field(default_factory=list)

    @property
    def lost(self) -> list[TableDelta]:
        return [t for t in self.tables if t.lost_rows]

    def summary(self) -> str:
        if not self.lost:
            return f"no table lost rows ({len(self.tables)} tables)"
        return "rows LOST: " + ", ".join(f"{t.table} -{t.lost_rows:,}" for t in self.lost)

    def markdown(self) -> str:
        lines = [
            f"**Row counts before and after the migrations**: {for_markdown(self.summary())}",
            "",
            "| table | rows before | rows after | delta | size before | size after | |",
            "|---|---:|---:|---:|---:|---:|---|",
        ]
        for t in self.tables:
            before = "-" if t.rows_before is None else f"{t.rows_before:,}"
            after = "-" if t.rows_after is None else f"{t.rows_after:,}"
            delta = f"{(t.rows_after or 0) - (t.rows_before or 0):+,}"
            flag = (
                "**LOST ROWS**"
                if t.lost_rows
                else "new"
                if t.rows_before is None
                else "dropped"
                if t.rows_after is None
                else ""
            )
            lines.append(
                f"| `{for_markdown(t.table)}` | {before} | {after} | {delta} | {_size(t.bytes_before)} | "
                f"{_size(t.bytes_after)} | {flag} |"
            )
        return "\n".join(lines)


class MigrationReview(BaseModel):
    """The release's pending migrations, classified and linted at build, before anything changed."""

    current_version: int = Field(description="the database's schema_migrations version when the build read it")
    target_version: int = Field(description="the newest migration in the release's source")
    pending: list[ReviewedMigration] = Field(default_factory=list)
    allow: list[str] = Field(default_factory=list, description="the run's allow_migrations")
    linter: str = Field("", description="the tools and versions that read the SQL")
    tables_before: dict[str, TableStats] = Field(default_factory=dict)
    effect: MigrationEffect | None = Field(None, description="filled once the migrations ran")

    @property
    def classification(self) -> MigrationClass:
        return max((m.classification for m in self.pending), key=SEVERITY.__getitem__, default=MigrationClass.EXPAND)

    @property
    def refused(self) -> list[ReviewedMigration]:
        return [m for m in self.pending if m.needs_permission and not m.allowed]

    def refusal(self) -> str:
        """Why the build stops, naming each migration and its rule."""
        parts = [f"migration {m.id} is {m.classification.value} ({m.why()})" for m in self.refused]
        allow = ", ".join(f"'{m.id}'" for m in self.refused)
        return "; ".join(parts) + f"; it runs only with allow_migrations=[{allow}]"

    def summary(self) -> str:
        if not self.pending:
            return f"no pending migrations (database at schema {self.current_version})"
        counts = {c: sum(m.classification is c for m in self.pending) for c in MigrationClass}
        shown = ", ".join(f"{n} {c.value}" for c, n in counts.items() if n)
        allowed = [m.id for m in self.pending if m.needs_permission and m.allowed]
        text = (
            f"{len(self.pending)} pending migration(s), schema {self.current_version} -> {self.target_version}: {shown}"
        )
        if allowed:
            text += f" (allowed by the run: {', '.join(allowed)})"
        if self.effect is not None:
            text += f"; {self.effect.summary()}"
        return text

    def markdown(self) -> str:
        """The sign-off's view: each migration's class, why, and the linter's findings; then the row deltas."""
        lines = [f"**Migrations: {self.classification.value}**: {for_markdown(self.summary())}", ""]
        if self.pending:
            lines += ["| migration | class | why | lint findings |", "|---|---|---|---|"]
            for m in self.pending:
                findings = "; ".join(f"{f.rule} (line {f.line})" if f.line else f.rule for f in m.findings) or "none"
                shown = m.classification.value + (" (allowed by the run)" if m.needs_permission and m.allowed else "")
                lines.append(f"| `{m.id}` | **{shown}** | {for_markdown(m.why())} | {for_markdown(findings)} |")
            lines += ["", f"Read by {for_markdown(self.linter)}; nothing was run to classify them."]
        if self.effect is not None:
            lines += ["", self.effect.markdown()]
        return "\n".join(lines)

    def restore_needed(self, applied: list[int]) -> tuple[bool, str]:
        """Whether a rollback must restore the backup, given the versions applied since it was taken.

        Expand-only changes leave a schema the previous release reads as before: keeping it keeps every
        row written since the backup. A contract or dangerous migration, or one this review never saw,
        needs the backup back.
        """
        if not applied:
            return False, "no migration was applied since the backup"
        by_version = {m.version: m for m in self.pending}
        unknown = [v for v in applied if v not in by_version]
        if unknown:
            return True, f"migration(s) {unknown} applied since the backup were not reviewed at build"
        needing = [by_version[v] for v in applied if by_version[v].needs_permission]
        if needing:
            return True, "; ".join(f"{m.id} is {m.classification.value} ({m.why()})" for m in needing)
        return False, (
            f"only expand migrations were applied ({', '.join(by_version[v].id for v in applied)}): "
            "the previous release reads the schema as before"
        )
