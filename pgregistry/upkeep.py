"""A pool's upkeep: what its maintenance task does between checkouts.

Closes idle connections past ``max_lifetime`` and, above ``mincached``, those idle longer than
``max_idle``; pings long-idle ones; refills to ``mincached``; reports leaks; and, for a server
budget, gives up its longest-idle connection on request. Runs on a
:class:`~pgregistry.maintenance.Maintenance` worker, never on a caller's thread.
"""

from __future__ import annotations

import time

from . import leak
from .maintenance import Maintenance, Task
from .policies import PingPolicy
from .pool_state import PoolState, take_all
from .proxy import Slot
from .stats import Counter

__all__ = ["Upkeep"]

# Bounds for how often the maintenance task runs, in seconds.
_UPKEEP_MIN, _UPKEEP_MAX = 0.01, 15.0
# How soon a pool with mincached refills after losses, in seconds.
_REFILL_PERIOD = 1.0


class Upkeep(PoolState):
    """The periodic upkeep of a pool and its part in a server budget."""

    def _upkeep_interval(self) -> float | None:
        periods = [
            p for p in (self._max_lifetime, self._max_idle, self._leak_threshold) if p is not None
        ]
        if self._ping is not PingPolicy.NEVER and self._ping_after:
            periods.append(self._ping_after)
        if self._mincached:
            periods.append(_REFILL_PERIOD * 2)
        if not periods:
            return None
        return min(max(min(periods) / 2, _UPKEEP_MIN), _UPKEEP_MAX)

    def _start_upkeep(self) -> None:
        interval = self._upkeep_interval()
        if interval is None:
            return
        if self._maintenance is None:
            self._maintenance = Maintenance(
                f"pgregistry-maintenance-{self.name}", stop_when_idle=True
            )
        self._upkeep = self._maintenance.add(
            Task(self, Upkeep.maintain, interval, f"upkeep of pool {self.name!r}")
        )

    def _forget_upkeep(self) -> None:
        task, self._upkeep = self._upkeep, None
        if task is not None:
            task.cancelled = True
        if self._own_maintenance and self._maintenance is not None:
            self._maintenance.stop(timeout=1.0)

    def maintain(self) -> bool:
        """One round of upkeep; the maintenance thread calls this periodically.

        Closes idle connections past ``max_lifetime`` and, above ``mincached``, those idle
        longer than ``max_idle``; pings idle connections idle longer than ``ping_after``
        (replacing dead ones); refills to ``mincached``; reports leaks. Returns False once the
        pool is closed. Network I/O happens outside the pool lock.
        """
        if self._held:
            self._release_held()
        now = time.monotonic()
        self._refresh_log_checkouts()
        expired: list[Slot] = []
        surplus: list[Slot] = []
        to_ping: list[Slot] = []
        with self._lock:
            if self._closed:
                return False
            keep: list[Slot] = []
            idle = take_all(self._idle)  # popped: the fast checkout pops without the lock
            idle_total = len(idle)
            # Oldest-returned first: those at the bottom of the stack age out first.
            for slot in idle:
                if now >= slot.expires_at:
                    expired.append(slot)
                elif (
                    self._max_idle is not None
                    and now - slot.since > self._max_idle
                    and idle_total - len(surplus) - len(expired) > self._mincached
                ):
                    surplus.append(slot)
                elif self._ping is not PingPolicy.NEVER and now - slot.since > self._ping_after:
                    to_ping.append(slot)
                else:
                    keep.append(slot)
            self._idle.extend(keep)
            self._size -= len(expired) + len(surplus)
            self._counts[Counter.EXPIRED] += len(expired)
            self._counts[Counter.IDLE_CLOSED] += len(surplus)
            leaks = self._find_leaks(now) if self._leak_threshold else []
        for slot in expired + surplus:
            self._close_slot(slot)
        self._freed(len(expired) + len(surplus))
        if expired or surplus:
            self.logger.debug(
                "pool %r: closed %d expired and %d idle connections",
                self.name,
                len(expired),
                len(surplus),
            )
        for slot in to_ping:
            self._ping_idle(slot)
        for slot, age in leaks:
            self.logger.warning(
                "pool %r: connection checked out %.1f s ago and not returned "
                "(leak_threshold %.1f s); checked out at:\n%s",
                self.name,
                age,
                self._leak_threshold,
                leak.format_stack(slot.stack or []),
            )
        if self._size < self._mincached:
            self._fill(self._mincached, raise_errors=False)
        return True

    def _ping_idle(self, slot: Slot) -> None:
        alive = slot.conn.ping()
        if not alive:
            with self._lock:
                self._counts[Counter.PING_FAILED] += 1
            self.logger.warning("pool %r: idle connection failed its ping; closed", self.name)
        slot.since = time.monotonic()
        self._checkin(slot, fresh=alive) if alive else self._drop(slot)

    def _find_leaks(self, now: float) -> list[tuple[Slot, float]]:
        threshold = self._leak_threshold or 0.0
        found = []
        for slot in self._checked_out:
            if not slot.leak_reported and now - slot.since > threshold:
                slot.leak_reported = True
                self._counts[Counter.LEAKS] += 1
                found.append((slot, now - slot.since))
        return found

    def oldest_idle_since(self) -> float | None:
        """When the longest-idle connection went idle (monotonic), None if none is idle.

        Connections held by results that have since been released are given back first: a
        server budget looking for one to close must see them (they would otherwise wait for
        this pool's next checkout or upkeep round).
        """
        if self._held:
            self._release_held()
        idle = self._idle
        try:
            return idle[0].since
        except IndexError:
            return None

    def close_one_idle(self) -> bool:
        """Close the longest-idle connection (a server budget asks); False if none is idle."""
        with self._lock:
            try:
                slot = self._idle.popleft()
            except IndexError:
                return False
            self._size -= 1
            self._counts[Counter.STOLEN] += 1
        self._close_slot(slot)
        self._freed(1)
        return True
