"""The fault proxy (``pgregistry.testing.FaultProxy``) as a real client sees each fault.

Real ``pg.DB`` connections through the proxy to the session's throwaway cluster. A statement
that the fault makes hang runs in a watchdog thread; the test ends the hang itself (resume or
cut), so nothing waits unbounded.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pg
import pytest

from pgregistry.testing import FaultProxy, TemporaryCluster


@pytest.fixture
def proxy(cluster: TemporaryCluster) -> Iterator[FaultProxy]:
    with FaultProxy(cluster.host, cluster.port) as fault_proxy:
        yield fault_proxy


def _connect(proxy: FaultProxy, cluster: TemporaryCluster, **extra: Any) -> pg.DB:
    kwargs = proxy.connect_kwargs(cluster.connect_kwargs())
    conninfo = " ".join(f"{k}={v}" for k, v in {**kwargs, "connect_timeout": 5, **extra}.items())
    return pg.DB(conninfo)


class _Call(threading.Thread):
    """Runs ``db.query(sql)`` in a thread; ``result`` or ``error`` once done."""

    def __init__(self, db: pg.DB, sql: str) -> None:
        super().__init__(daemon=True)
        self.db, self.sql = db, sql
        self.result: Any = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.result = self.db.query(self.sql).getresult()
        except BaseException as exc:
            self.error = exc


def test_plain_forwarding_and_counters(proxy: FaultProxy, cluster: TemporaryCluster) -> None:
    dbs = [_connect(proxy, cluster) for _ in range(3)]
    try:
        for db in dbs:
            assert db.query("SELECT 1").getresult() == [(1,)]
        assert proxy.accepted == 3
        assert proxy.open_connections == 3
        assert proxy.peak_open == 3
    finally:
        for db in dbs:
            db.close()


def test_cut_closes_every_connection_and_new_ones_work(
    proxy: FaultProxy, cluster: TemporaryCluster
) -> None:
    dbs = [_connect(proxy, cluster) for _ in range(3)]
    try:
        proxy.cut()
        assert proxy.open_connections == 0
        for db in dbs:
            with pytest.raises(pg.Error, match=r"closed the connection|terminat|lost"):
                db.query("SELECT 1")
        assert proxy.stats()["cut"] == 3
        fresh = _connect(proxy, cluster)
        assert fresh.query("SELECT 2").getresult() == [(2,)]
        fresh.close()
    finally:
        for db in dbs:
            db.close()


def test_stall_freezes_a_query_until_resume(proxy: FaultProxy, cluster: TemporaryCluster) -> None:
    db = _connect(proxy, cluster, keepalives_idle=1, tcp_user_timeout=1000)
    try:
        proxy.stall()
        call = _Call(db, "SELECT 42")
        call.start()
        call.join(1.5)  # keepalives and tcp_user_timeout do not end it: the proxy's kernel ACKs
        assert call.is_alive(), "a stalled query returned"
        proxy.resume()
        call.join(10)
        assert not call.is_alive()
        assert call.error is None and call.result == [(42,)]
    finally:
        proxy.cut()  # ends the call, should the asserts above have failed
        db.close()


def test_stall_makes_a_new_connection_time_out(
    proxy: FaultProxy, cluster: TemporaryCluster
) -> None:
    proxy.stall()
    with pytest.raises(pg.Error, match="timeout"):
        _connect(proxy, cluster, connect_timeout=1)


def test_drop_replies_runs_the_statement_and_loses_the_reply(
    proxy: FaultProxy, cluster: TemporaryCluster
) -> None:
    cluster.execute("CREATE TABLE IF NOT EXISTS proxy_drop (tag text)")
    cluster.execute("DELETE FROM proxy_drop")
    db = _connect(proxy, cluster)
    try:
        proxy.drop_replies()
        call = _Call(db, "INSERT INTO proxy_drop VALUES ('lost reply')")
        call.start()
        deadline = time.monotonic() + 10
        while not cluster.execute("SELECT count(*) FROM proxy_drop")[0][0]:
            assert time.monotonic() < deadline, "the statement never reached the server"
            time.sleep(0.02)
        assert call.is_alive(), "the client got a reply that should have been dropped"
        assert proxy.stats()["bytes_dropped"] > 0
        proxy.cut()
        call.join(10)
        assert isinstance(call.error, pg.Error)
    finally:
        proxy.cut()
        db.close()
        cluster.execute("DROP TABLE proxy_drop")


def test_drop_replies_with_cut_after_drops_the_connection(
    proxy: FaultProxy, cluster: TemporaryCluster
) -> None:
    cluster.execute("CREATE TABLE IF NOT EXISTS proxy_drop_cut (tag text)")
    db = _connect(proxy, cluster)
    try:
        proxy.drop_replies(cut_after=0.2)
        with pytest.raises(pg.Error, match=r"closed the connection|terminat|lost"):
            db.query("INSERT INTO proxy_drop_cut VALUES ('committed, reply lost')")
        # The client saw an error, yet the row is committed: the outcome was unknown to it.
        assert cluster.execute("SELECT count(*) FROM proxy_drop_cut") == [(1,)]
        assert proxy.stats()["cut"] == 1
    finally:
        db.close()
        cluster.execute("DROP TABLE proxy_drop_cut")


def test_slow_connects_delay_the_connect_only(proxy: FaultProxy, cluster: TemporaryCluster) -> None:
    proxy.slow_connects(0.3)
    started = time.monotonic()
    db = _connect(proxy, cluster)
    took = time.monotonic() - started
    try:
        # A lower bound only: the proxy holds the connection at least that long.
        assert took >= 0.3
        assert db.query("SELECT 1").getresult() == [(1,)]
    finally:
        db.close()


def test_refuse_closes_new_connections_and_spares_established_ones(
    proxy: FaultProxy, cluster: TemporaryCluster
) -> None:
    established = _connect(proxy, cluster)
    try:
        proxy.refuse()
        with pytest.raises(pg.Error, match="closed the connection"):
            _connect(proxy, cluster)
        assert proxy.stats()["refused"] == 1
        assert established.query("SELECT 1").getresult() == [(1,)]
        proxy.heal()
        again = _connect(proxy, cluster)
        assert again.query("SELECT 1").getresult() == [(1,)]
        again.close()
    finally:
        established.close()


def test_close_stops_the_thread_and_every_socket(cluster: TemporaryCluster) -> None:
    proxy = FaultProxy(cluster.host, cluster.port)
    db = _connect(proxy, cluster)
    thread = proxy._thread
    proxy.close()
    assert thread is not None and not thread.is_alive()
    with pytest.raises(pg.Error):
        db.query("SELECT 1")
    db.close()
