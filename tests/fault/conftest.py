"""Fixtures and helpers for the fault tests: outages, restarts and killed backends.

Every test here runs against the session's throwaway cluster (``cluster`` from
``tests/conftest.py``), never against the shared server. A test that stops the cluster uses
``healthy_cluster``, which starts it again afterwards, so the next test finds it running.
Every loop is bounded in iterations and in time.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest

from pgregistry import PooledPg
from pgregistry.testing import (
    FaultProxy,
    TemporaryCluster,
    TemporaryPgBouncer,
    TemporaryStandby,
    find_pgbouncer,
)
from pgregistry.testing import primary_and_standby as testing_primary_and_standby
from pgregistry.testing.pgbouncer import PoolMode


@pytest.fixture
def healthy_cluster(cluster: TemporaryCluster) -> Iterator[TemporaryCluster]:
    """The running cluster; started again after the test if the test left it down."""
    try:
        yield cluster
    finally:
        if not cluster.is_running():
            cluster.start()
        cluster.wait_ready(30.0)


@pytest.fixture
def make_pool(healthy_cluster: TemporaryCluster) -> Iterator[Callable[..., PooledPg]]:
    """``make_pool(*args, **options)``: a PooledPg on the cluster, closed after the test."""
    pools: list[PooledPg] = []

    def make(*args: Any, **options: Any) -> PooledPg:
        target = healthy_cluster.connect_kwargs()
        target.update(options)
        pool = PooledPg(*args, **target)
        pools.append(pool)
        return pool

    try:
        yield make
    finally:
        for pool in pools:
            pool.close()


@dataclass
class Outcome:
    """What one worker thread saw: successes, and every error with when its call started."""

    ok: int = 0
    ok_times: list[float] = field(default_factory=list)
    errors: list[tuple[float, BaseException]] = field(default_factory=list)


class Workers:
    """``count`` threads calling ``work(index)`` in a loop until stopped (bounded).

    Each call's start time (monotonic) is recorded with its outcome, so a test can tell errors
    raised while the server was down from errors raised after it came back. ``closing``: what
    the threads use (connections held across the fault), closed once they have stopped, on
    leaving the ``with`` block.
    """

    def __init__(
        self,
        count: int,
        work: Callable[[int], object],
        *,
        max_calls: int = 100_000,
        max_seconds: float = 30.0,
        pause: float = 0.002,
        closing: Sequence[Any] = (),
    ) -> None:
        self.outcomes = [Outcome() for _ in range(count)]
        self._closing = closing
        self._work = work
        self._max_calls = max_calls
        self._max_seconds = max_seconds
        self._pause = pause
        self._stop = threading.Event()
        self._threads = [
            threading.Thread(target=self._loop, args=(i,), name=f"fault-worker-{i}", daemon=True)
            for i in range(count)
        ]

    def _loop(self, index: int) -> None:
        outcome = self.outcomes[index]
        deadline = time.monotonic() + self._max_seconds
        for _ in range(self._max_calls):
            if self._stop.is_set() or time.monotonic() > deadline:
                return
            started = time.monotonic()
            try:
                self._work(index)
            except BaseException as exc:  # recorded: the test asserts on every one
                outcome.errors.append((started, exc))
            else:
                outcome.ok += 1
                outcome.ok_times.append(started)
            time.sleep(self._pause)

    def __enter__(self) -> Workers:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        try:
            self.stop()
        finally:
            for conn in self._closing:
                conn.close()

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(timeout=max(self._max_seconds, 5.0))
        alive = [t.name for t in self._threads if t.is_alive()]
        assert not alive, f"worker threads still running: {alive}"

    def wait_for_progress(self, since: float, timeout: float = 10.0) -> None:
        """Wait until every thread completed a call that started after ``since``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if all(any(t > since for t in o.ok_times[-5:]) for o in self.outcomes):
                return
            time.sleep(0.01)
        stuck = [i for i, o in enumerate(self.outcomes) if not any(t > since for t in o.ok_times)]
        errors = [repr(e) for o in self.outcomes for _, e in o.errors[-2:]]
        raise AssertionError(f"threads {stuck} made no progress in {timeout} s; errors: {errors}")

    def errors(self, after: float = float("-inf")) -> list[BaseException]:
        """Errors of calls started after ``after`` (monotonic seconds)."""
        return [exc for o in self.outcomes for started, exc in o.errors if started > after]

    @property
    def total_ok(self) -> int:
        return sum(o.ok for o in self.outcomes)


@pytest.fixture
def workers() -> Iterator[Callable[..., Workers]]:
    """``workers(count, work)``: a :class:`Workers` that is surely stopped after the test."""
    made: list[Workers] = []

    def make(count: int, work: Callable[[int], object], **options: Any) -> Workers:
        group = Workers(count, work, **options)
        made.append(group)
        return group

    try:
        yield make
    finally:
        for group in made:
            group._stop.set()
        for group in made:
            for thread in group._threads:
                if thread.ident is not None:
                    thread.join(timeout=10.0)


@pytest.fixture
def start_later(healthy_cluster: TemporaryCluster) -> Iterator[Callable[[float], None]]:
    """``start_later(delay)``: start the stopped cluster after ``delay`` s, from another thread.

    The starter thread is joined (bounded) after the test.
    """
    threads: list[threading.Thread] = []

    def schedule(delay: float) -> None:
        def run() -> None:
            time.sleep(delay)
            healthy_cluster.start()

        thread = threading.Thread(target=run, name="cluster-starter", daemon=True)
        thread.start()
        threads.append(thread)

    try:
        yield schedule
    finally:
        for thread in threads:
            thread.join(timeout=60.0)


# -- fault proxy, standby, PgBouncer (pgregistry.testing) ----------------------------------


@pytest.fixture
def fault_proxy(healthy_cluster: TemporaryCluster) -> Iterator[FaultProxy]:
    """A :class:`FaultProxy` in front of the running cluster, closed after the test.

    Connect with ``pg.DB(**fault_proxy.connect_kwargs(healthy_cluster.connect_kwargs()))``.
    """
    with FaultProxy(healthy_cluster.host, healthy_cluster.port) as proxy:
        yield proxy


@pytest.fixture
def primary_and_standby() -> Iterator[tuple[TemporaryCluster, TemporaryStandby]]:
    """A fresh primary and its streaming standby (about 1 s), removed after the test."""
    with testing_primary_and_standby() as pair:
        yield pair


@pytest.fixture
def pgbouncer(
    healthy_cluster: TemporaryCluster,
) -> Iterator[Callable[..., TemporaryPgBouncer]]:
    """``pgbouncer(pool_mode="transaction", **options)``: a PgBouncer in front of the cluster.

    Skips the test when no pgbouncer binary is installed (Debian: apt-get install pgbouncer;
    ``bash .ci/run`` installs it). Every PgBouncer started is stopped after the test.
    """
    if find_pgbouncer() is None:
        pytest.skip(
            "pgbouncer not installed (apt-get install pgbouncer, or set PGREGISTRY_PGBOUNCER)"
        )
    started: list[TemporaryPgBouncer] = []

    def make(pool_mode: PoolMode = "transaction", **options: Any) -> TemporaryPgBouncer:
        bouncer = TemporaryPgBouncer(
            healthy_cluster.host,
            healthy_cluster.port,
            pool_mode=pool_mode,
            **options,
        )
        started.append(bouncer)
        bouncer.start()
        return bouncer

    try:
        yield make
    finally:
        for bouncer in started:
            bouncer.stop()
