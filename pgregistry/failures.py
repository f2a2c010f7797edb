"""How a failed call on a PyGreSQL connection is read: did it end a transaction, did the
server end the session (so the statement did not run), was the login refused.

PyGreSQL's connect errors carry no SQLSTATE, and a server shutting down surfaces without one,
so these rules look at the call and at the server's words.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pg

from .errors import ConnectionLostError

__all__ = [
    "cause",
    "ended_by_server",
    "ending_statement",
    "is_auth_failure",
    "is_server_full",
    "lost_error",
]

# Statements that end a transaction when sent as raw SQL through query().
_ENDS_TRANSACTION = re.compile(r"\s*(commit|end|rollback|abort)\b(?!\s+to\b)", re.IGNORECASE)
_IS_COMMIT = re.compile(r"\s*(commit|end)\b", re.IGNORECASE)

# libpq's words for a refused login (PyGreSQL's connect errors carry no SQLSTATE): retrying
# cannot help, unlike a server that is down, starting up or full.
_AUTH_FAILURE = re.compile(
    r"password authentication failed|authentication failed for user|no pg_hba\.conf entry"
    r"|role \"[^\"]*\" does not exist|database \"[^\"]*\" does not exist"
    r"|no password supplied|permission denied for database|certificate authentication failed"
    r"|is not permitted to log in|SCRAM authentication requires",
    re.IGNORECASE,
)


# libpq's words for a server at a connection limit (SQLSTATE 53300, which connect errors do not
# carry): max_connections, a role's or a database's CONNECTION LIMIT, reserved slots.
_SERVER_FULL = re.compile(
    r"too many connections for (role|database)|sorry, too many clients already"
    r"|remaining connection slots are reserved|too many connections",
    re.IGNORECASE,
)


def is_server_full(message: str) -> bool:
    """True when libpq's connect error says a connection limit of the server is reached."""
    return bool(_SERVER_FULL.search(message))


def is_auth_failure(message: str) -> bool:
    """True when libpq's connect error says the login was refused (waiting cannot help)."""
    return bool(_AUTH_FAILURE.search(message))


def ending_statement(func: Callable[..., Any], args: tuple[Any, ...]) -> str | None:
    """'commit' or 'rollback' if this call ends a transaction, else None."""
    if func is pg.DB.commit:
        return "commit"
    if func is pg.DB.rollback and not (args and args[0]):
        return "rollback"
    if (
        func is pg.DB.query
        and args
        and isinstance(args[0], str)
        and _ENDS_TRANSACTION.match(args[0])
    ):
        return "commit" if _IS_COMMIT.match(args[0]) else "rollback"
    return None


# The server's own FATAL reply to a statement it was told to stop (pg_terminate_backend, a fast
# or smart shutdown, recovery conflicts): the statement was aborted with its transaction, so it
# did not run and may be sent again. Any other loss after sending leaves the outcome unknown.
_SERVER_ENDED = re.compile(
    r"terminating connection due to (administrator command|conflict with recovery)"
    r"|the database system is shutting down",
    re.IGNORECASE,
)


def ended_by_server(
    exc: Exception, func: Callable[..., Any] | None = None, args: tuple[Any, ...] = ()
) -> bool:
    """True when the call failed in a way that shows its statement did not run.

    Either PyGreSQL failed before sending: its ``LookupError('unknown encoding: ')`` comes
    from encoding the statement for a connection libpq already knows is gone (an earlier step
    of the same ``pg.DB`` method met the loss). Or the server said it ended the session (see
    :data:`_SERVER_ENDED`) while running a statement that cannot have committed part of its
    work first: that aborted it whole. A procedure (``CALL``), a ``DO`` block or a string of
    several statements can each commit before the end, so for them the outcome is unknown.
    """
    if isinstance(exc, LookupError):
        return True
    if not _SERVER_ENDED.search(str(exc)):
        return False
    return func is None or not _may_commit_part(func, args)


# A statement that can commit part of its work before it ends: CALL (a procedure's COMMIT), DO,
# or a string of several statements (an implicit transaction ended by a COMMIT among them).
_STARTS_COMMITTING = re.compile(r"\s*(call|do)\b", re.IGNORECASE)
_SEVERAL = re.compile(r";\s*\S")


def _may_commit_part(func: Callable[..., Any], args: tuple[Any, ...]) -> bool:
    if func not in (pg.DB.query, pg.DB.query_formatted):
        return False  # pg.DB's own methods and prepared statements: one plain statement each
    command = args[0] if args else None
    if not isinstance(command, str):
        return True  # cannot tell: assume the worst
    return bool(_STARTS_COMMITTING.match(command) or _SEVERAL.search(command))


def cause(exc: Exception) -> Exception | None:
    """What a ConnectionLostError chains to: PyGreSQL's error, not its LookupError plumbing."""
    return exc if isinstance(exc, pg.Error) else None


def lost_error(exc: Exception, where: str) -> Exception:
    """The error for a lost connection: PyGreSQL's own if it is one, else ConnectionLostError."""
    if isinstance(exc, pg.Error):
        return exc
    return ConnectionLostError(f"connection to the server lost {where}")
