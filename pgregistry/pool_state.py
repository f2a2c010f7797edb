"""The bookkeeping a pool's parts share, and the places they hand each other.

:class:`PoolState` declares the state of a :class:`~pgregistry.pool.PooledPg` that its
hand-off (:mod:`pgregistry.handoff`) and upkeep (:mod:`pgregistry.upkeep`) parts read and
change, so that each part type-checks on its own. One lock guards all of it, and no network
I/O, logging or callback happens while it is held.

A *place* is one unit of ``maxconnections``: counted in ``_size`` from the moment a connection
is decided on until it is closed, whether it is being opened, idle, checked out or held by an
unread result. Under a server budget every place also holds one unit of the budget.
"""

from __future__ import annotations

import logging
import sys
import threading
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING

from .policies import PingPolicy, ResetPolicy
from .proxy import Slot
from .stats import PoolObserver

if TYPE_CHECKING:
    from .budget import ServerBudget
    from .handoff import Waiter
    from .maintenance import Maintenance, Task

__all__ = ["GIL_ENABLED", "PoolState", "pop_idle", "take_all"]

# Python 3.13's free-threaded build runs without the GIL: what relies on its ordering is off.
GIL_ENABLED: bool = getattr(sys, "_is_gil_enabled", lambda: True)()


class PoolState:
    """Attributes and hooks shared by the parts of a pool (no behaviour of its own)."""

    name: str
    logger: logging.Logger
    _lock: threading.Lock
    _closed: bool
    _idle: deque[Slot]
    #: Places taken: connections open, being opened, checked out or held.
    _size: int
    #: Of those, being opened right now.
    _opening: int
    _waiters: deque[Waiter]
    #: Checked-out connections, kept only for leak detection.
    _checked_out: set[Slot]
    #: Returned connections whose last result the caller still holds, with that result.
    _held: list[tuple[Slot, object]]
    _budget: ServerBudget | None
    #: Bumped in a forked child: connections of an older generation are the parent's.
    _generation: int
    _counts: dict[str, int]  # keyed by Counter members (a StrEnum)
    _checkouts: int
    #: connection() may take its lock-free path: not halted, no option that costs on checkout.
    _fast: bool
    #: An option that takes checkout and return off their fast paths is on (role check, leak
    #: detection, DEBUG logging). An observer does not: the fast paths time it themselves.
    _extras: bool
    _halted: bool
    #: _checkin may pool a clean idle connection without the lock (see _update_fast_path).
    _quick_return: bool
    _wait_ns: int
    _observer: PoolObserver | None
    _log_checkouts: bool
    _limit_hits: int
    _limit_logged_at: float
    _mincached: int
    _maxcached: int
    _maxconnections: int
    _blocking: bool
    _timeout: float | None
    _max_lifetime: float | None
    _max_idle: float | None
    _ping: PingPolicy
    _ping_after: float
    _leak_threshold: float | None
    _reset: ResetPolicy
    #: The default reset policy: an idle connection needs nothing sent on return.
    _rollback_if_needed: bool
    #: The target asks for a server role (target_session_attrs): check it on return.
    _check_role: bool
    #: Literal passwords of the connection arguments, redacted from messages.
    _secrets: tuple[str, ...]
    _maintenance: Maintenance | None
    _own_maintenance: bool
    _upkeep: Task | None

    def _update_fast_path(self) -> None:
        """Recompute :attr:`_extras`, :attr:`_fast` and :attr:`_quick_return` after one of
        their inputs changed."""
        self._extras = bool(self._check_role or self._leak_threshold or self._log_checkouts)
        self._fast = not self._halted and not self._extras and GIL_ENABLED
        # A return may skip the lock where it cannot exceed maxcached (no cap below
        # maxconnections), and where the GIL orders every step (not a free-threaded build).
        cap_free = not self._maxcached or 0 < self._maxconnections <= self._maxcached
        self._quick_return = (
            not self._extras and cap_free and GIL_ENABLED and self._rollback_if_needed
        )

    def _refresh_log_checkouts(self) -> None:
        """Ask the logger again whether checkouts are logged (too dear for every checkout)."""
        logged = self.logger.isEnabledFor(logging.DEBUG)
        if logged != self._log_checkouts:
            self._log_checkouts = logged
            self._update_fast_path()

    def _fill(self, target: int, *, raise_errors: bool) -> None:
        raise NotImplementedError

    def _serve_from_idle(self) -> None:
        raise NotImplementedError

    def _notify(self, method: Callable[..., None], *args: float) -> None:
        raise NotImplementedError

    def _release_held(self) -> None:
        raise NotImplementedError

    def _checkin(self, slot: Slot, *, fresh: bool = False) -> None:
        raise NotImplementedError

    def _drop(self, slot: Slot) -> None:
        raise NotImplementedError

    def _close_slot(self, slot: Slot) -> None:
        raise NotImplementedError

    def _freed(self, count: int) -> None:
        raise NotImplementedError

    def _observer_failed(self, observer: object) -> None:
        raise NotImplementedError

    # A pool is a member of its server budget (pgregistry.budget.BudgetMember):
    def close(self) -> None:
        raise NotImplementedError

    def close_one_idle(self) -> bool:
        raise NotImplementedError

    def oldest_idle_since(self) -> float | None:
        raise NotImplementedError


def pop_idle(idle: deque[Slot]) -> Slot | None:
    """The most recently returned idle connection, or None.

    Every taker of idle connections pops (the fast checkout without the pool lock), so a
    deque seen non-empty may be empty by the time it is popped.
    """
    try:
        return idle.pop()
    except IndexError:
        return None


def take_all(idle: deque[Slot]) -> list[Slot]:
    """Empty ``idle`` by popping, oldest first (never by copying it: see :func:`pop_idle`)."""
    taken: list[Slot] = []
    while True:
        try:
            taken.append(idle.popleft())
        except IndexError:
            return taken
