"""PooledPg against the shared server: checkout, reset, limits, close, the classic API, fork."""

from __future__ import annotations

import contextlib
import datetime
import logging
import re
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any

import pg
import pytest

from pgregistry import (
    ConnectionLostError,
    InvalidConnectionError,
    PoolClosedError,
    PooledPg,
    PoolStats,
    PoolTimeoutError,
    SteadyPgConnection,
    TooManyConnectionsError,
)
from pgregistry.budget import ServerBudget
from pgregistry.testing import BackendKiller

MakePool = Callable[..., PooledPg]
Alarm = Callable[[float, Callable[[int, Any], None]], contextlib.AbstractContextManager[None]]
Monitor = Any  # tests/server/conftest.py: Monitor
WaitUntil = Callable[..., bool]
RunInChild = Callable[[Callable[[], dict[str, Any]]], dict[str, Any]]
MARK = "SET pgrt.marker TO 'replayed'"
RESET_POLICIES = [0, "rollback_if_needed", 1, "rollback", 2, "reconnect", "discard"]


def backend(conn: Any) -> int:
    pid: int = conn.query("SELECT pg_backend_pid()").getresult()[0][0]
    return pid


def setting(conn: Any, name: str) -> str | None:
    value: str | None = conn.query("SELECT current_setting($1, true)", (name,)).getresult()[0][0]
    return value


def count_rows(monitor: Monitor, table: str) -> int:
    n: int = monitor.db.query(f"SELECT count(*) FROM {table}").getresult()[0][0]
    return n


def join_all(threads: list[threading.Thread], timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(max(deadline - time.monotonic(), 0.0))
    assert not any(thread.is_alive() for thread in threads), "a thread did not finish in time"


# -- opening and reuse ---------------------------------------------------------------------------


def test_mincached_connections_are_opened_at_construction_and_reused(
    make_pool: MakePool, monitor: Monitor, app_name: str
) -> None:
    pool = make_pool(2)
    assert monitor.wait_count(app_name, 2) == 2
    initial = monitor.pids(app_name)
    assert pool.stats()["open"] == 2

    first = pool.connection()
    second = pool.connection()
    assert {first.backend_pid, second.backend_pid} == initial
    pid = first.backend_pid
    first.close()
    again = pool.connection()

    assert again.backend_pid == pid
    assert monitor.pids(app_name) == initial
    assert pool.stats()["opened"] == 2
    again.close()
    second.close()


def test_positional_arguments_keep_the_original_order(
    dsn: str, monitor: Monitor, app_name: str
) -> None:
    # mincached, maxcached, maxconnections, blocking, maxusage, setsession, reset, *pg.DB args
    with PooledPg(1, 2, 3, False, 10, [MARK], 1, dsn, name=app_name) as pool:
        stats = pool.stats()
        assert (stats["mincached"], stats["maxcached"], stats["maxconnections"]) == (1, 2, 3)
        conns = [pool.connection() for _ in range(3)]
        with pytest.raises(TooManyConnectionsError):
            pool.connection()
        assert setting(conns[0], "pgrt.marker") == "replayed"
        for conn in conns:
            conn.close()
    assert monitor.wait_count(app_name, 0) == 0


def test_maxcached_below_mincached_and_maxconnections_below_maxcached_are_raised(
    make_pool: MakePool,
) -> None:
    pool = make_pool(2, 1, 2)
    stats = pool.stats()
    assert (stats["mincached"], stats["maxcached"], stats["maxconnections"]) == (2, 2, 2)
    pool = make_pool(0, 3, 2)
    stats = pool.stats()
    assert (stats["maxcached"], stats["maxconnections"]) == (3, 3)


def test_stats_keys_are_the_documented_ones(make_pool: MakePool) -> None:
    stats = make_pool().stats()
    assert set(stats) == set(PoolStats.__annotations__)


# -- reset on return -----------------------------------------------------------------------------


@pytest.mark.parametrize("how", ["begin", "raw BEGIN"])
@pytest.mark.parametrize("reset", RESET_POLICIES)
def test_failed_transaction_never_reaches_the_next_borrower(
    make_pool: MakePool, reset: int | str, how: str
) -> None:
    pool = make_pool(1, 1, 1, reset=reset)
    conn = pool.connection()
    if how == "begin":
        conn.begin()
    else:
        conn.query("BEGIN")
    with pytest.raises(pg.ProgrammingError):
        conn.query("SELECT * FROM pgrt_no_such_table")
    conn.close()

    nxt = pool.connection()
    assert nxt.transaction() == pg.TRANS_IDLE
    assert not nxt.in_transaction
    assert nxt.query("SELECT 1").getresult() == [(1,)]
    nxt.close()


@pytest.mark.parametrize("reset", RESET_POLICIES)
def test_raw_begin_is_rolled_back_on_return(
    make_pool: MakePool, monitor: Monitor, table: str, reset: int | str
) -> None:
    pool = make_pool(1, 1, 1, reset=reset)
    conn = pool.connection()
    conn.query("BEGIN")
    conn.query(f"INSERT INTO {table} (id) VALUES (1)")
    conn.close()

    assert count_rows(monitor, table) == 0
    with pool.connection() as nxt:
        assert nxt.transaction() == pg.TRANS_IDLE
        nxt.query(f"INSERT INTO {table} (id) VALUES (1)")  # no lock left behind
    assert count_rows(monitor, table) == 1


def test_reset_rollback_after_a_committed_transaction_keeps_the_connection(
    make_pool: MakePool, monitor: Monitor, table: str
) -> None:
    pool = make_pool(1, 1, 1, reset="rollback")
    with pool.connection() as conn:
        pid = conn.backend_pid
        conn.begin()
        conn.query(f"INSERT INTO {table} (id) VALUES (1)")
        conn.commit()
    with pool.connection() as conn:
        assert conn.backend_pid == pid
    assert count_rows(monitor, table) == 1
    assert pool.stats()["reset_failures"] == 0


def _leave_session_state(conn: Any) -> None:
    conn.query("SET search_path TO pgrt_nowhere, public")
    conn.query("SET pgrt.marker TO 'leaked'")
    conn.query("CREATE TEMP TABLE pgrt_tmp (x int)")
    conn.prepare("pgrt_stmt", "SELECT 42")


def _prepared(conn: Any, name: str) -> int:
    n: int = conn.query(
        "SELECT count(*) FROM pg_prepared_statements WHERE name = $1", (name,)
    ).getresult()[0][0]
    return n


def _temp_table_exists(conn: Any) -> bool:
    return bool(conn.query("SELECT to_regclass('pg_temp.pgrt_tmp') IS NOT NULL").getresult()[0][0])


def test_reset_discard_drops_session_settings_temp_tables_and_prepared_statements(
    make_pool: MakePool,
) -> None:
    pool = make_pool(1, 1, 1, setsession=[MARK], reset="discard")
    with pool.connection() as conn:
        pid = conn.backend_pid
        _leave_session_state(conn)
        assert conn.query_prepared("pgrt_stmt").getresult() == [(42,)]

    with pool.connection() as conn:
        assert conn.backend_pid == pid  # same session, cleaned: not a reconnect
        assert "pgrt_nowhere" not in setting(conn, "search_path")  # type: ignore[operator]
        assert setting(conn, "pgrt.marker") == "replayed"  # setsession replayed
        assert not _temp_table_exists(conn)
        assert _prepared(conn, "pgrt_stmt") == 0
        conn.prepare("pgrt_stmt", "SELECT 43")  # the name is free again
    assert pool.stats()["resets"] >= 1


def test_reset_rollback_if_needed_keeps_session_state_for_the_next_borrower(
    make_pool: MakePool,
) -> None:
    """The default reset only rolls back: use "discard" when borrowers change session state."""
    pool = make_pool(1, 1, 1, setsession=[MARK])
    with pool.connection() as conn:
        pid = conn.backend_pid
        _leave_session_state(conn)

    with pool.connection() as conn:
        assert conn.backend_pid == pid
        assert "pgrt_nowhere" in setting(conn, "search_path")  # type: ignore[operator]
        assert setting(conn, "pgrt.marker") == "leaked"
        assert _temp_table_exists(conn)
        assert _prepared(conn, "pgrt_stmt") == 1


def test_reset_reconnect_gives_every_borrower_a_new_backend(
    make_pool: MakePool, monitor: Monitor, app_name: str
) -> None:
    pool = make_pool(1, 1, 1, setsession=[MARK], reset="reconnect")
    pids = []
    for _ in range(3):
        with pool.connection() as conn:
            pids.append(conn.backend_pid)
            conn.query("SET pgrt.marker TO 'leaked'")
    with pool.connection() as conn:
        assert setting(conn, "pgrt.marker") == "replayed"
    assert len(set(pids)) == 3
    assert monitor.wait_count(app_name, 1) == 1


def test_maxusage_recycles_a_pooled_connection_after_that_many_uses(make_pool: MakePool) -> None:
    pool = make_pool(1, 1, 1, False, 3)
    pids = []
    for _ in range(6):
        with pool.connection() as conn:
            pids.append(backend(conn))
    assert len(set(pids[:3])) == 1
    assert len(set(pids[3:])) == 1
    assert pids[0] != pids[3]


# -- lost connections ----------------------------------------------------------------------------


def test_killed_backend_is_reopened_transparently_with_setsession_replayed(
    make_pool: MakePool, killer: BackendKiller, app_name: str
) -> None:
    pool = make_pool(1, 1, 1, setsession=[MARK, "SET datestyle TO 'German'"])
    with pool.connection() as conn:
        old_pid = conn.backend_pid
        assert killer(old_pid)
        assert backend(conn) != old_pid
        assert setting(conn, "pgrt.marker") == "replayed"
        assert setting(conn, "DateStyle").startswith("German")  # type: ignore[union-attr]
        assert setting(conn, "application_name") == app_name
    stats = pool.stats()
    assert stats["lost"] == 1
    assert stats["reopened"] == 1


def test_killed_idle_backend_is_reopened_transparently_at_next_use(
    make_pool: MakePool, killer: BackendKiller
) -> None:
    pool = make_pool(1, 1, 1, ping="never")
    with pool.connection() as conn:
        old_pid = conn.backend_pid
    assert killer(old_pid)
    with pool.connection() as conn:
        assert conn.query("SELECT 1").getresult() == [(1,)]
        assert conn.backend_pid != old_pid


@pytest.mark.parametrize("how", ["begin", "raw BEGIN"])
def test_killed_inside_a_transaction_raises_until_rollback(
    make_pool: MakePool, killer: BackendKiller, how: str
) -> None:
    pool = make_pool(1, 1, 1)
    conn = pool.connection()
    if how == "begin":
        conn.begin()
    else:
        conn.query("BEGIN")
    old_pid = conn.backend_pid
    assert killer(old_pid)

    with pytest.raises(pg.Error) as first:
        conn.query("SELECT 1")
    assert not isinstance(first.value, LookupError)
    with pytest.raises(ConnectionLostError) as again:
        conn.get_tables()
    assert isinstance(again.value, pg.OperationalError)

    conn.rollback()
    assert conn.query("SELECT 1").getresult() == [(1,)]
    assert conn.backend_pid != old_pid
    conn.close()


def test_connection_lost_in_a_transaction_and_returned_is_not_pooled(
    make_pool: MakePool, killer: BackendKiller
) -> None:
    pool = make_pool(1, 1, 1)
    conn = pool.connection()
    conn.begin()
    old_pid = conn.backend_pid
    assert killer(old_pid)
    with pytest.raises(pg.Error):
        conn.query("SELECT 1")
    conn.close()  # returned without rollback()

    with pool.connection() as nxt:
        assert not nxt.in_transaction
        assert nxt.query("SELECT 1").getresult() == [(1,)]
        assert nxt.backend_pid != old_pid


def test_retry_after_reopen_off_raises_connection_lost_without_running_twice(
    make_pool: MakePool, killer: BackendKiller, monitor: Monitor, table: str
) -> None:
    pool = make_pool(1, 1, 1, retry_after_reopen=False)
    with pool.connection() as conn:
        old_pid = conn.backend_pid
        assert killer(old_pid)
        with pytest.raises(ConnectionLostError):
            conn.query(f"INSERT INTO {table} (id) VALUES (1)")
        assert count_rows(monitor, table) == 0
        assert conn.backend_pid != old_pid
        conn.query(f"INSERT INTO {table} (id) VALUES (1)")
    assert count_rows(monitor, table) == 1


# -- limits and waiting --------------------------------------------------------------------------


def test_nonblocking_limit_raises_too_many_connections(make_pool: MakePool) -> None:
    pool = make_pool(0, 0, 2)
    held = [pool.connection(), pool.connection()]
    with pytest.raises(TooManyConnectionsError, match="maxconnections"):
        pool.connection()
    assert pool.stats()["refused"] == 1
    held.pop().close()
    pool.connection().close()  # a place is free again


def test_blocking_timeout_says_how_long_it_waited_and_the_limits(make_pool: MakePool) -> None:
    pool = make_pool(0, 0, 1, True, timeout=0.2)
    held = pool.connection()
    with pytest.raises(PoolTimeoutError) as caught:
        pool.connection()
    message = str(caught.value)
    assert re.search(r"after 0\.\d s", message), message
    assert "open 1/1" in message
    assert "maxconnections" in message and "timeout" in message
    stats = pool.stats()
    assert stats["timeouts"] == 1 and stats["waits"] == 1 and stats["waiting"] == 0
    held.close()


def test_blocking_without_timeout_gets_a_connection_when_one_is_returned(
    make_pool: MakePool, wait_until: WaitUntil
) -> None:
    pool = make_pool(0, 0, 1, True, timeout=None)
    held = pool.connection()
    pid = held.backend_pid
    got: list[int] = []

    def borrow() -> None:
        with pool.connection() as conn:
            got.append(conn.backend_pid)

    thread = threading.Thread(target=borrow)
    thread.start()
    assert wait_until(lambda: pool.stats()["waiting"] == 1)
    held.close()
    join_all([thread])
    assert got == [pid]


def test_waiters_are_served_in_fifo_order(make_pool: MakePool, wait_until: WaitUntil) -> None:
    pool = make_pool(0, 0, 1, True, timeout=10)
    held = pool.connection()
    order: list[int] = []
    threads = []

    def borrow(index: int) -> None:
        with pool.connection():
            order.append(index)

    for index in range(6):
        thread = threading.Thread(target=borrow, args=(index,))
        thread.start()
        threads.append(thread)
        assert wait_until(lambda n=index + 1: pool.stats()["waiting"] == n)
    held.close()
    join_all(threads)
    assert order == list(range(6))


# -- closing -------------------------------------------------------------------------------------


def test_closed_pool_refuses_checkouts(make_pool: MakePool) -> None:
    pool = make_pool(1)
    pool.close()
    with pytest.raises(PoolClosedError):
        pool.connection()
    pool.close()  # again: nothing happens
    assert pool.closed


def test_close_wakes_waiters_with_pool_closed_error(
    make_pool: MakePool, wait_until: WaitUntil
) -> None:
    pool = make_pool(0, 0, 1, True, timeout=10)
    held = pool.connection()
    errors: list[BaseException] = []

    def borrow() -> None:
        try:
            pool.connection()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=borrow) for _ in range(3)]
    for thread in threads:
        thread.start()
    assert wait_until(lambda: pool.stats()["waiting"] == 3)
    pool.close()
    join_all(threads)
    assert len(errors) == 3
    assert all(isinstance(exc, PoolClosedError) for exc in errors)
    held.close()


def test_close_closes_idle_at_once_and_checked_out_on_return(
    make_pool: MakePool, monitor: Monitor, app_name: str
) -> None:
    pool = make_pool(3)
    assert monitor.wait_count(app_name, 3) == 3
    held = pool.connection()
    held_pid = held.backend_pid

    pool.close()

    assert monitor.wait_count(app_name, 1) == 1
    assert monitor.pids(app_name) == {held_pid}
    assert held.query("SELECT 1").getresult() == [(1,)]  # still usable until returned
    held.close()
    assert monitor.wait_count(app_name, 0) == 0
    assert pool.stats()["open"] == 0


def test_with_pool_closes_on_exit(dsn: str, monitor: Monitor, app_name: str) -> None:
    with PooledPg(2, dbname=dsn, name=app_name) as pool:
        assert monitor.wait_count(app_name, 2) == 2
    assert pool.closed
    assert monitor.wait_count(app_name, 0) == 0


# -- the proxy -----------------------------------------------------------------------------------


def test_use_after_close_raises_invalid_connection(make_pool: MakePool) -> None:
    pool = make_pool(1)
    conn = pool.connection()
    conn.close()
    with pytest.raises(InvalidConnectionError):  # a pg.InternalError, as pg.DB's close() raises
        conn.close()
    with pytest.raises(InvalidConnectionError):
        conn.query("SELECT 1")
    with pytest.raises(InvalidConnectionError):
        conn.get_tables()
    with pytest.raises(InvalidConnectionError):
        _ = conn.backend_pid
    with pytest.raises(InvalidConnectionError):
        _ = conn.steady
    with pytest.raises(pg.InternalError):  # any name, as on a closed pg.DB (not AttributeError)
        _ = conn.absent  # type: ignore[attr-defined]
    live = pool.connection()
    with pytest.raises(AttributeError):  # while checked out, a misspelt name is just that
        _ = live.absent  # type: ignore[attr-defined]
    live.close()
    assert pool.stats()["in_use"] == 0


def test_a_pooled_connection_cannot_be_copied_or_pickled(make_pool: MakePool) -> None:
    # A copy would be a second owner: both would give the one connection back.
    import copy
    import pickle

    pool = make_pool(1, 1, 1)
    with pool.connection() as conn:
        for make in (copy.copy, copy.deepcopy, pickle.dumps):
            with pytest.raises(TypeError, match="cannot be"):
                make(conn)
    stats = pool.stats()
    assert stats["open"] == stats["idle"] == 1 and stats["in_use"] == 0


def test_a_source_cursor_stops_working_when_its_connection_is_returned(
    make_pool: MakePool,
) -> None:
    pool = make_pool(1, 1, 1)
    conn = pool.connection()
    cursor = conn.source()
    cursor.execute("SELECT 1")
    conn.close()
    with pytest.raises(InvalidConnectionError):
        cursor.execute("LISTEN pgrt_after_return")  # would reach the next borrower's session
    with pool.connection() as other:
        assert other.query("SELECT pg_listening_channels()").getresult() == []


def test_an_observer_that_fails_is_dropped_and_said_once_and_its_successor_stays(
    make_pool: MakePool, caplog: pytest.LogCaptureFixture
) -> None:
    class Failing:
        def on_connect(self, seconds: float) -> None:
            pass

        def on_checkout(self, waited: float) -> None:
            raise RuntimeError("observer bug")

        def on_checkin(self, used: float) -> None:
            pass

        def on_timeout(self) -> None:
            pass

    class Counting(Failing):
        seen = 0

        def on_checkout(self, waited: float) -> None:
            self.seen += 1

    pool = make_pool(1, 1, 1)
    failing = Failing()
    pool.observe(failing)
    with caplog.at_level(logging.ERROR, logger="pgregistry"):
        pool.connection().close()
        later = Counting()
        pool.observe(later)
        pool._observer_failed(failing)  # the old one failing late (another thread) drops nothing
        pool.connection().close()
    assert later.seen == 1
    assert sum("observer failed" in r.getMessage() for r in caplog.records) == 1


def test_leaving_a_with_block_returns_the_connection(make_pool: MakePool) -> None:
    pool = make_pool(1)
    with pool.connection() as conn:
        assert pool.stats()["in_use"] == 1
    assert pool.stats()["in_use"] == 0
    with pytest.raises(InvalidConnectionError):
        conn.query("SELECT 1")


def test_dropping_the_proxy_returns_the_connection(make_pool: MakePool) -> None:
    pool = make_pool(1, 1, 1)
    conn = pool.connection()
    assert pool.stats()["in_use"] == 1
    del conn
    assert pool.stats()["in_use"] == 0
    pool.connection().close()


def test_reopen_on_a_returned_proxy_takes_a_fresh_connection(make_pool: MakePool) -> None:
    pool = make_pool(1, 1, 2)
    conn = pool.connection()
    conn.close()
    assert pool.stats()["in_use"] == 0
    conn.reopen()
    assert pool.stats()["in_use"] == 1
    assert conn.query("SELECT 1").getresult() == [(1,)]
    conn.close()
    assert pool.stats()["in_use"] == 0


def test_reopen_on_a_live_proxy_reopens_its_connection(make_pool: MakePool) -> None:
    pool = make_pool(1, 1, 1, setsession=[MARK])
    with pool.connection() as conn:
        old_pid = conn.backend_pid
        conn.query("SET pgrt.marker TO 'changed'")
        conn.reopen()
        assert conn.backend_pid != old_pid
        assert setting(conn, "pgrt.marker") == "replayed"
    assert pool.stats()["open"] == 1


# -- the classic pg.DB API through the proxy -----------------------------------------------------


def test_classic_crud_methods_work_through_the_proxy(make_pool: MakePool, table: str) -> None:
    pool = make_pool(1)
    with pool.connection() as db:
        row = db.insert(table, id=1, name="one")
        assert row["id"] == 1 and row["name"] == "one"
        assert db.get(table, 1)["name"] == "one"
        db.update(table, id=1, name="uno")
        assert db.get(table, 1)["name"] == "uno"
        db.upsert(table, {"id": 1, "name": "eins"})
        db.upsert(table, {"id": 2, "name": "zwei"})
        assert db.query_formatted(
            f"SELECT name FROM {table} WHERE id = %(id)s", {"id": 1}
        ).getresult() == [("eins",)]
        assert db.delete(table, id=2) == 1
        assert db.get_as_dict(table, what="id, name") == {1: ("eins",)}


def test_inserttable_and_get_as_dict_work_through_the_proxy(
    make_pool: MakePool, table: str
) -> None:
    pool = make_pool(1)
    with pool.connection() as db:
        db.inserttable(table, [(1, "a", 10), (2, "b", 20)], ["id", "name", "n"])
        rows = db.get_as_dict(table)
        assert list(rows.items()) == [(1, ("a", 10)), (2, ("b", 20))]
        assert rows[2].n == 20


def test_savepoint_and_rollback_to_it_work_through_the_proxy(
    make_pool: MakePool, table: str, monitor: Monitor
) -> None:
    pool = make_pool(1)
    with pool.connection() as db:
        db.begin()
        db.insert(table, id=1, name="kept")
        db.savepoint("sp")
        db.insert(table, id=2, name="undone")
        db.rollback("sp")
        assert db.in_transaction
        db.release("sp")
        db.commit()
    assert count_rows(monitor, table) == 1


def test_with_steady_block_is_a_transaction(
    make_pool: MakePool, table: str, monitor: Monitor
) -> None:
    pool = make_pool(1)
    with pool.connection() as db:
        with db.steady:
            db.insert(table, id=1, name="committed")
        with pytest.raises(RuntimeError), db.steady:
            db.insert(table, id=2, name="rolled back")
            raise RuntimeError("boom")
        assert isinstance(db.steady, SteadyPgConnection)
    assert count_rows(monitor, table) == 1


# -- threads -------------------------------------------------------------------------------------


def test_inline_connection_query_is_safe_from_many_threads(
    make_pool: MakePool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``pool.connection().query(...).getresult()``: the connection goes back only afterwards.

    The original PooledPg returned the connection as soon as the proxy was collected, that is
    before the query ran, so another thread could check out the same connection and run a
    query on it concurrently. A per-backend in-use marker catches that here.
    """
    maxconnections = 4
    pool = make_pool(0, 0, maxconnections, True, timeout=20)
    lock = threading.Lock()
    in_use: set[int] = set()
    peak = [0]
    problems: list[str] = []
    original_query = SteadyPgConnection.query

    def marked_query(self: SteadyPgConnection, *args: Any) -> Any:
        pid = self.backend_pid
        with lock:
            if pid in in_use:
                problems.append(f"backend {pid} used by two threads at once")
            in_use.add(pid)
            peak[0] = max(peak[0], len(in_use))
        try:
            return original_query(self, *args)
        finally:
            with lock:
                in_use.discard(pid)

    monkeypatch.setattr(SteadyPgConnection, "query", marked_query)

    def work(token: int) -> None:
        try:
            for i in range(15):
                value = token * 1000 + i
                result = (
                    pool.connection()
                    .query("SELECT $1::int, pg_backend_pid() FROM pg_sleep(0.002)", (value,))
                    .getresult()
                )
                if result[0][0] != value:
                    problems.append(f"thread {token} got {result[0][0]}, expected {value}")
        except Exception as exc:
            problems.append(f"thread {token}: {exc!r}")

    threads = [threading.Thread(target=work, args=(t,)) for t in range(12)]
    for thread in threads:
        thread.start()
    join_all(threads, 30.0)

    assert problems == []
    assert peak[0] <= maxconnections
    assert pool.stats()["in_use"] == 0
    assert pool.stats()["open"] <= maxconnections


def test_inline_query_result_never_uses_a_connection_handed_to_another_borrower(
    make_pool: MakePool,
) -> None:
    pool = make_pool(1, 2, 2)
    # The proxy is gone once query() returns; the result is read later. timestamptz and uuid
    # are types PyGreSQL looks up on the connection the first time it reads them.
    result = pool.connection().query("SELECT now(), gen_random_uuid(), pg_backend_pid()")
    with pool.connection() as other:
        other.query("BEGIN")
        with pytest.raises(pg.ProgrammingError):
            other.query("SELECT * FROM pgrt_no_such_table")
        # Reading the first result must not run anything on the connection now lent to the
        # other borrower (it would fail inside that borrower's failed transaction).
        rows = result.getresult()
        assert isinstance(rows[0][0], datetime.datetime)
        assert isinstance(rows[0][1], uuid.UUID)
        assert other.transaction() == pg.TRANS_INERROR


def test_many_threads_over_few_connections_all_finish_and_none_starves(
    make_pool: MakePool,
) -> None:
    pool = make_pool(0, 4, 4, True, timeout=15)
    counts = [0] * 32
    errors: list[BaseException] = []
    deadline = time.monotonic() + 1.5

    def work(index: int) -> None:
        try:
            for _ in range(300):
                if time.monotonic() >= deadline:
                    break
                with pool.connection() as conn:
                    conn.query("SELECT 1")
                counts[index] += 1
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(32)]
    for thread in threads:
        thread.start()
    join_all(threads, 30.0)

    assert errors == []
    mean = sum(counts) / len(counts)
    assert mean > 0
    assert min(counts) >= 0.1 * mean, counts
    stats = pool.stats()
    assert stats["open"] <= 4 and stats["in_use"] == 0 and stats["waiting"] == 0


# -- fork ----------------------------------------------------------------------------------------


def test_forked_child_starts_empty_and_leaves_the_parents_idle_connection_alone(
    make_pool: MakePool, monitor: Monitor, run_in_child: RunInChild
) -> None:
    pool = make_pool(1, 1, 2)
    with pool.connection() as conn:
        parent_pid = conn.backend_pid

    def child() -> dict[str, Any]:
        before = pool.stats()
        with pool.connection() as c:
            pid = backend(c)
        pool.close()
        return {"open_before": before["open"], "idle_before": before["idle"], "pid": pid}

    result = run_in_child(child)

    assert result["open_before"] == 0 and result["idle_before"] == 0
    assert result["pid"] != parent_pid
    assert monitor.alive(parent_pid)
    with pool.connection() as conn:
        assert conn.backend_pid == parent_pid
        assert backend(conn) == parent_pid
    assert not pool.closed


def test_forked_child_leaves_a_connection_checked_out_at_fork_time_alone(
    make_pool: MakePool, monitor: Monitor, run_in_child: RunInChild
) -> None:
    pool = make_pool(1, 1, 2)
    held = pool.connection()
    parent_pid = backend(held)

    def child() -> dict[str, Any]:
        open_before = pool.stats()["open"]
        # The inherited proxy finds its connection cut off and reopens on a socket of its own.
        inherited = backend(held)
        held.close()
        with pool.connection() as c:
            own = backend(c)
        return {"open_before": open_before, "inherited": inherited, "own": own}

    result = run_in_child(child)

    assert result["open_before"] == 0
    assert result["inherited"] != parent_pid and result["own"] != parent_pid
    assert monitor.alive(parent_pid)
    assert backend(held) == parent_pid
    held.close()
    with pool.connection() as conn:
        assert conn.backend_pid == parent_pid


def test_forked_child_drops_the_parents_connection_on_the_lock_free_return(
    make_pool: MakePool, run_in_child: RunInChild
) -> None:
    """maxcached == maxconnections, so returns skip the lock: the parent's connection, given
    back in a child that has used the pool, is dropped there, never pooled beside its own."""
    pool = make_pool(1, 2, 2)
    held = pool.connection()
    backend(held)

    def child() -> dict[str, Any]:
        with pool.connection() as c:
            backend(c)
        held.close()
        stats = pool.stats()
        return {"open": stats["open"], "idle": stats["idle"]}

    assert run_in_child(child) == {"open": 1, "idle": 1}
    held.close()


# -- observer, transaction block, return inside a transaction -----------------------------------


class RecordingObserver:
    """Keeps every event a pool reports (see pgregistry.stats.PoolObserver)."""

    def __init__(self) -> None:
        self.events: list[tuple[str, float]] = []

    def on_connect(self, seconds: float) -> None:
        self.events.append(("connect", seconds))

    def on_checkout(self, waited: float) -> None:
        self.events.append(("checkout", waited))

    def on_checkin(self, used: float) -> None:
        self.events.append(("checkin", used))

    def on_timeout(self) -> None:
        self.events.append(("timeout", 0.0))

    def kinds(self) -> list[str]:
        return [kind for kind, _ in self.events]


def test_observer_sees_connects_checkouts_checkins_and_timeouts(make_pool: MakePool) -> None:
    pool = make_pool(0, 0, 1, True, timeout=0.1)
    observer = RecordingObserver()
    pool.observe(observer)
    db = pool.connection()
    time.sleep(0.02)
    with pytest.raises(PoolTimeoutError):
        pool.connection()
    db.close()
    pool.connection().close()
    assert observer.kinds() == ["connect", "checkout", "timeout", "checkin", "checkout", "checkin"]
    seconds = dict(observer.events[:2]) | {"checkin": observer.events[3][1]}
    assert 0.0 < seconds["connect"] < 30.0
    assert 0.0 <= seconds["checkout"] < 30.0
    assert seconds["checkin"] >= 0.02  # it was held across the sleep and the timed-out wait
    pool.observe(None)
    pool.connection().close()
    assert len(observer.events) == 6


def test_a_failing_observer_is_dropped_and_logged_once(
    make_pool: MakePool, caplog: pytest.LogCaptureFixture
) -> None:
    class Broken(RecordingObserver):
        def on_checkout(self, waited: float) -> None:
            raise RuntimeError("observer bug")

    pool = make_pool()
    pool.observe(Broken())
    for _ in range(3):
        pool.connection().close()  # never raises to the caller
    failures = [r for r in caplog.records if "observer failed" in r.getMessage()]
    assert len(failures) == 1


def test_transaction_block_commits_on_success(make_pool: MakePool, table: str) -> None:
    pool = make_pool()
    with pool.transaction() as db:
        db.query(f"INSERT INTO {table} (id, name) VALUES (1, 'kept')")
        assert db.in_transaction
    with pool.connection() as other:
        rows = other.query(f"SELECT name FROM {table}").getresult()
    assert rows == [("kept",)]


def test_transaction_block_rolls_back_on_an_exception_and_gives_the_connection_back(
    make_pool: MakePool, table: str
) -> None:
    pool = make_pool(0, 0, 1)
    with pytest.raises(ZeroDivisionError), pool.transaction() as db:
        db.query(f"INSERT INTO {table} (id, name) VALUES (1, 'dropped')")
        1 / 0  # noqa: B018
    assert pool.stats()["in_use"] == 0
    with pool.connection() as other:
        assert other.query(f"SELECT count(*) FROM {table}").getresult() == [(0,)]
        assert not other.in_transaction


def test_connection_given_back_inside_a_transaction_is_rolled_back_with_a_warning(
    make_pool: MakePool, table: str, caplog: pytest.LogCaptureFixture
) -> None:
    pool = make_pool(name="forgetful")
    db = pool.connection()
    db.begin()
    db.query(f"INSERT INTO {table} (id, name) VALUES (1, 'never committed')")
    db.close()
    warnings = [r for r in caplog.records if r.levelname == "WARNING"]
    assert any(
        "'forgetful'" in r.getMessage() and "inside a transaction" in r.getMessage()
        for r in warnings
    ), [r.getMessage() for r in warnings]
    with pool.connection() as other:
        assert other.query(f"SELECT count(*) FROM {table}").getresult() == [(0,)]


def test_connection_given_back_outside_a_transaction_logs_no_warning(
    make_pool: MakePool, caplog: pytest.LogCaptureFixture
) -> None:
    pool = make_pool(reset="rollback")
    with pool.connection() as db:
        db.begin()
        db.commit()
    assert not [r for r in caplog.records if r.levelname == "WARNING"]


# -- interrupted waits and budget hand-offs (#11) -----------------------------------------------


class RequestTimeout(Exception):
    """What a web server's SIGALRM handler raises to end a request that took too long."""


@pytest.mark.parametrize("interrupt", [RequestTimeout, KeyboardInterrupt])
def test_a_signal_during_a_blocking_wait_loses_no_connection(
    make_pool: MakePool, interrupt: type[BaseException], alarm: Alarm
) -> None:
    pool = make_pool(0, 0, 1, True, timeout=10)
    held = pool.connection()

    def on_alarm(signum: int, frame: object) -> None:
        raise interrupt

    with alarm(0.2, on_alarm), pytest.raises(interrupt):
        pool.connection()
    assert pool.stats()["waiting"] == 0
    held.close()
    with pool.connection() as db:  # maxconnections 1: the returned connection is still ours
        assert db.query("SELECT 1").getresult() == [(1,)]
    stats = pool.stats()
    assert (stats["open"], stats["idle"], stats["in_use"], stats["waiting"]) == (1, 1, 0, 0)


def test_a_signal_right_after_a_hand_over_gives_the_connection_back(
    make_pool: MakePool, alarm: Alarm
) -> None:
    pool = make_pool(0, 0, 1, True, timeout=10)
    held = pool.connection()

    def on_alarm(signum: int, frame: object) -> None:
        held.close()  # hands the connection to the waiting main thread ...
        raise RequestTimeout  # ... which is interrupted before it can take it

    with alarm(0.2, on_alarm), pytest.raises(RequestTimeout):
        pool.connection()
    stats = pool.stats()
    assert (stats["open"], stats["idle"], stats["in_use"], stats["waiting"]) == (1, 1, 0, 0)
    pool.connection().close()


def test_a_budget_timeout_hands_its_place_to_the_next_waiter(make_pool: MakePool) -> None:
    budget = ServerBudget("pgrt_server", 1)
    other = make_pool(0, 0, 1, True, budget=budget, name="other")
    pool = make_pool(0, 0, 1, True, budget=budget, timeout=1.0, name="starved")
    busy = other.connection()  # holds the only unit; not idle, so nobody can take it
    first_error: list[BaseException] = []
    second: list[object] = []

    def first() -> None:
        try:
            pool.connection()
        except BaseException as exc:
            first_error.append(exc)

    def second_caller() -> None:
        try:
            with pool.connection() as db:
                second.append(db.query("SELECT 1").getresult())
        except BaseException as exc:
            second.append(exc)

    t1 = threading.Thread(target=first)
    t1.start()
    deadline = time.monotonic() + 5
    while pool.stats()["open"] == 0 and budget.stats()["waits"] == 0:
        assert time.monotonic() < deadline
        time.sleep(0.005)
    # The second caller comes half a second later, so its own wait (1.0 s) outlasts the first
    # caller's budget wait, whose timeout is checked every 50 ms.
    time.sleep(0.5)
    t2 = threading.Thread(target=second_caller)
    t2.start()
    while pool.stats()["waiting"] == 0:
        assert time.monotonic() < deadline
        time.sleep(0.005)
    t1.join(10)
    assert first_error and "server budget 'pgrt_server' is full" in str(first_error[0])
    busy.close()  # idle now: the second caller's budget wait may close it and take the unit
    t2.join(10)
    assert second == [[(1,)]], second


def test_log_records_carry_the_pool_name_and_the_wait_for_json_formatters(
    make_pool: MakePool, caplog: pytest.LogCaptureFixture
) -> None:
    pool = make_pool(0, 0, 1, True, timeout=0.1, name="pgrt_fields")
    held = pool.connection()
    with pytest.raises(PoolTimeoutError):
        pool.connection()
    held.close()
    records = [r for r in caplog.records if r.name == "pgregistry.pool.pgrt_fields"]
    assert records and all(getattr(r, "pool", None) == "pgrt_fields" for r in records)
    timeout = next(r for r in records if "no connection after" in r.getMessage())
    assert 50 <= getattr(timeout, "wait_ms", 0) < 30_000
    assert "%s" in timeout.msg  # %-style messages stay


def test_forked_child_never_touches_a_connection_held_by_a_parents_result(
    make_pool: MakePool, monitor: Monitor, run_in_child: RunInChild
) -> None:
    pool = make_pool(0, 0, 2)
    result = pool.connection().query("SELECT pg_backend_pid()")  # held: the result is unread
    parent_pid = result.getresult()[0][0]

    def child() -> dict[str, Any]:
        before = pool.stats()
        with pool.connection() as c:
            pid = backend(c)
        return {"in_use_before": before["in_use"], "pid": pid}

    got = run_in_child(child)
    assert got["in_use_before"] == 0 and got["pid"] != parent_pid
    assert monitor.alive(parent_pid)
    assert result.getresult()[0][0] == parent_pid
    del result
    with pool.connection() as conn:  # released: the parent gets its held connection back
        assert backend(conn) == parent_pid


def test_a_burst_on_a_cold_pool_grows_one_connection_at_a_time(make_pool: MakePool) -> None:
    """HikariCP's spike: many callers at once, slow connects, short queries. Opening one
    connection per caller (what the pool did) ends with maxconnections open; growing one at a
    time, with returned connections serving waiters first, opens what the load needs."""

    def slow_connect(db: pg.DB) -> None:
        time.sleep(0.3)  # every open takes 300 ms; the queries take well under 1 ms

    pool = make_pool(0, 0, 20, True, setsession=slow_connect, timeout=60)
    errors: list[BaseException] = []
    start = threading.Barrier(30)

    def caller() -> None:
        try:
            start.wait(10)
            for _ in range(5):
                with pool.connection() as db:
                    db.query("SELECT 1")
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=caller) for _ in range(30)]
    for thread in threads:
        thread.start()
    join_all(threads, 60.0)
    assert not errors, errors[:3]
    stats = pool.stats()
    assert stats["checkouts"] == 150
    assert stats["opened"] <= 10, stats  # one per caller, up to 20, before


def test_a_notification_handler_holds_the_pooled_connection_it_was_made_on(
    make_pool: MakePool,
) -> None:
    pool = make_pool(0, 0, 1)
    db = pool.connection()
    handler = db.notification_handler("pgrt_channel", lambda arg_dict: None, timeout=0.1)
    assert handler.db is db  # the object the user holds, not the raw pg.DB
    del db  # the handler keeps the proxy, so the connection stays checked out
    assert pool.stats()["in_use"] == 1
    handler.close()  # unlistens and gives the connection back
    assert pool.stats()["in_use"] == 0
    assert db_aliases_match(pool)


def db_aliases_match(pool: PooledPg) -> bool:
    with pool.connection() as db:
        return bool(db.start == db.begin and db.end == db.commit and db.abort == db.rollback)
