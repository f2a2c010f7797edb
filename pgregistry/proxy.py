"""The per-checkout proxy and the long-lived record of a pooled connection.

As in SQLAlchemy's pool, the two are apart: a :class:`Slot` lives as long as its server
connection (expiry, idle time, leak stack), while a :class:`PooledPgConnection` lives for one
checkout and gives the connection back when it is closed or collected.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, NoReturn, SupportsIndex

import pg

from .borrower import RAW
from .callpath import DB_ATTRIBUTES, DBAPI, api_method_names
from .errors import InvalidConnectionError
from .leak import Frame
from .steady import SteadyPgConnection

if TYPE_CHECKING:
    from .pool import PooledPg

__all__ = ["CheckoutSource", "LentConnection", "PooledPgConnection", "ReturnedConnection", "Slot"]

_refcount = sys.getrefcount
_monotonic = time.monotonic
_Query = pg.Query
_TRANS_IDLE: int = pg.TRANS_IDLE
# pg.DB's own helpers with a leading underscore (_do_debug, _escape_qualified_name, ...):
# forwarded too, since code written against pg.DB may call them.
_DB_PRIVATE = frozenset(
    name for name in vars(pg.DB) if name.startswith("_") and not name.startswith("__")
)


class Slot:
    """The long-lived record of one pooled connection (the proxy is per checkout)."""

    __slots__ = ("conn", "expires_at", "generation", "leak_reported", "returning", "since", "stack")

    def __init__(self, conn: SteadyPgConnection, expires_at: float, generation: int) -> None:
        self.conn = conn
        self.expires_at = expires_at
        self.generation = generation
        #: When it last went idle or was last checked out (monotonic seconds).
        self.since = time.monotonic()
        #: Where it was checked out, when leak detection is on (formatted only if it leaks).
        self.stack: list[Frame] | None = None
        self.leak_reported = False
        #: Set while a return that takes the lock (or the server) is under way; cleared in the
        #: same step as the connection is pooled, handed on or its place freed, so that a
        #: return cut short by a signal handler knows what is left to do (HandOff._rescue).
        self.returning = False


class PooledPgConnection(DBAPI):
    """A checked-out connection: the whole steady ``pg.DB`` API, returned on close.

    ``close()``, ``del`` or leaving ``with pool.connection() as db:`` returns the connection
    to its pool; afterwards every use raises :class:`InvalidConnectionError` (a
    ``pg.InternalError``, as pg.DB raises for a closed connection), ``close()`` included. A
    method call keeps the proxy alive until it returns, so ``pool.connection().query(...)`` is
    safe: the connection goes back only after the query is done.
    """

    __slots__ = ("__weakref__", "_con", "_pool", "_result", "_slot")

    # Made by PooledPg.connection() without __init__ (one call less on the hot path).
    _pool: PooledPg
    _slot: Slot | None
    _con: SteadyPgConnection | None
    #: The last query result: while the caller still holds it, the connection is kept out of
    #: the pool (see close()).
    _result: object

    if TYPE_CHECKING:  # installed with pg.DB's methods (see _install_forwarders)

        def ping(self) -> bool: ...

        def is_lost(self) -> bool: ...

        @property
        def in_transaction(self) -> bool: ...

    def close(self) -> None:
        """Return the connection to the pool; a second call raises InvalidConnectionError.

        As pg.DB, whose ``close()`` on a closed connection raises ``pg.InternalError``. When
        the caller still holds the result of the last query (as in
        ``pool.connection().query(...).getresult()``, where the proxy goes before the result
        is read), the connection stays out of the pool until that result is released: it is
        never lent to anyone else while it can still be read, and never closed under it.
        """
        slot = self._slot
        if slot is None:
            raise InvalidConnectionError(
                f"connection of pool {self._pool.name!r} was already returned to the pool"
            )
        pool = self._pool
        quick = False
        try:
            # Every field read before the class changes: ReturnedConnection's __getattr__
            # keeps CPython from specialising a read after it.
            result = self._result
            self._slot = self._con = None
            self.__class__ = ReturnedConnection
            if result is not None:
                self._result = None
                if type(result) is list:  # results kept past later queries (see _note_result)
                    held = [kept for kept in result if _refcount(kept) > 3]
                    if held:
                        pool._hold(slot, held)
                        return
                # Beyond `result` here and the argument of getrefcount, someone holds it.
                elif _refcount(result) > 2:
                    pool._hold(slot, result)
                    return
            if pool._quick_return:
                # The common return, written out here (the rest is the pool's _checkin): the
                # default reset on an idle connection the borrower left clean (no LISTEN,
                # temporary object, client-side change or open begin()), within its
                # lifetime. Nothing to send. With nobody waiting, no lock either: nothing
                # here can exceed a limit (see PoolState._update_fast_path). Looked at again
                # after the append: a caller that queued to wait, or a close() of the pool,
                # in between looked at the idle connections before this one was among them;
                # either that second look sees it, or they saw it (both sides write first,
                # then read: see HandOff._serve_from_idle).
                # Comparisons only as if-conditions: CPython specialises those, not a
                # comparison whose value is stored.
                conn = slot.conn
                state_of = conn.clean_state
                if state_of is not None:
                    try:
                        state = state_of()
                    except TypeError:  # closed under us (db.db.close()): the reset path sees it
                        state = None
                    if state == _TRANS_IDLE:
                        now = _monotonic()
                        if now < slot.expires_at and slot.generation == pool._generation:
                            quick = True
                            observer = pool._observer
                            if observer is not None:
                                try:
                                    observer.on_checkin(now - slot.since)
                                except Exception:
                                    pool._observer_failed(observer)
                            conn.fresh = True
                            slot.since = now
        except BaseException:
            pool._checkin_unless_held(slot)  # interrupted (a signal) before it was handed on
            raise
        # From here on, a signal handler raising before the connection is pooled, handed on
        # or closed leaves that to _rescue (see Slot.returning); the lock-free push needs none.
        if quick:
            if pool._waiters or pool._closed:
                slot.returning = True
                try:
                    pool._place(slot, now)  # to the oldest waiter, under the lock
                except BaseException:
                    pool._rescue(slot)
                    raise
            else:
                pool._idle.append(slot)
                if pool._waiters or pool._closed:
                    pool._settle()
            if pool._held:
                pool._release_held()
            return
        slot.returning = True
        try:
            pool._checkin(slot)
        except BaseException:
            pool._rescue(slot)
            raise

    def _give_back(self) -> None:
        """close(), if not returned yet."""
        if self._slot is not None:
            self.close()

    def _note_result(self, result: Any) -> None:
        """Remember ``result`` as the last one; keep an earlier one the caller still holds."""
        last = self._result
        if last is None:
            self._result = result
        elif type(last) is list:
            last.append(result)
        elif _refcount(last) > 3:  # `last`, self._result and the argument: someone else too
            self._result = [last, result]
        else:
            self._result = result

    def __copy__(self) -> NoReturn:
        raise TypeError(
            "a pooled connection cannot be copied: each checkout is given back once; check "
            "out another with pool.connection()"
        )

    def __deepcopy__(self, memo: object) -> NoReturn:
        self.__copy__()

    def __reduce_ex__(self, protocol: SupportsIndex) -> NoReturn:
        raise TypeError("a pooled connection cannot be pickled")

    def reopen(self) -> None:
        """Open a new connection, as ``pg.DB.reopen()``: a new server session.

        On a live proxy the underlying connection is reopened. On a returned one, a connection
        is taken from the pool and reopened, so that ``reopen()`` always means a new session
        (the pool would likely hand back the very connection just returned).
        """
        con = self._con
        if con is not None:
            con.reopen()
            return
        fresh = self._pool.connection()
        self._slot, self._con = fresh._slot, fresh._con
        fresh._slot = fresh._con = None
        self.__class__ = LentConnection
        try:
            self._live().reopen()
        except BaseException:
            self._give_back()  # a failed reopen leaves the connection to reopen at next use
            raise

    def reset(self) -> None:
        """Reconnect with the same parameters, as ``pg.DB.reset()``: ``db.db`` stays the same
        object (see :meth:`SteadyPgConnection.reset`)."""
        self._live().reset()

    @property
    def steady(self) -> SteadyPgConnection:
        """The underlying :class:`SteadyPgConnection` (``with db.steady:`` is a transaction).

        Like ``db.db``, what is done through it is out of the pool's sight (a ``LISTEN`` sent
        with ``db.steady.query()``, say): the return then cleans everything a borrower can
        leave.
        """
        con = self._live()
        con.note_client_change(RAW)
        return con

    def _live(self) -> SteadyPgConnection:
        con = self._con
        if con is None:
            raise InvalidConnectionError(
                f"connection of pool {self._pool.name!r} was already returned to the pool"
            )
        return con

    def query(self, command: str, *args: Any) -> Any:
        con = self._con
        if con is None:
            con = self._live()
        # Its types resolved there. Without arguments, a plain call: forwarding *args costs
        # a bound method and a tuple on what every request pays.
        result = con.query(command, *args) if args else con.query(command)
        if type(result) is _Query:  # not the str or None of other statements
            if self._result is None:
                self._result = result
            else:
                self._note_result(result)
            try:
                batch = ";" in command  # ending in rows: a LISTEN may be among the others
            except TypeError:  # bytes, which pg.DB takes too: looked at as text
                batch = True
            if batch:
                con.note_statement(command)
        else:  # LISTEN, CREATE return None, CREATE TEMP .. AS a count: noted for the return
            con.note_statement(command, result is None)
        return result

    def query_formatted(self, *args: Any, **kwargs: Any) -> Any:
        con = self._live()
        result = con.query_formatted(*args, **kwargs)
        command = args[0] if args else kwargs.get("command")
        if type(result) is _Query:
            self._note_result(result)
            con.prime_types(result)
            if isinstance(command, str) and ";" in command:  # a batch ending in rows
                con.note_statement(command)
        elif isinstance(command, str):
            con.note_statement(command, result is None)
        return result

    def query_prepared(self, name: str, *args: Any) -> Any:
        con = self._live()
        result = con.query_prepared(name, *args)
        if type(result) is _Query:
            self._note_result(result)
            con.prime_types(result)
        return result

    def prepare(self, name: str, command: str) -> None:
        """pg.DB's ``prepare()``; what the statement may leave is cleaned on return."""
        con = self._live()
        con.prepare(name, command)
        con.note_prepared(command)

    def source(self) -> Any:
        """pg.Connection's ``source()`` (a DB-API-like cursor): like ``db.db``, out of the
        pool's sight, so the return cleans everything a borrower can leave. The cursor works
        while this checkout lasts (and keeps it from being collected); after ``close()`` it
        raises :class:`InvalidConnectionError`, as the proxy does."""
        con = self._live()
        con.note_client_change(RAW)
        return CheckoutSource(self, con.source())

    def send_query(self, cmd: str, args: Any = None) -> Any:
        con = self._live()
        query = con.send_query(cmd) if args is None else con.send_query(cmd, args)
        con.note_statement(cmd)
        return query

    # -- pg.DB's attributes ---------------------------------------------------------------

    @property
    def db(self) -> Any:  # type: ignore[override]  # read-only: the pool owns it
        """The underlying ``pg.Connection`` (None once returned, as pg.DB after close()).

        What is done to it is out of the pool's sight: the return then cleans everything a
        borrower can leave (client state, ``UNLISTEN *``, pg.DB's caches).
        """
        con = self._con
        if con is None:
            return None
        con.note_client_change(RAW)
        return con.db

    # pg.DB(db) accepts a pgdb connection by its ``_cnx``: so it accepts a pooled connection.
    _cnx = db

    @property
    def debug(self) -> Any:
        """pg.DB's ``debug``: set it to print or log the queries of this checkout."""
        return self._live().debug

    @debug.setter
    def debug(self, value: Any) -> None:
        self._live().debug = value  # undone on return, kept over a transparent reopen

    @property
    def dbtypes(self) -> Any:  # type: ignore[override]
        """pg.DB's type cache; typecasts set on it last for this checkout."""
        con = self._live()
        con.note_client_change()
        return con.dbtypes

    def use_regtypes(self, regtypes: bool | None = None) -> bool:
        con = self._live()
        if regtypes is not None:
            con.note_client_change()
        result: bool = con.use_regtypes(regtypes)
        return result

    def __dir__(self) -> list[str]:
        """The attributes of the underlying pg.DB, as ``dir()`` of a pg.DB lists them."""
        con = self._con
        if con is None:
            return sorted(set(super().__dir__()))
        return dir(con._live_db())

    def __enter__(self) -> PooledPgConnection:
        """``with`` on a fresh connection scopes the checkout; otherwise it is pg.DB's.

        ``with pool.connection() as db:`` (no call has gone to the server on it yet) gives the
        connection back at the end. ``with db:`` on a connection already used in this
        checkout, or inside such a scope, is what it is on a pg.DB: ``begin()``, then
        ``commit()``, or ``rollback()`` if the block raises.
        """
        con = self._con
        if con is None:
            con = self._live()
        if con.fresh:
            con.fresh = False  # a with inside this one is a transaction block
            con.with_blocks = -1
            return self
        blocks = con.with_blocks
        con.begin()
        con.with_blocks = blocks - 1 if blocks < 0 else blocks + 1
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        con = self._con
        if con is None:
            return  # given back inside the block (and rolled back there if need be)
        blocks = con.with_blocks
        if blocks == -1:
            self.close()  # the block that scoped the checkout
            return
        con.with_blocks = blocks + 1 if blocks < 0 else blocks - 1
        if exc_type is None:
            con.commit()
        else:
            con.rollback()

    def __repr__(self) -> str:
        state = "returned" if self._con is None else "checked out"
        return f"<PooledPgConnection of {self._pool.name!r} {state}>"


def _forwarding_method(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    """The method ``name`` of the checked-out connection (looked up on the instance: a pool
    behind a transaction pooler guards some of them there, see pooling.refuse_what_breaks)."""

    def method(self: PooledPgConnection, *args: Any, **kwargs: Any) -> Any:
        con = self._con
        if con is None:
            con = self._live()
        return getattr(con, name)(*args, **kwargs)

    method.__name__ = method.__qualname__ = name
    method.__doc__ = func.__doc__
    method.__wrapped__ = func  # type: ignore[attr-defined]
    return method


def _client_method(name: str, func: Callable[..., Any]) -> Callable[..., Any]:
    """A forwarder for a method that changes client-side state: noted, undone on return."""

    def method(self: PooledPgConnection, *args: Any, **kwargs: Any) -> Any:
        con = self._live()
        con.note_client_change()
        return getattr(con, name)(*args, **kwargs)

    method.__name__ = method.__qualname__ = name
    method.__doc__ = func.__doc__
    method.__wrapped__ = func  # type: ignore[attr-defined]
    return method


# pg.Connection methods (reached through __getattr__) that change client-side state.
_CLIENT_METHODS = ("set_cast_hook", "set_non_blocking", "set_notice_receiver")


def _forwarding_property(name: str) -> property:
    """A read-only attribute of the checked-out steady connection."""

    def read(self: PooledPgConnection) -> Any:
        return getattr(self._live(), name)

    read.__name__ = name
    return property(read, doc=getattr(SteadyPgConnection, name).__doc__)


def _private_attribute(name: str) -> property:
    """One of pg.DB's own underscore helpers, on the underlying pg.DB."""

    def read(self: PooledPgConnection) -> Any:
        return getattr(self._live()._live_db(), name)

    read.__name__ = name
    return property(read)


def _install_forwarders() -> None:
    """Every method and attribute of pg.DB, and pgregistry's ``ping()``, ``is_lost()`` and
    ``in_transaction``, spelt out on the class: no ``__getattr__``, which would make every
    attribute read of the proxy (its own slots included) several times slower."""
    names = {*api_method_names(), *DB_ATTRIBUTES, "ping", "in_transaction", "is_lost"}
    cls = PooledPgConnection
    for name in sorted(names - set(cls.__dict__)):
        attr = getattr(SteadyPgConnection, name)
        if isinstance(attr, property):
            setattr(cls, name, _forwarding_property(name))
        else:
            setattr(cls, name, _forwarding_method(name, attr))
    for name in _CLIENT_METHODS:
        setattr(cls, name, _client_method(name, getattr(pg.Connection, name)))
    for name in sorted(_DB_PRIVATE - set(cls.__dict__)):
        setattr(cls, name, _private_attribute(name))


_install_forwarders()


def _notification_handler(
    self: PooledPgConnection,
    event: str,
    callback: Callable[..., Any],
    arg_dict: dict[str, Any] | None = None,
    timeout: float | None = None,
    stop_event: str | None = None,
) -> pg.NotificationHandler:
    """A ``pg.NotificationHandler`` on this proxy: ``handler.db is db``.

    The handler holds the proxy, so the connection stays with this borrower (it is not
    collected and returned) while the handler exists; ``handler.close()`` returns it.
    """
    self._live()
    return pg.NotificationHandler(self, event, callback, arg_dict, timeout, stop_event)


class CheckoutSource:
    """A ``pg.Source`` (``db.source()``) bound to the checkout it came from: once that
    connection is given back, it belongs to the next borrower, so every use raises
    :class:`InvalidConnectionError`."""

    __slots__ = ("_proxy", "_slot", "_source")

    def __init__(self, proxy: PooledPgConnection, source: Any) -> None:
        object.__setattr__(self, "_proxy", proxy)
        object.__setattr__(self, "_slot", proxy._slot)
        object.__setattr__(self, "_source", source)

    def _checked(self) -> Any:
        if self._slot is None or self._proxy._slot is not self._slot:
            raise InvalidConnectionError(
                "this source() cursor's connection was returned to the pool"
            )
        return self._source

    def __getattr__(self, name: str) -> Any:
        return getattr(self._checked(), name)

    def __setattr__(self, name: str, value: Any) -> None:
        setattr(self._checked(), name, value)

    def __iter__(self) -> Any:
        return iter(self._checked())


class LentConnection(PooledPgConnection):
    """A proxy while checked out (what ``pool.connection()`` makes): collected without
    ``close()`` (``del db``, ``pool.connection().query(...)``), it gives its connection back.

    ``close()`` turns it into a :class:`ReturnedConnection`: a proxy given back has nothing
    to give back when it is collected, and runs no ``__del__``.
    """

    __slots__ = ()

    def __del__(self) -> None:
        # Not contextlib.suppress: this runs for every checkout not closed, and try costs
        # nothing. (A proxy a signal cut short before its fields were set has no _slot.)
        try:
            if self._slot is not None:
                self.close()
        except Exception:
            pass


class ReturnedConnection(PooledPgConnection):
    """A proxy given back. As pg.DB after ``close()``, reading any attribute it does not have
    raises ``pg.InternalError`` (:class:`InvalidConnectionError`) rather than AttributeError.

    The ``__getattr__`` that does so lives on this class only: CPython does not specialise
    attribute access on a class that has one, and a checked-out proxy reads its own fields on
    every call.
    """

    __slots__ = ()

    def __getattr__(self, name: str) -> Any:  # type: ignore[override]  # see DBAPI
        if name.startswith("__"):
            raise AttributeError(name)  # protocols (copy, pickle, ...) look these up
        raise InvalidConnectionError(
            f"connection of pool {self._pool.name!r} was already returned to the pool"
        )


# Error messages and repr() name the class users know.
for _cls in (LentConnection, ReturnedConnection):
    _cls.__name__ = _cls.__qualname__ = "PooledPgConnection"

PooledPgConnection.notification_handler = _notification_handler  # type: ignore[method-assign,assignment]
# Aliases as in pg.DB (and SteadyPgConnection): the same methods, so db.start == db.begin.
PooledPgConnection.start = PooledPgConnection.begin
PooledPgConnection.end = PooledPgConnection.commit
PooledPgConnection.abort = PooledPgConnection.rollback
