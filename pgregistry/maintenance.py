"""Periodic upkeep for any number of pools: one scheduler thread and a few worker threads.

The scheduler only keeps time: it takes due :class:`Task` objects off a heap and hands them to
worker threads, which do the work (pings, closes, reconnects: network I/O). So a pool whose
server is slow or blackholed ties up one worker, never the clock, and the other pools' upkeep
runs on time on the other workers. At most ``max_workers`` workers exist; they are started on
demand and end after ``worker_idle`` seconds without work.

A task is never run twice at once: it is off the heap while it runs and is scheduled again
only when its run has ended, on the next tick of its interval grid (ticks missed while it ran
are skipped, not queued). One pool's upkeep is therefore serial, which keeps "grow one
connection at a time per pool".

The threads know nothing of pools or registries. A task holds only a weak reference to what
it maintains, so a pool dropped without ``close()`` is still collected, and its task then
ends. Failures are logged and the task runs on. All threads are daemons and never keep the
interpreter alive; after ``os.fork()`` the child has none, and the next :meth:`Maintenance.add`
or :meth:`Maintenance.ensure_running` starts fresh ones.
"""

from __future__ import annotations

import collections
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

#: Default bound on worker threads per Maintenance: enough that one or two dead servers leave
#: workers for everyone else, few enough to stay cheap on a small host.
MAX_WORKERS = 4
#: Seconds a worker waits for work before it ends.
WORKER_IDLE = 10.0


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
    """A scheduler thread plus up to ``max_workers`` worker threads running :class:`Task` s.

    Started lazily by the first :meth:`add`; stops when :meth:`stop` is called or, if
    ``stop_when_idle`` is set, when its last task ends.
    """

    def __init__(
        self,
        name: str = "pgregistry-maintenance",
        *,
        stop_when_idle: bool = False,
        max_workers: int = MAX_WORKERS,
        worker_idle: float = WORKER_IDLE,
    ) -> None:
        if max_workers < 1:
            raise ValueError(f"max_workers must be >= 1 (got {max_workers})")
        self.name = name
        self.max_workers = max_workers
        self.worker_idle = worker_idle
        self._stop_when_idle = stop_when_idle
        lock = threading.Lock()
        self._cond = threading.Condition(lock)  # wakes the scheduler
        self._work = threading.Condition(lock)  # wakes an idle worker
        self._heap: list[tuple[float, int, Task]] = []
        self._ready: collections.deque[Task] = collections.deque()  # due, waiting for a worker
        self._active: set[Task] = set()  # tasks being run by workers now
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None
        self._workers: set[threading.Thread] = set()
        self._idle_workers = 0
        self._stopped = False
        self._generation = 0  # bumped by stop() and fork, so old threads know to end
        _INSTANCES.add(self)

    def add(self, task: Task, *, delay: float | None = None) -> Task:
        """Schedule ``task``; its first run is after ``delay`` (default: its interval's grid)."""
        now = time.monotonic()
        first = _next_tick(now, task.interval) if delay is None else now + delay
        with self._cond:
            self._stopped = False
            heapq.heappush(self._heap, (first, next(self._seq), task))
            self._start_locked()
            self._cond.notify()
        return task

    def ensure_running(self) -> None:
        """Start the scheduler again if it is gone (for example in a forked child)."""
        with self._cond:
            if (self._heap or self._ready) and not self._stopped:
                self._start_locked()

    def stop(self, timeout: float | None = 5.0) -> None:
        """Stop the scheduler and the workers and drop every task.

        Joins the scheduler and the workers (each for at most ``timeout`` seconds): a worker
        stuck in a task's I/O ends when that task returns.
        """
        with self._cond:
            self._stopped = True
            self._generation += 1
            self._heap.clear()
            self._ready.clear()
            self._cond.notify_all()
            self._work.notify_all()
            threads = [t for t in (self._thread, *self._workers) if t is not None]
            self._thread = None
            self._workers = set()
            self._idle_workers = 0
        me = threading.current_thread()
        deadline = None if timeout is None else time.monotonic() + timeout
        for thread in threads:
            if thread is not me:
                left = None if deadline is None else max(deadline - time.monotonic(), 0.0)
                thread.join(left)

    @property
    def running(self) -> bool:
        """True while the scheduler thread is alive."""
        thread = self._thread
        return thread is not None and thread.is_alive()

    @property
    def workers(self) -> int:
        """How many worker threads exist now (at most ``max_workers``)."""
        return len(self._workers)

    def _start_locked(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            thread = threading.Thread(
                target=self._schedule, args=(self._generation,), name=self.name, daemon=True
            )
            self._thread = thread
            thread.start()

    def _schedule(self, generation: int) -> None:
        """The scheduler: move due tasks to the ready queue; never runs a task itself."""
        me = threading.current_thread()
        with self._cond:
            while True:
                if self._stopped or self._generation != generation or self._thread is not me:
                    return
                if not self._heap:
                    if self._stop_when_idle and not self._ready and not self._active:
                        self._thread = None
                        return
                    self._cond.wait()
                    continue
                due, _, task = self._heap[0]
                wait = due - time.monotonic()
                if wait > 0:
                    self._cond.wait(wait)
                    continue
                heapq.heappop(self._heap)
                self._ready.append(task)
                if self._idle_workers >= len(self._ready):
                    self._work.notify()
                elif len(self._workers) < self.max_workers:
                    self._start_worker_locked()
                # else every worker is busy: the task waits in _ready for the first free one.

    def _start_worker_locked(self) -> None:
        worker = threading.Thread(
            target=self._work_loop,
            args=(self._generation,),
            name=f"{self.name}-worker",
            daemon=True,
        )
        self._workers.add(worker)
        worker.start()

    def _work_loop(self, generation: int) -> None:
        me = threading.current_thread()
        while True:
            with self._cond:
                while True:
                    if self._stopped or self._generation != generation:
                        self._workers.discard(me)
                        return
                    if self._ready:
                        task = self._ready.popleft()
                        self._active.add(task)
                        break
                    self._idle_workers += 1
                    woke = self._work.wait(self.worker_idle)
                    self._idle_workers -= 1
                    if not woke and not self._ready:
                        self._workers.discard(me)
                        return
            try:
                again = task.run()
            except Exception:
                _log.exception("maintenance task %s failed; it keeps running", task.name)
                again = True
            with self._cond:
                self._active.discard(task)
                if again and not self._stopped and self._generation == generation:
                    # Fixed rate on a grid of the interval, so that tasks with the same interval
                    # (the pools of a registry) come due together and share one wake-up; ticks
                    # missed while the task ran are skipped, never run in a burst.
                    following = _next_tick(time.monotonic(), task.interval)
                    heapq.heappush(self._heap, (following, next(self._seq), task))
                self._cond.notify()


def _next_tick(now: float, interval: float) -> float:
    """The first multiple of ``interval`` after ``now`` (monotonic seconds)."""
    return (math.floor(now / interval) + 1) * interval


_INSTANCES: weakref.WeakSet[Maintenance] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    # Only the forking thread survives a fork: no scheduler, no workers, and a lock held by
    # another thread would stay held. Tasks that were due or running are put back on the heap.
    for maint in list(_INSTANCES):
        lock = threading.Lock()
        maint._cond = threading.Condition(lock)
        maint._work = threading.Condition(lock)
        maint._thread = None
        maint._workers = set()
        maint._idle_workers = 0
        maint._generation += 1
        now = time.monotonic()
        for task in (*maint._ready, *maint._active):
            heapq.heappush(maint._heap, (now, next(maint._seq), task))
        maint._ready.clear()
        maint._active = set()


os.register_at_fork(after_in_child=_after_fork_in_child)
