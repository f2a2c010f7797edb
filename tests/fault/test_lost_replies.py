"""No silent duplicate (#11 item 9): a statement lost in flight is not run again by default.

Through a FaultProxy of ours that forwards the statement to the server and drops the reply,
then cuts the connection: the server committed, the client never heard.
"""

from __future__ import annotations

from collections.abc import Iterator

import pg
import pytest

from pgregistry import ConnectionLostError, PooledPg
from pgregistry.testing import FaultProxy, TemporaryCluster


@pytest.fixture
def table(healthy_cluster: TemporaryCluster) -> Iterator[str]:
    healthy_cluster.execute("CREATE TABLE IF NOT EXISTS pgrt_lost (n int)")
    healthy_cluster.execute("TRUNCATE pgrt_lost")
    yield "pgrt_lost"


def rows(cluster: TemporaryCluster) -> int:
    return int(cluster.execute("SELECT count(*) FROM pgrt_lost")[0][0])


def dsn(proxy: FaultProxy, cluster: TemporaryCluster) -> str:
    kwargs = proxy.connect_kwargs(cluster.connect_kwargs())
    return " ".join(f"{k}={v}" for k, v in kwargs.items())


def test_a_write_whose_reply_is_lost_runs_once_and_says_the_outcome_is_unknown(
    healthy_cluster: TemporaryCluster, fault_proxy: FaultProxy, table: str
) -> None:
    with PooledPg(1, 1, 1, True, dbname=dsn(fault_proxy, healthy_cluster)) as pool:
        with pool.connection() as db:
            db.query("SELECT 1")
            fault_proxy.drop_replies(cut_after=0.2)
            with pytest.raises(ConnectionLostError, match="outcome is unknown") as caught:
                db.query(f"INSERT INTO {table} VALUES (1)")
            assert isinstance(caught.value, pg.OperationalError)
            fault_proxy.heal()
            assert db.query("SELECT 2").getresult() == [(2,)]  # reopened, usable
        assert rows(healthy_cluster) == 1  # committed once; before: two rows from one call


def test_retry_always_runs_a_lost_write_again_as_asked(
    healthy_cluster: TemporaryCluster, fault_proxy: FaultProxy, table: str
) -> None:
    pool = PooledPg(
        1, 1, 1, True, retry_after_reopen="always", dbname=dsn(fault_proxy, healthy_cluster)
    )
    with pool, pool.connection() as db:
        db.query("SELECT 1")
        fault_proxy.drop_replies(cut_after=0.2)
        proxy_healed = False
        try:
            db.query(f"INSERT INTO {table} VALUES (1)")
        except pg.Error:
            proxy_healed = True  # the retry met the still-broken proxy: allowed, not silent
        fault_proxy.heal()
    assert rows(healthy_cluster) == (1 if proxy_healed else 2)


def test_a_lost_commit_reply_says_the_outcome_is_unknown(
    healthy_cluster: TemporaryCluster, fault_proxy: FaultProxy, table: str
) -> None:
    with PooledPg(1, 1, 1, True, dbname=dsn(fault_proxy, healthy_cluster)) as pool:
        with pool.connection() as db:
            db.begin()
            db.query(f"INSERT INTO {table} VALUES (1)")
            fault_proxy.drop_replies(cut_after=0.2)
            with pytest.raises(ConnectionLostError, match="outcome is unknown"):
                db.commit()
            fault_proxy.heal()
        assert rows(healthy_cluster) == 1  # it was committed: the old message said rolled back


def test_a_backend_killed_inside_a_transaction_raises_connection_lost_chained(
    healthy_cluster: TemporaryCluster, table: str
) -> None:
    conninfo = " ".join(f"{k}={v}" for k, v in healthy_cluster.connect_kwargs().items())
    with PooledPg(1, 1, 1, True, dbname=conninfo) as pool, pool.connection() as db:
        db.begin()
        db.query(f"INSERT INTO {table} VALUES (1)")
        assert healthy_cluster.kill_backends([db.backend_pid]) == 1
        with pytest.raises(ConnectionLostError, match="inside a transaction") as caught:
            db.query("SELECT 1")
        assert isinstance(caught.value, pg.OperationalError)
        assert isinstance(caught.value.__cause__, pg.Error)  # PyGreSQL's own error, chained
        db.rollback()
        assert db.query("SELECT 1").getresult() == [(1,)]
    assert rows(healthy_cluster) == 0


def test_idle_connections_killed_between_calls_are_reopened_and_run_once(
    healthy_cluster: TemporaryCluster, table: str
) -> None:
    conninfo = " ".join(f"{k}={v}" for k, v in healthy_cluster.connect_kwargs().items())
    with PooledPg(1, 1, 1, True, dbname=conninfo) as pool, pool.connection() as db:
        db.query("SELECT 1")
        assert healthy_cluster.kill_backends([db.backend_pid]) == 1
        db.query(f"INSERT INTO {table} VALUES (1)")  # found dead before sending: safe
    assert rows(healthy_cluster) == 1
    assert pool.stats()["reopened"] == 1
