"""Pool health against the shared server: lifetime, idle limit, pings, refill, stats, logging.

Timings are fractions of a second; waits poll a condition with a bound, nothing asserts speed.
"""

from __future__ import annotations

import itertools
import logging
import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

import pg
import pytest

from pgregistry import PooledPg, PoolTimeoutError, TooManyConnectionsError
from pgregistry.testing import BackendKiller

MakePool = Callable[..., PooledPg]
Monitor = Any  # tests/server/conftest.py: Monitor
WaitUntil = Callable[..., bool]
RunInChild = Callable[[Callable[[], dict[str, Any]]], dict[str, Any]]

SECRET = "s3cret-XYZ"
COUNTERS = (
    "checkouts",
    "waits",
    "wait_ms",
    "timeouts",
    "refused",
    "opened",
    "lost",
    "reopened",
    "expired",
    "idle_closed",
    "ping_failed",
    "resets",
    "reset_failures",
    "leaks",
)


def maintenance_threads(pool: PooledPg) -> list[threading.Thread]:
    name = f"pgregistry-maintenance-{pool.name}"
    return [t for t in threading.enumerate() if t.name == name and t.is_alive()]


def join_all(threads: list[threading.Thread], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(max(deadline - time.monotonic(), 0.0))
    assert not any(thread.is_alive() for thread in threads), "a thread did not finish in time"


# -- max_lifetime --------------------------------------------------------------------------------


def test_max_lifetime_replaces_idle_connections(
    make_pool: MakePool, monitor: Monitor, app_name: str, wait_until: WaitUntil
) -> None:
    pool = make_pool(2, max_lifetime=0.3, max_idle=None, ping="never")
    assert monitor.wait_count(app_name, 2) == 2
    first = monitor.pids(app_name)

    assert wait_until(lambda: not first & monitor.pids(app_name))
    assert wait_until(lambda: pool.stats()["expired"] >= 2)
    assert wait_until(lambda: pool.stats()["open"] == 2)  # refilled to mincached
    with pool.connection() as conn:
        assert conn.backend_pid not in first


def test_max_lifetime_never_closes_a_checked_out_connection_only_on_return(
    make_pool: MakePool, monitor: Monitor, wait_until: WaitUntil
) -> None:
    pool = make_pool(1, max_lifetime=0.2, max_idle=None, ping="never")
    conn = pool.connection()
    pid = conn.backend_pid
    time.sleep(0.6)  # three lifetimes, several maintenance rounds

    assert conn.query("SELECT pg_backend_pid()").getresult() == [(pid,)]
    assert monitor.alive(pid)
    conn.close()

    assert pool.stats()["expired"] >= 1
    assert wait_until(lambda: not monitor.alive(pid))


def test_max_lifetime_has_jitter_so_connections_do_not_expire_together(
    make_pool: MakePool,
) -> None:
    """White box: the expiry times of connections opened together differ by more than the
    time it took to open them (the jitter is up to 10% of max_lifetime)."""
    started = time.monotonic()
    pool = make_pool(8, max_lifetime=100.0)
    took = time.monotonic() - started
    expires = [slot.expires_at for slot in pool._idle]

    assert len(expires) == 8
    assert all(started + 90.0 <= e <= started + took + 100.0 for e in expires)
    assert max(expires) - min(expires) > took


# -- max_idle and refill -------------------------------------------------------------------------


def test_max_idle_closes_idle_connections_down_to_mincached(
    make_pool: MakePool, monitor: Monitor, app_name: str, wait_until: WaitUntil
) -> None:
    pool = make_pool(1, max_idle=0.2, max_lifetime=None, ping="never")
    held = [pool.connection() for _ in range(3)]
    for conn in held:
        conn.close()
    assert pool.stats()["idle"] == 3

    assert wait_until(lambda: pool.stats()["open"] == 1)
    assert monitor.wait_count(app_name, 1) == 1
    stats = pool.stats()
    assert stats["idle_closed"] == 2 and stats["idle"] == 1


def test_maintenance_refills_to_mincached_after_idle_backends_are_terminated(
    make_pool: MakePool,
    monitor: Monitor,
    app_name: str,
    killer: BackendKiller,
    wait_until: WaitUntil,
) -> None:
    pool = make_pool(2, ping="idle", ping_after=0.1, max_lifetime=None, max_idle=None)
    assert monitor.wait_count(app_name, 2) == 2
    old = monitor.pids(app_name)
    for pid in old:
        assert killer(pid)

    assert wait_until(lambda: len(monitor.pids(app_name) - old) == 2)
    assert wait_until(lambda: pool.stats()["open"] == 2)
    assert pool.stats()["ping_failed"] >= 2
    with pool.connection() as conn:
        assert conn.query("SELECT 1").getresult() == [(1,)]
    assert pool.stats()["lost"] == 0


# -- ping ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("ping", ["idle", "always"])
def test_ping_replaces_a_dead_idle_connection_before_the_caller_sees_it(
    make_pool: MakePool, killer: BackendKiller, ping: str
) -> None:
    pool = make_pool(1, ping=ping, ping_after=0.1, max_lifetime=None, max_idle=None)
    with pool.connection() as conn:
        old_pid = conn.backend_pid
    assert killer(old_pid)
    time.sleep(0.15)  # idle longer than ping_after

    with pool.connection() as conn:
        assert conn.query("SELECT 1").getresult() == [(1,)]
        assert conn.backend_pid != old_pid
    stats = pool.stats()
    assert stats["ping_failed"] == 1
    assert stats["lost"] == 0  # the caller never ran a statement on the dead connection


def test_ping_never_leaves_a_dead_idle_connection_to_the_transparent_reopen(
    make_pool: MakePool, killer: BackendKiller
) -> None:
    pool = make_pool(1, ping="never", max_lifetime=None, max_idle=None)
    with pool.connection() as conn:
        old_pid = conn.backend_pid
    assert killer(old_pid)

    with pool.connection() as conn:
        assert conn.query("SELECT 1").getresult() == [(1,)]
    stats = pool.stats()
    assert (stats["ping_failed"], stats["lost"], stats["reopened"]) == (0, 1, 1)


# -- stats ---------------------------------------------------------------------------------------


def test_stats_invariants_hold_in_every_snapshot_under_16_threads(make_pool: MakePool) -> None:
    maxconnections = 6
    pool = make_pool(2, 4, maxconnections, True, timeout=15, max_idle=0.05, ping_after=0.02)
    done = threading.Event()
    errors: list[BaseException] = []
    snapshots: list[Any] = []
    ops = [0] * 16

    def work(index: int) -> None:
        try:
            for i in range(40):
                with pool.connection() as conn:
                    if i % 5 == 0:
                        conn.begin()
                        conn.query("SELECT 1")
                    else:
                        conn.query("SELECT 1")
                ops[index] += 1
                if i % 7 == 0:
                    time.sleep(0.01)  # let idle connections age past max_idle
        except BaseException as exc:
            errors.append(exc)

    def sample() -> None:
        for _ in range(100_000):
            if done.is_set():
                break
            snapshots.append(pool.stats())
            time.sleep(0.001)

    sampler = threading.Thread(target=sample)
    sampler.start()
    workers = [threading.Thread(target=work, args=(i,)) for i in range(16)]
    for worker in workers:
        worker.start()
    join_all(workers, 30.0)
    done.set()
    join_all([sampler])

    assert errors == []
    snapshots.append(pool.stats())
    assert len(snapshots) > 10
    for snap in snapshots:
        assert snap["open"] == snap["idle"] + snap["in_use"], snap
        assert snap["idle"] >= 0 and snap["in_use"] >= 0 and snap["waiting"] >= 0, snap
        assert snap["open"] <= maxconnections and snap["in_use"] <= maxconnections, snap
    for before, after in itertools.pairwise(snapshots):
        for key in COUNTERS:
            assert after[key] >= before[key], (key, before, after)
    final = snapshots[-1]
    assert final["in_use"] == 0 and final["waiting"] == 0
    assert final["checkouts"] == sum(ops) == 16 * 40


def test_open_equals_the_backends_in_pg_stat_activity(
    make_pool: MakePool, monitor: Monitor, app_name: str
) -> None:
    pool = make_pool(2, 5, 5, max_idle=None, max_lifetime=None)

    def matches(expected: int) -> None:
        assert monitor.wait_count(app_name, expected) == expected
        assert pool.stats()["open"] == expected

    matches(2)
    held = [pool.connection() for _ in range(4)]
    matches(4)
    for conn in held:
        conn.close()
    matches(4)
    held = [pool.connection() for _ in range(5)]
    matches(5)
    for conn in held:
        conn.close()
    pool.close()
    matches(0)


# -- leak detection ------------------------------------------------------------------------------


def test_leak_warning_is_logged_once_with_the_checkout_site(
    make_pool: MakePool, caplog: pytest.LogCaptureFixture, wait_until: WaitUntil
) -> None:
    caplog.set_level(logging.WARNING, logger="pgregistry")
    pool = make_pool(0, leak_threshold=0.1)
    conn = pool.connection()

    def leak_records() -> list[logging.LogRecord]:
        return [r for r in caplog.records if "leak_threshold" in r.getMessage()]

    assert wait_until(lambda: len(leak_records()) >= 1)
    time.sleep(0.3)  # more maintenance rounds: no second warning for the same checkout
    records = leak_records()
    assert len(records) == 1
    record = records[0]
    assert record.name == f"pgregistry.pool.{pool.name}"
    assert record.levelno == logging.WARNING
    text = record.getMessage()
    assert "test_leak_warning_is_logged_once_with_the_checkout_site" in text
    assert "test_pool_health.py" in text
    assert pool.stats()["leaks"] == 1
    conn.close()


# -- logging -------------------------------------------------------------------------------------


def test_connection_lost_and_reopened_are_logged_as_warnings_under_the_pool_logger(
    make_pool: MakePool, killer: BackendKiller, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="pgregistry")
    pool = make_pool(1, ping="never")
    with pool.connection() as conn:
        assert killer(conn.backend_pid)
        conn.query("SELECT 1")

    records = [
        r for r in caplog.records if r.levelno == logging.WARNING and "lost" in r.getMessage()
    ]
    assert len(records) == 1
    assert records[0].name == f"pgregistry.pool.{pool.name}"
    assert "reopened" in records[0].getMessage()


def test_reaching_maxconnections_is_one_warning_per_minute_with_a_count(
    make_pool: MakePool, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="pgregistry")
    pool = make_pool(0, 1, 1)  # not blocking: each extra checkout is refused
    with pool.connection():
        for _ in range(3):
            with pytest.raises(TooManyConnectionsError):
                pool.connection()

    said = [
        r.getMessage() for r in caplog.records if "maxconnections (1) reached" in r.getMessage()
    ]
    assert said == [said[0]] and "1 time(s)" in said[0], said
    assert pool.stats()["refused"] == 3


def test_checkout_and_return_are_logged_at_debug_when_enabled(
    make_pool: MakePool, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="pgregistry")
    pool = make_pool(0, ping="never")  # DEBUG is on before the pool asks the logger
    with pool.connection():
        pass
    with pool.connection():
        pass

    debug = [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.DEBUG and r.name == f"pgregistry.pool.{pool.name}"
    ]
    assert sum("checkout" in m for m in debug) >= 1, debug  # the idle (fast path) checkout
    assert sum("return" in m for m in debug) == 2, debug


def test_pool_built_and_closed_are_logged_as_info(
    make_pool: MakePool, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="pgregistry")
    pool = make_pool(1)
    pool.close()

    infos = [
        r.getMessage()
        for r in caplog.records
        if r.levelno == logging.INFO and r.name == f"pgregistry.pool.{pool.name}"
    ]
    assert any("built" in m for m in infos), infos
    assert any("closed" in m for m in infos), infos


def test_no_password_in_any_log_record_repr_or_error(
    make_pool: MakePool, killer: BackendKiller, caplog: pytest.LogCaptureFixture
) -> None:
    # The shared server trusts every login: the password is passed and ignored.
    caplog.set_level(logging.DEBUG, logger="pgregistry")
    pool = make_pool(1, 1, 1, True, passwd=SECRET, timeout=0.1, leak_threshold=0.05)
    conn = pool.connection()
    assert killer(conn.backend_pid)
    conn.query("SELECT 1")
    with pytest.raises(PoolTimeoutError) as caught:
        pool.connection()
    time.sleep(0.2)  # a leak warning
    conn.query("BEGIN")
    conn.close()
    with pool.connection() as other:
        other.query("SELECT 1")
    texts = [repr(pool), str(pool.stats()), str(caught.value)]
    texts += ["".join(traceback.format_exception(caught.value))]
    pool.close()

    assert caplog.records
    for record in caplog.records:
        texts.append(record.getMessage())
        if record.exc_info:
            texts.append("".join(traceback.format_exception(*record.exc_info)))
    assert not [t for t in texts if SECRET in t]


# -- the maintenance thread ----------------------------------------------------------------------


def test_no_maintenance_thread_when_nothing_needs_upkeep(make_pool: MakePool) -> None:
    pool = make_pool(0, max_lifetime=None, max_idle=None, ping="never")
    with pool.connection() as conn:
        conn.query("SELECT 1")
    assert maintenance_threads(pool) == []


def test_maintenance_thread_runs_when_needed_and_is_gone_after_close(
    make_pool: MakePool, wait_until: WaitUntil
) -> None:
    pool = make_pool(1)
    assert len(maintenance_threads(pool)) == 1
    pool.close()
    assert wait_until(lambda: not maintenance_threads(pool))


def test_forked_child_has_no_maintenance_thread_until_it_uses_the_pool(
    make_pool: MakePool, run_in_child: RunInChild
) -> None:
    pool = make_pool(1, max_idle=0.5)
    assert len(maintenance_threads(pool)) == 1

    def child() -> dict[str, Any]:
        before = len(maintenance_threads(pool))
        with pool.connection() as conn:
            conn.query("SELECT 1")
        deadline = time.monotonic() + 5.0
        while not maintenance_threads(pool) and time.monotonic() < deadline:
            time.sleep(0.01)
        after = len(maintenance_threads(pool))
        pool.close()
        return {"before": before, "after": after}

    result = run_in_child(child)

    assert result == {"before": 0, "after": 1}
    assert len(maintenance_threads(pool)) == 1  # the parent's thread is untouched


def test_waiting_at_maxconnections_on_a_blocking_pool_is_info_not_warning(
    make_pool: MakePool, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="pgregistry")
    pool = make_pool(0, 1, 1, True, timeout=5)
    held = pool.connection()
    waiter = threading.Thread(target=lambda: pool.connection().close())
    waiter.start()
    deadline = time.monotonic() + 5
    while pool.stats()["waiting"] == 0 and time.monotonic() < deadline:
        time.sleep(0.005)
    held.close()
    waiter.join(10)
    said = [r for r in caplog.records if "maxconnections (1) reached" in r.getMessage()]
    assert len(said) == 1 and said[0].levelno == logging.INFO
    assert "wait (blocking)" in said[0].getMessage()


def test_refill_failures_are_said_once_per_interval_with_a_count(
    make_pool: MakePool, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    pool = make_pool(1, 1, 2)
    with pool.connection() as db:
        db.steady.close()  # the server connection is closed: it is dropped on return
    assert pool.stats()["open"] == 0

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise pg.InternalError("connection to server failed: Connection refused")

    monkeypatch.setattr(pg, "DB", refuse)  # the server is down for every refill attempt
    for _ in range(5):
        pool.maintain()
    said = [r for r in caplog.records if "could not refill to mincached" in r.getMessage()]
    assert len(said) == 1 and "1 time(s)" in said[0].getMessage()
