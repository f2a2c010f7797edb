"""Steady connections: PyGreSQL's classic ``pg.DB`` that reopens itself when the server goes away.

A :class:`SteadyPgConnection` offers every method of ``pg.DB`` with the same signature. When a
call fails, it looks at libpq's connection state (no extra round trip on the success path):

* the connection is fine: the error was about the SQL; it is raised unchanged;
* the connection is lost and no transaction was open: the connection is reopened, the
  ``setsession`` statements are replayed, and the call is run once more (or, with
  ``retry_after_reopen=False``, a :class:`~pgregistry.ConnectionLostError` is raised after the
  reopen, for callers that cannot risk a statement running twice);
* the connection is lost inside a transaction (``begin()``, or a raw ``BEGIN`` the server
  reports): the error passes through and nothing is reopened until the transaction is ended
  with ``commit()``, ``end()`` or ``rollback()``.

PyGreSQL answers every call on a dead connection with ``LookupError('unknown encoding: ')``;
no caller ever sees that: it becomes a reopen, or a :class:`~pgregistry.ConnectionLostError`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import sys
import threading
import weakref
from collections.abc import Callable
from typing import Any, Literal

import pg

from . import borrower
from .borrower import (
    CLIENT,
    LISTENED,
    SCHEMA,
    SESSION,
    TEMP,
    UNLISTEN_ALL,
    ClientState,
    PooledDbTypes,
)
from .callpath import DBAPI, CallPath, install_wrappers
from .connect_args import (
    SetSession,
    check_connect_args,
    check_retry,
    normalize_setsession,
    resolve_password,
    secrets_of,
    with_network_defaults,
)
from .connector import Admission, open_db
from .conninfo import redact
from .errors import (
    ConnectionLostError,
    ServerUnavailableError,
)
from .policies import ResetPolicy
from .pooling import refuse_what_breaks
from .priming import NATIVE_TYPES, prime_types
from .roles import required_role, server_has_role
from .stats import Counter
from .wire import WATCH, ask, cut_off, ended_on_server, wait_for_eof

__all__ = ["SetSession", "SteadyPgConnection"]

_TRANS_IDLE: int = pg.TRANS_IDLE
_TRANS_UNKNOWN: int = pg.TRANS_UNKNOWN
_TRANS_ACTIVE: int = pg.TRANS_ACTIVE
_Query = pg.Query
_DB_QUERY = pg.DB.query
_NO_KWARGS: dict[str, Any] = {}
_log = logging.getLogger("pgregistry.connection")

# How often a new connection is opened again when it is lost while its setsession runs.
_SESSION_ATTEMPTS = 3


class _SessionLost(Exception):
    """A new connection died while its setsession ran (the message is redacted)."""


# Every live steady connection, so that a forked child can cut itself off from the parent's
# sockets (see _after_fork_in_child).
_LIVE: weakref.WeakSet[SteadyPgConnection] = weakref.WeakSet()
_LIVE_LOCK = threading.Lock()


class SteadyPgConnection(CallPath, DBAPI):
    """A hardened ``pg.DB``: transparent reopen outside transactions, ``maxusage``, ``setsession``.

    ``SteadyPgConnection(maxusage=None, setsession=None, closeable=False, *args, **kwargs)``
    keeps the original SteadyPg signature; ``args`` and ``kwargs`` go to ``pg.DB`` (``dbname``
    may be a libpq conninfo string or a ``postgresql://`` URI).

    maxusage
        Reopen the connection after this many calls (0 or ``None``: never). The reopen happens
        before the next call, never inside a transaction.
    setsession
        SQL statements run, in order, after every open and reopen (for example
        ``["SET datestyle TO iso", "SET search_path TO app"]``), or a callable that receives
        the raw ``pg.DB``.
    closeable
        If false, ``close()`` only rolls back an open transaction and keeps the connection;
        pools pass true.
    retry_after_reopen
        Keyword-only, default true: after a transparent reopen, run the failed call once more.
        False: reopen, then raise :class:`~pgregistry.ConnectionLostError`.
    reconnect_timeout
        Keyword-only, seconds (default 0): how long a (re)open keeps retrying, with a capped
        backoff, while the server cannot be reached. 0 tries once.
    """

    def __init__(
        self,
        maxusage: int | None = None,
        setsession: SetSession = None,
        closeable: bool = False,
        *args: Any,
        retry_after_reopen: bool | Literal["always"] = True,
        reconnect_timeout: float | None = 0.0,
        logger: logging.Logger | None = None,
        admission: Admission | None = None,
        **kwargs: Any,
    ) -> None:
        if maxusage is not None and (
            not isinstance(maxusage, int) or isinstance(maxusage, bool) or maxusage < 0
        ):
            raise ValueError(f"maxusage: must be an integer >= 0 or None (got {maxusage!r})")
        if reconnect_timeout is not None and reconnect_timeout < 0:
            raise ValueError(f"reconnect_timeout: must be >= 0 (got {reconnect_timeout!r})")
        check_connect_args(args, kwargs)
        self._maxusage: int = maxusage or sys.maxsize
        self._setsession = normalize_setsession(setsession)
        self._closeable = closeable
        self._retry = check_retry(retry_after_reopen)
        self._reconnect_timeout = reconnect_timeout or 0.0
        self._secrets = secrets_of(args, kwargs)
        #: passwd is a callable (a PasswordFile, say): called for every new connection.
        self._password_source = callable(kwargs.get("passwd")) or (
            len(args) >= 6 and callable(args[5])
        )
        #: Seconds a ping or a reset on return waits for the server's answer: connect_timeout.
        self._args, self._kwargs, self.probe_timeout = with_network_defaults(args, kwargs)
        self._transaction = False
        self._usage = 0
        self._db: pg.DB | None = None
        self._cnx: Any = None  # the C-level pg.Connection inside self._db
        self._poller: Any = None  # readable-socket check before sending (see _run)
        self._dead = False  # found dead before sending; reopen before the next call
        # The old connection was let go but its replacement failed to open: reopen at next use.
        self._reopen_pending = False
        #: SQL run right after ``BEGIN`` in :meth:`begin` (pools behind a transaction pooler
        #: set ``SET LOCAL statement_timeout = ...``; see pgregistry.pooling), or None.
        self.begin_statement: str | None = None
        #: Seconds a close waits for the server to end the backend (pools under a server
        #: budget set it, so a place is never counted twice on the server); 0: no wait.
        self.close_wait = 0.0
        #: Column type oids whose typecasts this pg.DB has resolved (see prime_types).
        self._primed: set[int] = set()
        #: The role the target asks for (target_session_attrs), kept on every connection.
        self.role = required_role(self._args, self._kwargs)
        #: pg_type rows of built-in types, kept over session changes (see PooledDbTypes).
        self._type_rows: dict[int | str, tuple[Any, ...]] = {}
        #: What the current borrower did that the return must clean (pgregistry.borrower bits).
        self._dirt = 0
        #: The channels the current borrower listens on (quoted), replayed after a reopen.
        self._channels: set[str] = set()
        #: Client state taken from a connection let go, for the one that replaces it.
        self._carry: ClientState | None = None
        #: libpq's transaction status of the connection (its bound ``transaction()``) while the
        #: borrower left nothing to clean and no ``begin()`` is open, else None: all that the
        #: cheapest return path reads (see the pool's _checkin).
        self.clean_state: Callable[[], int] | None = None
        # The bound methods of the current pg.Connection that every statement calls: looking
        # a method up on a pg.Connection costs about as much as the call itself. Valid while
        # self._db is not None (every close sets it to None first).
        self._cnx_state: Callable[[], int] = _unknown_state
        self._cnx_query: Callable[..., Any] = _no_query
        #: No call has gone to the server since the connection was given back (or opened):
        #: the pool's proxy decides by it what ``with`` means (see PooledPgConnection).
        #: Written, never read, on the hot paths: with __getattr__ on the class, a load costs
        #: several times a store.
        self.fresh = True
        #: ``with`` blocks open on the pool's proxy: -1 the block that scopes the checkout, -2,
        #: -3 blocks inside it, 1, 2 blocks with no scope around them. Never reset: a fresh
        #: checkout's first ``with`` sets it, and every other block counts from what it finds
        #: and puts it back on exit, so a value left by a borrower who gave the connection
        #: back inside a block does no harm.
        self.with_blocks = 0
        self._pid = os.getpid()
        #: Called with Counter.LOST or Counter.REOPENED; pools count these in their stats.
        self.listener: Callable[[Counter], None] | None = None
        self.logger: logging.Logger = logger or _log
        #: The pool's gate for connects while its server is down (None: no pool).
        self.admission = admission
        self._open_new()
        with _LIVE_LOCK:
            _LIVE.add(self)

    # -- opening ------------------------------------------------------------------------------

    def replay_session(self) -> None:
        """Run ``setsession`` again on the current connection (after ``DISCARD ALL``)."""
        self._prepare_session(self._live_db())

    def _prepare_session(self, db: pg.DB) -> None:
        """Run setsession on a fresh connection; close it and raise if that fails.

        Each statement waits at most :attr:`probe_timeout` for its answer (a frozen server
        would otherwise hold the open forever). :class:`_SessionLost` when the connection died
        under it (a killed backend): nothing of the caller's was sent, so the open can be
        tried again.
        """
        setsession = self._setsession
        try:
            if callable(setsession):
                setsession(db)
            elif setsession:
                poller = select.poll()
                poller.register(db.db.socket, WATCH)  # type: ignore[union-attr]
                for statement in setsession:
                    if ask(db.db, poller, statement, self.probe_timeout) is None:
                        raise ServerUnavailableError(
                            f"no answer from the server within {self.probe_timeout:g} s "
                            "(connect_timeout) to a setsession statement of a new connection"
                        )
        except Exception as exc:
            lost = db.db is not None and not db.db.status
            _close_quietly(db)
            if lost:
                raise _SessionLost(redact(" ".join(str(exc).split()), self._secrets)) from None
            raise
        except BaseException:
            _close_quietly(db)
            raise

    def _open_new(self) -> None:
        """Replace the connection: the old backend is let go first, then a new one opened.

        In this order, so that a reopen (``maxusage``, ``reset="reconnect"``, ``reopen()``,
        a loss) never holds two backends at once: a server budget counts one per connection.
        If the open fails, the connection is left to reopen at its next use.
        """
        old = self._db
        if old is not None:
            if self._dirt & CLIENT:
                # The borrower's debug, typecasts, hooks go over to the new pg.DB.
                self._carry = ClientState(old)
            self._db, self._cnx, self._poller = None, None, None
            self.clean_state = None
            self._reopen_pending = True
            self._let_go(old)
        for attempt in range(1, _SESSION_ATTEMPTS + 1):
            args, kwargs = self._args, self._kwargs
            if self._password_source:
                args, kwargs = self._fresh_password()
            db = open_db(
                args,
                kwargs,
                secrets=self._secrets,
                reconnect_timeout=self._reconnect_timeout,
                logger=self.logger,
                admission=self.admission,
            )
            # A type cache that remembers built-in types (a new pg.DB has fresh caches anyway).
            db.dbtypes = PooledDbTypes(db, self._type_rows)
            db.db.set_cast_hook(db.dbtypes.typecast)  # type: ignore[union-attr]
            try:
                self._prepare_session(db)
                break
            except _SessionLost as lost:
                # Killed while its setsession ran: nothing of the caller's was sent. Again.
                if attempt == _SESSION_ATTEMPTS:
                    raise ServerUnavailableError(
                        f"a new connection was lost {attempt} times while its setsession "
                        f"ran: {lost}"
                    ) from None
        self._db, self._cnx = db, db.db
        self._cnx_state, self._cnx_query = db.db.transaction, db.db.query  # type: ignore[union-attr]
        self._reopen_pending = False
        self._primed = set(NATIVE_TYPES)
        self._dead = False
        self._poller = select.poll()  # not select.select: that fails for descriptors > 1023
        self._poller.register(db.db.socket, WATCH)  # type: ignore[union-attr]
        self._transaction = False
        self._usage = 0
        self._dirt &= ~TEMP  # the temporary objects went with the old session
        self.clean_state = None if self._dirt else self._cnx_state
        carry, self._carry = self._carry, None
        if carry is not None:
            carry.apply(db)
        if self._channels:
            self._listen_again(db)

    def _listen_again(self, db: pg.DB) -> None:
        """Within a checkout, a new session listens on the borrower's channels again."""
        for channel in sorted(self._channels):
            try:
                db.query(f"LISTEN {channel}")
            except pg.Error as exc:
                self._channels.discard(channel)
                self.logger.warning("LISTEN %s after a reopen failed: %s", channel, exc)

    def _fresh_password(self) -> tuple[tuple[Any, ...], dict[str, Any]]:
        """The connection arguments with the password read now from its callable source; the
        password joins the secrets redacted from messages (the last few kept)."""
        try:
            args, kwargs, password = resolve_password(self._args, self._kwargs)
        except ValueError as exc:
            raise ServerUnavailableError(str(exc)) from None
        if password and password not in self._secrets:
            self._secrets = (*self._secrets[-7:], password)
        return args, kwargs

    def _let_go(self, db: pg.DB) -> None:
        """Close ``db``; with :attr:`close_wait`, wait until the server has ended its backend.

        libpq's close sends the server a goodbye and returns at once; the backend lingers in
        ``pg_stat_activity`` and counts against ``max_connections`` until it has exited. The
        server closes its end of the socket only after that, so waiting for end-of-file on a
        duplicate of the socket tells when the connection is really gone.
        """
        fd = -1
        cnx = db.db
        if self.close_wait > 0 and cnx is not None and cnx.status:
            with contextlib.suppress(Exception):
                fd = os.dup(cnx.socket)
        try:
            _close_quietly(db)
        finally:
            if fd >= 0:
                wait_for_eof(fd, self.close_wait)

    def _event(self, event: Counter) -> None:
        listener = self.listener
        if listener is not None:
            listener(event)

    # -- lifecycle ----------------------------------------------------------------------------

    def close(self) -> None:
        """Close the connection (if closeable), else only roll back an open transaction.

        A closeable connection can be brought back with :meth:`reopen`.
        """
        if self._closeable:
            self._close_now()
        elif self._transaction or self._server_in_transaction():
            self.rollback()

    def _close_now(self) -> None:
        db, self._db, self._cnx = self._db, None, None
        self.clean_state = None
        self._transaction = False
        self._reopen_pending = False
        if db is not None:
            self._let_go(db)

    def close_and_wait(self, timeout: float) -> None:
        """Close, then wait up to ``timeout`` seconds until the server has ended the backend."""
        wait, self.close_wait = self.close_wait, timeout
        try:
            self._close_now()
        finally:
            self.close_wait = wait

    def reopen(self) -> None:
        """Close the connection and open a new one (``setsession`` replayed, usage reset).

        As with ``pg.DB.reopen()``, the new session listens on nothing; the client-side state
        set on this connection (debug, typecasts, hooks) stays.
        """
        self._channels.clear()
        self._open_new()
        self.fresh = False

    def reset(self) -> None:
        """Reconnect with the same parameters, as ``pg.DB.reset()`` (libpq's ``PQreset``).

        The ``pg.Connection`` object (``db``) stays the same and client-side state stays;
        the server session is new: ``setsession`` is replayed, pg.DB's caches are flushed,
        nothing is listened on. Under a server budget (:attr:`close_wait`), the old backend
        is let go and waited for before a new connection is opened instead, so the budget
        holds; ``db`` is then a new object.
        """
        db = self._live_db()
        cnx = self._cnx
        self._channels.clear()
        if self.close_wait > 0 or self._dead or not self._cnx_ok(cnx):
            self._open_new()
            return
        cnx.reset()
        if not self._cnx_ok(cnx):
            self._dead = True  # reopened (or reported) at the next call
            raise ServerUnavailableError(
                redact(f"reset() could not reconnect: {cnx.error.strip()}", self._secrets)
            )
        try:
            self._prepare_session(db)  # closes db if it fails
        except BaseException:
            self._db, self._cnx, self._poller = None, None, None
            self.clean_state = None
            self._reopen_pending = True  # a new connection at the next use
            raise
        borrower.flush_caches(db)
        self._primed.clear()
        self._dirt &= ~TEMP
        self._poller = select.poll()
        self._poller.register(cnx.socket, WATCH)
        self._transaction = False
        self.fresh = False
        self._usage = 0

    @staticmethod
    def _cnx_ok(cnx: Any) -> bool:
        """libpq reports ``cnx`` usable (False when closed under us, as by ``db.db.close()``)."""
        try:
            return cnx is not None and bool(cnx.status)
        except TypeError:  # "Connection is not valid": closed
            return False

    @property
    def closed(self) -> bool:
        """True once :meth:`close` closed the connection."""
        return self._db is None and not self._reopen_pending

    @property
    def usage(self) -> int:
        """Calls made since the connection was last (re)opened."""
        return self._usage

    @property
    def in_transaction(self) -> bool:
        """True inside ``begin()`` or when the server reports an open or failed transaction."""
        return self._transaction or self._server_in_transaction()

    def _server_in_transaction(self) -> bool:
        cnx = self._cnx
        return cnx is not None and cnx.transaction() not in (_TRANS_IDLE, _TRANS_UNKNOWN)

    @property
    def secrets(self) -> tuple[str, ...]:
        """The literal passwords among the connection arguments (for redacting messages)."""
        return self._secrets

    def transaction_state(self) -> int:
        """libpq's transaction status (``pg.TRANS_*``) without a round trip; UNKNOWN if closed."""
        cnx = self._cnx
        state: int = _TRANS_UNKNOWN if cnx is None else cnx.transaction()
        return state

    def reset_on_return(self, policy: ResetPolicy) -> bool:
        """Clean the session for the next borrower as ``policy`` says (I/O; raises on failure).

        Returns True when a transaction was still open (or failed) and was rolled back, so
        the pool can warn about a connection given back inside a transaction. The server's
        state is the truth: after ``begin()`` and a raw ``COMMIT`` it is idle, and a ROLLBACK
        then would only put a warning in the server log.
        """
        cnx = self._cnx
        if not self._cnx_ok(cnx) or self._db is None:
            raise ConnectionLostError("the connection is closed or lost")
        state: int = cnx.transaction()
        if state in (_TRANS_ACTIVE, _TRANS_UNKNOWN):
            raise pg.OperationalError("a query is still running on the connection")
        in_transaction = state != _TRANS_IDLE
        dirt, self._dirt = self._dirt, 0
        if self._channels:
            dirt |= UNLISTEN_ALL
            self._channels.clear()
        self._carry = None
        if dirt & CLIENT and borrower.reset_client_state(self._db):
            self._primed.clear()  # typecasts changed: resolve them again
        if policy is ResetPolicy.ROLLBACK_IF_NEEDED:
            if in_transaction:
                self._ask("ROLLBACK")
            if dirt & SESSION:
                self._clean_session(cnx, dirt)
        elif policy is ResetPolicy.ROLLBACK:
            self._ask("ROLLBACK" if in_transaction else "SELECT")
            if dirt & SESSION:
                self._clean_session(cnx, dirt)
        elif policy is ResetPolicy.DISCARD:
            if in_transaction:
                self._ask("ROLLBACK")
            self._ask("DISCARD ALL")  # UNLISTEN * and DISCARD TEMP among the rest
            borrower.drain_notifications(cnx)
            self.flush_caches()
            self.replay_session()
        else:
            self.reopen()
        if dirt & SCHEMA and policy is not ResetPolicy.DISCARD:
            self.flush_caches()  # the next borrower's pg.DB knows nothing of the old schema
        self._transaction = False
        self.fresh = True
        self.clean_state = None if self._db is None else self._cnx_state
        return in_transaction

    def _clean_session(self, cnx: Any, dirt: int) -> None:
        """Undo the borrower's LISTENs (one round trip) and drop the notifications it did not
        read."""
        if dirt & UNLISTEN_ALL:
            cnx.query("UNLISTEN *")
        if dirt & (LISTENED | UNLISTEN_ALL):
            # Sent before the UNLISTEN was done, they arrived with its reply (or earlier).
            borrower.drain_notifications(cnx)

    def flush_caches(self) -> None:
        """Forget what pg.DB cached about the session (columns, keys, privileges, types).

        Done whenever the server session changes under the same pg.DB (``DISCARD``, a
        ``reset()``, a borrower's temporary objects dropped): the next borrower's ``insert()``
        or ``get()`` never uses the columns of a table that is gone. No I/O: built-in types
        come back without a round trip.
        """
        db = self._db
        if db is not None:
            borrower.flush_caches(db)
        self._primed.clear()

    # -- what a borrower does (noted by the pool's proxy) ----------------------------------

    def query(self, command: str, *args: Any) -> Any:
        """``pg.DB.query`` through the call path (see :meth:`_run`), its result's types resolved
        (see :meth:`prime_types`).

        The common case is written out here rather than left to the generic wrapper, as it is
        what every request pays: an open connection, no ``debug``, nothing to reopen. It takes
        the same steps as :meth:`_run` and calls the ``pg.Connection`` as ``pg.DB.query``
        would; anything else goes through :meth:`_run`.
        """
        db = self._db
        if db is None or db.debug or self._dead or self._usage >= self._maxusage:
            result = self._run(_DB_QUERY, (command, *args), _NO_KWARGS)
        else:
            state = self._cnx_state()
            if (
                state == _TRANS_IDLE
                and not self._transaction
                and (ready := self._poller.poll(0))
                and ended_on_server(self._cnx, ready[0][1])
            ):
                self._found_dead(_DB_QUERY)
                result = self._run(_DB_QUERY, (command, *args), _NO_KWARGS)
            else:
                self.fresh = False
                try:
                    result = self._cnx_query(command, args) if args else self._cnx_query(command)
                except Exception as exc:
                    result = self._recover(exc, state, _DB_QUERY, (command, *args), _NO_KWARGS)
                else:
                    self._usage += 1
        if type(result) is _Query:
            primed = self._primed
            fields: Any = result.fieldinfo()  # type: ignore[call-arg]  # column is optional
            for field in fields:
                if field[1] not in primed:
                    self.prime_types(result)
                    break
        return result

    def note_statement(self, command: str, utility: bool = True) -> None:
        """Note LISTEN/UNLISTEN, temporary objects and schema changes in ``command`` (no I/O).

        ``utility``: it returned neither rows nor a count (see borrower.scan_statement).
        """
        if type(command) is not str:  # bytes, which pg.DB takes too
            command = _as_text(command)
        dirt = borrower.scan_statement(command, self._channels, utility)
        if dirt:
            self._dirt |= dirt
            self.clean_state = None

    def note_prepared(self, command: str) -> None:
        """Note what a statement prepared to run later (``prepare()``) may leave (no I/O).

        When (and whether) it runs is not seen, so a prepared LISTEN or UNLISTEN gets
        ``UNLISTEN *`` on return, whatever it listened on.
        """
        dirt = borrower.scan_statement(command, set())
        if dirt & LISTENED:
            dirt |= UNLISTEN_ALL
        if dirt:
            self._dirt |= dirt
            self.clean_state = None

    def note_client_change(self, dirt: int = CLIENT) -> None:
        """The borrower changed client-side state (or had the raw connection): clean it on
        return, carry it over a reopen. The resolved typecasts are checked again."""
        self._dirt |= dirt
        self.clean_state = None
        self._primed.clear()

    @property
    def debug(self) -> Any:
        """pg.DB's ``debug`` (a format string, file, callable or true value prints queries)."""
        return self._live_db().debug

    @debug.setter
    def debug(self, value: Any) -> None:
        self._live_db().debug = value
        self._dirt |= CLIENT
        self.clean_state = None

    def prime_types(self, result: object) -> None:
        """Look up now every type that reading ``result`` could make PyGreSQL look up later
        (see :func:`pgregistry.priming.prime_types`): the one-line use stays typed and never
        touches a connection lent again.
        """
        db = self._db
        if db is None or type(result) is not pg.Query:
            return
        try:
            prime_types(db, result, self._primed)
        except Exception:
            cnx = self._cnx
            if cnx is not None and not cnx.status:
                # Killed right after the statement: its result needs types that can no longer
                # be looked up (PyGreSQL would fail in getresult() with a LookupError).
                self._event(Counter.LOST)
                self._dead = True
                raise ConnectionLostError(
                    "connection lost right after the statement completed (it ran: a write is "
                    "committed), before the types of its result could be read; the connection "
                    "is reopened at its next use"
                ) from None
            # Otherwise best effort: reading the result will report any real problem.

    def server_role(self) -> str | None:
        """``"primary"`` or ``"standby"`` as the server last reported (``in_hot_standby``,
        PostgreSQL 14+; no round trip); None when not known."""
        cnx = self._cnx
        try:
            value = None if cnx is None else cnx.parameter("in_hot_standby")
        except Exception:
            return None
        return None if value is None else ("standby" if value == "on" else "primary")

    def looks_dead(self) -> bool:
        """Whether the connection is known lost, or its server has ended it while it sat idle
        (the look before sending: no round trip)."""
        if self._dead or self.is_lost():
            return True
        poller = self._poller
        ready: Any = poller.poll(0) if poller is not None else None
        return bool(ready) and ended_on_server(self._cnx, ready[0][1])

    def role_ok(self) -> bool:
        """True unless the server now reports a role the target does not accept (no round
        trip; see :func:`pgregistry.roles.server_has_role`)."""
        return self.role is None or server_has_role(self._cnx, self.role)

    def is_lost(self) -> bool:
        """True when libpq reports the connection broken (no round trip is made)."""
        return self._dead or not self._cnx_ok(self._cnx)

    def ping(self) -> bool:
        """One round trip (``SELECT``), waiting at most :attr:`probe_timeout`; False if the
        connection is dead, busy, or the server does not answer in time."""
        if self._cnx is None:
            return False
        try:
            self._ask("SELECT")
        except Exception:
            return False
        return True

    def _ask(self, sql: str) -> list[Any]:
        """Run ``sql`` (a pool's own statement), waiting at most :attr:`probe_timeout` for it.

        A server that stops answering with the connection still open (a frozen process, a
        stalled network path the kernel still acknowledges) would hold a plain query forever;
        past the deadline the connection is taken for lost, let go, and reopened at next use.
        """
        results = ask(self._cnx, self._poller, sql, self.probe_timeout)
        if results is None:
            old, self._db, self._cnx, self._poller = self._db, None, None, None
            self.clean_state = None
            self._reopen_pending = self._dead = True
            if old is not None:
                _close_quietly(old)
            self._event(Counter.LOST)
            raise ConnectionLostError(
                f"no answer from the server within {self.probe_timeout:g} s (connect_timeout) "
                f"to {sql.split()[0]}; the connection is closed"
            )
        return results

    def server_pid(self) -> int:
        """``pg_backend_pid()`` as the server answers it (one round trip, bounded like a ping):
        it differs from libpq's ``backend_pid`` when a pooler such as PgBouncer is in between.
        """
        pid: int = self._ask("SELECT pg_backend_pid()")[0][0][0]
        return pid

    def __del__(self) -> None:
        try:
            if self._closeable:
                self.close()
        except Exception:
            pass

    def __repr__(self) -> str:
        state = "closed" if self._db is None else ("lost" if self.is_lost() else "open")
        return f"<SteadyPgConnection {state} usage={self._usage} transaction={self._transaction}>"

    # -- transactions -------------------------------------------------------------------------

    def begin(self, mode: str | None = None) -> Any:
        """Begin a transaction; until it ends, nothing is reopened and errors pass through."""
        result = self._run(pg.DB.begin, (mode,), {})
        self._transaction = True
        self.clean_state = None  # until commit() or rollback()
        statement = self.begin_statement
        if statement is not None:
            # Transaction-scoped settings behind a transaction pooler (SET LOCAL ...).
            self._live_db().query(statement)
        return result

    start = begin

    def commit(self) -> Any:
        """Commit the transaction (also ends the transaction if the commit fails)."""
        try:
            return self._run(pg.DB.commit, (), {})
        finally:
            self._ended()

    end = commit

    def rollback(self, name: str | None = None) -> Any:
        """Roll back the transaction, or to the savepoint ``name``.

        A plain rollback on a connection that was lost succeeds: the server already discarded
        the transaction. The connection is reopened (or left to reopen on next use if the
        server is still down).
        """
        if name:
            return self._run(pg.DB.rollback, (name,), {})
        try:
            return self._run(pg.DB.rollback, (), {})
        finally:
            self._ended()

    abort = rollback

    def _ended(self) -> None:
        """The transaction of ``begin()`` ended: the cheapest return path is open again."""
        self._transaction = False
        if not self._dirt and self._db is not None:
            self.clean_state = self._cnx_state

    def __enter__(self) -> SteadyPgConnection:
        """``with conn:`` runs the block in a transaction: commit, or roll back on error."""
        self.begin()
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is None:
            self.commit()
        else:
            self.rollback()

    def behind_transaction_pooler(self) -> None:
        """Refuse what breaks behind a transaction pooler (see
        :func:`pgregistry.pooling.refuse_what_breaks`); pools with ``server_pooling =
        "transaction"`` call this."""
        refuse_what_breaks(self)

    # -- plain attributes ---------------------------------------------------------------------

    def __dir__(self) -> list[str]:
        names = set(super().__dir__())
        if self._db is not None:
            names.update(dir(self._db))
        return sorted(names)


def _unknown_state() -> int:
    return _TRANS_UNKNOWN


def _no_query(*args: Any) -> Any:
    raise pg.InternalError("Connection is not valid")


def _close_quietly(db: pg.DB) -> None:
    with contextlib.suppress(Exception):
        db.close()


install_wrappers(SteadyPgConnection)


def _after_fork_in_child() -> None:
    """Cut every inherited connection off from the parent's socket (see
    :func:`pgregistry.wire.cut_off`); a later call finds it lost and reopens it."""
    global _LIVE_LOCK
    _LIVE_LOCK = threading.Lock()
    pid = os.getpid()
    inherited = [conn for conn in list(_LIVE) if conn._cnx is not None and conn._pid != pid]
    cut_off([conn._cnx for conn in inherited])
    for conn in inherited:
        conn._pid = pid


def _as_text(command: object) -> str:
    """A statement given as bytes (or another object pg.DB accepts), as text to look at."""
    if isinstance(command, (bytes, bytearray, memoryview)):
        return bytes(command).decode("utf-8", "replace")
    return str(command)


os.register_at_fork(after_in_child=_after_fork_in_child)
