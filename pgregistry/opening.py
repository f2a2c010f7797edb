"""How a pool opens connections: at start and on refill (``mincached``), for a checkout in a
counted place, and under a full server (backpressure); and, at the first open, whether a
server-side pooler is in the way. Connects happen outside the pool's lock.
"""

from __future__ import annotations

import random
import time
from typing import Any, Literal

from .connector import Admission
from .conninfo import redact
from .errors import PoolClosedError, ServerFullError
from .handoff import PLACE, HandOff
from .logs import RateLimit
from .pool_state import pop_idle
from .proxy import Slot
from .stats import Counter
from .steady import SteadyPgConnection

__all__ = ["Opening"]

# Lifetimes are shortened by up to this fraction, at random, so that connections opened
# together do not all expire together.
_LIFETIME_JITTER = 0.1
# Under a server budget, how long a close waits for the server to end the backend, in seconds.
_BACKEND_EXIT_WAIT = 1.0
# Backpressure on a full server: first pause and cap between connect attempts, in seconds.
_FULL_PAUSE_START, _FULL_PAUSE_CAP = 0.02, 0.25

_monotonic = time.monotonic
_perf = time.perf_counter


class Opening(HandOff):
    """Opening the connections of a pool (the places they fill are counted by the caller)."""

    _maxusage: int | None
    _setsession: Any
    _retry: bool | Literal["always"]
    _args: tuple[Any, ...]
    _kwargs: dict[str, Any]
    _reconnect_timeout: float
    _begin_statement: str | None
    _transaction_pooled: bool
    _admission: Admission
    _server_pooling_undeclared: bool
    _restart_upkeep: bool
    _refill_failures: RateLimit
    _server_full_said: RateLimit
    #: Whether a server-side pooler was found in the way at the first open (None: not known).
    pooler_detected: bool | None

    def _on_event(self, event: Counter) -> None:
        raise NotImplementedError

    def steady_connection(self) -> SteadyPgConnection:
        """A new steady connection with this pool's settings, not pooled."""
        conn = SteadyPgConnection(
            self._maxusage,
            self._setsession,
            True,
            *self._args,
            retry_after_reopen=self._retry,
            reconnect_timeout=self._reconnect_timeout,
            logger=self.logger,
            admission=self._admission,
            **self._kwargs,
        )
        if self._budget is not None:
            conn.close_wait = _BACKEND_EXIT_WAIT
        conn.begin_statement = self._begin_statement
        if self._transaction_pooled:
            conn.behind_transaction_pooler()
        return conn

    def _new_slot(self) -> Slot:
        """Open a pooled connection (I/O; never called under the lock)."""
        started = _perf()
        conn = self.steady_connection()
        conn.listener = self._on_event
        observer = self._observer
        if observer is not None:
            self._notify(observer.on_connect, _perf() - started)
        lifetime = self._max_lifetime
        expires = (
            time.monotonic() + lifetime * (1.0 - _LIFETIME_JITTER * random.random())
            if lifetime
            else float("inf")
        )
        if self.pooler_detected is None:
            self._detect_pooler(conn)
        with self._lock:
            self._counts[Counter.OPENED] += 1
            generation = self._generation
            restart, self._restart_upkeep = self._restart_upkeep, False
        if restart and self._maintenance is not None:
            self._maintenance.ensure_running()
        return Slot(conn, expires, generation)

    def _detect_pooler(self, conn: SteadyPgConnection) -> None:
        """At the first open: is a server-side pooler (PgBouncer, ...) between us and the server?

        libpq's backend pid is the pooler's own; the server's ``pg_backend_pid()`` differs
        behind one. One round trip, once per pool. Said once, at INFO, with what it means.
        """
        try:
            server_pid = conn.server_pid()  # not a call of the caller's: maxusage ignores it
            pooled = server_pid != conn.backend_pid
        except Exception:
            return  # not worth failing an open for; the next open asks again
        self.pooler_detected = pooled
        if pooled:
            self.logger.info(
                "pool %r: a connection pooler such as PgBouncer is in the way (backend pid %s"
                " at connect, %s on the server); under transaction pooling, session state "
                "(SET, LISTEN, temporary tables, prepared statements, advisory locks) does not "
                "stay with a connection between transactions%s",
                self.name,
                conn.backend_pid,
                server_pid,
                '; declare it with server_pooling = "transaction" (or "session") so the '
                "pool refuses what cannot work there"
                if self._server_pooling_undeclared
                else "",
            )

    def _fill(self, target: int, *, raise_errors: bool) -> None:
        """Open connections until ``target`` are open (``mincached``); I/O outside the lock."""
        with self._lock:
            missing = 0 if self._closed else max(0, target - self._size)
            if self._maxconnections:
                missing = min(missing, self._maxconnections - self._size)
            self._size += missing
            self._opening += missing
        opened: list[Slot] = []
        error: BaseException | None = None
        budgeted = 0
        for _ in range(missing):
            try:
                if self._budget is not None:
                    # Refills take only free units; opening at start may wait like a checkout.
                    self._budget.acquire(
                        self, self._timeout if raise_errors else 0.0, steal=raise_errors
                    )
                budgeted += 1
                opened.append(self._new_slot())
            except BaseException as exc:  # a setsession error or a signal too: no place is lost
                error = exc
                break
        with self._lock:
            self._opening -= len(opened)
        for _ in range(budgeted - len(opened)):
            self._release_place()
        if missing > budgeted:
            self._unreserve(missing - budgeted)
        for slot in opened:
            self._checkin(slot, fresh=True)
        if opened:
            # Callers that queued behind this refill (grow one at a time) and got none of it.
            with self._lock:
                self._grow_for_waiters()
        if error is not None:
            if raise_errors or not isinstance(error, Exception):
                if raise_errors:
                    self.close()
                raise error
            failures = self._refill_failures.hit()
            if failures:  # a server that stays down would say this every second
                self.logger.warning(
                    "pool %r: could not refill to mincached (%d time(s) since last said): %s",
                    self.name,
                    failures,
                    redact(" ".join(str(error).split()), self._secrets),
                )

    def _open_for_checkout(
        self,
        *,
        count: bool = False,
        entered: list[bool] | None = None,
        claim: list[Slot] | None = None,
    ) -> Slot:
        """Open a connection in a place already counted in ``_size`` and ``_opening``.

        Whatever it raises, the place is given back, except when it is raised on entry,
        before ``entered`` has an item: the caller gives it back then (a signal handler can
        raise as a function starts). The connection is put in ``claim`` in the same step as it
        takes the place, for a caller that must give it back if a handler raises after that.
        """
        try:
            if entered is not None:
                entered.append(True)
            try:
                slot, opened = self._new_slot(), True
            except ServerFullError as full:
                if not self._blocking:
                    raise
                slot, opened = self._wait_out_full_server(full)
        except BaseException:
            self._release_place()
            raise
        if not opened:  # a connection of the pool came back meanwhile: the place goes unused
            self._release_place()
            with self._lock:
                self._checkouts += count
                if claim is not None:
                    claim.append(slot)
            return slot
        with self._lock:
            self._opening -= 1
            self._checkouts += count
            if claim is not None:
                claim.append(slot)
            self._grow_for_waiters()
        return slot

    def _grow_for_waiters(self) -> None:
        """Callers still waiting, nothing being opened, room to grow: the oldest opens the
        next connection (under the lock). One at a time: each that succeeds passes it on."""
        if (
            self._waiters
            and not self._closed
            and not self._opening
            and (not self._maxconnections or self._size < self._maxconnections)
        ):
            self._size += 1
            self._opening += 1
            self._hand_over(PLACE)

    def _wait_out_full_server(self, error: ServerFullError) -> tuple[Slot, bool]:
        """The server refused a connection at a limit (53300): backpressure, not a failure.

        Within the pool's ``timeout``, take a connection of this pool that comes back idle
        meanwhile, or open one once the server has room, retrying with a capped backoff.
        Returns the connection and whether it was newly opened; raises
        :class:`ServerFullError` when the time is up.
        """
        started = _monotonic()
        deadline = None if self._timeout is None else started + self._timeout
        pause = _FULL_PAUSE_START
        with self._lock:
            self._counts[Counter.SERVER_FULL] += 1
        if self._server_full_said.hit():
            self.logger.info(
                "pool %r: the server refused a connection at its limit; callers wait up to "
                "timeout for one to come back or for room: %s",
                self.name,
                error,
            )
        while True:
            remaining = None if deadline is None else deadline - _monotonic()
            if remaining is not None and remaining <= 0:
                raise ServerFullError(
                    f"{error}; pool {self.name!r} waited {_monotonic() - started:.1f} s "
                    "(timeout) for room on the server or a connection to come back: lower "
                    "maxconnections or the number of processes, or raise the server's limit"
                )
            time.sleep(pause if remaining is None else min(pause, remaining))
            pause = min(pause * 1.5, _FULL_PAUSE_CAP)
            with self._lock:
                if self._closed:
                    raise PoolClosedError(f"pool {self.name!r} was closed while waiting")
                if self._idle and (slot := pop_idle(self._idle)) is not None:
                    return slot, False
            try:
                return self._new_slot(), True
            except ServerFullError as again:
                error = again
                with self._lock:
                    self._counts[Counter.SERVER_FULL] += 1
