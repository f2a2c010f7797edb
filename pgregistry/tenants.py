"""Tenant pools: one pool per tenant key, built on demand from a ``[tenants.NAME]`` template.

A tenant key usually comes from a request, so it is untrusted: it is checked against the
template's pattern before anything touches the network, and substituted quoted for each place
(see :meth:`~pgregistry.config.TenantSettings.for_tenant`). The pools of one template are
bounded: at most ``max_pools`` exist at a time (the least recently used idle one is closed to
make room; a pool with connections out is never closed for that), and a pool unused for
``idle_pool_timeout`` seconds is closed by the maintenance thread.

Looking up an existing tenant pool is one dictionary lookup and a clock read, whatever the
number of tenants.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections.abc import Callable
from typing import TYPE_CHECKING

from .errors import PoolClosedError, PoolTimeoutError
from .pool import PooledPg, PoolStats

if TYPE_CHECKING:
    from .config import PoolSettings, TenantSettings

__all__ = ["TenantPools"]

_log = logging.getLogger("pgregistry.tenants")

# How often a caller waiting for a free place among max_pools looks again, in seconds.
_RETRY_PAUSE = 0.02

PoolFactory = Callable[["PoolSettings", str], PooledPg]


class _Entry:
    __slots__ = ("pool", "used")

    def __init__(self, pool: PooledPg) -> None:
        self.pool = pool
        self.used = time.monotonic()  # last lookup, for LRU and idle eviction


class _Building:
    """The lock the builders of one tenant key share, and how many hold or wait for it."""

    __slots__ = ("lock", "users")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.users = 0


class TenantPools:
    """The pools of one tenant template, keyed by tenant key.

    ``make_pool(settings, key)`` builds a pool from the tenant's settings (the registry
    passes one that adds its maintenance thread and server budget).
    """

    def __init__(self, template: TenantSettings, make_pool: PoolFactory) -> None:
        self.template = template
        self.name = template.name
        self._make_pool = make_pool
        # Written under _lock, read without it (a dict lookup is atomic).
        self._entries: dict[str, _Entry] = {}
        self._lock = threading.Lock()
        # Keys being built now; an entry lives while anyone holds or waits for its lock, so
        # concurrent builders share one lock and failed builds leave nothing behind (keys
        # are untrusted: a dict growing per failed key would be a leak anyone could drive).
        self._building: dict[str, _Building] = {}
        self._reserved = 0  # places taken by pools being built
        self._evicted = 0
        self._closed = False
        _GROUPS.add(self)

    def _after_fork_in_child(self) -> None:
        # Only the forking thread survives: locks held by other threads (a builder inside a
        # tenant pool build) would stay held for good. Builds in flight did not happen here.
        self._lock = threading.Lock()
        self._building = {}
        self._reserved = 0

    def get(self, key: str) -> PooledPg:
        """The pool of tenant ``key``, built on first use (once, even under concurrent calls).

        Raises :class:`~pgregistry.InvalidTenantError` for a key that does not match the
        template, before any connection is made, and :class:`~pgregistry.PoolTimeoutError`
        when ``max_pools`` pools exist and all are busy for the template's ``timeout``.
        """
        try:
            entry = self._entries.get(key)
        except TypeError:  # an unhashable key (a list from a JSON body): check_tenant says so
            entry = None
        if entry is not None:
            entry.used = time.monotonic()
            return entry.pool
        return self._build(key)

    def _build(self, key: str) -> PooledPg:
        key = self.template.check_tenant(key)
        with self._lock:
            if self._closed:
                raise PoolClosedError(f"tenant template {self.name!r} is closed")
            building = self._building.get(key)
            if building is None:
                building = self._building[key] = _Building()
            building.users += 1
        try:
            with building.lock:
                return self._build_locked(key)
        finally:
            with self._lock:
                building.users -= 1
                if not building.users:
                    del self._building[key]

    def _build_locked(self, key: str) -> PooledPg:
        entry = self._entries.get(key)
        if entry is not None:
            return entry.pool
        self._reserve()
        try:
            pool = self._make_pool(self.template.for_tenant(key), key)
        except BaseException:
            with self._lock:
                self._reserved -= 1
            raise
        with self._lock:
            self._reserved -= 1
            closed = self._closed
            if not closed:
                self._entries[key] = _Entry(pool)
        if closed:
            pool.close()
            raise PoolClosedError(f"tenant template {self.name!r} is closed")
        return pool

    def _reserve(self) -> None:
        """Take a place among ``max_pools``, closing the least recently used idle pool."""
        limit = self.template.max_pools
        timeout = self.template.timeout
        started = time.monotonic()
        while True:
            with self._lock:
                if self._closed:
                    raise PoolClosedError(f"tenant template {self.name!r} is closed")
                if len(self._entries) + self._reserved < limit:
                    self._reserved += 1
                    return
                victim = self._least_recently_used_idle()
                if victim is not None:
                    victim_entry = self._entries.pop(victim)
                    self._evicted += 1
            if victim is not None:
                victim_entry.pool.close()
                _log.info(
                    "tenant template %r: closed the pool of %r to make room (max_pools %d)",
                    self.name,
                    victim,
                    limit,
                )
                continue
            waited = time.monotonic() - started
            if timeout is not None and waited >= timeout:
                message = (
                    f"tenant template {self.name!r}: all {limit} tenant pools are busy after "
                    f"{waited:.1f} s (max_pools {limit}); raise max_pools or timeout"
                )
                _log.warning("%s", message)
                raise PoolTimeoutError(message)
            time.sleep(_RETRY_PAUSE)

    def _least_recently_used_idle(self) -> str | None:
        best: tuple[float, str] | None = None
        for key, entry in self._entries.items():
            if not entry.pool.busy and (best is None or entry.used < best[0]):
                best = (entry.used, key)
        return None if best is None else best[1]

    def evict_idle(self) -> bool:
        """Close pools unused for ``idle_pool_timeout`` (maintenance); False once closed."""
        timeout = self.template.idle_pool_timeout
        if self._closed:
            return False
        if timeout is None:
            return True
        cutoff = time.monotonic() - timeout
        with self._lock:
            stale = [
                key
                for key, entry in self._entries.items()
                if entry.used < cutoff and not entry.pool.busy
            ]
            pools = [self._entries.pop(key).pool for key in stale]
            self._evicted += len(stale)
        for key, pool in zip(stale, pools, strict=True):
            pool.close()
            _log.info("tenant template %r: closed the idle pool of %r", self.name, key)
        return True

    def pools(self) -> list[PooledPg]:
        """The tenant pools that exist now."""
        return [entry.pool for entry in list(self._entries.values())]

    def keys(self) -> list[str]:
        """Tenant keys that have a pool now, sorted."""
        return sorted(self._entries)

    def close(self) -> None:
        """Close every tenant pool (checked-out connections close when returned)."""
        with self._lock:
            self._closed = True
            pools = [entry.pool for entry in self._entries.values()]
            self._entries = {}
        for pool in pools:
            pool.close()

    def stats(self) -> dict[str, PoolStats]:
        """Every tenant pool's stats, by tenant key."""
        return {key: entry.pool.stats() for key, entry in sorted(self._entries.items())}

    @property
    def evicted(self) -> int:
        """Tenant pools closed so far for ``max_pools`` or ``idle_pool_timeout``."""
        return self._evicted

    def __repr__(self) -> str:
        return f"<TenantPools {self.name!r} pools={len(self._entries)}>"


_GROUPS: weakref.WeakSet[TenantPools] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for group in list(_GROUPS):
        group._after_fork_in_child()


os.register_at_fork(after_in_child=_after_fork_in_child)
