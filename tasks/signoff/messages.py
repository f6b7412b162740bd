"""The sign-off's Slack messages in Block Kit: the run's message while it waits, the confirmation
modal behind its buttons, and the one-time code's direct message.

Everything a person typed or a gate reported is escaped for Slack here (``&``, ``<``, ``>``), so
nothing in it can mention a channel or make a link.
"""

from __future__ import annotations

import json
from uuid import UUID

from slack_sdk.models.blocks import (
    ActionsBlock,
    ButtonElement,
    ContextBlock,
    InputBlock,
    MarkdownTextObject,
    Option,
    PlainTextInputElement,
    SectionBlock,
    StaticSelectElement,
)
from slack_sdk.models.views import View

from blocks.approvers import Role
from tasks.core.escaping import for_slack
from tasks.signoff.document import GateSummary, Ledger, who_signs
from tasks.signoff.proofs import NOTES_MAX
from tasks.signoff.statement import Decision

APPROVE_ACTION, REJECT_ACTION = "signoff_approve", "signoff_reject"
CONFIRM_CALLBACK = "signoff_confirm"
NOTES_BLOCK, ROLE_BLOCK = "notes", "role"
ICONS = {"pass": "✅", "fail": "❌", "inconclusive": "❔"}


def progress_line(ledger: Ledger) -> str:
    """``k/4 signed: who (how); missing: …`` for the run's message."""
    signed = ", ".join(f"{s.role.value} ({s.name}, via {s.path or '?'})" for s in ledger.signed) or "nobody yet"
    return f"{len(ledger.signed)}/4 signed: {signed}. Missing: {who_signs(ledger, ledger.missing)}"


def waiting_blocks(ledger: Ledger, gates: list[GateSummary], run_url: str | None) -> list[dict]:
    """The blocks under the run's message while it waits: what is signed, who signed, the buttons."""
    short = ledger.digest.rsplit(":", 1)[-1][:16]
    facts = [
        f"*Version* {for_slack(ledger.version)}",
        f"*Commit* `{ledger.commit[:12]}`",
        f"*Image* `sha256:{short}…`",
        f"*Evidence* `sha256:{ledger.evidence_sha256[:16]}…`",
        f"*Deadline* {ledger.deadline:%Y-%m-%d %H:%M} UTC",
    ]
    gate_lines = [
        f"{ICONS.get(g.verdict, '•')} {for_slack(g.summary)}"
        + (f" <{g.link}|report>" if g.link and g.link.startswith(("http://", "https://")) else "")
        for g in gates
    ]
    compared = [f"*{label}:* {for_slack(text)}" for label, text in ledger.context.lines()]
    terminal = (
        f"From a terminal: `architect-signoff sign {ledger.flow_run_id} --role ROLE --decision approve` "
        "(signs with your SSH key). In the Prefect UI: Resume, with the code this run sent you by DM."
    )
    blocks = [
        SectionBlock(text=MarkdownTextObject(text=f"*Sign-off:* {for_slack(progress_line(ledger))}")),
        SectionBlock(fields=[MarkdownTextObject(text=f) for f in facts]),
        SectionBlock(text=MarkdownTextObject(text="\n".join(gate_lines) or "(no gates)")),
        # Slack refuses a section over 3,000 characters; the document has the whole text.
        SectionBlock(text=MarkdownTextObject(text=("*Against the live release*\n" + "\n".join(compared))[:2900])),
        ActionsBlock(
            block_id="signoff",
            elements=[
                ButtonElement(text="Approve", action_id=APPROVE_ACTION, value=str(ledger.flow_run_id), style="primary"),
                ButtonElement(text="Reject", action_id=REJECT_ACTION, value=str(ledger.flow_run_id), style="danger"),
                *([ButtonElement(text="Open the run", action_id="signoff_open", url=run_url)] if run_url else []),
            ],
        ),
        ContextBlock(elements=[MarkdownTextObject(text=terminal)]),
    ]
    return [b.to_dict() for b in blocks]


def confirmation_view(
    ledger: Ledger, decision: Decision, roles: list[Role], lead_name: str, container: dict | None
) -> dict:
    """The modal a button opens: what exactly is signed, the role if a lead has several, the notes."""
    verb = "Approve" if decision == Decision.APPROVE else "Reject"
    metadata = {
        "run": str(ledger.flow_run_id),
        "decision": decision.value,
        "roles": [r.value for r in roles],
        "evidence": ledger.evidence_sha256,
        "container": container or {},
    }
    summary = (
        f"{verb} *{for_slack(ledger.version)}* to *{for_slack(ledger.environment)}* as "
        f"*{for_slack(lead_name)}*.\nImage `{for_slack(ledger.digest)}`\n"
        f"Evidence `sha256:{ledger.evidence_sha256}`\n"
        + (
            "A rejection rolls the release back."
            if decision == Decision.REJECT
            else "Your approval counts for the role below once the run has checked it."
        )
    )
    blocks: list = [SectionBlock(text=MarkdownTextObject(text=summary))]
    if len(roles) > 1:
        blocks.append(
            InputBlock(
                block_id=ROLE_BLOCK,
                label="Role you sign for",
                element=StaticSelectElement(
                    action_id=ROLE_BLOCK, options=[Option(value=r.value, label=r.value) for r in roles]
                ),
            )
        )
    else:
        blocks.append(ContextBlock(elements=[MarkdownTextObject(text=f"Role: *{roles[0].value}*")]))
    blocks.append(
        InputBlock(
            block_id=NOTES_BLOCK,
            label="Notes" + (" (why you reject)" if verb == "Reject" else ""),
            optional=decision == Decision.APPROVE,
            element=PlainTextInputElement(action_id=NOTES_BLOCK, multiline=True, max_length=NOTES_MAX),
        )
    )
    view = View(
        type="modal",
        callback_id=CONFIRM_CALLBACK,
        title=f"{verb} the release",
        submit=verb,
        close="Cancel",
        private_metadata=json.dumps(metadata),
        blocks=blocks,
    )
    return view.to_dict()


def code_message(code: str, role: Role, ledger: Ledger, run_url: str | None) -> str:
    """The direct message carrying one lead's one-time code."""
    where = f"<{run_url}|the run in Prefect>" if run_url else "the run in the Prefect UI"
    return (
        f"Your one-time code to sign off {for_slack(ledger.version)} to {for_slack(ledger.environment)} as "
        f"*{role.value}* (run {ledger.flow_run_id}): `{code}`\n"
        f"Open {where}, press Resume, choose {role.value}, and enter the code as proof. "
        f"It counts once, for {role.value} only. The Approve/Reject buttons on the run's message need no code."
    )


def parse_metadata(text: str) -> tuple[UUID, Decision, list[Role], str, dict]:
    """The modal's private metadata back (run, decision, roles, evidence, the message's container)."""
    data = json.loads(text)
    return (
        UUID(data["run"]),
        Decision(data["decision"]),
        [Role(r) for r in data["roles"]],
        str(data["evidence"]),
        dict(data.get("container") or {}),
    )
