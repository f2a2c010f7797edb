"""Server budgets against the shared server: the cap holds on the server itself under
contention, idle connections of other pools are stolen (least recently used first), a full
budget waits and then times out naming the server, and units come back on close.

Every pool of a test carries an application_name starting with the test's own, so the backends
counted in ``pg_stat_activity`` are the test's and nobody else's.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import pg
import pytest

from pgregistry import PoolTimeoutError, Registry

Monitor = Any  # tests/server/conftest.py: Monitor

COUNT_LIKE = (
    "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'"
    " AND left(application_name, length($1)) = $1"
)


def count_like(db: pg.DB, prefix: str) -> int:
    """Client backends whose application_name starts with ``prefix``."""
    return int(db.query(COUNT_LIKE, (prefix,)).getresult()[0][0])


def target(kwargs: dict[str, Any]) -> dict[str, Any]:
    return {k: kwargs[k] for k in ("host", "port", "user", "dbname")}


def server(kwargs: dict[str, Any], budget: int) -> dict[str, Any]:
    return {"main": {"host": kwargs["host"], "port": kwargs["port"], "max_connections": budget}}


def pools(kwargs: dict[str, Any], app_name: str, *names: str, **extra: Any) -> dict[str, Any]:
    """Plain pools on the budget ``main``, each with application_name ``<app_name>_<name>``."""
    return {
        name: {
            **target(kwargs),
            "application_name": f"{app_name}_{name}",
            "server": "main",
            **extra,
        }
        for name in names
    }


class PeakWatcher:
    """A thread of its own that counts the test's backends every few milliseconds."""

    def __init__(self, kwargs: dict[str, Any], prefix: str, limit: float = 30.0) -> None:
        self.db = pg.DB(**kwargs)
        self.prefix = prefix
        self.peak = 0
        self.samples = 0
        self._stop = threading.Event()
        self._limit = limit  # never poll longer than this, whatever happens
        self._thread = threading.Thread(target=self._run, name="peak-watcher", daemon=True)

    def _run(self) -> None:
        deadline = time.monotonic() + self._limit
        while not self._stop.is_set() and time.monotonic() < deadline:
            self.peak = max(self.peak, count_like(self.db, self.prefix))
            self.samples += 1
            self._stop.wait(0.003)

    def __enter__(self) -> PeakWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(10)
        self.db.close()


def test_the_budget_holds_on_the_server_under_contention(
    shared_kwargs: dict[str, Any],
    app_name: str,
    make_registry: Callable[..., Registry],
    record_property: Callable[[str, object], None],
) -> None:
    # 32 threads over 6 tenant pools of up to 3 connections each (18 > 8): the budget is the
    # limit that bites.
    budget, tenants, threads_count = 8, 6, 32
    template = {
        **target(shared_kwargs),
        "application_name": app_name + "_{tenant}",
        "server": "main",
        "maxconnections": 3,
        "blocking": True,
        "timeout": 30,
        "max_pools": tenants,
        "idle_pool_timeout": "none",
    }
    reg = make_registry({"servers": server(shared_kwargs, budget), "tenants": {"t": template}})
    ops = [0] * threads_count
    errors: list[BaseException] = []
    start = threading.Barrier(threads_count + 1, timeout=10)
    run_for, max_ops = 2.0, 400  # bounded in time and count

    def work(number: int) -> None:
        try:
            start.wait()
            deadline = time.monotonic() + run_for
            while time.monotonic() < deadline and ops[number] < max_ops:
                key = f"k{(number + ops[number]) % tenants}"
                with reg.connection("t", tenant=key) as db:
                    db.query("SELECT 1")
                ops[number] += 1
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(threads_count)]
    with PeakWatcher(shared_kwargs, app_name) as watcher:
        for thread in threads:
            thread.start()
        start.wait()
        for thread in threads:
            thread.join(60)
        peak, samples = watcher.peak, watcher.samples
    record_property("server_peak", peak)
    stats = reg.stats()
    print(f"peak {peak} on the server ({samples} samples), ops per thread {min(ops)}..{max(ops)}")
    print(f"budget: {stats['servers']['main']}")
    assert not any(thread.is_alive() for thread in threads)
    assert not errors, errors[:3]
    assert min(ops) > 0, ops  # every thread made progress
    assert samples > 10
    assert 0 < peak <= budget
    main = stats["servers"]["main"]
    assert isinstance(main["peak"], int) and isinstance(main["used"], int)
    assert main["peak"] <= budget and main["used"] <= budget
    assert len(stats["tenants"]["t"]) == tenants


def test_idle_connections_of_another_pool_are_closed_to_make_room(
    shared_kwargs: dict[str, Any],
    app_name: str,
    make_registry: Callable[..., Registry],
    monitor: Monitor,
) -> None:
    reg = make_registry(
        {"servers": server(shared_kwargs, 4), "pools": pools(shared_kwargs, app_name, "a", "b")}
    )
    held = [reg.connection("a") for _ in range(3)]
    for db in held:
        db.close()
    assert reg.stats()["pools"]["a"]["idle"] == 3
    held = [reg.connection("b") for _ in range(2)]
    try:
        stats = reg.stats()
        assert stats["pools"]["a"]["stolen"] == 1 and stats["pools"]["a"]["open"] == 2
        assert stats["servers"]["main"]["steals"] == 1
        assert stats["servers"]["main"]["used"] == 4
        # No waiting here: the stolen backend had exited before its unit was handed on.
        assert monitor.count(f"{app_name}_a") == 2
        assert monitor.count(f"{app_name}_b") == 2
    finally:
        for db in held:
            db.close()


def test_the_longest_idle_connection_on_the_server_goes_first(
    shared_kwargs: dict[str, Any], app_name: str, make_registry: Callable[..., Registry]
) -> None:
    reg = make_registry(
        {
            "servers": server(shared_kwargs, 4),
            "pools": pools(shared_kwargs, app_name, "old", "new", "needy"),
        }
    )
    for name in ("old", "new"):  # old's connections go idle first
        held = [reg.connection(name) for _ in range(2)]
        for db in held:
            db.close()
    with reg.connection("needy"):
        stats = reg.stats()["pools"]
        assert (stats["old"]["stolen"], stats["new"]["stolen"]) == (1, 0)
        assert (stats["old"]["open"], stats["new"]["open"]) == (1, 2)


def test_a_full_budget_times_out_naming_the_server(
    shared_kwargs: dict[str, Any],
    app_name: str,
    make_registry: Callable[..., Registry],
) -> None:
    reg = make_registry(
        {
            "servers": server(shared_kwargs, 2),
            "pools": pools(shared_kwargs, app_name, "a", "b", blocking=True, timeout=0.3),
        }
    )
    held = [reg.connection("a") for _ in range(2)]
    try:
        started = time.monotonic()
        with pytest.raises(PoolTimeoutError) as exc:
            reg.connection("b")
        waited = time.monotonic() - started
        message = str(exc.value)
        assert "pool 'b'" in message and "server budget 'main'" in message
        assert "2/2" in message and "servers.main.maxconnections" in message
        assert 0.3 <= waited < 10  # it waited its timeout, and not forever
        budget = reg.stats()["servers"]["main"]
        assert (budget["timeouts"], budget["waits"], budget["used"]) == (1, 1, 2)
        assert reg.stats()["pools"]["b"]["open"] == 0
    finally:
        for db in held:
            db.close()


@contextmanager
def two_held_first_back_soon(reg: Registry, name: str) -> Iterator[None]:
    """Hold two connections of pool ``name``: the first goes back 0.2 s in, from another
    thread (while the block waits for room), the second when the block ends."""
    held = [reg.connection(name) for _ in range(2)]
    timer = threading.Timer(0.2, held[0].close)
    timer.start()
    try:
        yield
    finally:
        timer.join(5)
        held[1].close()


def test_a_waiting_checkout_takes_a_connection_that_goes_idle(
    shared_kwargs: dict[str, Any],
    app_name: str,
    make_registry: Callable[..., Registry],
    monitor: Monitor,
) -> None:
    reg = make_registry(
        {
            "servers": server(shared_kwargs, 2),
            "pools": pools(shared_kwargs, app_name, "a", "b", blocking=True, timeout=10),
        }
    )
    with two_held_first_back_soon(reg, "a"), reg.connection("b") as db:
        assert db.query("SELECT 1").getresult() == [(1,)]
        assert reg.stats()["pools"]["a"]["stolen"] == 1
        assert count_like(monitor.db, app_name) == 2


def test_a_checkout_waiting_on_the_budget_takes_room_its_own_pool_frees(
    shared_kwargs: dict[str, Any], app_name: str, make_registry: Callable[..., Registry]
) -> None:
    # No maxconnections: the budget is the only limit, so the third checkout waits on the
    # budget, not in the pool; the connection returned meanwhile goes idle in its own pool.
    reg = make_registry(
        {
            "servers": server(shared_kwargs, 2),
            "pools": pools(shared_kwargs, app_name, "a", blocking=True, timeout=5),
        }
    )
    with two_held_first_back_soon(reg, "a"):
        with reg.connection("a") as db:
            assert db.query("SELECT 1").getresult() == [(1,)]
        assert reg.stats()["servers"]["main"]["timeouts"] == 0


def test_pools_are_matched_to_the_budget_by_host_and_port(
    shared_kwargs: dict[str, Any], app_name: str, make_registry: Callable[..., Registry]
) -> None:
    matched = pools(shared_kwargs, app_name, "a", "b")
    for table in matched.values():
        del table["server"]
    reg = make_registry({"servers": server(shared_kwargs, 3), "pools": matched})
    with reg.connection("a"), reg.connection("b"):
        budget = reg.stats()["servers"]["main"]
        assert (budget["used"], budget["pools"]) == (2, 2)


def test_closing_gives_every_unit_back(
    shared_kwargs: dict[str, Any],
    app_name: str,
    make_registry: Callable[..., Registry],
    monitor: Monitor,
) -> None:
    template = {
        **target(shared_kwargs),
        "application_name": app_name + "_{tenant}",
        "server": "main",
        "max_pools": 2,
        "idle_pool_timeout": "none",
    }
    reg = make_registry(
        {
            "servers": server(shared_kwargs, 5),
            "pools": pools(shared_kwargs, app_name, "a", mincached=1),
            "tenants": {"t": template},
        }
    )
    reg.get("a")
    for key in ("x", "y", "z"):  # z evicts x: its unit comes back
        with reg.connection("t", tenant=key) as db:
            db.query("SELECT 1")
    assert reg.stats()["servers"]["main"]["used"] == 3
    reg.close()
    assert reg.stats()["servers"]["main"]["used"] == 0
    assert count_like(monitor.db, app_name) == 0


@pytest.mark.parametrize("reopen_by", ["reset_reconnect", "maxusage", "db_reopen"])
def test_reopening_a_connection_never_exceeds_the_budget_on_the_server(
    shared_kwargs: dict[str, Any],
    app_name: str,
    make_registry: Callable[..., Registry],
    reopen_by: str,
) -> None:
    # Every path that replaces a backend (reset="reconnect", maxusage, db.reopen()) must let the
    # old backend go before the new one is opened: by pg_stat_activity, never more than 6.
    budget, threads_count = 6, 24
    extra: dict[str, Any] = {"maxconnections": 3, "blocking": True, "timeout": 30}
    if reopen_by == "reset_reconnect":
        extra["reset"] = "reconnect"
    elif reopen_by == "maxusage":
        extra["maxusage"] = 2
    names = ("a", "b", "c")
    reg = make_registry(
        {
            "servers": server(shared_kwargs, budget),
            "pools": pools(shared_kwargs, app_name, *names, **extra),
        }
    )
    ops = [0] * threads_count
    errors: list[BaseException] = []
    start = threading.Barrier(threads_count + 1, timeout=10)
    run_for, max_ops = 1.5, 60  # bounded in time and count

    def work(number: int) -> None:
        try:
            start.wait()
            deadline = time.monotonic() + run_for
            while time.monotonic() < deadline and ops[number] < max_ops:
                with reg.connection(names[number % 3]) as db:
                    db.query("SELECT 1")
                    if reopen_by == "db_reopen":
                        db.reopen()
                        db.query("SELECT 2")
                ops[number] += 1
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(n,)) for n in range(threads_count)]
    with PeakWatcher(shared_kwargs, app_name) as watcher:
        for thread in threads:
            thread.start()
        start.wait()
        for thread in threads:
            thread.join(60)
        peak, samples = watcher.peak, watcher.samples
    print(f"{reopen_by}: peak {peak} on the server ({samples} samples), ops {sum(ops)}")
    assert not any(thread.is_alive() for thread in threads)
    assert not errors, errors[:3]
    assert min(ops) > 0 and samples > 10
    assert 0 < peak <= budget
