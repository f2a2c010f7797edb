"""PooledPg: a thread-safe pool of steady PyGreSQL connections.

Design, in short:

* One lock guards the bookkeeping (idle stack, counts, waiters). No network I/O, logging or
  callback happens under it: connects, resets, pings and closes run outside.
* Idle connections form a stack: the most recently returned one is handed out first, so the
  surplus at the bottom ages out through ``max_idle``.
* Waiters queue in FIFO order. A returned connection goes straight to the oldest waiter, so
  no thread can barge ahead of one that has waited longer. When a connection is closed
  instead, the oldest waiter inherits its place and opens a new one.
* A connection is reset on return, before it is pooled or handed on (see :class:`ResetPolicy`).
* After ``os.fork()`` a pool in the child starts empty and never touches the parent's sockets.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import sys
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any, Literal

from . import handoff, leak, pooling
from .budget import ServerBudget
from .checks import check_name, check_seconds, check_sizes
from .connect_args import (
    SetSession,
    check_connect_args,
    check_retry,
    normalize_setsession,
    secrets_of,
)
from .connector import Admission
from .errors import (
    PoolClosedError,
    PoolTimeoutError,
    TooManyConnectionsError,
)
from .handoff import CLOSED, LIMIT_LOG_INTERVAL, OPEN, PLACE, Waiter
from .logs import LogFields, RateLimit
from .maintenance import Maintenance, Task
from .opening import Opening
from .policies import PingPolicy, ResetPolicy, parse_ping, parse_reset
from .pool_state import GIL_ENABLED, pop_idle, take_all
from .proxy import LentConnection, PooledPgConnection, Slot
from .roles import required_role
from .stats import COUNTERS, Counter, PoolObserver, PoolStats
from .upkeep import Upkeep

__all__ = ["PoolStats", "PooledPg", "PooledPgConnection"]

# Bounds for how often the maintenance task runs, in seconds.
_UPKEEP_MIN, _UPKEEP_MAX = 0.01, 15.0
# How often a waiter looks for connections held by results that have been released, in s.
_HELD_POLL = 0.005
# How soon a pool with mincached refills after losses, in seconds.
_REFILL_PERIOD = 1.0

_pool_numbers = itertools.count(1)
_monotonic = time.monotonic
_perf = time.perf_counter
_refcount = sys.getrefcount
_POOLS: weakref.WeakSet[PooledPg] = weakref.WeakSet()
# The pool's own files, skipped when the stack of a checkout is kept for leak reports.
_OWN_FILES = frozenset({__file__, leak.__file__, handoff.__file__})


class PooledPg(Opening, Upkeep):
    """A pool of steady, cached PyGreSQL ``pg.DB`` connections.

    ``PooledPg(mincached=0, maxcached=0, maxconnections=0, blocking=False, maxusage=None,
    setsession=None, reset=None, *args, **kwargs)`` keeps the original PooledPg's positional
    order and meaning; ``args`` and ``kwargs`` go to ``pg.DB`` (``dbname``, ``host``, ``port``,
    ``opt``, ``user``, ``passwd``; ``dbname`` may be a libpq conninfo string or URI).

    mincached
        Connections opened at once (0: none).
    maxcached
        Most idle connections kept (0: no limit). Raised to ``mincached`` if below it.
    maxconnections
        Most connections open at once (0: no limit). Raised to ``maxcached`` if below it.
    blocking
        At ``maxconnections``: wait (True) or raise :class:`TooManyConnectionsError` (False).
    maxusage
        Reopen a connection after this many uses (0 or None: never).
    setsession
        SQL statements run after every (re)open, or a callable taking the raw ``pg.DB``.
    reset
        What happens on return, see :class:`~pgregistry.policies.ResetPolicy`: ``0`` or
        ``"rollback_if_needed"`` (default), ``1`` or ``"rollback"``, ``2`` or ``"reconnect"``,
        ``"discard"``.

    Keyword-only options:

    name
        Used in log records (logger ``pgregistry.pool.<name>``), errors and stats.
    timeout
        Seconds a blocking checkout waits (default 30); ``None`` waits forever.
    retry_after_reopen
        Run a call again after a transparent reopen (default True); False reopens, then raises.
    reconnect_timeout
        Seconds an (re)open keeps retrying while the server is down (default 0: once).
    max_lifetime
        Seconds a connection lives (default 3600, up to 10% less at random); closed when idle
        or on return, never while checked out. ``None``: forever.
    max_idle
        Seconds an idle connection above ``mincached`` is kept (default 600). ``None``: forever.
    ping, ping_after
        Check a connection with a round trip at checkout: ``"never"``, ``"idle"`` (default:
        when idle longer than ``ping_after`` seconds, default 30) or ``"always"``.
    leak_threshold
        Seconds after which a checked-out connection is logged once as a possible leak, with
        the stack that checked it out (default None: off).
    server_pooling
        The server-side pooler in the way: ``"none"`` (default), ``"session"`` or
        ``"transaction"``; under ``"transaction"``, what needs a server session is refused with
        a ``ValueError`` (see :mod:`pgregistry.pooling`).
    statement_timeout
        Seconds a statement may run (default None: not set); how it is sent depends on
        ``server_pooling`` (:func:`pgregistry.pooling.statement_timeout_via`).
    maintenance
        A shared :class:`~pgregistry.maintenance.Maintenance` to run this pool's upkeep on
        (registries pass theirs); by default the pool starts its own thread when it needs one.
    budget
        A :class:`~pgregistry.budget.ServerBudget` shared with the other pools on the same
        server: every connection of this pool counts against it, and when it is full a new
        connection first closes another pool's longest-idle connection, else waits (within
        ``timeout``).
    """

    def __init__(
        self,
        mincached: int = 0,
        maxcached: int = 0,
        maxconnections: int = 0,
        blocking: bool = False,
        maxusage: int | None = None,
        setsession: SetSession = None,
        reset: int | str | ResetPolicy | None = None,
        *args: Any,
        name: str | None = None,
        timeout: float | None = 30.0,
        retry_after_reopen: bool | Literal["always"] = True,
        reconnect_timeout: float = 0.0,
        max_lifetime: float | None = 3600.0,
        max_idle: float | None = 600.0,
        ping: str | PingPolicy = PingPolicy.IDLE,
        ping_after: float = 30.0,
        leak_threshold: float | None = None,
        server_pooling: str = "none",
        statement_timeout: float | None = None,
        maintenance: Maintenance | None = None,
        budget: ServerBudget | None = None,
        **kwargs: Any,
    ) -> None:
        self._closed = True  # until fully built: __del__ and __repr__ of a refused pool
        # Checkouts are held (see pause()); _halted is "closed or paused", for the fast path.
        self._paused = False
        self._halted = True
        self._resumed = threading.Event()
        self.name: str = name if isinstance(name, str) and name else "?"
        mincached, maxcached, maxconnections = check_sizes(
            mincached, maxcached, maxconnections, maxusage
        )
        check_connect_args(args, kwargs)
        self._setsession = normalize_setsession(setsession)
        self._reset = parse_reset(reset)
        self._ping = parse_ping(ping)
        self._timeout = check_seconds("timeout", timeout, allow_none=True)
        self._reconnect_timeout = (
            check_seconds("reconnect_timeout", reconnect_timeout, allow_none=False) or 0.0
        )
        self._max_lifetime = check_seconds("max_lifetime", max_lifetime, allow_none=True) or None
        self._max_idle = check_seconds("max_idle", max_idle, allow_none=True)
        self._ping_after = check_seconds("ping_after", ping_after, allow_none=False) or 0.0
        self._leak_threshold = (
            check_seconds("leak_threshold", leak_threshold, allow_none=True) or None
        )
        check_name(name)

        self.name = name or f"pool{next(_pool_numbers)}"
        self.logger = logging.getLogger(f"pgregistry.pool.{self.name}")
        #: Fields every log record of this pool carries as attributes (``record.pool``, and
        #: ``record.tenant`` for a tenant pool), for JSON formatters; see :class:`LogFields`.
        self.log_fields: dict[str, object] = LogFields.attach(self.logger, self.name)
        self._mincached = mincached
        self._maxcached = maxcached
        self._maxconnections = maxconnections
        self._blocking = bool(blocking)
        self._maxusage = maxusage
        self._retry = check_retry(retry_after_reopen)
        self._args = args
        self._kwargs = kwargs
        self._secrets = secrets_of(args, kwargs)
        # Server-side pooling and statement_timeout (issue 15): see pgregistry.pooling.
        pooled = pooling.configure(
            server_pooling, statement_timeout, self._setsession, self._reset, args, kwargs
        )
        self.server_pooling: pooling.ServerPooling = pooled.server_pooling
        self.statement_timeout: float | None = pooled.statement_timeout
        self._transaction_pooled = self.server_pooling == "transaction"
        # While the server is down, one caller probes and the others wait (see Admission).
        self._admission = Admission()
        self._server_pooling_undeclared = self.server_pooling == "none"
        self._begin_statement = pooling.begin_statement(self.server_pooling, self.statement_timeout)
        self._args, self._kwargs, self._setsession = pooled.args, pooled.kwargs, pooled.setsession

        self._lock = threading.Lock()
        self._idle: deque[Slot] = deque()
        self._size = 0  # connections open, being opened, or checked out
        self._opening = 0  # of those, being opened right now
        self._waiters: deque[Waiter] = deque()
        self._checked_out: set[Slot] = set()  # maintained only for leak detection
        # Returned connections whose last result the caller still holds (see _hold), with
        # that result; counted in _size like checked-out ones.
        self._held: list[tuple[Slot, object]] = []
        # Every place counted in _size holds one unit of the budget (when there is one).
        self._budget = budget
        self._generation = 0
        self._counts = dict.fromkeys(COUNTERS, 0)
        self._checkouts = 0  # checkouts counted under the lock (slow paths)
        # Checkouts of the fast path, which takes no lock: next() on a count is atomic.
        self._fast_checkouts = itertools.count()
        self._wait_ns = 0
        # Checkout pings a connection idle longer than this (inf: never, -1: always).
        self._ping_window = {
            PingPolicy.NEVER: float("inf"),
            PingPolicy.ALWAYS: -1.0,
            PingPolicy.IDLE: self._ping_after,
        }[self._ping]
        self._rollback_if_needed = self._reset is ResetPolicy.ROLLBACK_IF_NEEDED
        # A target_session_attrs role (read-write, standby, ...) is checked at checkout and
        # return, without a round trip (see SteadyPgConnection.role_ok).
        self._check_role = required_role(args, kwargs) is not None
        # Checkout/return DEBUG records cost too much to ask the logger on every checkout:
        # the answer is refreshed by every maintenance round and every slow checkout.
        self._log_checkouts = self.logger.isEnabledFor(logging.DEBUG)
        self._observer: PoolObserver | None = None
        self._update_fast_path()
        self._limit_hits = 0
        self._limit_logged_at = -LIMIT_LOG_INTERVAL
        self._refill_failures = RateLimit(LIMIT_LOG_INTERVAL)
        self._server_full_said = RateLimit(LIMIT_LOG_INTERVAL)
        #: Whether a server-side pooler was found in the way at the first open (None: not
        #: known yet). See _detect_pooler.
        self.pooler_detected: bool | None = None

        self._own_maintenance = maintenance is None
        self._maintenance = maintenance
        self._upkeep: Task | None = None
        self._restart_upkeep = False  # set in a forked child: no maintenance thread there yet
        _POOLS.add(self)
        if budget is not None:
            budget.join(self)

        self._closed = self._halted = False
        self._update_fast_path()
        self._fill(mincached, raise_errors=True)
        self._start_upkeep()
        self.logger.info(
            "pool %r built (mincached=%d, maxcached=%d, maxconnections=%d, reset=%s)",
            self.name,
            mincached,
            maxcached,
            maxconnections,
            self._reset.value,
        )

    def _on_event(self, event: Counter) -> None:
        with self._lock:
            self._counts[event] += 1
            if event is Counter.REOPENED:
                self._counts[Counter.OPENED] += 1
        observer = self._observer
        if observer is not None and event is Counter.REOPENED:
            # The reopen's own duration is not known here; a reopen is a connect all the same.
            self._notify(observer.on_connect, 0.0)

    def observe(self, observer: PoolObserver | None) -> None:
        """Send this pool's timed events to ``observer`` (None: stop).

        See :class:`~pgregistry.stats.PoolObserver`. Unobserved, the checkout path pays one
        test of an attribute. An observer that raises is logged once and dropped.
        """
        self._observer = observer
        self._update_fast_path()

    def _notify(self, method: Callable[..., None], *args: float) -> None:
        try:
            method(*args)
        except Exception:
            self._observer_failed(getattr(method, "__self__", None))

    def _observer_failed(self, observer: object) -> None:
        """``observer`` raised (call inside the except): drop it and say so, once, unless it
        was already dropped or replaced meanwhile (threads can fail it at the same time)."""
        with self._lock:
            if self._observer is not observer:
                return
            self._observer = None
            self._update_fast_path()
        self.logger.exception("pool %r: observer failed; it is dropped", self.name)

    # -- checkout -----------------------------------------------------------------------------

    def connection(self) -> PooledPgConnection:
        """Check out a connection; return it with ``close()``, ``del`` or a ``with`` block.

        Raises :class:`PoolClosedError`, :class:`TooManyConnectionsError` (at
        ``maxconnections`` and not blocking), :class:`PoolTimeoutError` (waited ``timeout``),
        or :class:`~pgregistry.ServerUnavailableError` (a needed new connection failed).
        """
        # The fast path: an idle connection, every option that costs on checkout off. It
        # takes no lock: popping from the deque is atomic, and every other taker of idle
        # connections pops too (under the lock), so each goes to exactly one of them. It
        # only ever takes; what must be atomic with giving (waiters) stays under the lock.
        observer = self._observer
        started = _perf() if observer is not None else 0.0  # before the look at `idle`: a call
        idle = self._idle
        if self._fast and idle:
            owned: Slot | None = None  # taken here and not yet in a proxy (see the except)
            try:
                # Owned before it is popped: a signal handler may raise as soon as pop()
                # returns. Nothing runs between the look at `idle` above and these two lines
                # (no call: no handler, and no other thread under the GIL, which the fast
                # path requires), so the popped connection is the one owned.
                owned = slot = idle[-1]
                idle.pop()
                now = _monotonic()
                if now >= slot.expires_at or now - slot.since > self._ping_window:
                    owned = None  # _refresh gives it back itself if it fails
                    owned = slot = self._refresh(slot, now)
                slot.since = now
                proxy = LentConnection()  # no __init__: the fields are set here
                proxy._pool = self
                proxy._con = slot.conn
                proxy._result = None
                proxy._slot = slot
                owned = None  # the proxy gives it back from here on
                next(self._fast_checkouts)  # counted once it succeeded
            except BaseException:
                if owned is not None:
                    self._undo_checkout(owned, counted=False)
                raise
            if observer is not None:
                self._observed_checkout(observer, started)
            return proxy
        return self._connection()

    def _connection(self) -> PooledPgConnection:
        """connection() with every option, and when no connection is idle."""
        observer = self._observer
        started = _perf() if observer is not None else 0.0
        owned: Slot | None = None  # popped here and not yet in a proxy (see the except)
        idle_pop = False  # counted here once it succeeds; from _checkout_slow, it was counted
        claim: list[Slot] = []  # where _checkout_slow puts what it got (see the except)
        try:
            if self._idle and not self._halted:
                if GIL_ENABLED:  # owned before it is popped, as in connection()
                    with contextlib.suppress(IndexError):  # taken since the look
                        owned = self._idle[-1]
                        self._idle.pop()
                else:
                    owned = pop_idle(self._idle)
                idle_pop = owned is not None
            if owned is None:
                slot = self._checkout_slow(claim)
                if slot is None:  # a connection came back between the two locks: take it
                    return self.connection()
                owned = slot
            else:
                slot = owned
                now = _monotonic()
                if now >= slot.expires_at or now - slot.since > self._ping_window:
                    owned = None  # _refresh gives it back itself if it fails
                    owned = slot = self._refresh(slot, now)
                if self._check_role and not slot.conn.role_ok():
                    owned = None
                    owned = slot = self._replace(slot, Counter.WRONG_ROLE)
                slot.since = now
                if self._leak_threshold:
                    self._track(slot)
            if self._log_checkouts:
                self.logger.debug("pool %r: checkout", self.name)
            proxy = LentConnection()  # no __init__: the fields are set here
            proxy._pool = self
            proxy._con = slot.conn
            proxy._result = None
            proxy._slot = slot
            owned = None  # the proxy gives it back from here on
            del claim[:]  # (no call: nothing runs between the two)
            if idle_pop:
                next(self._fast_checkouts)
        except BaseException:
            if owned is None and claim and not idle_pop:
                owned = claim[0]  # got by _checkout_slow; a signal handler raised on its return
            if owned is not None:
                self._undo_checkout(owned, counted=not idle_pop)
            raise
        if observer is not None:
            self._observed_checkout(observer, started)
        return proxy

    def _observed_checkout(self, observer: PoolObserver, started: float) -> None:
        try:
            observer.on_checkout(_perf() - started)
        except Exception:
            self._observer_failed(observer)

    def _undo_checkout(self, slot: Slot, *, counted: bool) -> None:
        """A checkout interrupted (a signal) before its proxy had the connection: the
        connection goes back as it was taken, and the checkout is not counted."""
        if counted:
            with self._lock:
                self._checkouts -= 1
        self._checkin(slot, fresh=True)

    @contextlib.contextmanager
    def transaction(self, mode: str | None = None) -> Iterator[PooledPgConnection]:
        """``with pool.transaction() as db:``: a connection inside ``begin(mode)``.

        Commits when the block ends normally, rolls back when it raises, and gives the
        connection back either way. A rollback that fails (the connection was lost) does not
        hide the block's own exception.
        """
        with self.connection() as db:
            db.begin(mode)
            try:
                yield db
            except BaseException:
                with contextlib.suppress(Exception):
                    db.rollback()
                raise
            db.commit()

    def _refresh(self, slot: Slot, now: float) -> Slot:
        """Replace an idle connection that expired, or that fails its due ping."""
        if now >= slot.expires_at:
            return self._replace(slot, Counter.EXPIRED)
        try:
            alive = slot.conn.ping()
        except BaseException:
            self._drop(slot)  # interrupted (a signal): never lose the place
            raise
        if not alive:
            self.logger.warning("pool %r: idle connection failed its ping", self.name)
            return self._replace(slot, Counter.PING_FAILED)
        return slot

    def _checkout_slow(self, claim: list[Slot]) -> Slot | None:
        """No idle connection: open a new one within the limit, or wait for one.

        None when a connection was returned to the idle stack since the fast path looked:
        the caller takes the fast path again rather than wait next to an idle connection.
        What it returns is also put in ``claim`` as soon as it is got, so that the caller
        can give it back if a signal handler raises before the return reaches it.
        """
        waiter: Waiter | None = None
        message = ""
        limit_hits = 0
        if self._held:
            self._release_held()
        reserved = False
        try:
            with self._lock:
                if self._closed:
                    raise PoolClosedError(f"pool {self.name!r} is closed")
                paused = self._paused
                if self._idle and not paused:
                    return None
                below_limit = not self._maxconnections or self._size < self._maxconnections
                if paused:
                    pass  # waits for resume() below, outside the lock
                elif below_limit and (not self._blocking or not self._opening):
                    self._size += 1
                    self._opening += 1
                    reserved = True
                elif below_limit:
                    # Grow one connection at a time: an open is under way, so wait for it, or for
                    # a connection to come back, whichever is first. A burst of callers on a cold
                    # pool then opens only what the load needs, not one connection per caller.
                    waiter = Waiter()
                    self._waiters.append(waiter)
                    waiter.looking = bool(self._held)
                    self._serve_from_idle()
                else:
                    if not self._blocking:
                        self._counts[Counter.REFUSED] += 1
                        message = self._too_many_message()
                    else:
                        waiter = Waiter()
                        self._waiters.append(waiter)
                        # Connections held by results come back without being returned: with
                        # some held already, this waiter looks for them itself.
                        waiter.looking = bool(self._held)
                        self._serve_from_idle()
                    limit_hits = self._count_limit_hit()
            if paused:
                self._wait_for_resume()
                return None  # resumed: look again from the start
            self._refresh_log_checkouts()
            if limit_hits:
                # Waiting at the limit is a blocking pool doing its job: INFO. Refusing callers
                # (blocking off) is an error for them: WARNING. Timeouts warn on their own.
                self.logger.log(
                    logging.INFO if self._blocking else logging.WARNING,
                    "pool %r: maxconnections (%d) reached %d time(s) since last said; callers %s",
                    self.name,
                    self._maxconnections,
                    limit_hits,
                    "wait (blocking)" if self._blocking else "get TooManyConnectionsError",
                )
            if message:
                raise TooManyConnectionsError(message)
            # A waiter's checkout was counted by whoever handed it the connection (see _hand_over).
            got = PLACE if waiter is None else self._wait(waiter)
        except BaseException:
            # Whatever stopped it (a timeout, a signal-raised exception anywhere above), no
            # queued waiter and no reserved place is left behind.
            if waiter is not None:
                self._abandon(waiter)
            elif reserved:
                self._give_up_place()
            raise
        if got.__class__ is Slot:  # no call before the append: no handler runs in between
            claim.append(got)
        if got is PLACE:
            if self._budget is not None:
                try:
                    # A pool that must not block does not wait for the budget either.
                    self._budget.acquire(self, self._timeout if self._blocking else 0.0)
                except BaseException:
                    self._give_up_place()
                    raise
            got = OPEN
        if got is OPEN:
            entered: list[bool] = []
            try:
                self._open_for_checkout(count=waiter is None, entered=entered, claim=claim)
            except BaseException:
                if not entered:  # raised as it started: the place is still counted
                    self._release_place()
                raise
        slot = claim[0]
        slot.since = _monotonic()
        if self._leak_threshold:
            self._track(slot)
        return slot

    def _track(self, slot: Slot) -> None:
        """Remember where a connection was checked out, for leak detection."""
        slot.stack = leak.caller_stack(_OWN_FILES)
        slot.leak_reported = False
        with self._lock:
            self._checked_out.add(slot)

    def _replace(self, slot: Slot, counter: Counter | None) -> Slot:
        """Close ``slot`` and open a new connection in its place (outside the lock).

        Cut short by a signal handler, the place is handed on or freed, never kept.
        """
        opening = False  # set once the place is counted as opening instead of held by slot
        entered: list[bool] = []
        try:
            if counter:
                with self._lock:
                    self._counts[counter] += 1
            self._close_slot(slot)
            with self._lock:
                self._opening += 1
                opening = True
            return self._open_for_checkout(entered=entered)
        except BaseException:
            if not opening:
                self._drop(slot)  # closes it if need be, then hands on or frees its place
            elif not entered:  # raised as the open started: the place is still counted
                self._release_place()
            raise

    # -- pause and resume ---------------------------------------------------------------------

    def pause(self) -> None:
        """Hold new checkouts (a planned switchover): they wait, up to ``timeout``, for
        :meth:`resume` instead of failing. Connections already out are used and returned as
        usual; waiters already queued are still served. Idempotent."""
        with self._lock:
            if self._closed or self._paused:
                return
            self._paused = self._halted = True
            self._update_fast_path()
            self._resumed.clear()
        self.logger.info("pool %r paused: checkouts wait for resume()", self.name)

    def resume(self) -> None:
        """Let checkouts through again after :meth:`pause`; the waiting ones go on at once."""
        with self._lock:
            if not self._paused:
                return
            self._paused = False
            self._halted = self._closed
            self._update_fast_path()
        self._resumed.set()
        self.logger.info("pool %r resumed", self.name)

    @property
    def paused(self) -> bool:
        """True between :meth:`pause` and :meth:`resume`."""
        return self._paused

    def _wait_for_resume(self) -> None:
        started = _monotonic()
        timeout = self._timeout
        if not self._resumed.wait(timeout):
            with self._lock:
                self._counts[Counter.TIMEOUTS] += 1
            raise PoolTimeoutError(
                f"pool {self.name!r} is paused: no resume() within {_monotonic() - started:.1f}"
                " s (timeout)"
            )
        if self._closed:
            raise PoolClosedError(f"pool {self.name!r} was closed while paused")

    # -- closing and introspection ------------------------------------------------------------

    def close(self) -> None:
        """Close idle connections now and refuse new checkouts (:class:`PoolClosedError`).

        Connections still checked out are closed when they come back. Waiting callers get
        :class:`PoolClosedError`. Calling close() again does what is left: nothing, unless an
        exception (a signal handler's) cut the first call short.
        """
        with self._lock:
            first = not self._closed
            self._closed = self._halted = True
            # Waiters first, each handed CLOSED and off the queue in one step: cut short, the
            # others stay queued for the next close() (or their own look at _closed).
            while self._waiters:
                self._hand_over(CLOSED)
            self._update_fast_path()
            idle = take_all(self._idle)
            self._size -= len(idle)
        self._resumed.set()  # paused callers wake and see the pool closed
        if self._held:
            # Results released since: their connections close now (the pool is closed).
            # Those still referenced close when the pool object is collected.
            self._release_held()
        for slot in idle:
            self._close_slot(slot)
        self._freed(len(idle))
        if self._budget is not None:
            self._budget.leave(self)
        self._forget_upkeep()
        if first:
            self.logger.info("pool %r closed", self.name)

    @property
    def closed(self) -> bool:
        """True after :meth:`close`."""
        return self._closed

    def server_role(self) -> str | None:
        """``"primary"`` or ``"standby"``, as an idle connection's server last reported it (no
        round trip); None when not known (no idle connection, a server before 14)."""
        for slot in list(self._idle):
            role = slot.conn.server_role()
            if role is not None:
                return role
        return None

    @property
    def busy(self) -> bool:
        """True while connections are checked out (or being opened) or callers wait.

        Connections held by results that have since been released are given back first.
        """
        if self._held:
            self._release_held()
        with self._lock:
            return self._size > len(self._idle) or bool(self._waiters)

    def __enter__(self) -> PooledPg:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __del__(self) -> None:
        with contextlib.suppress(Exception):
            self.close()

    def stats(self) -> PoolStats:
        """A snapshot of sizes and counters (see :class:`PoolStats`); cheap.

        Connections held by results that have since been released are given back first, so
        ``in_use`` counts only what callers still hold (giving back may run the reset).
        """
        if self._held:
            self._release_held()
        with self._lock:
            idle = len(self._idle)
            open_now = self._size - self._opening
            checkouts = self._checkouts + _count_value(self._fast_checkouts)
            counts = dict(self._counts, checkouts=checkouts)
            waiting = len(self._waiters)
            wait_ms = self._wait_ns / 1e6
        stats: PoolStats = {
            "name": self.name,
            "open": open_now,
            "idle": idle,
            "in_use": open_now - idle,
            "waiting": waiting,
            "mincached": self._mincached,
            "maxcached": self._maxcached,
            "maxconnections": self._maxconnections,
            "wait_ms": wait_ms,
            **counts,  # type: ignore[typeddict-item]
        }
        return stats

    def __repr__(self) -> str:
        if not hasattr(self, "_idle"):
            return f"<PooledPg {self.name!r} not built>"
        state = "closed" if self._closed else "open"
        return (
            f"<PooledPg {self.name!r} {state} open={self._size - self._opening} "
            f"idle={len(self._idle)} maxconnections={self._maxconnections}>"
        )

    def _after_fork_in_child(self) -> None:
        """Start empty in a forked child; the inherited connections belong to the parent."""
        self._admission = Admission()  # its lock may be held by a thread of the parent
        self._lock = threading.Lock()
        self._resumed = threading.Event()
        if not self._paused:
            self._resumed.set()
        self._generation += 1
        self._idle = deque()
        self._waiters = deque()
        self._checked_out = set()
        # Results held in the parent: their connections are the parent's too.
        self._held = []
        self._size = 0
        self._opening = 0
        self._counts = dict.fromkeys(COUNTERS, 0)
        self._checkouts = 0
        self._fast_checkouts = itertools.count()
        self._wait_ns = 0
        self._restart_upkeep = self._upkeep is not None and not self._closed


def _count_value(counter: itertools.count[int]) -> int:
    """How far ``counter`` has counted: itertools.count has no reader but its repr,
    ``count(N)`` (its pickle support is deprecated since Python 3.12)."""
    return int(repr(counter)[6:-1])


def _after_fork_in_child() -> None:
    for pool in list(_POOLS):
        pool._after_fork_in_child()


os.register_at_fork(after_in_child=_after_fork_in_child)
