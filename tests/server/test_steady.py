"""SteadyPgConnection against the shared server: transparent reopen, transactions, maxusage."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pg
import pytest

from pgregistry import ConnectionLostError, InvalidConnectionError, SteadyPgConnection
from pgregistry.testing import BackendKiller

MARK = "SET pgrt.marker TO 'replayed'"


def marker(conn: Any) -> str:
    value: str = conn.query("SELECT current_setting('pgrt.marker', true)").getresult()[0][0]
    return value


def backend(conn: Any) -> int:
    pid: int = conn.query("SELECT pg_backend_pid()").getresult()[0][0]
    return pid


def count_rows(monitor: Any, table: str) -> int:
    n: int = monitor.db.query(f"SELECT count(*) FROM {table}").getresult()[0][0]
    return n


def test_reopen_after_killed_backend_is_transparent_and_replays_setsession(
    make_steady: Callable[..., SteadyPgConnection], killer: BackendKiller
) -> None:
    conn = make_steady(None, [MARK, "SET datestyle TO 'German'"])
    old_pid = backend(conn)
    assert killer(old_pid)

    assert marker(conn) == "replayed"
    assert conn.query("SELECT current_setting('DateStyle')").getresult()[0][0].startswith("German")
    assert backend(conn) != old_pid
    assert conn.backend_pid != old_pid


@pytest.mark.parametrize(
    "call",
    [
        pytest.param(
            lambda c: c.query_formatted("SELECT %s", (1,)).getresult(), id="query_formatted"
        ),
        pytest.param(lambda c: c.get_tables(), id="get_tables"),
        pytest.param(lambda c: c.get_parameter("DateStyle"), id="get_parameter"),
        pytest.param(lambda c: c.prepare("pgrt_p", "SELECT 1"), id="prepare"),
        pytest.param(lambda c: c.get_as_list("pg_catalog.pg_am", what="amname"), id="get_as_list"),
    ],
)
def test_every_api_method_reopens_a_lost_connection_without_lookup_error(
    make_steady: Callable[..., SteadyPgConnection],
    killer: BackendKiller,
    call: Callable[[Any], Any],
) -> None:
    conn = make_steady()
    old_pid = conn.backend_pid
    assert killer(old_pid)

    call(conn)  # neither LookupError nor any other error

    assert conn.backend_pid != old_pid


@pytest.mark.parametrize("how", ["begin", "raw BEGIN"])
def test_loss_inside_transaction_raises_pg_error_until_rollback(
    make_steady: Callable[..., SteadyPgConnection], killer: BackendKiller, how: str
) -> None:
    conn = make_steady(None, MARK)
    if how == "begin":
        conn.begin()
    else:
        conn.query("BEGIN")
    conn.query("SELECT 1")
    old_pid = conn.backend_pid
    assert killer(old_pid)

    with pytest.raises(pg.Error) as first:
        conn.query("SELECT 1")
    assert not isinstance(first.value, LookupError)
    # Until the caller ends the transaction, nothing is reopened behind its back.
    for _ in range(2):
        with pytest.raises(ConnectionLostError) as again:
            conn.query("SELECT 1")
        assert isinstance(again.value, pg.OperationalError)
        assert "rollback" in str(again.value)

    conn.rollback()

    assert conn.query("SELECT 1").getresult() == [(1,)]
    assert marker(conn) == "replayed"
    assert conn.backend_pid != old_pid
    assert not conn.in_transaction


def test_commit_after_loss_inside_transaction_raises_and_ends_the_transaction(
    make_steady: Callable[..., SteadyPgConnection],
    killer: BackendKiller,
    table: str,
    monitor: Any,
) -> None:
    conn = make_steady()
    conn.begin()
    conn.query(f"INSERT INTO {table} (id) VALUES (1)")
    assert killer(conn.backend_pid)

    with pytest.raises(pg.Error) as caught:
        conn.commit()
    assert not isinstance(caught.value, LookupError)

    assert not conn.in_transaction
    assert conn.query("SELECT 1").getresult() == [(1,)]
    assert count_rows(monitor, table) == 0


def test_retry_after_reopen_off_reopens_and_raises_without_running_twice(
    make_steady: Callable[..., SteadyPgConnection],
    killer: BackendKiller,
    table: str,
    monitor: Any,
) -> None:
    conn = make_steady(retry_after_reopen=False)
    old_pid = conn.backend_pid
    assert killer(old_pid)

    with pytest.raises(ConnectionLostError) as caught:
        conn.query(f"INSERT INTO {table} (id) VALUES (1)")
    assert isinstance(caught.value, pg.OperationalError)
    assert count_rows(monitor, table) == 0
    assert conn.backend_pid != old_pid  # already reopened

    conn.query(f"INSERT INTO {table} (id) VALUES (1)")  # the caller's own retry
    assert count_rows(monitor, table) == 1


def test_retry_after_reopen_on_runs_the_statement_exactly_once(
    make_steady: Callable[..., SteadyPgConnection],
    killer: BackendKiller,
    table: str,
    monitor: Any,
) -> None:
    conn = make_steady()
    assert killer(conn.backend_pid)

    conn.query(f"INSERT INTO {table} (id) VALUES (1)")

    assert count_rows(monitor, table) == 1


def test_maxusage_reopens_after_that_many_uses(
    make_steady: Callable[..., SteadyPgConnection],
) -> None:
    conn = make_steady(3, MARK)
    pids = [backend(conn) for _ in range(7)]

    assert len(set(pids[0:3])) == 1
    assert len(set(pids[3:6])) == 1
    assert pids[3] != pids[0]
    assert pids[6] != pids[3]
    assert marker(conn) == "replayed"


def test_maxusage_never_reopens_inside_a_transaction(
    make_steady: Callable[..., SteadyPgConnection],
) -> None:
    conn = make_steady(2)
    conn.begin()
    pids = {backend(conn) for _ in range(5)}
    conn.commit()

    assert len(pids) == 1


def test_error_inside_transaction_keeps_it_marked_until_rollback(
    make_steady: Callable[..., SteadyPgConnection],
) -> None:
    conn = make_steady()
    conn.begin()
    with pytest.raises(pg.ProgrammingError):
        conn.query("SELECT * FROM pgrt_no_such_table")

    assert conn.in_transaction
    with pytest.raises(pg.InternalError, match="aborted"):
        conn.query("SELECT 1")
    conn.rollback()
    assert not conn.in_transaction
    assert conn.query("SELECT 1").getresult() == [(1,)]


def test_begin_with_mode_commit_and_rollback_take_the_real_pg_signatures(
    make_steady: Callable[..., SteadyPgConnection],
) -> None:
    conn = make_steady()
    conn.begin("ISOLATION LEVEL SERIALIZABLE")
    assert conn.query("SHOW transaction_isolation").getresult() == [("serializable",)]
    conn.commit()
    conn.begin()
    conn.savepoint("sp")
    conn.rollback("sp")
    assert conn.in_transaction
    conn.rollback()
    assert not conn.in_transaction


def test_with_block_commits_or_rolls_back(
    make_steady: Callable[..., SteadyPgConnection], table: str, monitor: Any
) -> None:
    conn = make_steady()
    with conn:
        conn.query(f"INSERT INTO {table} (id) VALUES (1)")
    with pytest.raises(RuntimeError), conn:
        conn.query(f"INSERT INTO {table} (id) VALUES (2)")
        raise RuntimeError("boom")

    assert count_rows(monitor, table) == 1
    assert not conn.in_transaction


def test_close_closes_a_closeable_connection_and_reopen_brings_it_back(
    make_steady: Callable[..., SteadyPgConnection],
) -> None:
    conn = make_steady()
    conn.close()
    assert conn.closed
    with pytest.raises(InvalidConnectionError):
        conn.query("SELECT 1")
    conn.reopen()
    assert conn.query("SELECT 1").getresult() == [(1,)]


def test_close_of_a_non_closeable_connection_only_rolls_back(
    dsn: str, table: str, monitor: Any
) -> None:
    conn = SteadyPgConnection(None, None, False, dsn)
    try:
        conn.begin()
        conn.query(f"INSERT INTO {table} (id) VALUES (1)")
        conn.close()
        assert not conn.closed
        assert not conn.in_transaction
        assert conn.query("SELECT 1").getresult() == [(1,)]
        assert count_rows(monitor, table) == 0
    finally:
        conn._closeable = True
        conn.close()
