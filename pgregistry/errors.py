"""Exceptions raised by pgregistry.

Pool errors keep the names of the original PooledPg with an ``Error`` suffix. Errors about the
database itself stay PyGreSQL's own (``pg.Error`` and its subclasses); the two classes here that
describe a lost or unreachable server subclass ``pg.OperationalError`` so that code catching
PyGreSQL's exceptions keeps working. Every class here derives from :class:`PgRegistryError`.
"""

from __future__ import annotations

import pg

__all__ = [
    "AuthenticationError",
    "ConfigError",
    "ConnectionLostError",
    "InvalidConnectionError",
    "InvalidTenantError",
    "PgRegistryError",
    "PoolClosedError",
    "PoolTimeoutError",
    "PooledPgError",
    "ServerUnavailableError",
    "TooManyConnectionsError",
    "UnknownPoolError",
]


class PgRegistryError(Exception):
    """Root of every exception pgregistry defines: ``except PgRegistryError`` catches them all."""


class PooledPgError(PgRegistryError):
    """Base class of every error a pool raises about itself (not about the database)."""


# pg.DB raises pg.InternalError for a closed connection; a returned one is closed to its holder.
class InvalidConnectionError(PooledPgError, pg.InternalError):
    """The pooled connection was already returned to its pool and cannot be used any more."""


class TooManyConnectionsError(PooledPgError):
    """The pool is at ``maxconnections`` and was told not to block."""


class PoolTimeoutError(PooledPgError):
    """No connection became available within the pool's ``timeout``."""


class PoolClosedError(PooledPgError):
    """The pool has been closed and hands out no more connections."""


class UnknownPoolError(PooledPgError, KeyError):
    """No pool of that name is configured."""

    def __str__(self) -> str:
        # KeyError would wrap the message in quotes.
        return str(self.args[0]) if self.args else ""


class InvalidTenantError(PooledPgError, ValueError):
    """A tenant key does not match the allowed pattern; nothing was sent to any server."""


class ConfigError(PgRegistryError, ValueError):
    """The configuration is invalid; the message lists every problem by its path."""

    def __init__(self, message: str, problems: list[str] | None = None) -> None:
        super().__init__(message)
        self.problems: list[str] = list(problems or [])


# PyGreSQL reports a failed connect as pg.InternalError. SPEC asks for an OperationalError; the
# class keeps InternalError as a second base so code written against PyGreSQL still catches it.
class ServerUnavailableError(pg.OperationalError, pg.InternalError, PgRegistryError):
    """The server could not be reached; the message is libpq's, with any password removed."""


class AuthenticationError(ServerUnavailableError):
    """The server refused the login (password, role, database, pg_hba.conf); never retried."""


class ServerFullError(ServerUnavailableError):
    """The server refused the connection because a limit is reached (SQLSTATE 53300: "too many
    connections for role", "sorry, too many clients already"). A pool waits out such a refusal
    within its ``timeout`` (backpressure) before it raises this."""


class ConnectionLostError(pg.OperationalError, PgRegistryError):
    """The connection to the server was lost where it could not be reopened transparently."""


class PoolerUnsupportedError(pg.ProgrammingError, PgRegistryError):
    """A PyGreSQL feature that cannot work behind a transaction pooler (``server_pooling =
    "transaction"``): ``LISTEN``, ``delete_prepared()``, prepared statements PgBouncer does not
    carry across server connections. The message names the feature and what to do instead."""


for _cls in (
    PgRegistryError,
    PooledPgError,
    InvalidConnectionError,
    TooManyConnectionsError,
    PoolTimeoutError,
    PoolClosedError,
    UnknownPoolError,
    InvalidTenantError,
    ConfigError,
    ServerUnavailableError,
    AuthenticationError,
    ConnectionLostError,
):
    _cls.__module__ = "pgregistry"
del _cls
