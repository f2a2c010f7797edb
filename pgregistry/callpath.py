"""The call path of a steady connection: every ``pg.DB`` method goes through :meth:`_run`.

Before sending on an idle connection, a look at its socket tells whether the server ended it
meanwhile (then it is reopened and the call sent there, once). After a failure, libpq's state
tells what happened: an SQL error passes through; a loss outside a transaction is reopened and
the call run again only where it cannot have run (or with ``retry_after_reopen="always"``);
a loss inside a transaction is raised until the caller ends it; a write refused as read-only
on a writer target is run once more on the writable host.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Literal

import pg

from .conninfo import redact
from .errors import ConnectionLostError, InvalidConnectionError, ServerUnavailableError
from .failures import cause, ended_by_server, ending_statement, lost_error
from .stats import Counter
from .wire import ended_on_server

__all__ = ["DBAPI", "DB_ATTRIBUTES", "CallPath", "api_method_names", "install_wrappers"]

_TRANS_IDLE: int = pg.TRANS_IDLE
_TRANS_UNKNOWN: int = pg.TRANS_UNKNOWN
_READ_ONLY_SQL_TRANSACTION = "25006"


if TYPE_CHECKING:

    class DBAPI(pg.DB):
        """What type checkers see of a steady or pooled connection: pg.DB's methods and
        attributes with their real signatures, and nothing else.

        pg.DB's own ``__getattr__`` (it forwards to the ``pg.Connection``) would let any name
        through, a misspelt method included; here it is taken away, and what it reached
        that pg.DB does not declare is declared.
        """

        __getattr__ = None  # type: ignore[assignment,misc]

        def source(self) -> Any: ...

else:
    DBAPI = object  # at run time the methods are generated (see install_wrappers)


class CallPath:
    """The call path and loss handling of :class:`~pgregistry.steady.SteadyPgConnection`."""

    # The state of the connection the call path reads and changes (see SteadyPgConnection).
    _db: pg.DB | None
    _cnx: Any
    _poller: Any  # a select.poll on the socket, None while closed
    _dead: bool
    _reopen_pending: bool
    _transaction: bool
    _usage: int
    _maxusage: int
    _retry: bool | Literal["always"]
    _secrets: tuple[str, ...]
    fresh: bool
    clean_state: Callable[[], int] | None
    role: str | None
    logger: logging.Logger

    def _open_new(self) -> None:
        raise NotImplementedError

    def _event(self, event: Counter) -> None:
        raise NotImplementedError

    def _live_db(self) -> pg.DB:
        db = self._db
        if db is None:
            if not self._reopen_pending:
                raise InvalidConnectionError(
                    "the connection is closed; call reopen() to use it again"
                )
            # A replacement that failed to open (the old backend was let go first): try again.
            if self._dead:
                self._reopen_after_loss()
            else:
                self._open_new()
            db = self._db
            assert db is not None
        return db

    def _run(self, func: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """Call ``func(pg.DB, *args, **kwargs)`` with reopen-and-retry outside transactions."""
        self.fresh = False
        db = self._live_db()
        state = self._cnx.transaction()
        if state == _TRANS_IDLE and not self._transaction:
            if self._usage >= self._maxusage:
                self._open_new()
                db = self._live_db()
            elif self._dead or (
                (ready := self._poller.poll(0)) and ended_on_server(self._cnx, ready[0][1])
            ):
                db = self._found_dead(func)
        try:
            result = func(db, *args, **kwargs)
        except Exception as exc:
            return self._recover(exc, state, func, args, kwargs)
        self._usage += 1
        return result

    def _found_dead(self, func: Callable[..., Any]) -> pg.DB:
        """Found dead before anything was sent (a restart or a killed backend while the
        connection sat idle): reopen; sending there runs ``func`` once. The new pg.DB."""
        if not self._dead:
            self._dead = True  # counted once, however often the reopen fails
            self._event(Counter.LOST)
        self._reopen_after_loss()
        if not self._retry:
            raise ConnectionLostError(
                f"connection found lost before {func.__name__}() was sent; reopened "
                "but not run (retry_after_reopen is off)"
            )
        return self._live_db()

    def _recover(
        self,
        exc: Exception,
        state: int,
        func: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        """Handle a failed call: re-raise SQL errors, reopen lost connections where safe."""
        if self._cnx is not None and self._cnx.status:
            if (
                getattr(exc, "sqlstate", None) == _READ_ONLY_SQL_TRANSACTION
                and self.role in ("read-write", "primary")
                and state == _TRANS_IDLE
                and not self._transaction
            ):
                return self._run_on_a_writer(exc, func, args, kwargs)
            raise exc  # the connection is fine: an error about the SQL or the arguments
        if state != _TRANS_UNKNOWN and not self._dead:
            self._event(Counter.LOST)  # once per loss, not again for each call on a known-dead one
        ends = ending_statement(func, args)
        # UNKNOWN before the call means the connection was already dead: no live transaction
        # unless begin() (or an earlier loss inside a raw BEGIN) set the flag.
        if self._transaction or state not in (_TRANS_IDLE, _TRANS_UNKNOWN):
            # The server's transaction died with the connection; keep refusing to reopen
            # until the caller ends it, as if begin() had been called.
            self._transaction = True
            self.clean_state = None
            if ends is not None:
                return self._end_lost_transaction(ends, exc)
            raise ConnectionLostError(
                "connection to the server lost inside a transaction: it was rolled back; end "
                "it with rollback()"
            ) from cause(exc)
        in_flight = (
            state != _TRANS_UNKNOWN
            and self._retry != "always"
            and not ended_by_server(exc, func, args)
        )
        if ends == "rollback" or not self._retry or in_flight:
            # No second run: reopen now if the server answers, else before the next call.
            self._dead = True
            try:
                self._reopen_after_loss()
            except ServerUnavailableError as down:
                self.logger.warning("connection lost; reopen failed, retried at next use: %s", down)
        else:
            self._reopen_after_loss()
        if ends == "rollback":
            return None  # nothing to roll back on the new connection
        if not self._retry:
            raise ConnectionLostError(
                f"connection lost during {func.__name__}(); reopened but not retried "
                "(retry_after_reopen is off)"
            ) from None
        if in_flight:
            # Sent on a connection that looked alive: the server may have run it (a write may
            # be committed) before the reply was lost. Running it again could do it twice.
            raise ConnectionLostError(
                f"connection lost during {func.__name__}() after it was sent "
                f"({redact(' '.join(str(exc).split())[:200], self._secrets)}): the outcome is "
                "unknown (a write may have been committed); the statement was not run again "
                "(retry_after_reopen='always' would) and the connection is reopened"
            ) from cause(exc)
        try:
            result = func(self._db, *args, **kwargs)
        except Exception as again:
            if self._cnx is not None and self._cnx.status:
                raise
            raise lost_error(again, "again right after reopening") from None
        self._usage += 1
        return result

    def _run_on_a_writer(
        self,
        exc: Exception,
        func: Callable[..., Any],
        args: tuple[Any, ...],
        kwargs: dict[str, Any],
    ) -> Any:
        """A write refused as read-only (25006) outside a transaction, on a target that asks
        for a writable server: the server was demoted or fenced. The statement did not run, so
        reopen (libpq looks for a writable host, within ``reconnect_timeout``) and run it once
        more there."""
        self.logger.warning(
            "server is read-only (SQLSTATE 25006, outside a transaction): reopening to find a "
            "writable host, then running %s() again",
            func.__name__,
        )
        self._event(Counter.WRONG_ROLE)
        try:
            self._open_new()
        except ServerUnavailableError:
            self._dead = True  # reopened at next use
            raise
        self._event(Counter.REOPENED)
        result = func(self._db, *args, **kwargs)
        self._usage += 1
        return result

    def _reopen_after_loss(self) -> None:
        # Marked dead first: if the open fails, the next use reopens and counts it as a reopen.
        self._dead = True
        self._open_new()
        self.logger.warning("connection lost; reopened")
        self._event(Counter.REOPENED)

    def _end_lost_transaction(self, statement: str, exc: Exception) -> None:
        """commit/rollback on a connection whose transaction died with it."""
        self._transaction = False
        if statement == "rollback":
            # What rollback asked for already happened on the server; reopen if we can.
            try:
                self._reopen_after_loss()
            except ServerUnavailableError as down:
                self.logger.warning("connection lost in a transaction; reopen failed: %s", down)
            return None
        raise ConnectionLostError(
            "connection lost during COMMIT: the outcome is unknown (the server may have "
            "committed before the reply was lost); check before running the transaction again"
        ) from cause(exc)


# Methods that never touch the server: forwarded without the reopen logic.
_PLAIN = frozenset({"decode_json", "encode_json", "unescape_bytea", "transaction", "fileno"})
# Methods the steady connection defines itself.
_OWN = frozenset(
    {"close", "reopen", "reset", "begin", "start", "commit", "end", "rollback", "abort"}
)


def _tough_method(func: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(func)
    def method(self: CallPath, *args: Any, **kwargs: Any) -> Any:
        return self._run(func, args, kwargs)

    return method


def _plain_method(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(func)
    def method(self: CallPath, *args: Any, **kwargs: Any) -> Any:
        return getattr(self._live_db(), name)(*args, **kwargs)

    return method


#: What a ``pg.DB`` offers beyond its class's methods: its own instance attributes, and the
#: ``pg.Connection``'s attributes (and ``source()``) that pg.DB's ``__getattr__`` reaches.
#: Steady and pooled connections give each a property rather than a ``__getattr__`` of their
#: own: CPython does not specialise attribute access on a class that defines one, so every
#: attribute read on the hot path would cost several times as much. A test checks this list
#: against ``dir()`` of a live pg.DB, so a new PyGreSQL attribute is not missed silently.
DB_ATTRIBUTES = (
    "adapter",
    "backend_pid",
    "db",
    "dbname",
    "dbtypes",
    "error",
    "host",
    "options",
    "port",
    "protocol_version",
    "server_version",
    "socket",
    "source",
    "ssl_attributes",
    "ssl_in_use",
    "status",
    "user",
)


def api_method_names() -> list[str]:
    """Public method names of ``pg.DB`` that steady and pooled connections offer."""
    return sorted(
        name
        for name, value in vars(pg.DB).items()
        if not name.startswith("_") and (callable(value) or isinstance(value, staticmethod))
    )


def _db_attribute(name: str) -> property:
    def read(self: CallPath) -> Any:
        return getattr(self._live_db(), name)

    read.__name__ = name
    return property(read, doc=f"pg.DB's ``{name}`` of the current connection.")


def install_wrappers(cls: type[CallPath]) -> None:
    """Give ``cls`` every public method of ``pg.DB`` (but those in :data:`_OWN` and those it
    defines itself), each through the call path (or straight to the ``pg.DB`` for
    :data:`_PLAIN` ones), and a read-only property for each of :data:`DB_ATTRIBUTES` it does
    not define."""
    for name in api_method_names():
        if name in _OWN or name in cls.__dict__:
            continue
        func = getattr(pg.DB, name)
        wrapper = _plain_method(name, func) if name in _PLAIN else _tough_method(func)
        setattr(cls, name, wrapper)
    for name in DB_ATTRIBUTES:
        if name not in cls.__dict__:
            setattr(cls, name, _db_attribute(name))
