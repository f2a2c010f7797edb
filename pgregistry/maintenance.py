"""One background thread that runs periodic upkeep for any number of pools.

The thread knows nothing of pools or registries: it runs :class:`Task` objects. A task holds
only a weak reference to what it maintains, so a pool that is dropped without ``close()`` is
still collected, and its task then ends. Failures are logged and the thread runs on; it is a
daemon thread and never keeps the interpreter alive.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import math
import os
import threading
import time
import weakref
from collections.abc import Callable
from typing import Any

__all__ = ["Maintenance", "Task"]

_log = logging.getLogger("pgregistry.maintenance")


class Task:
    """A periodic job: ``func(target)`` every ``interval`` seconds while ``target`` lives.

    ``func`` returns False to end the task. The target is held by a weak reference.
    """

    __slots__ = ("_ref", "cancelled", "func", "interval", "name")

    def __init__(
        self, target: object, func: Callable[[Any], object], interval: float, name: str
    ) -> None:
        self._ref = weakref.ref(target)
        self.func = func
        self.interval = max(interval, 0.005)
        self.name = name
        self.cancelled = False

    def run(self) -> bool:
        """Run once; False when the task is over (target gone, cancelled or finished)."""
        target = self._ref()
        if target is None or self.cancelled:
            return False
        return self.func(target) is not False


class Maintenance:
    """A daemon thread running scheduled :class:`Task` objects.

    Started lazily by the first :meth:`add`; stops when :meth:`stop` is called or, if
    ``stop_when_idle`` is set, when its last task ends. After ``os.fork()`` the child has no
    thread; the next :meth:`add` (or :meth:`ensure_running`) starts a fresh one.
    """

    def __init__(self, name: str = "pgregistry-maintenance", *, stop_when_idle: bool = False):
        self.name = name
        self._stop_when_idle = stop_when_idle
        self._cond = threading.Condition(threading.Lock())
        self._heap: list[tuple[float, int, Task]] = []
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None
        self._stopped = False
        _INSTANCES.add(self)

    def add(self, task: Task, *, delay: float | None = None) -> Task:
        """Schedule ``task``; its first run is after ``delay`` (default: its interval)."""
        now = time.monotonic()
        first = _next_tick(now, task.interval) if delay is None else now + delay
        with self._cond:
            self._stopped = False
            heapq.heappush(self._heap, (first, next(self._seq), task))
            self._start_locked()
            self._cond.notify()
        return task

    def ensure_running(self) -> None:
        """Start the thread again if it is gone (for example in a forked child)."""
        with self._cond:
            if self._heap and not self._stopped:
                self._start_locked()

    def stop(self, timeout: float | None = 5.0) -> None:
        """Stop the thread and drop every task."""
        with self._cond:
            self._stopped = True
            self._heap.clear()
            self._cond.notify()
            thread = self._thread
            self._thread = None
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)

    @property
    def running(self) -> bool:
        """True while the thread is alive."""
        thread = self._thread
        return thread is not None and thread.is_alive()

    def _start_locked(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            thread = threading.Thread(target=self._loop, name=self.name, daemon=True)
            self._thread = thread
            thread.start()

    def _loop(self) -> None:
        me = threading.current_thread()
        while True:
            with self._cond:
                while True:
                    if self._stopped or self._thread is not me:
                        return
                    if not self._heap:
                        if self._stop_when_idle:
                            self._thread = None
                            return
                        self._cond.wait()
                        continue
                    due, _, task = self._heap[0]
                    wait = due - time.monotonic()
                    if wait <= 0:
                        heapq.heappop(self._heap)
                        break
                    self._cond.wait(wait)
            try:
                again = task.run()
            except Exception:
                _log.exception("maintenance task %s failed; it keeps running", task.name)
                again = True
            if again:
                # Fixed rate on a grid of the interval, so that tasks with the same interval
                # (the pools of a registry) come due together and share one wake-up.
                following = _next_tick(time.monotonic(), task.interval)
                with self._cond:
                    if not self._stopped:
                        heapq.heappush(self._heap, (following, next(self._seq), task))


def _next_tick(now: float, interval: float) -> float:
    """The first multiple of ``interval`` after ``now`` (monotonic seconds)."""
    return (math.floor(now / interval) + 1) * interval


_INSTANCES: weakref.WeakSet[Maintenance] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    # Only the forking thread survives a fork; a lock held by another thread would stay held.
    for maint in list(_INSTANCES):
        maint._cond = threading.Condition(threading.Lock())
        maint._thread = None


os.register_at_fork(after_in_child=_after_fork_in_child)
