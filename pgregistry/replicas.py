"""Read pools: a standby's replication lag, measured off the checkout path.

A pool used as another's ``read_pool`` with a ``max_replica_lag`` gets a :class:`LagWatch`: a
maintenance task asks its server every half of the limit (at most every second) how far replay
is behind, and marks the pool *lagging* past the limit until it has caught up. Routing reads
(:meth:`pgregistry.registry.Registry.connection` with ``readonly=True``) only reads the mark.
"""

from __future__ import annotations

import logging
import math
import time

from .pool import PooledPg

__all__ = ["LAG_SQL", "LagWatch"]

_log = logging.getLogger("pgregistry.replicas")

#: Seconds the server's replay is behind: 0 on a primary, and on a standby that has replayed
#: all it received (an idle primary leaves pg_last_xact_replay_timestamp() old).
LAG_SQL = (
    "SELECT CASE WHEN NOT pg_is_in_recovery() THEN 0 "
    "WHEN pg_last_wal_receive_lsn() IS NOT NULL "
    "AND pg_last_wal_receive_lsn() = pg_last_wal_replay_lsn() THEN 0 "
    "ELSE COALESCE(EXTRACT(EPOCH FROM now() - pg_last_xact_replay_timestamp()), 0) END"
)


class LagWatch:
    """The measured lag of one read pool, and whether it is past ``max_lag``."""

    def __init__(self, pool: PooledPg, max_lag: float) -> None:
        self.pool = pool
        self.max_lag = max_lag
        #: Seconds behind at the last check (None: not measured yet, or the check failed).
        self.lag: float | None = None
        self.lagging = False
        self.checked_at: float | None = None

    @property
    def interval(self) -> float:
        return min(max(self.max_lag / 2, 0.05), 1.0)

    def check(self) -> bool:
        """One measurement (a maintenance task calls it); False once the pool is closed."""
        if self.pool.closed:
            return False
        try:
            with self.pool.connection() as db:
                value = db.query(LAG_SQL).getresult()[0][0]
            lag = float(value) if value is not None else 0.0
        except Exception as exc:
            # The server is down or refuses: routing finds that out by itself (and falls back).
            self.lag = None
            _log.debug("read pool %r: lag check failed: %s", self.pool.name, type(exc).__name__)
            return True
        self.lag = lag if math.isfinite(lag) else None
        self.checked_at = time.monotonic()
        lagging = self.lag is not None and self.lag > self.max_lag
        if lagging != self.lagging:
            _log.warning(
                "read pool %r %s (lag %.1f s, max_replica_lag %.1f s)",
                self.pool.name,
                "lags behind: reads go to the primary pool" if lagging else "has caught up",
                lag,
                self.max_lag,
            )
        self.lagging = lagging
        return True
