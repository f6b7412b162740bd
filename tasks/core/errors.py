"""The pipeline's few named errors.

Like Kopf's, they split into two kinds: a ``TemporaryError`` may go away if the same
call is made again (a registry that is restarting, a rollout still progressing), a
``PermanentError`` will not (a failed test, a crash-looping image). Tasks retry only
temporary errors, and only where the call is idempotent. A failed gate carries its
result so the flow and the rollback report can show what was seen.

Every exception class of the project is here. Each outside system's own failures (Docker,
Kubernetes, PostgreSQL, HTTP, Prefect) become these in one mapping module beside its client:
``blocks/docker/errors.py``, ``blocks/kubernetes/errors.py``, ``blocks/database/errors.py``,
``tasks/core/http_errors.py``, ``tasks/core/prefect_errors.py``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from tasks.core.redaction import redact

if TYPE_CHECKING:
    from prefect.client.schemas.objects import State


class DeployError(Exception):
    """Base of every error this project raises on purpose."""

    def __init__(self, message: str, *, stage: str | None = None, result: Any = None):
        message = redact(message)  # often quotes outside text (stderr, a response body, an engine's reason)
        super().__init__(message)
        self.message = message
        self.stage = stage
        self.result = result

    def __str__(self) -> str:
        return self.message


class TemporaryError(DeployError):
    """The outside system may answer differently if asked again."""


class PermanentError(DeployError):
    """Asking again will not help: the release, the input or the environment is wrong."""


class InvalidInput(PermanentError):
    """A parameter or block field failed validation; nothing was changed."""


class GateFailed(PermanentError):
    """A verification gate (health, smoke, load, metrics, sign-off) said no."""


class ReleaseUnhealthy(GateFailed):
    """A replica of the deployed release exited, restarted, went missing or stayed unready after
    the deploy (seen by the release watcher); the message names the replica."""


class RolloutFailed(PermanentError):
    """The new revision never became available: crash loop, unhealthy, deadline."""


class NoEarlierRevision(PermanentError):
    """A rollback has nowhere to go: no revision before the current one, or not the one named."""


class BackupMissing(PermanentError):
    """A backup a journal or a run names is no longer in its storage (deleted, or the storage moved)."""


class DeployLocked(TemporaryError):
    """Another deploy to the same environment (or database) holds the lock."""


class LockLost(PermanentError):
    """This run's deploy lock lease is gone (expired unrenewed, or revoked) while it ran.

    ``may_undo``: the run took the lock back at once and nobody held it in between, so it may
    still undo its own changes under it. False: another run held the lock since (it may have
    recovered this run's open journal) or holds it now; this run must stop and touch nothing.
    """

    def __init__(self, message: str, *, may_undo: bool, stage: str | None = None, result: Any = None):
        super().__init__(message, stage=stage, result=result)
        self.may_undo = may_undo


class CheckFailed(GateFailed):
    """One check of a gate said no; the gate records the reason and runs its other checks."""


class Inconclusive(TemporaryError):
    """A check got no usable answer yet (no data, too few samples); asking later may give one."""


class SetupError(PermanentError):
    """The load generator could not start: login refused, service unreachable, bad CA."""


class ProofRefused(PermanentError):
    """A sign-off's proof does not count. The message says why and never repeats the proof."""


class CodeRefused(ProofRefused):
    """A one-time code does not count."""


class ReceiptRefused(ProofRefused):
    """A sign-off receiver's receipt does not count."""


class SshSignatureError(ProofRefused):
    """An SSH signature cannot be made, or does not verify."""


class RequestRefused(ProofRefused):
    """A request the sign-off receiver does not act on: unsigned, replayed, expired, or not a lead's."""


def one_line(exc: BaseException) -> str:
    """An error as one line: psycopg's and libpq's messages carry newlines and tabs."""
    return " ".join(str(exc).split())


def retry_if_temporary(task: object, task_run: object, state: State[Any]) -> bool:
    """A task's ``retry_condition_fn``: retry only a TemporaryError, never a permanent one."""
    try:
        state.result()
    except TemporaryError:
        return True
    except Exception:  # any other failure is final
        return False
    return False
