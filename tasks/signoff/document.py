"""What a sign-off is about and how people read it: the records, the filled document, the form's text.

``SignOffRecord.document()`` fills the guide's sign-off template (the ``sign-off`` artifact) and
lists, per role, the verified identity, the path it came by, the time, the notes and the hash of
the statement signed; ``describe`` is the markdown above the Resume form; the rest words Slack
messages. Plain data and text only: pausing, verifying and publishing are approval.py's.
"""

from __future__ import annotations

from datetime import datetime
from uuid import UUID

from pydantic import BaseModel, Field

from blocks.approvers import Role
from tasks.core.escaping import for_markdown, for_slack
from tasks.core.models import GateReport, utcnow
from tasks.notify import RunNotifier, SlackMessage
from tasks.signoff.policy import SignOffPolicy
from tasks.signoff.statement import Decision, Evidence

TITLES = {
    Role.ENGINEERING: "Engineering Lead",
    Role.DEVOPS: "DevOps Lead",
    Role.SECURITY: "Security Lead",
    Role.PRODUCT: "Product Lead",
}


class SignOff(BaseModel):
    """One accepted sign-off: who (as verified), for what, how, when."""

    role: Role
    name: str
    decision: Decision
    notes: str = ""
    signed_at: datetime = Field(default_factory=utcnow)
    path: str = Field("", description="slack, ui or terminal: how the proof came")
    identity: str = Field("", description="The verified identity: slack:U…, ssh:principal SHA256:…, or the code's DM")
    statement_sha256: str = Field("", description="SHA-256 of the canonical statement this sign-off stands for")


class GateSummary(BaseModel):
    """One gate as the leads see it: verdict, summary and a link to its report."""

    stage: str
    verdict: str
    summary: str
    link: str | None = None
    artifact_id: UUID | None = Field(None, description="The report the link shows; its content is hashed")
    report_sha256: str = Field("", description="SHA-256 of the report as shown when the sign-off began")

    @classmethod
    def of(cls, gate: GateSummary | GateReport) -> GateSummary:
        if isinstance(gate, GateSummary):
            return gate.model_copy()
        return cls(stage=gate.stage, verdict=str(gate.verdict), summary=gate.summary())


NO_BASELINE = "no baseline: first deploy or no traffic before the deploy"


class ReleaseContext(BaseModel):
    """How the release compares with the live one and what its migrations do, as text rendered when
    the sign-off began (the gates' report models keep their subclasses' fields only this way)."""

    metrics_baseline: str = Field(NO_BASELINE, description="one line: the metrics checks against the baseline")
    load_baseline: str = Field(NO_BASELINE, description="one line: the load test against the live release's last")
    migrations: str = Field("no migration review (the build listed none)", description="one line: class, rows")
    against_live_markdown: str = Field("", description="the metrics and load comparison tables (escaped markdown)")
    migrations_markdown: str = Field("", description="classification, lint findings, row deltas (escaped markdown)")

    def lines(self) -> list[tuple[str, str]]:
        """(label, text) for the description and Slack: one line each."""
        return [("Metrics", self.metrics_baseline), ("Load", self.load_baseline), ("Migrations", self.migrations)]

    def texts(self) -> dict[str, str]:
        """What the evidence hashes: every text the leads are shown."""
        return self.model_dump(mode="json")


class Ledger(BaseModel):
    """What a paused run waits for; saved before every pause for the CLI (and the curious)."""

    flow_run_id: UUID
    pause_key: str
    environment: str
    version: str
    commit: str
    digest: str
    approvers: dict[Role, list[str]]
    signed: list[SignOff] = Field(default_factory=list)
    deadline: datetime
    evidence: Evidence | None = None
    evidence_sha256: str = ""
    policy: SignOffPolicy | None = Field(None, description="The run's frozen policy (the run checks its own copy)")
    policy_sha256: str = ""
    slack_message: SlackMessage | None = None
    context: ReleaseContext = Field(default_factory=ReleaseContext)

    @property
    def missing(self) -> list[Role]:
        done = {s.role for s in self.signed}
        return [role for role in Role if role not in done]


class SignOffRecord(BaseModel):
    """The outcome of the sign-off and the filled sign-off document."""

    environment: str
    environment_kind: str
    version: str
    commit: str
    digest: str
    outcome: str = Field(description="approved, rejected, timed out")
    reason: str = ""
    signoffs: list[SignOff] = Field(default_factory=list)
    refused: list[str] = Field(default_factory=list)
    gates: list[GateSummary] = Field(default_factory=list)
    figures: dict[str, str] = Field(default_factory=dict)
    context: ReleaseContext = Field(default_factory=ReleaseContext)
    finished_at: datetime = Field(default_factory=utcnow)
    policy_sha256: str = ""
    evidence_sha256: str = ""

    @property
    def approved(self) -> bool:
        return self.outcome == "approved"

    def document(self) -> str:
        """The guide's sign-off template, filled, then what it was signed against."""
        by_role = {s.role: s for s in self.signoffs}
        lines = [
            f"Deployment Sign-Off: Architect Dashboard API v{self.version}",
            f"Date: {self.finished_at:%Y-%m-%d}",
            f"Environment: {self.environment_kind.title()} ({self.environment})",
            "",
        ]
        for role in Role:
            s = by_role.get(role)
            signed = (
                (
                    f"{s.name}  Date: {s.signed_at:%Y-%m-%d %H:%M} UTC  Decision: {s.decision}"
                    + (f"  Via: {s.path}" if s.path else "")
                )
                if s
                else "_____________________ Date: _____  (not signed)"
            )
            lines.append(f"{TITLES[role] + ':':<18}{signed}")
        lines += ["", "Notes:"]
        lines += [f"- {TITLES[s.role]} ({s.name}): {s.notes or '(no notes)'}" for s in self.signoffs]
        lines += [f"- Outcome: {self.outcome.upper()}" + (f": {self.reason}" if self.reason else "")]
        template = "\n".join(lines).replace("```", "'''")  # notes stay inside the code block
        md = [
            f"# Sign-off: Architect Dashboard API {self.version} → {self.environment}",
            "",
            f"```\n{template}\n```",
            "",
            "## Release",
            "",
            "| | |",
            "|---|---|",
            f"| Version | {_cell(self.version)} |",
            f"| Commit | `{_cell(self.commit)}` |",
            f"| Image | `{_cell(self.digest)}` |",
            *([f"| Evidence SHA-256 | `{self.evidence_sha256}` |"] if self.evidence_sha256 else []),
            *([f"| Policy SHA-256 | `{self.policy_sha256}` |"] if self.policy_sha256 else []),
            "",
            *_table(
                "Signatures",
                ["Role", "Lead", "Verified identity", "Path", "Signed at (UTC)", "Statement SHA-256"],
                [
                    [
                        s.role.value,
                        s.name,
                        s.identity or "(unverified)",
                        s.path or "",
                        f"{s.signed_at:%Y-%m-%d %H:%M:%S}",
                        s.statement_sha256,
                    ]
                    for s in self.signoffs
                ],
            ),
            *_table(
                "Gates",
                ["Gate", "Verdict", "Summary", "Report", "Report SHA-256"],
                [
                    [g.stage, g.verdict, g.summary, f"[report]({g.link})" if g.link else "", g.report_sha256]
                    for g in self.gates
                ],
            ),
            *_table("Performance", ["Figure", "Value"], [[k, v] for k, v in self.figures.items()]),
            "## Against the live release",
            "",
            *[f"- {label}: {for_markdown(text)}" for label, text in self.context.lines()],
            "",
            *([self.context.against_live_markdown, ""] if self.context.against_live_markdown else []),
            "## Migrations",
            "",
            self.context.migrations_markdown or for_markdown(self.context.migrations),
            "",
        ]
        if self.refused:
            md += ["## Refused sign-offs", "", *[f"- {_cell(r)}" for r in self.refused], ""]
        return "\n".join(md)


def describe(ledger: Ledger, record: SignOffRecord) -> str:
    """The markdown the UI shows above the form: what is being signed and what is missing.

    The UI gives it about 350 px before it scrolls, so the release and who is missing come first.
    """
    signed = ", ".join(f"{s.role.value} — {_cell(s.name)}" for s in ledger.signed) or "nobody yet"
    icons = {"pass": "✅", "fail": "❌", "inconclusive": "❔"}
    gates = [
        f"- {icons.get(g.verdict, '•')} {_cell(g.summary)}" + (f" ([report]({g.link}))" if g.link else "")
        for g in record.gates
    ]
    figures = " · ".join(f"{_cell(k)} {_cell(v)}" for k, v in record.figures.items())
    md = [
        f"**Sign-off: Architect Dashboard API {_cell(ledger.version)} → {_cell(ledger.environment)}**",
        "",
        f"- **Signed {len(ledger.signed)}/4:** {signed}",
        f"- **Missing:** {_cell(who_signs(ledger, ledger.missing))}",
        f"- **Version** {_cell(ledger.version)}, **commit** `{_cell(ledger.commit)}`",
        f"- **Image** `{_cell(_short_digest(ledger.digest))}`"
        + (f", **evidence** `sha256:{ledger.evidence_sha256[:16]}…`" if ledger.evidence_sha256 else ""),
        f"- **Deadline** {ledger.deadline:%Y-%m-%d %H:%M:%S} UTC; unsigned by then, the release rolls back",
        "",
        "**Gates**",
        "",
        *(gates or ["- (none given)"]),
        "",
        *([f"**Performance:** {figures}", ""] if figures else []),
        "**Against the live release**",
        "",
        *[f"- **{label}:** {for_markdown(text)}" for label, text in record.context.lines()],
        "",
        (
            "Choose your role, approve or reject (a rejection rolls the release back), enter as **proof** the "
            "one-time code this run sent you by Slack direct message, and add notes. Each role signs once; one "
            "person signs one role. Faster: the Approve/Reject buttons on the run's Slack message, or "
            "`architect-signoff sign` with your SSH key."
        ),
    ]
    return "\n".join(md)


def _short_digest(image: str) -> str:
    # The UI's form is narrow: 64 hex digits overflow it. The document and the CLI show them whole.
    name, sep, digest = image.partition("@")
    algo, _, hexes = digest.partition(":")
    return f"{name}{sep}{algo}:{hexes[:16]}…{hexes[-8:]}" if len(hexes) > 28 else image


def _table(title: str, header: list[str], rows: list[list[str]]) -> list[str]:
    if not rows:
        return []
    return [
        f"**{title}**",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
        *("| " + " | ".join(_cell(c) for c in row) + " |" for row in rows),
        "",
    ]


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def slack_escape(text: str) -> str:
    # Slack reads <...> as links and mentions; a name or a note must not ping @channel.
    return for_slack(text)


def who_signs(ledger: Ledger, roles: list[Role]) -> str:
    return ", ".join(f"{r.value} ({' or '.join(ledger.approvers.get(r, []))})" for r in roles) or "nobody"


def run_link(notifier: RunNotifier) -> str:
    return f"<{notifier.run_url}|Open the run to sign>" if notifier.run_url else ""


def human_duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.3g} h"
