"""The one interface every deploy target offers.

A target runs replicas of one app: it rolls a new image out and waits for it, undoes to
an earlier revision, lists its revisions, runs one-off commands from an image (migrations),
and hands out recent logs. The work is done by the target's engine (``TargetEngine``); the
block (``DeployTarget``) holds the settings and hands its engine out, and offers the same
operations by asking a fresh engine, so a flow or task only ever sees this interface.
``DockerTarget`` and ``KubernetesTarget`` implement it.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence

from prefect.blocks.core import Block
from pydantic import model_validator

from blocks.validation import reject_unknown_fields
from tasks.core.models import DeployPlan, OneOffResult, ReplicaState, Revision, RolloutResult


class TargetEngine(abc.ABC):
    """What a deploy target does, with the clients its block handed it."""

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
        Raises ``NoEarlierRevision`` when there is nothing to go back to.
        """

    @abc.abstractmethod
    def history(self) -> list[Revision]:
        """Every revision the target remembers, oldest first."""

    @abc.abstractmethod
    def current_revision(self) -> Revision | None:
        """The revision the target runs now, or None before the first deploy."""

    @abc.abstractmethod
    def run_one_off(self, image: str, args: Sequence[str], env: Mapping[str, str], timeout_s: float) -> OneOffResult:
        """Run ``args`` in a throwaway container or Job from ``image``; always clean it up."""

    @abc.abstractmethod
    def fetch_logs(self, tail: int = 100) -> dict[str, str]:
        """Recent log lines of every replica, by replica name."""

    @abc.abstractmethod
    def replica_urls(self) -> list[str]:
        """Base URLs of the running replicas that a check on this machine can reach directly."""

    def remove_release(self, timeout_s: float) -> str:
        """Stop serving the app at all (a failed first deploy has nothing to go back to): Docker
        removes the replicas, Kubernetes scales the Deployment to zero. Returns what was done."""
        raise NotImplementedError(f"{type(self).__name__} cannot remove a release yet")

    def replica_states(self) -> list[ReplicaState]:
        """Every replica of the app as the target sees it now (running, ready, restarts)."""
        raise NotImplementedError(f"{type(self).__name__} cannot list replica states yet")


class DeployTarget(Block, abc.ABC):
    """Abstract base of the deploy target blocks; not registered itself.

    Each operation asks a new engine (``engine()``): the block is settings only, and an
    engine never outlives the call, so a copy with other settings (``with_checkout``) never
    shares a client with the original.
    """

    _block_schema_capabilities = ["deploy-target"]
    _known_fields_only = model_validator(mode="before")(reject_unknown_fields)

    @abc.abstractmethod
    def engine(self) -> TargetEngine:
        """The engine that does this target's work, with a client made from these settings."""

    def with_checkout(self, repo_dir: str) -> DeployTarget:
        """This target reading what it needs (manifests, templates) from an app checkout."""
        return self

    @abc.abstractmethod
    def identity(self) -> str:
        """Which app on which engine or cluster this target deploys, with the address resolved:
        two blocks that name the same replicas give the same identity (the lock and journal key)."""

    def replicas_to_check(self, rollout: RolloutResult) -> int | None:
        """How many URLs ``replica_urls()`` must list after ``rollout``: one per replica it left
        running. None where the URLs are a configured subset rather than every replica."""
        return len(rollout.replicas)

    # The interface, each operation done by an engine (see TargetEngine for what each does).

    def check_reachable(self) -> str:
        return self.engine().check_reachable()

    def deploy(self, image: str, version: str, env: Mapping[str, str], timeout_s: float) -> RolloutResult:
        return self.engine().deploy(image, version, env, timeout_s)

    def plan(self, image: str, version: str, env: Mapping[str, str]) -> DeployPlan:
        return self.engine().plan(image, version, env)

    def rollback(self, to_revision: int | None, env: Mapping[str, str], timeout_s: float) -> RolloutResult:
        return self.engine().rollback(to_revision, env, timeout_s)

    def history(self) -> list[Revision]:
        return self.engine().history()

    def current_revision(self) -> Revision | None:
        return self.engine().current_revision()

    def run_one_off(self, image: str, args: Sequence[str], env: Mapping[str, str], timeout_s: float) -> OneOffResult:
        return self.engine().run_one_off(image, args, env, timeout_s)

    def fetch_logs(self, tail: int = 100) -> dict[str, str]:
        return self.engine().fetch_logs(tail)

    def replica_urls(self) -> list[str]:
        return self.engine().replica_urls()

    def remove_release(self, timeout_s: float) -> str:
        return self.engine().remove_release(timeout_s)

    def replica_states(self) -> list[ReplicaState]:
        return self.engine().replica_states()
