"""The server is down: what callers of steady and pooled connections see, and how they recover.

Every test stops the session's throwaway cluster and leaves it running again at the end
(``healthy_cluster``).
"""

from __future__ import annotations

import threading
import time
import traceback
from collections.abc import Callable
from typing import Any

import pg
import pytest

from pgregistry import ConnectionLostError, PooledPg, ServerUnavailableError, SteadyPgConnection
from pgregistry.testing import TemporaryCluster

pytestmark = pytest.mark.slow

# The calls a user makes, each going to the server in its own way.
CALLS: dict[str, Callable[[Any], object]] = {
    "query": lambda db: db.query("SELECT 1").getresult(),
    "get_tables": lambda db: db.get_tables(),
    "query_formatted": lambda db: db.query_formatted("SELECT %s", (1,)).getresult(),
    "escape_literal": lambda db: db.escape_literal("it's"),
    "insert": lambda db: db.insert("outage_t", {"n": 1}),
}

# libpq's words for a server it cannot reach (stopped, shutting down, starting up).
LIBPQ_DOWN = ("Connection refused", "shutting down", "starting up", "server closed")


def assert_server_unavailable(exc: BaseException) -> None:
    """A pg.OperationalError carrying libpq's message, never LookupError or a bare Exception."""
    assert isinstance(exc, pg.OperationalError), repr(exc)
    assert isinstance(exc, ServerUnavailableError), repr(exc)
    message = str(exc)
    assert any(words in message for words in LIBPQ_DOWN), message
    assert "unknown encoding" not in message


def assert_no_lookup_error(exc: BaseException) -> None:
    """PyGreSQL's LookupError('unknown encoding') shows nowhere, not even in the traceback."""
    formatted = "".join(traceback.format_exception(exc))
    assert "LookupError" not in formatted and "unknown encoding" not in formatted, formatted


@pytest.fixture
def outage_table(healthy_cluster: TemporaryCluster) -> str:
    healthy_cluster.execute("CREATE TABLE IF NOT EXISTS outage_t (n int)")
    return "outage_t"


@pytest.mark.parametrize("method", sorted(CALLS))
def test_calls_on_a_stopped_server_raise_pg_errors_and_work_again_after_start(
    healthy_cluster: TemporaryCluster,
    make_pool: Callable[..., PooledPg],
    outage_table: str,
    method: str,
) -> None:
    call = CALLS[method]
    steady = SteadyPgConnection(None, None, True, **healthy_cluster.connect_kwargs())
    pool = make_pool(1, 0, 2, True)
    pooled = pool.connection()
    for db in (steady, pooled):
        call(db)  # warm: the table's attributes are cached, the connection is in use
    healthy_cluster.stop("fast")
    try:
        for db in (steady, pooled):
            for attempt in range(3):
                try:
                    call(db)
                except Exception as exc:
                    assert_server_unavailable(exc)
                else:
                    # libpq escapes locally: until a round trip notices the loss, nothing fails.
                    assert method == "escape_literal" and attempt == 0 and not db.is_lost()
                    with pytest.raises(pg.Error) as info:
                        db.query("SELECT 1")
                    assert_server_unavailable(info.value)
            assert db.is_lost()
    finally:
        healthy_cluster.start()
    # The same connections work again, without the caller doing anything.
    for db in (steady, pooled):
        call(db)
        assert db.query("SELECT 2").getresult() == [(2,)]
    stats = pool.stats()
    assert stats["lost"] > 0 and stats["reopened"] > 0
    pooled.close()
    steady.close()


def test_transaction_cut_by_a_restart_raises_and_works_after_rollback(
    healthy_cluster: TemporaryCluster, make_pool: Callable[..., PooledPg]
) -> None:
    steady = SteadyPgConnection(None, None, True, **healthy_cluster.connect_kwargs())
    pooled = make_pool(1, 0, 2, True).connection()
    for db in (steady, pooled):
        db.begin()
        db.query("SELECT 1")
    healthy_cluster.stop("fast")
    try:
        for db in (steady, pooled):
            for _ in range(2):  # the loss, then the dead connection: pg errors both times
                with pytest.raises(pg.Error) as info:
                    db.query("SELECT 2")
                assert_no_lookup_error(info.value)
            assert db.in_transaction  # no silent reopen inside the transaction
        steady.rollback()  # while the server is still down: what it asked for already happened
    finally:
        healthy_cluster.start()
    pooled.rollback()  # once the server is up again
    for db in (steady, pooled):
        assert not db.in_transaction
        assert db.query("SELECT 3").getresult() == [(3,)]
    pooled.close()
    steady.close()


def test_commit_of_a_transaction_cut_by_a_restart_raises_and_leaves_a_usable_connection(
    healthy_cluster: TemporaryCluster, make_pool: Callable[..., PooledPg]
) -> None:
    pool = make_pool(0, 0, 2, True)
    db = pool.connection()
    db.begin()
    db.query("SELECT 1")
    healthy_cluster.restart("fast")
    with pytest.raises(pg.Error):
        db.query("SELECT 2")  # finds the transaction gone
    with pytest.raises(pg.Error) as info:
        db.commit()  # nothing was committed: the caller must hear about it
    assert_no_lookup_error(info.value)
    assert not db.in_transaction
    assert db.query("SELECT 3").getresult() == [(3,)]
    db.close()


def test_connection_returned_inside_a_dead_transaction_is_not_handed_out_again(
    healthy_cluster: TemporaryCluster, make_pool: Callable[..., PooledPg]
) -> None:
    pool = make_pool(1, 1, 1, True)
    db = pool.connection()
    db.begin()
    healthy_cluster.restart("fast")
    with pytest.raises(pg.Error):
        db.query("SELECT 1")
    db.close()  # no rollback: the pool must not keep a connection stuck in that transaction
    with pool.connection() as again:
        assert not again.in_transaction
        assert again.query("SELECT 2").getresult() == [(2,)]
    assert pool.stats()["open"] == 1


def test_with_block_cut_by_a_restart_rolls_back_and_leaves_a_usable_connection(
    healthy_cluster: TemporaryCluster,
) -> None:
    steady = SteadyPgConnection(None, None, True, **healthy_cluster.connect_kwargs())
    try:
        with pytest.raises(pg.Error), steady:
            steady.query("SELECT 1")
            healthy_cluster.restart("fast")
            steady.query("SELECT 2")
        assert not steady.in_transaction
        assert steady.query("SELECT 3").getresult() == [(3,)]
    finally:
        steady.close()


# -- the reconnect window ----------------------------------------------------------------------


def test_outage_shorter_than_reconnect_timeout_is_invisible_to_callers(
    healthy_cluster: TemporaryCluster,
    make_pool: Callable[..., PooledPg],
    workers: Callable[..., Any],
    start_later: Callable[[float], None],
) -> None:
    pool = make_pool(0, 0, 6, True, reconnect_timeout=20.0)
    held = [pool.connection() for _ in range(3)]  # threads 0-2 keep theirs through the outage

    def work(index: int) -> None:
        if index < len(held):
            assert held[index].query("SELECT 1").getresult() == [(1,)]
            return
        with pool.connection() as db:  # threads 3-5 check out for every call
            assert db.get_tables() is not None

    group = workers(6, work, max_seconds=40.0, closing=held)
    with group:
        group.wait_for_progress(time.monotonic())
        healthy_cluster.stop("fast")
        down_at = time.monotonic()
        start_later(1.0)
        group.wait_for_progress(down_at, timeout=30.0)  # every thread got through it
    # Calls that waited through the outage succeeded. A call sent in the instant the server
    # went down cannot be told from one whose reply was lost after it ran (#11 item 9): it may
    # raise ConnectionLostError saying so, and nothing else may reach a caller.
    errors = group.errors()
    assert all(
        isinstance(exc, ConnectionLostError) and "outcome is unknown" in str(exc) for exc in errors
    ), errors
    assert group.errors(after=down_at) == []
    assert len(errors) <= 6  # at most one per thread: the call in flight
    stats = pool.stats()
    assert stats["lost"] > 0 and stats["reopened"] > 0
    assert stats["in_use"] == 0 and stats["open"] == stats["idle"] <= 6


def test_new_checkouts_wait_within_the_reconnect_window(
    healthy_cluster: TemporaryCluster,
    make_pool: Callable[..., PooledPg],
    start_later: Callable[[float], None],
) -> None:
    pool = make_pool(0, 0, 4, True, reconnect_timeout=20.0)
    healthy_cluster.stop("fast")
    start_later(1.0)
    with pool.connection() as db:  # no idle connection: a new one is opened, in the window
        assert db.query("SELECT 1").getresult() == [(1,)]
    assert pool.stats()["opened"] == 1


@pytest.mark.parametrize("checkout", ["reopen", "new"])
def test_outage_longer_than_reconnect_timeout_raises_server_unavailable(
    healthy_cluster: TemporaryCluster, make_pool: Callable[..., PooledPg], checkout: str
) -> None:
    window = 1.0
    pool = make_pool(1 if checkout == "reopen" else 0, 0, 2, True, reconnect_timeout=window)
    held = pool.connection() if checkout == "reopen" else None
    healthy_cluster.stop("fast")
    try:
        started = time.monotonic()
        with pytest.raises(pg.OperationalError) as info:
            if held is not None:
                held.query("SELECT 1")
            else:
                pool.connection()
        waited = time.monotonic() - started
    finally:
        healthy_cluster.start()
    assert_server_unavailable(info.value)
    assert window <= waited < window + 10.0  # tried for the whole window, then gave up
    if held is not None:
        assert held.query("SELECT 1").getresult() == [(1,)]
        held.close()


# -- unreachable at construction ---------------------------------------------------------------


def _chain(exc: BaseException) -> list[BaseException]:
    """The exception and everything it is chained to (cause or context, suppressed or not)."""
    seen: list[BaseException] = []
    current: BaseException | None = exc
    while current is not None and len(seen) < 20 and current not in seen:
        seen.append(current)
        current = current.__cause__ or current.__context__
    return seen


def test_pool_on_an_unreachable_server_fails_fast_without_the_password(
    healthy_cluster: TemporaryCluster,
) -> None:
    secret = "s3cret-XYZ"
    port = healthy_cluster.port
    healthy_cluster.stop("fast")
    try:
        started = time.monotonic()
        with pytest.raises(pg.OperationalError) as info:
            PooledPg(2, dbname="postgres", host="127.0.0.1", port=port, passwd=secret)
        elapsed = time.monotonic() - started
    finally:
        healthy_cluster.start()
    exc = info.value
    assert elapsed < 10.0  # refused at once, no retry by default
    assert_server_unavailable(exc)
    assert f"port {port}" in str(exc)
    formatted = "".join(traceback.format_exception(exc))
    for text in (str(exc), repr(exc), formatted):
        assert secret not in text
    for linked in _chain(exc)[1:]:
        assert secret not in str(linked) and secret not in repr(linked)
        assert not isinstance(linked, pg.InternalError), f"chained to {linked!r}"


def test_error_chain_never_keeps_libpq_raw_text_with_the_password() -> None:
    # libpq echoes a malformed URI, password included; only the redacted copy may survive,
    # not even as the suppressed __context__ (debuggers, error trackers and `raise ... from`
    # in callers still reach it there).
    secret = "s3cret-XYZ"
    with pytest.raises(pg.OperationalError) as info:
        PooledPg(2, dbname=f"postgresql://app:{secret}@[::1/db")
    exc = info.value
    assert "********" in str(exc)
    assert [type(e) for e in _chain(exc)] == [ServerUnavailableError]
    assert secret not in "".join(traceback.format_exception(exc)) + repr(exc)


def test_a_connection_lost_once_counts_once_in_stats_however_often_it_is_called(
    healthy_cluster: TemporaryCluster, make_pool: Callable[..., PooledPg]
) -> None:
    # stats()["lost"] counts connections found lost, not failed calls on one known-lost
    # connection: monitoring would otherwise see a storm where one connection went away.
    pool = make_pool(1, 1, 1, True)
    db = pool.connection()
    healthy_cluster.stop("fast")
    try:
        for _ in range(5):
            with pytest.raises(pg.OperationalError):
                db.query("SELECT 1")
    finally:
        healthy_cluster.start()
    assert db.query("SELECT 1").getresult() == [(1,)]
    db.close()
    stats = pool.stats()
    assert (stats["lost"], stats["reopened"]) == (1, 1)


def test_a_replacement_that_fails_to_open_is_opened_at_the_next_use(
    healthy_cluster: TemporaryCluster,
) -> None:
    # maxusage lets the old backend go before it opens the new one (so a budget is never
    # exceeded): with the server down that open fails, and the connection must not end up
    # closed for good.
    steady = SteadyPgConnection(1, None, True, **healthy_cluster.connect_kwargs())
    try:
        steady.query("SELECT 1")
        healthy_cluster.stop("fast")
        with pytest.raises(ServerUnavailableError):
            steady.query("SELECT 2")
        assert not steady.closed
        healthy_cluster.start()
        assert steady.query("SELECT 3").getresult() == [(3,)]
    finally:
        steady.close()


def test_a_reopen_that_failed_is_counted_when_it_succeeds_later(
    healthy_cluster: TemporaryCluster, make_pool: Callable[..., PooledPg]
) -> None:
    # A statement the server ended while running (a fast shutdown) is retried after a reopen;
    # with the server gone the reopen fails. The next call reopens: it must count as reopened.
    pool = make_pool(1, 1, 1, True)
    db = pool.connection()
    failed: list[BaseException] = []

    def sleep() -> None:
        try:
            db.query("SELECT pg_sleep(10)")
        except BaseException as exc:
            failed.append(exc)

    call = threading.Thread(target=sleep, daemon=True)
    call.start()
    time.sleep(0.3)  # the statement is running
    healthy_cluster.stop("fast")
    call.join(30)
    assert not call.is_alive() and len(failed) == 1
    assert isinstance(failed[0], ServerUnavailableError), failed
    healthy_cluster.start()
    assert db.query("SELECT 1").getresult() == [(1,)]
    db.close()
    stats = pool.stats()
    assert (stats["lost"], stats["reopened"]) == (1, 1), stats
