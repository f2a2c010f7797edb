"""Server budgets: a cap on the connections of every pool that shares one server.

PostgreSQL refuses connections past its ``max_connections``; a service with many pools on one
server (tenant pools especially) reaches that limit long before any single pool reaches its
own. A :class:`ServerBudget` counts the connections of all its pools. A pool takes one unit
before it opens a connection and gives it back when the connection closes. When the budget is
full, the pool that needs a connection first makes another pool on the same server close its
longest-idle connection; only when no pool has one idle does it wait, up to its ``timeout``.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from typing import Protocol

from .errors import PoolTimeoutError
from .stats import BudgetStats

__all__ = ["ServerBudget"]

_log = logging.getLogger("pgregistry.budget")


class BudgetMember(Protocol):
    """What a budget needs of a pool: its name and a way to give up an idle connection."""

    name: str

    def oldest_idle_since(self) -> float | None:
        """Monotonic time the pool's longest-idle connection went idle, or None if none."""

    def close_one_idle(self) -> bool:
        """Close the longest-idle connection (releasing its budget unit); False if none."""


class ServerBudget:
    """At most ``max_connections`` connections for all member pools together."""

    def __init__(self, name: str, max_connections: int) -> None:
        if not isinstance(max_connections, int) or max_connections < 1:
            raise ValueError(
                f"server {name!r}: max_connections must be an integer >= 1 "
                f"(got {max_connections!r})"
            )
        self.name = name
        self.max_connections = max_connections
        self._used = 0
        self._peak = 0
        self._steals = 0
        self._waits = 0
        self._timeouts = 0
        self._cond = threading.Condition(threading.Lock())
        self._members: weakref.WeakSet[BudgetMember] = weakref.WeakSet()
        _BUDGETS.add(self)

    def join(self, pool: BudgetMember) -> None:
        """Count ``pool``'s connections against this budget (called by the pool)."""
        with self._cond:
            self._members.add(pool)

    def leave(self, pool: BudgetMember) -> None:
        with self._cond:
            self._members.discard(pool)

    def acquire(self, pool: BudgetMember, timeout: float | None, *, steal: bool = True) -> None:
        """Take one unit for a new connection of ``pool``.

        When full, makes another member close its longest-idle connection, or else ``pool``
        itself (unless ``steal`` is false); else waits up to ``timeout`` seconds (None:
        forever) and raises :class:`PoolTimeoutError` naming the budget. Never called with a
        pool lock held.
        """
        started = time.monotonic()
        deadline = None if timeout is None else started + timeout
        waited = False
        while True:
            with self._cond:
                if self._used < self.max_connections:
                    self._used += 1
                    self._peak = max(self._peak, self._used)
                    return
                victims = [m for m in self._members if m is not pool]
            # Another pool's idle connection first; else one of the caller's own pool, which went
            # idle after its checkout found none (the caller waits here, not in its pool, so it
            # would otherwise time out beside an idle connection of its own).
            if steal and (self._steal(victims) or self._steal([pool])):
                continue
            with self._cond:
                if self._used < self.max_connections:
                    continue
                remaining = None if deadline is None else deadline - time.monotonic()
                if remaining is not None and remaining <= 0:
                    self._timeouts += 1
                    message = (
                        f"pool {pool.name!r}: server budget {self.name!r} is full "
                        f"({self._used}/{self.max_connections} connections, none idle) after "
                        f"{time.monotonic() - started:.1f} s; raise servers.{self.name}."
                        "maxconnections, lower the pools' maxconnections, or return "
                        "connections sooner"
                    )
                else:
                    message = ""
                    if not waited:
                        self._waits += 1
                        waited = True
                    # Woken by a release; the timeout bounds a missed wake-up (a member whose
                    # connection went idle does not notify).
                    self._cond.wait(0.05 if remaining is None else min(remaining, 0.05))
            if message:
                _log.warning("%s", message)
                raise PoolTimeoutError(message)

    def _steal(self, victims: list[BudgetMember]) -> bool:
        """Make the member with the longest-idle connection close it; True if one did."""
        candidates = []
        for member in victims:
            since = member.oldest_idle_since()
            if since is not None:
                candidates.append((since, member))
        candidates.sort(key=lambda item: item[0])
        for _, member in candidates:
            if member.close_one_idle():
                with self._cond:
                    self._steals += 1
                _log.debug(
                    "server budget %r: closed an idle connection of %r", self.name, member.name
                )
                return True
        return False

    def release(self, count: int = 1) -> None:
        """Give back ``count`` units (connections closed)."""
        if count <= 0:
            return
        with self._cond:
            self._used = max(0, self._used - count)
            self._cond.notify(count)

    def _reset_after_fork(self) -> None:
        # A forked child starts with no connections (its pools start empty).
        self._cond = threading.Condition(threading.Lock())
        self._used = 0

    def stats(self) -> BudgetStats:
        """A snapshot of the budget (see :class:`~pgregistry.stats.BudgetStats`)."""
        with self._cond:
            return {
                "name": self.name,
                "used": self._used,
                "max_connections": self.max_connections,
                "peak": self._peak,
                "steals": self._steals,
                "waits": self._waits,
                "timeouts": self._timeouts,
                "pools": len(self._members),
            }

    def __repr__(self) -> str:
        return f"<ServerBudget {self.name!r} {self._used}/{self.max_connections}>"


_BUDGETS: weakref.WeakSet[ServerBudget] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for budget in list(_BUDGETS):
        budget._reset_after_fork()


os.register_at_fork(after_in_child=_after_fork_in_child)
