"""PyGreSQL features that break behind a transaction pooler raise a clear pgregistry error
(``PoolerUnsupportedError``) instead of a confusing server one or a silent loss, behind a real
PgBouncer in transaction mode; a direct pool is untouched (issue 15, item 2).
"""

from __future__ import annotations

from collections.abc import Callable

import pg
import pytest

from pgregistry import PooledPg, PoolerUnsupportedError
from pgregistry.testing import TemporaryCluster
from pgregistry.testing.pgbouncer import TemporaryPgBouncer

MakeBouncer = Callable[..., TemporaryPgBouncer]


def target(bouncer: TemporaryPgBouncer, cluster: TemporaryCluster) -> str:
    kwargs = bouncer.connect_kwargs(cluster.connect_kwargs("postgres"))
    return " ".join(f"{key}={value}" for key, value in kwargs.items())


@pytest.fixture
def bounced(healthy_cluster: TemporaryCluster, pgbouncer: MakeBouncer) -> PooledPg:
    bouncer = pgbouncer("transaction", default_pool_size=2)
    return PooledPg(
        0, 2, 2, True, server_pooling="transaction", dbname=target(bouncer, healthy_cluster)
    )


@pytest.mark.parametrize("sql", ["LISTEN events", "  unlisten *", "listen\tx"])
def test_listen_is_refused_before_it_is_sent(bounced: PooledPg, sql: str) -> None:
    with bounced, bounced.connection() as db:
        with pytest.raises(PoolerUnsupportedError, match="use a direct pool for listeners"):
            db.query(sql)
        with pytest.raises(PoolerUnsupportedError):
            db.notification_handler("events", lambda *args: None).listen()
        assert db.query("SELECT 1").getresult() == [(1,)]  # the connection is fine


def test_delete_prepared_is_refused(bounced: PooledPg) -> None:
    with bounced, bounced.connection() as db:
        with pytest.raises(PoolerUnsupportedError, match="DEALLOCATE"):
            db.delete_prepared("stmt")
        with pytest.raises(PoolerUnsupportedError):
            db.delete_prepared()


def test_a_prepared_statement_the_pooler_lost_is_reported_as_such(bounced: PooledPg) -> None:
    # The server's own 26000 (prepared statement does not exist), as after PgBouncer (before
    # 1.21) routed the execution to another server connection than the prepare.
    with bounced, bounced.connection() as db:
        with pytest.raises(PoolerUnsupportedError, match="max_prepared_statements") as caught:
            db.query_prepared("never_prepared")
        assert isinstance(caught.value, pg.ProgrammingError)
        assert getattr(caught.value.__cause__, "sqlstate", None) == "26000"


def test_a_direct_pool_keeps_every_feature(healthy_cluster: TemporaryCluster) -> None:
    pool = PooledPg(0, 1, 1, True, **healthy_cluster.connect_kwargs())
    with pool, pool.connection() as db:
        db.query("LISTEN events")
        db.query("UNLISTEN *")
        db.prepare("stmt", "SELECT 1")
        assert db.query_prepared("stmt").getresult() == [(1,)]
        db.delete_prepared("stmt")
        with pytest.raises(pg.Error) as caught:
            db.query_prepared("stmt")
        assert not isinstance(caught.value, PoolerUnsupportedError)
