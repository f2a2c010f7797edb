"""What pools, budgets and registries report about themselves: one place for every key.

The stats dictionaries are typed (``PoolStats``, ``BudgetStats``, ``RegistryStats``) and the
counters a pool keeps are the members of :class:`Counter`, so a key is spelled once. A
:class:`PoolObserver` receives a pool's timed events (metrics integrations use it).
"""

from __future__ import annotations

import enum
from typing import Protocol, TypedDict

__all__ = [
    "COUNTERS",
    "BudgetStats",
    "Counter",
    "PoolObserver",
    "PoolStats",
    "RegistryStats",
]


class Counter(enum.StrEnum):
    """The counters of :class:`PoolStats`; they only grow. The value is the stats key."""

    WAITS = "waits"
    TIMEOUTS = "timeouts"
    REFUSED = "refused"
    OPENED = "opened"
    LOST = "lost"
    REOPENED = "reopened"
    EXPIRED = "expired"
    IDLE_CLOSED = "idle_closed"
    PING_FAILED = "ping_failed"
    RESETS = "resets"
    RESET_FAILURES = "reset_failures"
    LEAKS = "leaks"
    STOLEN = "stolen"
    WRONG_ROLE = "wrong_role"
    SERVER_FULL = "server_full"


#: Every counter key, in the order stats() lists them (``checkouts`` is kept apart: it is on
#: the fast path).
COUNTERS: tuple[str, ...] = tuple(member.value for member in Counter)


class PoolStats(TypedDict):
    """What :meth:`PooledPg.stats` returns. Sizes are a snapshot; counters only grow."""

    name: str
    #: Connections open now (``idle + in_use``).
    open: int
    #: Open connections waiting in the pool.
    idle: int
    #: Connections checked out by callers (including those being set up for a caller).
    in_use: int
    #: Callers waiting for a connection right now.
    waiting: int
    mincached: int
    maxcached: int
    maxconnections: int
    #: Successful checkouts.
    checkouts: int
    #: Checkouts that had to wait for a connection.
    waits: int
    #: Total time spent waiting, in milliseconds.
    wait_ms: float
    #: Waits that ended in PoolTimeoutError.
    timeouts: int
    #: Refusals with TooManyConnectionsError (blocking off).
    refused: int
    #: Connections opened (including reopens).
    opened: int
    #: Connections found lost (server restart, killed backend, network).
    lost: int
    #: Lost connections reopened transparently.
    reopened: int
    #: Connections closed because they reached ``max_lifetime``.
    expired: int
    #: Idle connections closed because they were idle longer than ``max_idle``.
    idle_closed: int
    #: Connections that failed a ping and were replaced.
    ping_failed: int
    #: Resets done on return.
    resets: int
    #: Resets that failed (the connection was closed instead of pooled).
    reset_failures: int
    #: Connections held longer than ``leak_threshold``.
    leaks: int
    #: Idle connections closed to make room for another pool on the same server budget.
    stolen: int
    #: Connections closed, or reopened, because their server no longer has the role the
    #: target asks for (``target_session_attrs``): a demoted or fenced primary, a promoted
    #: standby.
    wrong_role: int
    #: Connections the server refused at a limit (SQLSTATE 53300: max_connections, a role's
    #: CONNECTION LIMIT); the callers waited for room instead of failing.
    server_full: int


class BudgetStats(TypedDict):
    """What :meth:`ServerBudget.stats <pgregistry.budget.ServerBudget.stats>` returns."""

    name: str
    #: Connections counted against the budget now.
    used: int
    #: The budget: most connections of all member pools together.
    max_connections: int
    #: Most connections counted at once since the budget was made.
    peak: int
    #: Idle connections closed to make room for another member pool.
    steals: int
    #: Acquisitions that had to wait for a unit.
    waits: int
    #: Waits that ended in PoolTimeoutError.
    timeouts: int
    #: Member pools now.
    pools: int


class RegistryStats(TypedDict):
    """What :meth:`Registry.stats <pgregistry.registry.Registry.stats>` returns."""

    #: Each built pool's stats, by pool name.
    pools: dict[str, PoolStats]
    #: Each tenant template's pools' stats, by template name, then tenant key.
    tenants: dict[str, dict[str, PoolStats]]
    #: Each server budget, by server name.
    servers: dict[str, BudgetStats]
    #: Tenant pools closed so far for max_pools or idle_pool_timeout, by template name.
    tenants_evicted: dict[str, int]
    #: Each built pool's server role ("primary", "standby"), None when not known.
    roles: dict[str, str | None]
    #: Read pools with max_replica_lag: the last measured lag (seconds), whether past it.
    replica_lag: dict[str, dict[str, float | bool | None]]


class PoolObserver(Protocol):
    """Receives one pool's timed events (see :meth:`PooledPg.observe`).

    Every method must be cheap and must not raise: they run on the caller's thread, outside
    the pool lock. An observer that raises is logged once and then ignored.
    """

    def on_connect(self, seconds: float) -> None:
        """A server connection was opened for the pool (first open or reopen)."""

    def on_checkout(self, waited: float) -> None:
        """A checkout succeeded, ``waited`` seconds after connection() was called."""

    def on_checkin(self, used: float) -> None:
        """A checked-out connection came back after ``used`` seconds."""

    def on_timeout(self) -> None:
        """A checkout ended in PoolTimeoutError."""
