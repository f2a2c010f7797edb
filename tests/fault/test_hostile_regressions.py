"""Regressions for what a hostile tester found after #11 (each failed on main at 0bc70cc).

Each test states a README promise: budgets and max_pools see connections freed by a read
one-line result; close() ends their backends; a failing setsession loses no place or budget
unit; a crash or immediate restart is a transparent reopen; a statement that may have committed
part of its work is never run again; setsession on a frozen server is bounded; a URI password
with a "/" is never shown; a signal during a blocking checkout loses nothing; a tenant key of
another type is not printed whole; a result kept past a later query stays typed.

The shared server (127.0.0.1:5432) for ordinary queries, isolated by application_name; a
throwaway cluster and a FaultProxy for faults. Every wait and loop is bounded.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pg
import pytest

from pgregistry import ConnectionLostError, InvalidTenantError, PooledPg, Registry
from pgregistry.budget import ServerBudget
from pgregistry.config import settings_from_mapping
from pgregistry.testing import FaultProxy, TemporaryCluster

SHARED = "host=127.0.0.1 port=5432 dbname=test user=root application_name=pgrt_hostile"
BASE = {"host": "127.0.0.1", "port": 5432, "user": "root", "dbname": "test"}


def backends(app: str) -> int:
    db = pg.DB(host="127.0.0.1", port=5432, dbname="test", user="root")
    try:
        n: int = db.query(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1", (app,)
        ).getresult()[0][0]
        return n
    finally:
        db.close()


@pytest.fixture(scope="module")
def cluster() -> Iterator[TemporaryCluster]:
    with TemporaryCluster() as c:
        yield c


def cluster_dsn(c: TemporaryCluster, host: str | None = None, port: int | None = None) -> str:
    kw = c.connect_kwargs()
    return (
        f"host={host or kw['host']} port={port or kw['port']} dbname={kw['dbname']} "
        f"user={kw['user']} connect_timeout=2"
    )


# F1 ---------------------------------------------------------------------------------------------
def test_budget_wait_sees_connection_freed_by_a_read_one_line_result() -> None:
    """README: a held connection comes back 'once the result is gone'; budgets close idle
    connections of other pools. Here pool b times out beside a free connection of pool a."""
    budget = ServerBudget("main", 1)
    # no upkeep for a (with the defaults its round, every 15 s, would release it eventually)
    a = PooledPg(
        0,
        1,
        1,
        True,
        dbname=SHARED,
        name="ha",
        budget=budget,
        timeout=2,
        ping="never",
        max_idle=None,
        max_lifetime=None,
    )
    b = PooledPg(0, 1, 1, True, dbname=SHARED, name="hb", budget=budget, timeout=2)
    try:
        a.connection().query("SELECT 1").getresult()  # result read and gone
        with b.connection() as db:  # PoolTimeoutError: budget full (1/1, none idle)
            db.query("SELECT 1")
    finally:
        a.close()
        b.close()


def test_max_pools_sees_tenant_pool_freed_by_a_read_one_line_result() -> None:
    cfg = {"defaults": BASE, "tenants": {"shop": {"max_pools": 1, "timeout": 2}}}
    with Registry(settings_from_mapping(cfg)) as reg:
        reg.get("shop", tenant="acme").connection().query("SELECT 1").getresult()
        with reg.connection("shop", tenant="globex") as db:  # "all 1 tenant pools are busy"
            db.query("SELECT 1")


# F2 ---------------------------------------------------------------------------------------------
def test_close_ends_backend_of_a_read_one_line_result() -> None:
    app = "pgrt_hf2"
    pool = PooledPg(
        0,
        2,
        2,
        True,
        dbname=f"{SHARED} application_name={app}",
        ping="never",
        max_idle=None,
        max_lifetime=None,
    )
    pool.connection().query("SELECT 1").getresult()
    pool.close()
    time.sleep(1.0)
    try:
        assert backends(app) == 0  # 1: left open until the pool object is garbage-collected
    finally:
        pool.stats()  # releases it


# F3 ---------------------------------------------------------------------------------------------
def test_refill_whose_setsession_fails_does_not_kill_the_pool() -> None:
    calls = {"n": 0}

    def setsession(db: Any) -> None:
        calls["n"] += 1
        if calls["n"] == 2:  # the refill's setsession fails once (a kill, a SET ROLE error)
            raise pg.ProgrammingError("simulated: a setsession statement failed")

    pool = PooledPg(1, 1, 2, True, None, setsession, dbname=SHARED, timeout=2)
    try:
        c = pool.connection()
        c.steady.close()
        c.close()  # dropped; the maintenance refills to mincached within ~1 s, and that fails
        time.sleep(2.5)
        with pool.connection() as db:  # PoolTimeoutError "(open 0/2, idle 0, in use 0)" forever
            db.query("SELECT 1")
    finally:
        pool.close()


def test_failed_build_gives_back_its_budget_unit() -> None:
    cfg = {
        "defaults": BASE,
        "servers": {"main": {"host": "127.0.0.1", "port": 5432, "maxconnections": 3}},
        "pools": {
            "a": {"mincached": 1, "setsession": ["SET serch_path TO app"]},
            "b": {"timeout": 2},
        },
    }
    with Registry(settings_from_mapping(cfg)) as reg:
        for _ in range(3):
            with pytest.raises(pg.ProgrammingError):
                reg.get("a")
        assert reg.stats()["servers"]["main"]["used"] == 0  # 3: one unit leaked per attempt
        with reg.connection("b") as db:
            db.query("SELECT 1")


# F4 ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("how", ["immediate", "crash"])
def test_idle_connection_after_immediate_restart_or_crash_is_reopened(
    cluster: TemporaryCluster, how: str
) -> None:
    """README: a restart leaves a FATAL and EOF waiting; the connection is reopened and the
    statement sent there, once. PostgreSQL's quickdie sends a WARNING (NoticeResponse, 'N')."""
    pool = PooledPg(2, 2, 2, True, dbname=cluster_dsn(cluster), reconnect_timeout=15, timeout=20)
    try:
        if how == "immediate":
            cluster.stop("immediate")
            cluster.start()
        else:
            victim = pg.DB(**cluster.connect_kwargs())
            os.kill(victim.backend_pid, signal.SIGKILL)  # postmaster resets every backend
            time.sleep(1.5)
        cluster.wait_ready(30)
        with pool.connection() as db:
            db.query("SELECT 1")  # ConnectionLostError "after it was sent ... outcome unknown"
    finally:
        pool.close()


# F5 ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "statement",
    ["CALL hf5p()", "INSERT INTO hf5 VALUES ('x'); COMMIT; SELECT pg_sleep(1)"],
)
def test_killed_call_that_committed_is_not_run_again(
    cluster: TemporaryCluster, statement: str
) -> None:
    kw = cluster.connect_kwargs()
    admin = pg.DB(**kw)
    admin.query("CREATE TABLE IF NOT EXISTS hf5 (tag text)")
    admin.query(
        "CREATE OR REPLACE PROCEDURE hf5p() LANGUAGE plpgsql AS $$ BEGIN "
        "INSERT INTO hf5 VALUES ('x'); COMMIT; PERFORM pg_sleep(1); END $$"
    )
    admin.query("TRUNCATE hf5")

    def kill() -> None:
        db = pg.DB(**kw)
        for _ in range(400):
            pids = db.query(
                "SELECT pid FROM pg_stat_activity WHERE query = $1 AND state = 'active'",
                (statement,),
            ).getresult()
            if pids:
                time.sleep(0.3)  # after its COMMIT
                db.query("SELECT pg_terminate_backend($1)", (pids[0][0],))
                break
            time.sleep(0.005)
        db.close()

    pool = PooledPg(0, 1, 1, True, dbname=cluster_dsn(cluster))
    try:
        killer = threading.Thread(target=kill)
        killer.start()
        with pool.connection() as db, pytest.raises(ConnectionLostError):
            db.query(statement)  # returned normally: it was run a second time
        killer.join(10)
        assert admin.query("SELECT count(*) FROM hf5").getresult()[0][0] == 1  # 2
    finally:
        pool.close()
        admin.close()


# F6 ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("reset", ["discard", "reconnect"])
def test_return_bounded_when_setsession_replay_stalls(
    cluster: TemporaryCluster, reset: str
) -> None:
    """README: the reset on return waits at most connect_timeout (2 s here)."""
    with FaultProxy(cluster.host, cluster.port) as proxy:
        pool = PooledPg(
            0,
            1,
            1,
            True,
            None,
            ["SELECT pg_sleep(0.6)"],
            reset,
            dbname=cluster_dsn(cluster, proxy.host, proxy.port),
        )
        c = pool.connection()
        done = threading.Event()

        def give_back() -> None:
            try:
                c.close()
            finally:
                done.set()

        t = threading.Thread(target=give_back, daemon=True)
        t.start()
        time.sleep(0.3)
        proxy.stall()
        try:
            assert done.wait(8), "return still blocked after 8 s of stall"
        finally:
            proxy.resume()
            t.join(10)
            pool.close()


def test_checkout_open_bounded_when_setsession_stalls(cluster: TemporaryCluster) -> None:
    """README: opening a connection is bounded by connect_timeout per attempt."""
    with FaultProxy(cluster.host, cluster.port) as proxy:
        pool = PooledPg(
            0,
            1,
            1,
            True,
            None,
            ["SELECT pg_sleep(0.6)"],
            dbname=cluster_dsn(cluster, proxy.host, proxy.port),
            timeout=30,
        )
        done = threading.Event()

        def check_out() -> None:
            try:
                pool.connection().close()
            except pg.Error:
                pass  # gave up after connect_timeout: what is asked is that it comes back
            finally:
                done.set()

        t = threading.Thread(target=check_out, daemon=True)
        t.start()
        time.sleep(0.3)
        proxy.stall()
        try:
            assert done.wait(8), "checkout still blocked after 8 s of stall"
        finally:
            proxy.resume()
            t.join(10)
            pool.close()


# F7 ---------------------------------------------------------------------------------------------
def test_uri_password_with_slash_is_not_shown(tmp_path: Any) -> None:
    path = tmp_path / "pgpools.toml"
    path.write_text(
        '[pools.app]\nconninfo = "postgresql://root:S3cr/et@127.0.0.1:5432/test"\n'
        "connect_timeout = 3\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("PGPOOLS")}
    for args in (["check"], ["check", "--json"], ["ping"]):
        r = subprocess.run(
            [sys.executable, "-m", "pgregistry", args[0], "--config", str(path), *args[1:]],
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )
        assert "S3cr" not in r.stdout + r.stderr, args  # shown as port=S3cr, dbname=et@...


# F8 ---------------------------------------------------------------------------------------------
def test_signal_in_blocking_wait_never_loses_the_connection() -> None:
    """README/#11 item 4: no path of an exception or a signal loses a connection. A request
    timeout raised from SIGALRM at a random moment of a blocking checkout (bounded: 3000 tries)."""
    import random

    class Timeout(Exception):
        pass

    armed = [False]

    def handler(signum: int, frame: Any) -> None:
        if armed[0]:
            armed[0] = False
            raise Timeout

    old = signal.signal(signal.SIGALRM, handler)
    pool = PooledPg(0, 1, 1, True, dbname=SHARED, timeout=0.3)
    broken = 0
    try:
        deadline = time.monotonic() + 20
        for _ in range(3000):
            if time.monotonic() > deadline:
                break
            holder = pool.connection()
            signal.setitimer(signal.ITIMER_REAL, random.uniform(0.000005, 0.0002))
            try:
                armed[0] = True
                pool.connection().close()
            except Exception:
                pass
            finally:
                armed[0] = False
                signal.setitimer(signal.ITIMER_REAL, 0)
            holder.close()
            if pool.stats()["idle"] != 1:
                broken += 1
                pool.close()
                pool = PooledPg(0, 1, 1, True, dbname=SHARED, timeout=0.3)
    finally:
        signal.signal(signal.SIGALRM, old)
        pool.close()
    assert broken == 0  # about 1 in 120 interrupted waits leaves a ghost waiter: pool dead


# F9 ---------------------------------------------------------------------------------------------
def test_invalid_non_str_tenant_key_message_is_short() -> None:
    """README: the message shows at most 40 characters of the key."""
    reg = Registry(settings_from_mapping({"defaults": BASE, "tenants": {"shop": {}}}))
    try:
        with pytest.raises(InvalidTenantError) as caught:
            reg.get("shop", tenant=["x"] * 100_000)  # type: ignore[arg-type]
        assert len(str(caught.value)) < 400  # 500,000+ characters
    finally:
        reg.close()


# F10 --------------------------------------------------------------------------------------------
def test_result_kept_past_a_later_query_stays_typed_under_reconnect() -> None:
    pool = PooledPg(0, 1, 1, True, None, None, "reconnect", dbname=SHARED)
    try:
        db = pool.connection()
        kept = db.query("SELECT DATE '2020-01-02'")
        db.query("SELECT 1")
        db.close()
        assert not isinstance(kept.getresult()[0][0], str)  # '2020-01-02' as str
    finally:
        pool.close()


# F8 (kill between the statement and its result's types) ------------------------------------------
def test_a_kill_right_after_the_statement_raises_connection_lost_not_lookup_error(
    cluster: TemporaryCluster, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pgregistry.steady import SteadyPgConnection

    kw = cluster.connect_kwargs()
    admin = pg.DB(**kw)
    admin.query("DROP TYPE IF EXISTS hf8pair CASCADE")
    admin.query("CREATE TYPE hf8pair AS (a int, b int)")
    real = SteadyPgConnection.prime_types

    def killed_first(self: SteadyPgConnection, result: object) -> None:
        # The backend dies after the statement completed and before its types are read.
        admin.query("SELECT pg_terminate_backend($1)", (self.backend_pid,))
        deadline = time.monotonic() + 5
        raw: Any = self.db
        while raw.status and time.monotonic() < deadline:
            try:
                raw.query("SELECT 1")
            except pg.Error:
                break
        real(self, result)

    pool = PooledPg(0, 1, 1, True, dbname=cluster_dsn(cluster))
    try:
        monkeypatch.setattr(SteadyPgConnection, "prime_types", killed_first)
        with pool.connection() as db, pytest.raises(ConnectionLostError, match="it ran"):
            db.query("SELECT array[row(1, 2)::hf8pair]").getresult()
        monkeypatch.setattr(SteadyPgConnection, "prime_types", real)
        with pool.connection() as db:  # reopened, typed
            value = db.query("SELECT row(3, 4)::hf8pair").getresult()[0][0]
            assert tuple(value) == (3, 4)
    finally:
        pool.close()
        admin.close()


def test_a_setsession_killed_during_a_maxusage_reopen_is_opened_again(
    cluster: TemporaryCluster,
) -> None:
    from pgregistry.steady import SteadyPgConnection

    opens = {"n": 0}

    def setsession(db: Any) -> None:
        opens["n"] += 1
        if opens["n"] == 2:  # the reopen after maxusage: its backend is killed mid-setsession
            db.query("SELECT pg_terminate_backend(pg_backend_pid())")

    steady = SteadyPgConnection(1, setsession, True, **cluster.connect_kwargs())
    try:
        steady.query("SELECT 1")
        assert steady.query("SELECT 2").getresult() == [(2,)]  # raw FATAL ProgrammingError before
        assert opens["n"] == 3
    finally:
        steady.close()
