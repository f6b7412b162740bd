"""The one interface every deploy target offers.

A target runs replicas of one app: it rolls a new image out and waits for it, undoes to
an earlier revision, lists its revisions, runs one-off commands from an image (migrations),
and hands out recent logs. ``DockerTarget`` and ``KubernetesTarget`` implement it; the flow
only ever sees this interface.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence

from prefect.blocks.core import Block
from pydantic import model_validator

from blocks.validation import reject_unknown_fields
from tasks.core.models import DeployPlan, OneOffResult, Revision, RolloutResult


class DeployTarget(Block, abc.ABC):
    """Abstract base of the deploy targets; not registered itself."""

    _block_schema_capabilities = ["deploy-target"]
    _known_fields_only = model_validator(mode="before")(reject_unknown_fields)

    def with_checkout(self, repo_dir: str) -> "DeployTarget":
        """This target reading what it needs (manifests, templates) from an app checkout."""
        return self

    @abc.abstractmethod
    def check_reachable(self) -> str:
        """Answer a cheap read (no change); return a one-line description, raise on failure."""

    @abc.abstractmethod
    def deploy(self, image: str, version: str, env: Mapping[str, str], timeout_s: float) -> RolloutResult:
        """Roll ``image`` out and wait until it is complete or has failed.

        Returns the result in both cases (``complete`` tells which); raises only when the
        target could not be asked at all.
        """

    @abc.abstractmethod
    def plan(self, image: str, version: str, env: Mapping[str, str]) -> DeployPlan:
        """What ``deploy`` would change (a dry run); changes nothing."""

    @abc.abstractmethod
    def rollback(self, to_revision: int | None, env: Mapping[str, str], timeout_s: float) -> RolloutResult:
        """Undo to ``to_revision``, or to the one before the newest, and wait.

        Like ``kubectl rollout undo``, the undo is itself a new revision with the old template.
        ``env`` is the app's environment for targets that keep none of their own (Docker).
        """

    @abc.abstractmethod
    def history(self) -> list[Revision]:
        """Every revision the target remembers, oldest first."""

    @abc.abstractmethod
    def current_revision(self) -> Revision | None:
        """The revision the target runs now, or None before the first deploy."""

    @abc.abstractmethod
    def run_one_off(
        self, image: str, args: Sequence[str], env: Mapping[str, str], timeout_s: float
    ) -> OneOffResult:
        """Run ``args`` in a throwaway container or Job from ``image``; always clean it up."""

    @abc.abstractmethod
    def fetch_logs(self, tail: int = 100) -> dict[str, str]:
        """Recent log lines of every replica, by replica name."""

    @abc.abstractmethod
    def replica_urls(self) -> list[str]:
        """Base URLs of the running replicas that a check on this machine can reach directly."""

    def replicas_to_check(self, rollout: RolloutResult) -> int | None:
        """How many URLs ``replica_urls()`` must list after ``rollout``: one per replica it left
        running. None where the URLs are a configured subset rather than every replica."""
        return len(rollout.replicas)
