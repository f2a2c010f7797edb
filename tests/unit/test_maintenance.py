"""Maintenance: a scheduler that only schedules, and bounded workers that run the tasks.

No server: the tasks are plain functions. Assertions are on order and counts with Events and
generous bounds, never on timings.
"""

from __future__ import annotations

import gc
import logging
import os
import threading
import time

import pytest

from pgregistry.maintenance import Maintenance, Task


class _Target:
    """Something a task can hold a weak reference to."""


def _wait_for(predicate: object, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return True
        time.sleep(0.005)
    return False


def test_blocked_task_does_not_delay_another_task() -> None:
    maint = Maintenance("test-maint")
    target = _Target()
    blocking = threading.Event()
    release = threading.Event()
    finished = threading.Event()
    other_runs = 0

    def blocker(_: object) -> bool:
        blocking.set()
        release.wait(15.0)  # a blackholed server: stuck in I/O until released
        finished.set()
        return False

    def other(_: object) -> None:
        nonlocal other_runs
        other_runs += 1

    try:
        maint.add(Task(target, blocker, 0.01, "blocker"), delay=0)
        assert blocking.wait(5)
        maint.add(Task(target, other, 0.01, "other"), delay=0)
        # While the blocker is stuck, the other task keeps its schedule.
        assert _wait_for(lambda: other_runs >= 20)
        assert not finished.is_set()
    finally:
        release.set()
        maint.stop()


def test_task_never_overlaps_itself() -> None:
    maint = Maintenance("test-maint")
    target = _Target()
    inside = 0
    most = 0
    runs = 0
    lock = threading.Lock()

    def slow(_: object) -> None:
        nonlocal inside, most, runs
        with lock:
            inside += 1
            most = max(most, inside)
        time.sleep(0.05)  # five intervals: it is due again while still running
        with lock:
            inside -= 1
            runs += 1

    try:
        maint.add(Task(target, slow, 0.01, "slow"), delay=0)
        assert _wait_for(lambda: runs >= 5)
    finally:
        maint.stop()
    assert most == 1


def test_workers_are_bounded() -> None:
    maint = Maintenance("test-maint", max_workers=2)
    target = _Target()
    release = threading.Event()
    started = threading.Semaphore(0)

    def stuck(_: object) -> bool:
        started.release()
        release.wait(5)
        return False

    try:
        for i in range(5):
            maint.add(Task(target, stuck, 0.01, f"stuck {i}"), delay=0)
        assert started.acquire(timeout=5) and started.acquire(timeout=5)
        assert not started.acquire(timeout=0.2)  # a third would need a third worker
        assert maint.workers == 2
        release.set()
        for _ in range(3):  # the queued ones run once a worker is free
            assert started.acquire(timeout=5)
    finally:
        release.set()
        maint.stop()


def test_idle_workers_end() -> None:
    maint = Maintenance("test-maint", worker_idle=0.05)
    done = threading.Event()
    target = _Target()

    def once(_: object) -> bool:
        done.set()
        return False

    try:
        maint.add(Task(target, once, 1.0, "once"), delay=0)
        assert done.wait(5)
        assert _wait_for(lambda: maint.workers == 0)
    finally:
        maint.stop()


def test_failing_task_is_logged_and_keeps_running(caplog: pytest.LogCaptureFixture) -> None:
    maint = Maintenance("test-maint")
    target = _Target()
    runs = 0

    def failing(_: object) -> None:
        nonlocal runs
        runs += 1
        raise RuntimeError("boom")

    with caplog.at_level(logging.ERROR, logger="pgregistry.maintenance"):
        try:
            maint.add(Task(target, failing, 0.01, "failing task"), delay=0)
            assert _wait_for(lambda: runs >= 3)
        finally:
            maint.stop()
    assert any("failing task failed" in r.getMessage() for r in caplog.records)


def test_dropped_target_ends_its_task() -> None:
    maint = Maintenance("test-maint", stop_when_idle=True)
    target: _Target | None = _Target()
    runs = 0

    def count(_: object) -> None:
        nonlocal runs
        runs += 1

    maint.add(Task(target, count, 0.01, "count"), delay=0)
    assert _wait_for(lambda: runs >= 1)
    target = None
    gc.collect()
    # The task ends, and with it (stop_when_idle) the scheduler.
    assert _wait_for(lambda: not maint.running)
    maint.stop()


def test_stop_joins_scheduler_and_workers() -> None:
    maint = Maintenance("test-maint")
    target = _Target()
    ran = threading.Event()
    maint.add(Task(target, lambda _: ran.set(), 0.01, "t"), delay=0)
    assert ran.wait(5)
    threads = [t for t in threading.enumerate() if t.name.startswith("test-maint")]
    assert threads
    maint.stop()
    assert not any(t.is_alive() for t in threads)
    assert not maint.running and maint.workers == 0


def test_threads_are_daemons() -> None:
    maint = Maintenance("test-maint-daemon")
    target = _Target()
    ran = threading.Event()
    try:
        maint.add(Task(target, lambda _: ran.set(), 0.01, "t"), delay=0)
        assert ran.wait(5)
        threads = [t for t in threading.enumerate() if t.name.startswith("test-maint-daemon")]
        assert len(threads) >= 2 and all(t.daemon for t in threads)
    finally:
        maint.stop()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_fork_child_starts_clean_and_restarts_on_use() -> None:
    maint = Maintenance("test-maint-fork")
    target = _Target()
    release = threading.Event()
    blocking = threading.Event()
    child_runs = 0

    def blocker(_: object) -> None:
        # Running in a worker (holding no lock of ours) while the parent forks.
        if os.getpid() == parent:
            blocking.set()
            release.wait(5)

    def count(_: object) -> None:
        nonlocal child_runs
        child_runs += 1

    parent = os.getpid()
    try:
        maint.add(Task(target, blocker, 0.01, "blocker"), delay=0)
        assert blocking.wait(5)
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child reports through its exit status
            status = 1
            try:
                names = [t.name for t in threading.enumerate()]
                if not any(n.startswith("test-maint-fork") for n in names) and not maint.running:
                    maint.add(Task(target, count, 0.01, "count"), delay=0)
                    status = 0 if _wait_for(lambda: child_runs >= 3, 5) else 3
                else:
                    status = 2
                maint.stop(timeout=1)
            finally:
                os._exit(status)
        deadline = time.monotonic() + 20
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() > deadline:
                os.kill(pid, 9)
                os.waitpid(pid, 0)
                pytest.fail("the forked child hung")
            time.sleep(0.01)
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        release.set()
        maint.stop()
