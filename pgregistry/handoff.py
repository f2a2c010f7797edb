"""How a pool hands connections and places on: to waiting callers, to the idle stack, or to close.

Waiters queue in FIFO order, each sleeping on a lock of its own until something is handed to
it: a connection (a :class:`~pgregistry.proxy.Slot`), or a token. A returned connection goes
straight to the oldest waiter, so no thread barges ahead of one that waited longer; when a
connection is closed instead, the oldest waiter inherits its place and opens a new one. No path
of a timeout, an exception or a signal loses a place or a connection (see :meth:`_abandon`).
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time

import pg

from .conninfo import redact
from .errors import PoolClosedError, PoolTimeoutError
from .pool_state import GIL_ENABLED, PoolState, pop_idle, take_all
from .proxy import Slot
from .stats import Counter

__all__ = ["CLOSED", "LOOK", "OPEN", "PLACE", "HandOff", "Waiter"]

# How often a waiter looks for connections held by results that have been released, in s.
_HELD_POLL = 0.005
_TRANS_IDLE: int = pg.TRANS_IDLE
_monotonic = time.monotonic
# Reaching maxconnections is logged at most this often per pool, in seconds.
LIMIT_LOG_INTERVAL = 60.0


class Waiter:
    """A caller waiting for a connection. Its lock is held until something is handed over
    (only ever by HandOff._hand_over, which sets ``result``, releases it and dequeues it in
    one step)."""

    __slots__ = ("abandoned", "gate", "looking", "result", "started")

    def __init__(self) -> None:
        #: Set once its wait was undone (see HandOff._abandon): never undone twice.
        self.abandoned = False
        self.gate = threading.Lock()
        self.gate.acquire()
        #: A Slot, OPEN (you may open a new connection in a place that holds its budget unit),
        #: PLACE (a place without a budget unit: take one first) or CLOSED; None while waiting.
        self.result: Slot | object | None = None
        self.started = time.perf_counter_ns()
        #: Looks for connections held by released results while it waits (see _hold).
        self.looking = False


OPEN = object()  # hand-off token: the waiter may open a connection in the freed place
PLACE = object()  # hand-off token: a freed place whose budget unit was never taken
LOOK = object()  # wake-up token: connections are held by results; look for released ones
CLOSED = object()  # hand-off token: the pool was closed while waiting


class HandOff(PoolState):
    """The waiter queue of a pool, the return path, and every way a connection or a place
    changes hands."""

    def _hand_over(
        self,
        result: Slot | object = None,
        *,
        done: Slot | None = None,
        opening: bool = False,
        from_idle: bool = False,
    ) -> None:
        """Give the oldest waiter a connection or a place (under the lock), counting its wait.

        Written so that an exception raised by a signal handler anywhere in it (Python runs
        them at function entry and after calls) leaves nothing half done: raised at entry,
        nothing has changed; raised later, the waiter has ``result`` and is out of the queue.
        In the same step: ``done``, the connection whose return this completes, is marked
        handed on (see PooledPgConnection.close); with ``opening``, the place is counted as
        opening; with ``from_idle``, ``result`` is the top of the idle stack, popped here
        (nothing if it is empty). The counting is done here, under the lock the giver holds
        anyway, so that the woken thread goes on without taking the lock again.
        """
        waiters = self._waiters
        waiter = waiters[0]  # popped last, in the finally
        if from_idle:
            # Looked at and popped with no call between: no signal handler, and no other
            # thread under the GIL (the lock-free checkout pops too), runs in between.
            if not self._idle:
                return
            result = self._idle[-1]
        if opening:
            self._opening += 1
        if done is not None:
            done.returning = False
        waiter.result = result
        try:
            if from_idle:
                self._idle.pop()
        finally:
            try:
                waiter.gate.release()
            finally:
                waiters.popleft()
        if result is not CLOSED and result is not LOOK:
            self._count_served(waiter)  # a handler raising in here costs a count, nothing else

    def _count_served(self, waiter: Waiter) -> None:
        """A waiter gets a connection or a place (under the lock): its wait and checkout."""
        self._counts[Counter.WAITS] += 1
        self._wait_ns += time.perf_counter_ns() - waiter.started
        self._checkouts += 1

    def _release_place(self, *, opening: bool = True, done: Slot | None = None) -> None:
        """A counted place goes unused: the oldest waiter may open in it, else it is freed.

        ``done``: the closed connection whose place this is, marked handed on with the place.
        """
        with self._lock:
            if opening:
                self._opening -= 1
            if self._waiters and not self._closed:
                self._hand_over(OPEN, done=done, opening=True)
                return
            if done is not None:
                done.returning = False
            self._size -= 1
        self._freed(1)

    def _hold(self, slot: Slot, result: object) -> None:
        """Keep a returned connection out of the pool while ``result`` is still referenced.

        Waiters sleep until something is handed to them; the oldest is woken to look for
        held connections that come free (see :meth:`_await_hand_over`).
        """
        with self._lock:
            self._held.append((slot, result))
            if self._waiters and not self._closed:
                self._hand_over(LOOK)

    def _release_held(self) -> None:
        """Give back the held connections whose results are no longer referenced.

        Called where a connection is wanted (a checkout that found none idle, a waiter's
        periodic look) and by upkeep. The reset and any close happen now, after the result was
        read: values stay typed whatever the reset policy or the reason for closing.
        """
        free: list[tuple[Slot, object]] = []
        kept: list[tuple[Slot, object]] = []
        taken = False  # set with the swap below: from then on, the connections in free are ours
        current: Slot | None = None  # the one being given back (see Slot.returning)
        try:
            with self._lock:
                for entry in self._held:
                    (free if _released(entry[1]) else kept).append(entry)
                if not free:
                    return
                self._held = kept
                taken = True
            while free:
                current = free[-1][0]
                current.returning = True
                free.pop()
                self._checkin(current)
        except BaseException:
            # A signal handler raised: nothing taken is left unreturned. What was not given
            # back yet is closed and its place handed on.
            if taken:
                for entry in free:
                    self._drop(entry[0])
                if current is not None:
                    self._rescue(current)
            raise

    def _give_up_place(self) -> None:
        """A counted place that never got its budget unit goes unused: hand it on or free it.

        The next waiter gets it as :data:`PLACE` and takes a unit itself, so a budget that
        timed out for one caller never leaves the others waiting beside an empty pool.
        """
        with self._lock:
            self._opening -= 1
            if self._waiters and not self._closed:
                self._opening += 1
                self._hand_over(PLACE)
                return
            self._size -= 1

    def _unreserve(self, count: int) -> None:
        """Undo places reserved for opening that got no budget unit."""
        with self._lock:
            self._size -= count
            self._opening -= count

    def _wait(self, waiter: Waiter) -> Slot | object:
        timeout = self._timeout
        if self._log_checkouts:
            self.logger.debug("pool %r: at maxconnections, waiting", self.name)
        message = ""
        try:
            acquired = self._await_hand_over(waiter, timeout)
        except BaseException:
            # KeyboardInterrupt, or a request timeout raised by a signal handler: leave the
            # queue, and give back whatever was handed over meanwhile.
            self._abandon(waiter)
            raise
        if not acquired:
            waited_ns = time.perf_counter_ns() - waiter.started
            with self._lock:
                if waiter.result is None and self._closed:
                    # A close() cut short (a signal) before it handed this waiter CLOSED.
                    with contextlib.suppress(ValueError):
                        self._waiters.remove(waiter)
                    waiter.result = CLOSED
                elif waiter.result is None:  # else it was handed something just in time
                    self._waiters.remove(waiter)
                    if waiter.looking and self._held and self._waiters and not self._closed:
                        self._hand_over(LOOK)  # it looked for held connections: the next does
                    self._counts[Counter.WAITS] += 1
                    self._counts[Counter.TIMEOUTS] += 1
                    self._wait_ns += waited_ns
                    message = self._timeout_message(waited_ns / 1e9)
        if message:
            self.logger.warning("%s", message, extra={"wait_ms": round(waited_ns / 1e6, 1)})
            observer = self._observer
            if observer is not None:
                self._notify(observer.on_timeout)
            raise PoolTimeoutError(message)
        if waiter.result is CLOSED:
            raise PoolClosedError(f"pool {self.name!r} was closed while waiting")
        return waiter.result

    def _await_hand_over(self, waiter: Waiter, timeout: float | None) -> bool:
        """Wait for a hand-over (True) or the timeout (False).

        A connection held by an unread result (see :meth:`_hold`) comes back without anyone
        returning it, so one waiter, the oldest, looks for such connections every few
        milliseconds while any are held; the others sleep until something is handed to them.
        A waiter woken with :data:`LOOK` takes over that look and keeps its place.
        """
        gate = waiter.gate
        deadline = None if timeout is None else time.monotonic() + timeout
        looking = waiter.looking
        while True:
            remaining = None if deadline is None else deadline - time.monotonic()
            if looking and self._held:
                self._release_held()
                remaining = _HELD_POLL if remaining is None else min(remaining, _HELD_POLL)
            if remaining is not None and remaining <= 0:
                return gate.acquire(blocking=False) and self._rearm_if_look(waiter) is None
            if not gate.acquire(timeout=-1 if remaining is None else remaining):
                if deadline is not None and time.monotonic() >= deadline:
                    return False
                continue
            if self._rearm_if_look(waiter) is None:
                if looking:
                    self._pass_the_look()
                return True
            looking = True

    def _pass_the_look(self) -> None:
        """A looking waiter was served: the next one looks while connections are held."""
        with self._lock:
            if self._held and self._waiters and not self._closed:
                self._hand_over(LOOK)

    def _rearm_if_look(self, waiter: Waiter) -> Waiter | None:
        """After a wake-up: if it was only a :data:`LOOK`, queue the waiter again, first."""
        if waiter.result is not LOOK:
            return None
        with self._lock:
            if self._closed:  # closed while it was out of the queue: close() did not see it
                waiter.result = CLOSED
                return None
            # While it was out of the queue, a connection may have gone idle, or a place may
            # have come free, with no one queued to be handed it: take that instead.
            if self._idle and GIL_ENABLED:
                # Looked at and popped with no call between (see _hand_over).
                waiter.result = self._idle[-1]
                self._idle.pop()
                self._count_served(waiter)
            elif self._idle and (slot := pop_idle(self._idle)) is not None:
                waiter.result = slot
                self._count_served(waiter)
            elif not self._maxconnections or self._size < self._maxconnections:
                self._size += 1
                self._opening += 1
                waiter.result = PLACE
                self._count_served(waiter)
            else:
                waiter.result = None
                waiter.looking = True  # its look goes on: passed on if it stops waiting
                self._waiters.appendleft(waiter)
                self._serve_from_idle()
                if waiter.result is None:
                    return waiter
                waiter.gate.acquire()  # served (and counted) at once: take back its release
        return None

    def _abandon(self, waiter: Waiter) -> None:
        """Undo a wait that an exception cut short, so no place or connection is lost.

        Safe to call more than once, and for a waiter that never got into the queue (a signal
        can land anywhere between its creation and the wait).
        """
        with self._lock:
            if waiter.abandoned:
                return
            waiter.abandoned = True
            got = waiter.result
            if got is None:
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
                if waiter.looking and self._held and self._waiters and not self._closed:
                    self._hand_over(LOOK)  # it looked for held connections: the next one does
                return
            if got is LOOK:
                # It was asked to look for held connections: the next waiter does instead.
                if self._held and self._waiters and not self._closed:
                    self._hand_over(LOOK)
                return
            if got is not CLOSED:
                self._checkouts -= 1  # counted by the giver for a checkout that never happened
        if isinstance(got, Slot):
            self._checkin(got, fresh=True)
        elif got is OPEN:
            self._release_place()
        elif got is PLACE:
            self._give_up_place()

    def _count_limit_hit(self) -> int:
        """Count reaching maxconnections (under the lock); the count to log, if it is time.

        Logged as a WARNING at most once a minute per pool, with the count since last said.
        """
        self._limit_hits += 1
        now = time.monotonic()
        if now < self._limit_logged_at + LIMIT_LOG_INTERVAL:
            return 0
        hits, self._limit_hits = self._limit_hits, 0
        self._limit_logged_at = now
        return hits

    def _too_many_message(self) -> str:
        return (
            f"pool {self.name!r}: all {self._maxconnections} connections are in use and "
            "blocking is off; raise maxconnections or set blocking=True"
        )

    def _timeout_message(self, waited: float) -> str:
        in_use = self._size - len(self._idle) - self._opening
        return (
            f"pool {self.name!r}: no connection after {waited:.1f} s "
            f"(open {self._size - self._opening}/{self._maxconnections}, idle {len(self._idle)}, "
            f"in use {in_use}, waiting {len(self._waiters)}); raise maxconnections or timeout"
        )

    def _checkin(self, slot: Slot, *, fresh: bool = False) -> None:
        """Reset a returned connection, then hand it to a waiter, pool it, or close it."""
        if fresh:
            keep = True
        else:
            observer = self._observer
            if observer is not None:
                try:
                    observer.on_checkin(_monotonic() - slot.since)
                except Exception:
                    self._observer_failed(observer)
            # The default policy on an idle connection the borrower left clean (no LISTEN,
            # temporary object, client-side change or open begin()): nothing to send.
            conn = slot.conn
            state_of = conn.clean_state if self._rollback_if_needed else None
            try:
                try:
                    idle = state_of is not None and state_of() == _TRANS_IDLE
                except TypeError:  # closed under us (db.db.close()): the reset path sees it
                    idle = False
                if idle:
                    conn.fresh = True
                    keep = not self._closed
                else:
                    keep = not self._closed and self._reset_on_return(slot)
            except BaseException:
                self._drop(slot)  # interrupted (a signal) in the reset: close, free the place
                raise
        if self._log_checkouts:
            self.logger.debug("pool %r: return (keep %s)", self.name, keep)
        now = _monotonic()
        if keep and now >= slot.expires_at:
            keep = False
            with self._lock:
                self._counts[Counter.EXPIRED] += 1
        elif keep and self._check_role and not slot.conn.role_ok():
            keep = False  # demoted, fenced or promoted: never pooled again
            with self._lock:
                self._counts[Counter.WRONG_ROLE] += 1
            self.logger.warning(
                "pool %r: the server no longer has the role the target asks for; connection closed",
                self.name,
            )
        if not keep or slot.generation != self._generation:
            # Closed before its place is handed on, so a budget is never exceeded.
            self._drop(slot)
            return
        self._place(slot, now)
        if self._held:
            self._release_held()

    def _place(self, slot: Slot, now: float) -> None:
        """A returned connection that is fit to pool: to the oldest waiter, else idle; closed
        if the pool was closed, or if ``maxcached`` are idle already."""
        to_close: Slot | None = None
        with self._lock:
            if self._leak_threshold:
                self._checked_out.discard(slot)
            if self._closed or (
                not self._waiters and self._maxcached and len(self._idle) >= self._maxcached
            ):
                to_close = slot
                slot.returning = False
                self._size -= 1
            elif self._waiters:
                self._hand_over(slot, done=slot)
            else:
                slot.since = now
                slot.returning = False
                self._idle.append(slot)
        if to_close is not None:
            self._close_slot(to_close)
            self._freed(1)

    def _serve_from_idle(self) -> None:
        """Hand idle connections to the oldest waiters, while there are both (under the lock).

        Called right after a waiter is queued: a connection returned without the lock (see
        PooledPgConnection.close) may have gone idle after the waiter looked, and before it
        was queued.
        """
        if not GIL_ENABLED:  # idle connections are popped without the lock: pop first
            while self._waiters and (slot := pop_idle(self._idle)) is not None:
                self._hand_over(slot)
            return
        while self._waiters and self._idle:
            self._hand_over(from_idle=True)

    def _settle(self) -> None:
        """After a return without the lock: serve the waiters that queued meanwhile, or, if
        the pool was closed meanwhile, close what is idle (as close() does)."""
        with self._lock:
            if not self._closed:
                self._serve_from_idle()
                return
            taken = take_all(self._idle)
            self._size -= len(taken)
        for slot in taken:
            self._close_slot(slot)
        self._freed(len(taken))

    def _reset_on_return(self, slot: Slot) -> bool:
        """Apply the reset policy; False when the connection must be closed instead."""
        conn = slot.conn
        if conn.is_lost():
            return False  # closed by the caller, or lost: not worth pooling
        try:
            rolled_back = conn.reset_on_return(self._reset)
        except Exception as exc:
            with self._lock:
                self._counts[Counter.RESET_FAILURES] += 1
            self.logger.warning(
                "pool %r: reset on return failed, connection closed: %s",
                self.name,
                redact(str(exc).strip(), self._secrets),
            )
            return False
        if rolled_back:
            self.logger.warning(
                "pool %r: connection given back inside a transaction; rolled back (end it with "
                "commit() or rollback(), or use pool.transaction())",
                self.name,
            )
        if rolled_back or not self._rollback_if_needed:
            with self._lock:
                self._counts[Counter.RESETS] += 1
        return True

    def _drop(self, slot: Slot) -> None:
        """Close a slot that is not idle, then hand its place to a waiter or free it."""
        self._close_slot(slot)
        with self._lock:
            if self._leak_threshold:
                self._checked_out.discard(slot)
            if slot.generation != self._generation:
                slot.returning = False
                return  # from before a fork: its place was never counted in this process
        self._release_place(opening=False, done=slot)

    def _checkin_unless_held(self, slot: Slot) -> None:
        """A return cut short (a signal) before it was handed on: ``_checkin``, unless it got
        as far as being held for its results (see :meth:`_hold`). Nobody else can have let it
        go from there meanwhile: close() still holds those results."""
        with self._lock:
            held = any(entry[0] is slot for entry in self._held)
        if not held:
            self._checkin(slot)

    def _rescue(self, slot: Slot) -> None:
        """A return cut short by an exception (a signal handler's) before ``slot`` was
        pooled, handed on or closed (see PooledPgConnection.close): close it and hand on or
        free its place. Its state after an interrupted reset is unknown, so it is not pooled.
        """
        if slot.returning:
            self._drop(slot)

    def _close_slot(self, slot: Slot) -> None:
        """Close a pooled connection (I/O; outside the lock).

        Under a server budget, wait until the server has let the backend go, so that the
        place handed on next is never counted twice on the server.
        """
        slot.conn.listener = None
        slot.conn.close()  # waits for the backend to exit under a budget (close_wait)

    def _freed(self, count: int) -> None:
        """``count`` places were freed and their connections closed: give back the budget."""
        if self._budget is not None and count:
            self._budget.release(count)


def _released(held: object) -> bool:
    """Whether the caller let go of a held result (or of every one of a list of them)."""
    if type(held) is list:
        # The list, the loop variable and getrefcount's argument: nobody else.
        return all(sys.getrefcount(result) <= 3 for result in held)
    # The held entry, this function's parameter and getrefcount's argument: nobody else.
    return sys.getrefcount(held) <= 3
