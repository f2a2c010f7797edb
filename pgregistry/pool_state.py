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

__all__ = ["PoolState"]


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

    def _fill(self, target: int, *, raise_errors: bool) -> None:
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

    def _observer_failed(self) -> None:
        raise NotImplementedError

    # A pool is a member of its server budget (pgregistry.budget.BudgetMember):
    def close(self) -> None:
        raise NotImplementedError

    def close_one_idle(self) -> bool:
        raise NotImplementedError

    def oldest_idle_since(self) -> float | None:
        raise NotImplementedError
