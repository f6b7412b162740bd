"""The staging-deploy flow's parameter types (the UI's form fields) and its environment lookup."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, Field

from blocks.environment import StagingEnvironment
from blocks.validation import GIT_REF, MAX_INPUT_LENGTH, NAME, SEMVER, check_git_ref, check_name, check_semver
from tasks.core.errors import InvalidInput

# The schema (the UI's form, the server's check of a deployment run) carries the full rule; pydantic's
# own regex engine has no look-arounds, so the validator applies it here.
GitRef = Annotated[str, Field(json_schema_extra={"pattern": GIT_REF.pattern}), AfterValidator(check_git_ref)]
# Empty means the same as absent (derive the version) in the UI form, the API and the CLI; the schema
# says so too, since the server checks a deployment run's parameters against it.
Version = Annotated[
    str | None,
    Field(pattern=f"^$|{SEMVER.pattern}", max_length=MAX_INPUT_LENGTH),
    AfterValidator(lambda v: check_semver(v) if v else None),
]
EnvironmentName = Annotated[str, Field(pattern=NAME.pattern), AfterValidator(check_name)]
OnCollision = Literal["wait", "cancel"]
LoadProfiles = list[Literal["light", "medium", "heavy", "sustained"]] | None
LoadSeconds = Annotated[float, Field(gt=0, le=3600)]
SustainedSeconds = Annotated[float, Field(gt=0, le=86400)]
SignoffHours = Annotated[float, Field(gt=0, le=168)]
# Contract or dangerous migrations a run may apply, by file name without .up.sql.
MigrationNames = Annotated[
    list[Annotated[str, Field(pattern=r"^[0-9]{1,9}_[a-z0-9_]{1,200}$")]] | None, Field(max_length=100)
]


def load_environment(name: str) -> StagingEnvironment:
    try:
        return StagingEnvironment.load(name)
    except ValueError as exc:
        raise InvalidInput(f"environment: no StagingEnvironment block named {name!r} ({exc})") from exc
