"""PostgreSQL's failures as the pipeline's errors: the one place they are mapped.

Both kinds of client are covered: psycopg (the pipeline's own queries) and the pg tools
(pg_dump, pg_restore, psql), which report only an exit status and stderr. Either way the
decision is made on the SQLSTATE, PostgreSQL's own classification of an error:

- temporary: connection exceptions (class 08), serialization failures and deadlocks (40),
  insufficient resources (53: too many connections), a lock or statement timeout (55P03,
  57014), a server shutting down, starting up or ending the session (57P01-57P03, 57P05);
- permanent: everything else (bad SQL, a failed constraint or verification, no permission).

Errors that have no SQLSTATE are libpq's own: psycopg's ``OperationalError`` (connection
refused, lost, timed out) is temporary, as is psql's exit status 2 ("the connection to the
server went bad"). psql is run with ``VERBOSITY=verbose`` so its errors carry their SQLSTATE;
pg_dump and pg_restore print none, so for them the few server and libpq messages that mean
"temporary" are recognised by their fixed text (``NO_SQLSTATE_MESSAGES``).
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import psycopg

from tasks.core.errors import DeployError, PermanentError, TemporaryError, one_line

TEMPORARY_CLASSES = {"08", "40", "53"}
TEMPORARY_SQLSTATES = {"55P03", "57014", "57P01", "57P02", "57P03", "57P05"}
CONNECTION_FAILURE = "08006"
# What pg_dump/pg_restore print instead of a SQLSTATE, for the temporary cases. libpq's own
# connection messages (no SQLSTATE exists for them) count as connection failures.
NO_SQLSTATE_MESSAGES = {
    "canceling statement due to lock timeout": "55P03",
    "could not obtain lock": "55P03",
    "canceling statement due to statement timeout": "57014",
    "deadlock detected": "40P01",
    "terminating connection due to administrator command": "57P01",
    "the database system is shutting down": "57P03",
    "the database system is starting up": "57P03",
    "connection to server": CONNECTION_FAILURE,
    "could not connect to server": CONNECTION_FAILURE,
    "server closed the connection unexpectedly": CONNECTION_FAILURE,
    "no connection to the server": CONNECTION_FAILURE,
    "timeout expired": CONNECTION_FAILURE,
}
# "psql:<stdin>:2: ERROR:  P0001: message" with VERBOSITY=verbose.
REPORTED_SQLSTATE = re.compile(r"\b(?:ERROR|FATAL|PANIC):\s+([0-9A-Z]{5}):")
PSQL_CONNECTION_LOST = 2  # psql's documented exit status when the connection went bad
STDERR_TAIL = 1500


def temporary_sqlstate(sqlstate: str) -> bool:
    """Whether an error of ``sqlstate`` may go away if the same work is done again."""
    return sqlstate[:2] in TEMPORARY_CLASSES or sqlstate in TEMPORARY_SQLSTATES


def postgres_error(exc: psycopg.Error, doing: str, where: str) -> DeployError:
    """A psycopg error met while ``doing`` on the database at ``where`` (host:port) as the tree's error."""
    cause = one_line(exc)
    if exc.sqlstate is None or exc.sqlstate.startswith("08"):
        if isinstance(exc, psycopg.OperationalError):  # libpq's: refused, lost, timed out
            return TemporaryError(f"database {where} unreachable while {doing}: {cause}")
        return PermanentError(f"{doing} failed on database {where}: {type(exc).__name__}: {cause}")
    kind = TemporaryError if temporary_sqlstate(exc.sqlstate) else PermanentError
    return kind(f"{doing} failed on database {where}: {type(exc).__name__} ({exc.sqlstate}): {cause}")


@contextmanager
def postgres_errors(doing: str, where: str) -> Iterator[None]:
    """Raise psycopg's failures inside the block as the tree's errors (``postgres_error``)."""
    try:
        yield
    except psycopg.Error as exc:
        raise postgres_error(exc, doing, where) from exc


def reported_sqlstate(stderr: str) -> str | None:
    """The SQLSTATE of the first error a pg tool reported: printed (psql, verbose) or known by its text."""
    if match := REPORTED_SQLSTATE.search(stderr):
        return match.group(1)
    lowered = stderr.lower()
    return next((code for text, code in NO_SQLSTATE_MESSAGES.items() if text in lowered), None)


def pg_tool_message(tool: str, exit_code: int, stderr: str) -> str:
    """``<tool> exited <status>: <stderr tail>`` on one line (psql's LOCATION lines left out)."""
    lines = [line for line in stderr.splitlines() if not line.startswith("LOCATION:")]
    tail = one_line("\n".join(lines))[-STDERR_TAIL:]
    return f"{tool} exited {exit_code}" + (f": {tail}" if tail else "")


def pg_tool_error(tool: str, exit_code: int, stderr: str, *, stage: Any = None, result: Any = None) -> DeployError:
    """A pg tool's non-zero exit as a TemporaryError (worth doing again) or a PermanentError."""
    sqlstate = reported_sqlstate(stderr)
    if sqlstate is not None:
        temporary = temporary_sqlstate(sqlstate)
    else:
        temporary = tool.startswith("psql") and exit_code == PSQL_CONNECTION_LOST
    kind = TemporaryError if temporary else PermanentError
    return kind(pg_tool_message(tool, exit_code, stderr), stage=stage, result=result)
