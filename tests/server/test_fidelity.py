"""A pooled connection is a pg.DB (#12): what one borrower leaves never reaches the next.

LISTEN registrations and undelivered notifications, temporary tables, pg.DB's client-side
state (debug, typecasts, regtypes, notice receiver, cast hook) and its caches, under every
reset policy; pg.DB's attributes, reset/close/reopen and ``with`` through the proxy. What the
return sent to the server is read from ``pg_stat_activity.query`` (an idle backend shows its
last statement), so "no round trip" is checked on the server, not in our code.
"""

from __future__ import annotations

import datetime
import select
import uuid
from collections.abc import Callable
from typing import Any

import pg
import pytest

from pgregistry import InvalidConnectionError, PooledPg
from pgregistry.testing import BackendKiller

MakePool = Callable[..., PooledPg]
Monitor = Any  # tests/server/conftest.py: Monitor
POLICIES = ["rollback_if_needed", "rollback", "reconnect", "discard"]


def channel() -> str:
    return f"pgrt_ch_{uuid.uuid4().hex[:12]}"


def last_statement(monitor: Monitor, pid: int) -> str:
    """The last statement backend ``pid`` ran (it is idle: the pool has it)."""
    rows = monitor.db.query("SELECT query FROM pg_stat_activity WHERE pid = $1", (pid,))
    result: str = rows.getresult()[0][0]
    return result


def wait_readable(db: Any, timeout: float = 5.0) -> None:
    """Wait until something (a notification) has arrived on ``db``'s socket; read nothing."""
    assert select.select([db.fileno()], [], [], timeout)[0], "no notification arrived"


def notify(monitor: Monitor, name: str, payload: str = "") -> None:
    monitor.db.query(f"NOTIFY {name}, '{payload}'")


# -- LISTEN and notifications ---------------------------------------------------------------


@pytest.mark.parametrize("reset", POLICIES)
def test_a_notification_for_one_borrower_never_reaches_the_next(
    make_pool: MakePool, monitor: Monitor, reset: str
) -> None:
    pool = make_pool(1, 1, 1, reset=reset)
    name = channel()
    with pool.connection() as db:
        db.query(f"LISTEN {name}")
        notify(monitor, name, "for A")
        wait_readable(db)  # arrived, unread, when A gives the connection back
    notify(monitor, name, "after A")  # A no longer listens: must not arrive anywhere
    with pool.connection() as db:
        db.query("SELECT 1")  # a round trip: libpq reads whatever the server sent
        assert db.getnotify() is None
        assert db.query("SELECT pg_listening_channels()").getresult() == []


@pytest.mark.parametrize("reset", POLICIES)
def test_notifications_left_after_an_unlisten_never_reach_the_next(
    make_pool: MakePool, monitor: Monitor, reset: str
) -> None:
    """PyGreSQL's test_notify then test_notify_with_args_and_payload, through one pool."""
    pool = make_pool(1, 1, 1, reset=reset)
    name = channel()
    with pool.connection() as db:
        handler = db.notification_handler(name, lambda arg: None, timeout=0)
        handler.listen()
        handler.notify(payload="baz")
        handler.notify(stop=True, payload="buz")
        handler.unlisten()  # the two notifications wait in libpq's queue
        del handler
    with pool.connection() as db:
        assert db.getnotify() is None


@pytest.mark.parametrize(
    "how",
    [
        "query",
        "query_formatted",
        "send_query",
        "prepared",
        "source",
        "unexecuted",
        "batch ending in rows",
        "formatted batch",
        "comment after LISTEN",
        "quote after LISTEN",
        "steady",
        "bytes",
        "bytes batch ending in rows",
    ],
)
def test_a_listen_is_seen_whichever_way_it_is_sent(
    make_pool: MakePool, monitor: Monitor, how: str
) -> None:
    pool = make_pool(1, 1, 1)
    statement = f"LISTEN {channel()}"
    with pool.connection() as db:
        pid = db.backend_pid
        if how == "send_query":
            query = db.send_query(statement)
            while query.getresult() is not None:
                pass
        elif how in ("prepared", "unexecuted"):  # a protocol-level prepare takes a LISTEN
            db.prepare("pgrt_listen", statement)
            if how == "prepared":
                db.query_prepared("pgrt_listen")
        elif how == "source":  # pg.Connection's own cursor, out of the pool's sight
            db.source().execute(statement)
        elif how == "batch ending in rows":
            assert db.query(f"{statement}; SELECT 1").getresult() == [(1,)]
        elif how == "formatted batch":
            db.query_formatted(f"{statement}; SELECT %s", (1,), inline=True)
        elif how == "comment after LISTEN":
            db.query(statement.replace("LISTEN ", "LISTEN/* the channel: */"))
        elif how == "quote after LISTEN":
            db.query(statement.replace("LISTEN ", 'LISTEN"') + '"')
        elif how == "steady":  # the steady connection under the proxy, out of its sight
            db.steady.query(statement)
        elif how == "bytes":  # pg.DB takes a statement as bytes too (its stub says str)
            untyped: Any = db
            untyped.query(statement.encode())
        elif how == "bytes batch ending in rows":
            untyped = db
            assert untyped.query(f"{statement}; SELECT 1".encode()).getresult() == [(1,)]
        else:
            getattr(db, how)(statement)
    assert last_statement(monitor, pid) in ("UNLISTEN *", "DISCARD ALL")
    with pool.connection() as db:
        assert db.query("SELECT pg_listening_channels()").getresult() == []


def test_the_default_return_unlistens_only_a_borrower_that_listened(
    make_pool: MakePool, monitor: Monitor
) -> None:
    pool = make_pool(1, 1, 1)
    with pool.connection() as db:
        pid = db.backend_pid
        db.query("SELECT 'plain'")
    assert last_statement(monitor, pid) == "SELECT 'plain'"  # nothing sent on return
    with pool.connection() as db:
        db.query(f'LISTEN "{channel()}"')
    assert last_statement(monitor, pid) == "UNLISTEN *"
    with pool.connection() as db:
        db.query("SELECT 'plain again'")
    assert last_statement(monitor, pid) == "SELECT 'plain again'"


def test_a_borrower_that_unlistened_everything_costs_no_round_trip(
    make_pool: MakePool, monitor: Monitor
) -> None:
    pool = make_pool(1, 1, 1)
    name = channel()
    with pool.connection() as db:
        pid = db.backend_pid
        db.query(f"LISTEN {name}")
        db.query(f"UNLISTEN {name.upper()}")  # unquoted: folded to lower case, as the server
    assert last_statement(monitor, pid) == f"UNLISTEN {name.upper()}"


def test_a_notification_handler_delivers_on_a_pooled_connection(
    make_pool: MakePool, monitor: Monitor
) -> None:
    pool = make_pool(1, 1, 1)
    name = channel()
    got: list[Any] = []
    with pool.connection() as db:
        handler = db.notification_handler(name, lambda arg: got.append(dict(arg)), timeout=5)
        assert handler.db is db
        handler.listen()
        notify(monitor, name, "hello")
        notify(monitor, f"stop_{name}", "bye")
        handler()  # returns after the stop event
        assert [entry["extra"] for entry in got] == ["hello", "bye"]
        assert not handler.listening


def test_listen_survives_a_transparent_reopen_within_the_checkout(
    make_pool: MakePool, monitor: Monitor, killer: BackendKiller
) -> None:
    pool = make_pool(1, 1, 1)
    name = channel()
    with pool.connection() as db:
        db.query(f'LISTEN "{name}"')
        old_pid = db.backend_pid
        assert killer(old_pid)
        assert db.query("SELECT pg_listening_channels()").getresult() == [(name,)]
        assert db.backend_pid != old_pid
        notify(monitor, name, "after the reopen")
        wait_readable(db)
        notice = db.getnotify()
        assert notice is not None and notice[0] == name and notice[2] == "after the reopen"


# -- temporary tables and pg.DB's caches ----------------------------------------------------


@pytest.mark.parametrize("reset", ["reconnect", "discard"])
def test_the_next_borrower_can_create_a_temporary_table_of_the_same_name(
    make_pool: MakePool, reset: str
) -> None:
    """...where the reset ends the session, with other columns: insert()/get() use its
    columns, not the old table's."""
    pool = make_pool(1, 1, 1, reset=reset)
    with pool.connection() as db:
        db.query("CREATE TEMPORARY TABLE pgrt_tmp (id int PRIMARY KEY, picture bytea)")
        db.insert("pgrt_tmp", id=1, picture=b"\x00")
        assert set(db.get_attnames("pgrt_tmp")) == {"id", "picture"}
    with pool.connection() as db:
        db.query("CREATE TEMP TABLE pgrt_tmp (key int PRIMARY KEY, data json)")
        row = db.insert("pgrt_tmp", key=2, data={"a": 1})
        assert row == {"key": 2, "data": {"a": 1}}
        assert db.get("pgrt_tmp", 2)["data"] == {"a": 1}
        assert db.pkey("pgrt_tmp") == "key"


@pytest.mark.parametrize("reset", ["rollback_if_needed", "rollback"])
def test_temporary_tables_stay_with_the_session_under_the_default_reset(
    make_pool: MakePool, monitor: Monitor, reset: str
) -> None:
    # SPEC 2: server session state (SET, temp tables) persists under the default policy, by
    # design; "discard" clears it. Nothing is sent on return for them.
    pool = make_pool(1, 1, 1, reset=reset)
    with pool.connection() as db:
        pid = db.backend_pid
        db.query("CREATE TEMP TABLE pgrt_tmp AS SELECT 1 AS n")
    if reset == "rollback_if_needed":
        assert last_statement(monitor, pid) == "CREATE TEMP TABLE pgrt_tmp AS SELECT 1 AS n"
    with pool.connection() as db:
        assert db.query("SELECT n FROM pgrt_tmp").getresult() == [(1,)]


def test_a_type_created_again_by_the_next_borrower_is_read_with_its_new_fields(
    make_pool: MakePool, monitor: Monitor
) -> None:
    """A borrower's DDL flushes pg.DB's type and column caches on return (no round trip)."""
    pool = make_pool(1, 1, 1)
    name = f"pgrt_type_{uuid.uuid4().hex[:12]}"
    try:
        with pool.connection() as db:
            db.query(f"CREATE TYPE {name} AS (name text, age int)")
            value = db.query(f"SELECT ('Jo', 42)::{name}").getresult()[0][0]
            assert (value.name, value.age) == ("Jo", 42)
            db.query(f"DROP TYPE {name}")
        with pool.connection() as db:
            db.query(f"CREATE TYPE {name} AS (name text, data json)")
            value = db.query(f"""SELECT ('Jo', '{{"a": 1}}')::{name}""").getresult()[0][0]
            assert (value.name, value.data) == ("Jo", {"a": 1})
    finally:
        monitor.db.query(f"DROP TYPE IF EXISTS {name}")


def test_discard_leaves_no_type_of_the_last_borrower_in_the_cache(make_pool: MakePool) -> None:
    pool = make_pool(1, 1, 1, reset="discard")
    with pool.connection() as db:
        db.query("SELECT '0,0,1'::circle").getresult()
        assert "circle" in db.dbtypes
    with pool.connection() as db:
        assert "circle" not in db.dbtypes
        assert db.query("SELECT '0,0,1'::circle").getresult() == [("<(0,0),1>",)]


@pytest.mark.parametrize("reset", ["discard", "reconnect"])
def test_built_in_types_come_back_after_a_flush_without_a_round_trip(
    make_pool: MakePool, reset: str
) -> None:
    pool = make_pool(1, 1, 1, reset=reset)
    with pool.connection() as db:
        db.query("SELECT '0,0,1'::circle, '2024-01-02'::date").getresult()
    with pool.connection() as db:  # DISCARD ALL flushed the type cache, or a new pg.DB
        logged: list[str] = []
        db.debug = logged.append
        row = db.query("SELECT '0,0,1'::circle, '2024-01-02'::date").getresult()[0]
        assert row == ("<(0,0),1>", datetime.date(2024, 1, 2))
        assert logged == ["SELECT '0,0,1'::circle, '2024-01-02'::date"]  # no pg_type lookup


# -- client-side state ----------------------------------------------------------------------


def squared(value: str) -> str:
    return f"Squared Circle: {value}"


@pytest.mark.parametrize("reset", POLICIES)
def test_client_state_of_one_borrower_never_reaches_the_next(
    make_pool: MakePool, reset: str
) -> None:
    pool = make_pool(1, 1, 1, reset=reset)
    logged: list[str] = []
    notices: list[Any] = []
    with pool.connection() as db:
        db.debug = logged.append
        db.dbtypes.set_typecast("circle", squared)
        db.use_regtypes(True)
        db.set_notice_receiver(notices.append)
        assert db.query("SELECT '0,0,1'::circle").getresult() == [("Squared Circle: <(0,0),1>",)]
        assert logged[0] == "SELECT '0,0,1'::circle"
        db.set_non_blocking(True)
    with pool.connection() as db:
        assert not db.is_non_blocking()
        assert db.debug is None
        assert db.use_regtypes() is False
        assert db.get_notice_receiver() is None
        db.query("DO $$ BEGIN RAISE NOTICE 'for B'; END $$")
        assert db.query("SELECT '0,0,1'::circle").getresult() == [("<(0,0),1>",)]
    assert not any("for B" in line for line in logged)
    assert notices == []


def test_client_state_survives_a_transparent_reopen_within_the_checkout(
    make_pool: MakePool, killer: BackendKiller
) -> None:
    pool = make_pool(1, 1, 1)
    logged: list[str] = []
    notices: list[Any] = []
    with pool.connection() as db:
        db.debug = logged.append
        db.dbtypes.set_typecast("circle", squared)
        db.use_regtypes(True)
        db.set_notice_receiver(lambda notice: notices.append(notice.message))
        old_pid = db.backend_pid
        assert killer(old_pid)
        assert db.query("SELECT '0,0,1'::circle").getresult() == [("Squared Circle: <(0,0),1>",)]
        assert db.backend_pid != old_pid
        assert db.use_regtypes() is True
        db.query("DO $$ BEGIN RAISE NOTICE 'still mine'; END $$")
        assert notices[-1].strip() == "NOTICE:  still mine"
        assert logged[-1] == "DO $$ BEGIN RAISE NOTICE 'still mine'; END $$"


def test_a_pg_db_wrapper_of_a_pooled_connection_leaves_it_working(make_pool: MakePool) -> None:
    """pg.DB(db) wraps the pooled connection (by its _cnx); closing the wrapper takes pg.DB's
    cast hook off the raw connection: the return puts it back."""
    pool = make_pool(1, 1, 1)
    with pool.connection() as db:
        wrapper = pg.DB(db)
        assert wrapper.db is db.db
        assert wrapper.query("SELECT 1").getresult() == [(1,)]
        wrapper.close()
        del wrapper
    with pool.connection() as db:
        value = db.query("SELECT '2024-01-02'::date").getresult()[0][0]
        assert value == datetime.date(2024, 1, 2)  # a str without pg.DB's cast hook


# -- pg.DB's attributes, reset, close, reopen ---------------------------------------------


def test_attributes_of_pg_db_read_through_the_proxy(make_pool: MakePool) -> None:
    pool = make_pool(1, 1, 1)
    db = pool.connection()
    raw = db.db
    assert isinstance(raw, pg.Connection)
    assert db.dbname == raw.db
    assert isinstance(db.adapter, pg.Adapter)
    assert isinstance(db.dbtypes, dict)
    assert db.debug is None
    assert db.error == raw.error
    output: list[str] = []
    db.debug = output.append
    db._do_debug("a", 1)  # pg.DB's own helper, as PyGreSQL's tests call it
    assert output == ["a\n1"]
    plain = pg.DB(raw)
    assert [a for a in dir(db) if not a.startswith("_")] == [
        a for a in dir(plain) if not a.startswith("_")
    ]
    plain.db = None  # do not let the wrapper take the cast hook off the pooled connection
    db.close()
    assert db.db is None  # as pg.DB after close()


def test_close_twice_and_use_after_close_raise_pg_internal_error(make_pool: MakePool) -> None:
    pool = make_pool(1, 1, 1)
    db = pool.connection()
    db.close()
    for use in (db.close, db.reset, lambda: db.query("SELECT 1"), lambda: db.status):
        with pytest.raises(pg.InternalError):
            use()
    with pytest.raises(InvalidConnectionError):
        db.close()
    assert pool.stats()["in_use"] == 0


def test_reset_reconnects_the_same_connection_object(make_pool: MakePool) -> None:
    pool = make_pool(1, 1, 1, setsession=["SET pgrt.marker TO 'replayed'"])
    with pool.connection() as db:
        raw, pid = db.db, db.backend_pid
        db.query("SET pgrt.marker TO 'changed'")
        db.query("CREATE TEMP TABLE pgrt_tmp (a int)")
        db.get_attnames("pgrt_tmp")
        query = raw.query("SELECT 1")
        db.reset()
        assert db.db is raw
        assert db.backend_pid != pid
        assert query.getresult() == [(1,)]  # a result read before stays readable
        assert raw.query("SHOW pgrt.marker").getresult() == [("replayed",)]
        db.query("CREATE TEMP TABLE pgrt_tmp (b text)")  # the old session's is gone ...
        assert list(db.get_attnames("pgrt_tmp")) == ["b"]  # ... and so is its cache


def test_reset_under_a_server_budget_lets_the_old_backend_go_first(
    make_pool: MakePool, monitor: Monitor
) -> None:
    pool = make_pool(1, 1, 1)
    with pool.connection() as db:
        raw, pid = db.db, db.backend_pid
        db.steady.close_wait = 5.0  # what a pool under a server budget sets
        db.reset()
        assert not monitor.alive(pid)
        assert db.db is not raw
        assert db.query("SELECT 1").getresult() == [(1,)]


def test_reopen_always_gives_a_new_session(make_pool: MakePool) -> None:
    pool = make_pool(1, 1, 1)
    db = pool.connection()
    first = db.backend_pid
    db.reopen()
    second = db.backend_pid
    db.close()
    db.reopen()  # a returned proxy: a connection from the pool, reopened
    assert len({first, second, db.backend_pid}) == 3
    db.close()
    assert pool.stats()["in_use"] == 0


@pytest.mark.parametrize("via", ["db.db", "db.steady.db"])
def test_a_raw_connection_closed_by_the_borrower_is_dropped_on_return(
    make_pool: MakePool, via: str
) -> None:
    pool = make_pool(1, 1, 1)
    db = pool.connection()
    raw: Any = db.db if via == "db.db" else db.steady.db  # the latter is not noted as raw use
    raw.close()
    db.close()  # no TypeError ("Connection is not valid") from the return path
    assert pool.stats()["in_use"] == 0
    with pool.connection() as db:
        assert db.query("SELECT 1").getresult() == [(1,)]


# -- with ---------------------------------------------------------------------------------


def test_with_on_a_used_connection_is_a_transaction_block(make_pool: MakePool) -> None:
    pool = make_pool(1, 1, 1)
    db = pool.connection()
    db.query("CREATE TEMP TABLE pgrt_tmp (n int)")
    with db:
        db.query("INSERT INTO pgrt_tmp VALUES (1)")
    with pytest.raises(ZeroDivisionError), db:
        db.query("INSERT INTO pgrt_tmp VALUES (2)")
        raise ZeroDivisionError
    assert db.query("SELECT n FROM pgrt_tmp").getresult() == [(1,)]
    assert pool.stats()["in_use"] == 1  # still checked out
    db.close()


def test_with_inside_the_checkout_scope_is_a_transaction_block(make_pool: MakePool) -> None:
    pool = make_pool(1, 1, 1)
    with pool.connection() as db:
        with db:  # the first thing done: still a transaction block, not a second scope
            assert db.transaction() == pg.TRANS_INTRANS
        assert db.transaction() == pg.TRANS_IDLE
        assert pool.stats()["in_use"] == 1
    assert pool.stats()["in_use"] == 0


def test_a_connection_closed_inside_its_with_scope_is_given_back_once(
    make_pool: MakePool,
) -> None:
    pool = make_pool(1, 1, 1)
    with pool.connection() as db:
        db.close()
    with pool.connection() as again:  # fresh again: scopes its checkout
        assert again.query("SELECT 1").getresult() == [(1,)]
    assert pool.stats()["in_use"] == 0


def test_only_debug_can_be_set_on_a_pooled_connection(make_pool: MakePool) -> None:
    pool = make_pool(1, 1, 1)
    with pool.connection() as db:
        with pytest.raises(AttributeError):
            db.db = None  # type: ignore[misc]
        with pytest.raises(AttributeError):
            db.anything = 1  # type: ignore[attr-defined]
        db.debug = False
        assert db.debug is False


def test_an_explicit_reopen_keeps_client_state_and_listens_on_nothing(
    make_pool: MakePool,
) -> None:
    pool = make_pool(1, 1, 1)
    logged: list[str] = []
    with pool.connection() as db:
        db.debug = logged.append
        db.query(f"LISTEN {channel()}")
        db.reopen()
        assert db.query("SELECT pg_listening_channels()").getresult() == []
        assert logged[-1] == "SELECT pg_listening_channels()"


def test_a_borrower_that_had_the_raw_connection_gets_everything_cleaned(
    make_pool: MakePool, monitor: Monitor
) -> None:
    pool = make_pool(1, 1, 1)
    with pool.connection() as db:
        pid = db.backend_pid
        raw = db.db
        raw.query(f"LISTEN {channel()}")
        raw.query("CREATE TEMP TABLE pgrt_tmp (n int)")
        del raw
    assert last_statement(monitor, pid) == "UNLISTEN *"
    with pool.connection() as db:
        assert db.query("SELECT pg_listening_channels()").getresult() == []


def test_a_search_path_change_flushes_the_column_cache_for_the_next_borrower(
    make_pool: MakePool, monitor: Monitor
) -> None:
    schema = f"pgrt_s_{uuid.uuid4().hex[:12]}"
    monitor.db.query(f"CREATE SCHEMA {schema}")
    try:
        monitor.db.query(f"CREATE TABLE {schema}.pgrt_item (id int, only_here text)")
        pool = make_pool(1, 1, 1)
        with pool.connection() as db:
            db.query(f"SET search_path TO {schema}, public")
            assert list(db.get_attnames("pgrt_item")) == ["id", "only_here"]
            db.query("SET search_path TO public")
        # public has no pgrt_item: the columns cached for the other schema must be gone
        with pool.connection() as db, pytest.raises(pg.ProgrammingError):
            db.get_attnames("pgrt_item")
    finally:
        monitor.db.query(f"DROP SCHEMA {schema} CASCADE")


def test_a_connection_given_back_inside_a_transaction_block_leaves_with_working(
    make_pool: MakePool,
) -> None:
    pool = make_pool(1, 1, 1)
    with pool.connection() as db:  # noqa: SIM117 (two blocks: the scope, a transaction)
        with db:
            db.close()  # given back inside both blocks: rolled back, with a WARNING
    db = pool.connection()
    db.query("CREATE TEMP TABLE pgrt_tmp (n int)")
    with db:  # used: a transaction block, counted from what the last borrower left
        db.query("INSERT INTO pgrt_tmp VALUES (1)")
        assert db.transaction() == pg.TRANS_INTRANS
    assert db.transaction() == pg.TRANS_IDLE
    db.close()
    with pool.connection() as db:  # fresh: scopes the checkout again
        pass
    assert pool.stats()["in_use"] == 0
