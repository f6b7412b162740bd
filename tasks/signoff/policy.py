"""The sign-off policy a run holds: who may sign, with which identities, and whether it must wait.

The run freezes it when it starts, from the environment block it loaded then, and keeps it in
its own memory: editing the block during the pause changes nothing for a running run. Its hash
goes into the sign-off document. Whether a run may skip the sign-off is never the block's to
say (anyone who reaches the Prefect API can edit a block): it is the worker's own setting,
``ARCHITECT_ALLOW_SKIP_SIGNOFF``, a comma-separated list of environment block names (shell-style
patterns: ``sandbox,test-*``). A staging worker leaves it unset.
"""

from __future__ import annotations

import os
from fnmatch import fnmatchcase

from pydantic import BaseModel

from blocks.approvers import Approver, Role
from blocks.environment import StagingEnvironment
from tasks.core.errors import InvalidInput
from tasks.core.stages import Stage
from tasks.signoff.statement import canonical_json, sha256_hex

STAGE = Stage.SIGN_OFF
ALLOW_SKIP_VARIABLE = "ARCHITECT_ALLOW_SKIP_SIGNOFF"


def environment_name(environment: StagingEnvironment | str) -> str:
    if isinstance(environment, str):
        return environment
    return getattr(environment, "_block_document_name", None) or ""


def skip_allowed_here() -> list[str]:
    """The environments this process (the worker) lets a run deploy to without sign-off."""
    return [name.strip() for name in os.environ.get(ALLOW_SKIP_VARIABLE, "").split(",") if name.strip()]


def signoff_required(environment: StagingEnvironment | str, skip: bool) -> bool:
    """Whether the run must wait for sign-off; skipping it is refused unless this worker allows it."""
    if not skip:
        return True
    name, allowed = environment_name(environment), skip_allowed_here()
    if not name or not any(fnmatchcase(name, pattern) for pattern in allowed):
        raise InvalidInput(
            f"skip_signoff: sign-off may be skipped only in a sandbox environment this worker names in "
            f"{ALLOW_SKIP_VARIABLE} ({', '.join(allowed) or 'none'}), not in {name or 'an unnamed environment'!r}",
            stage=STAGE,
        )
    return False


class SignOffPolicy(BaseModel):
    """The run's own copy of who may sign and how their proof is checked."""

    environment: str
    required: bool = True
    approvers: dict[Role, list[Approver]]
    receiver_key: str | None = None

    def sha256(self) -> str:
        return sha256_hex(canonical_json(self.model_dump(mode="json")))

    def leads(self, role: Role) -> list[Approver]:
        return list(self.approvers.get(role, []))

    def names(self, role: Role) -> list[str]:
        return [lead.name for lead in self.leads(role)]

    def roles_of_slack_user(self, user_id: str) -> list[Role]:
        return [role for role in Role if any(lead.slack_user_id == user_id for lead in self.leads(role))]

    def lead_by_slack(self, role: Role, user_id: str) -> Approver | None:
        return next((lead for lead in self.leads(role) if lead.slack_user_id == user_id), None)

    def unstaffed(self) -> list[Role]:
        """Roles nobody could ever sign: no lead with a verifiable identity."""
        return [role for role in Role if not any(lead.verifiable for lead in self.leads(role))]


def freeze_policy(environment: StagingEnvironment, skip: bool = False) -> SignOffPolicy:
    """The policy of a run starting now (call it when the run starts)."""
    return SignOffPolicy(
        environment=environment_name(environment) or environment.kind,
        required=signoff_required(environment, skip),
        approvers={role: [lead.model_copy(deep=True) for lead in environment.approvers.get(role, [])] for role in Role},
        receiver_key=environment.signoff_receiver_key,
    )
