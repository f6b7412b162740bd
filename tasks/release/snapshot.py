"""The run's configuration, frozen when it starts: a snapshot of its environment block without secrets.

A run can wait 24 h for its sign-off, and anyone who reaches the Prefect API can edit the block
meanwhile. What the rollback (and the recovery of a run that died) restores, redeploys and checks
must be what the run started with, never whatever the block names now: the database above all.

The snapshot is the block's JSON with every secret masked (Prefect's own masking of ``SecretStr``
and ``SecretDict``), its SHA-256, and when it was taken. It is kept with the run as an artifact
(``environment-snapshot``), travels in the deploy journal and is the rollback subflow's parameter;
none of them holds a secret.

Secrets are read from where they live, the block's secret fields, when the snapshot is used: a
snapshot that held them would put them in the API's artifacts and parameters, and a rotated
password must still work for the rollback.
"""

from __future__ import annotations

import hashlib
import json
from datetime import datetime
from typing import Any

from prefect.logging import get_run_logger
from pydantic import BaseModel, Field

from blocks.environment import StagingEnvironment
from tasks.core.artifacts import markdown_artifact
from tasks.core.errors import PermanentError
from tasks.core.models import utcnow

ARTIFACT_KEY = "environment-snapshot"
# How Prefect masks a secret field in a block's JSON (SecretStr, SecretDict).
MASK = "**********"
_MISSING = object()


class ConfigSnapshot(BaseModel):
    """The environment block as the run saw it at its start, secrets masked."""

    environment: str = Field(description="the block's name")
    taken_at: datetime
    sha256: str = Field(description="of the canonical JSON of ``config``")
    config: dict[str, Any] = Field(description="the block's fields, every secret masked")

    def describe(self) -> str:
        return f"the configuration of {self.environment!r} as of {self.taken_at:%Y-%m-%d %H:%M:%S} UTC"


def _canonical(config: dict[str, Any]) -> str:
    return json.dumps(config, sort_keys=True, separators=(",", ":"))


def snapshot_of(environment: str, env: StagingEnvironment) -> ConfigSnapshot:
    """``env`` (the block named ``environment``) without its secrets."""
    config = env.model_dump(mode="json")  # secrets masked
    return ConfigSnapshot(
        environment=environment,
        taken_at=utcnow(),
        sha256=hashlib.sha256(_canonical(config).encode()).hexdigest(),
        config=config,
    )


def take_snapshot(environment: str, env: StagingEnvironment) -> ConfigSnapshot:
    """Freeze the run's configuration at its start and keep it with the run (an artifact)."""
    snapshot = snapshot_of(environment, env)
    get_run_logger().info("configuration of %s frozen (sha256 %s)", environment, snapshot.sha256[:12])
    markdown_artifact(
        key=ARTIFACT_KEY,
        description=f"The run's configuration: {snapshot.describe()} (secrets not included)",
        markdown=(
            f"## Configuration of `{environment}` at the run's start\n\nThe rollback and the recovery of this "
            f"run use this, never the block as it is later. Secrets are masked: they are read from the block "
            f"when used.\n\nSHA-256 `{snapshot.sha256}`\n\n```json\n{json.dumps(snapshot.config, indent=1)}\n```\n"
        ),
    )
    return snapshot


def _with_secrets(frozen: Any, masked_now: Any, full_now: Any, path: str) -> Any:
    """``frozen`` with each masked secret replaced by the value the block holds now at the same place."""
    if isinstance(frozen, dict):
        masked = masked_now if isinstance(masked_now, dict) else {}
        full = full_now if isinstance(full_now, dict) else {}
        return {
            k: _with_secrets(v, masked.get(k, _MISSING), full.get(k, _MISSING), f"{path}.{k}")
            for k, v in frozen.items()
        }
    if isinstance(frozen, list):
        masked = masked_now if isinstance(masked_now, list) else []
        full = full_now if isinstance(full_now, list) else []
        return [
            _with_secrets(v, masked[n] if n < len(masked) else _MISSING, full[n] if n < len(full) else _MISSING, path)
            for n, v in enumerate(frozen)
        ]
    if frozen == MASK:
        if masked_now == MASK and full_now is not _MISSING:
            return full_now
        raise PermanentError(f"the secret {path.lstrip('.')} of the run's configuration is no longer in the block")
    return frozen


def with_secrets_of(snapshot: ConfigSnapshot, now: StagingEnvironment) -> StagingEnvironment:
    """The snapshot's settings, each masked secret filled from ``now`` (the block as it is now)."""
    masked, full = now.model_dump(mode="json"), now.model_dump(mode="json", context={"include_secrets": True})
    return StagingEnvironment.model_validate(_with_secrets(snapshot.config, masked, full, ""))


def environment_from(snapshot: ConfigSnapshot) -> StagingEnvironment:
    """The run's environment as it started, with the secrets its block holds now."""
    return with_secrets_of(snapshot, StagingEnvironment.load(snapshot.environment))
