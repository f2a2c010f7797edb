"""``server_pooling`` and ``statement_timeout`` behind a real PgBouncer (issue 15).

PgBouncer refuses the ``options`` startup parameter in every pool mode ("unsupported startup
parameter: options"), so a pool that declares the pooler must not send the statement_timeout
startup option; under transaction pooling the timeout is applied with ``SET LOCAL`` inside a
``begin()`` transaction, and ends with it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pg
import pytest

from pgregistry import PooledPg, pooling
from pgregistry.testing import TemporaryCluster
from pgregistry.testing.pgbouncer import TemporaryPgBouncer

MakeBouncer = Callable[..., TemporaryPgBouncer]


def target(bouncer: TemporaryPgBouncer, cluster: TemporaryCluster) -> str:
    kwargs = bouncer.connect_kwargs(cluster.connect_kwargs("postgres"))
    return " ".join(f"{key}={value}" for key, value in kwargs.items())


def assert_cancelled(db: Any) -> None:
    with pytest.raises(pg.DatabaseError) as caught:
        db.query("SELECT pg_sleep(30)")
    assert caught.value.sqlstate == "57014", caught.value  # query_canceled


def show_timeout(db: Any) -> str:
    value: str = db.query("SHOW statement_timeout").getresult()[0][0]
    return value


@pytest.mark.parametrize("mode", ["session", "transaction"])
def test_pgbouncer_refuses_the_startup_option_a_direct_pool_sends(
    healthy_cluster: TemporaryCluster, pgbouncer: MakeBouncer, mode: str
) -> None:
    # Why the option must not be sent behind a pooler: PgBouncer refuses the login.
    bouncer = pgbouncer(mode)
    pool = PooledPg(statement_timeout=1, dbname=target(bouncer, healthy_cluster))
    with pool, pytest.raises(pg.DatabaseError, match="unsupported startup parameter: options"):
        pool.connection()


def test_transaction_pooling_sends_no_startup_option_and_set_local_applies(
    healthy_cluster: TemporaryCluster, pgbouncer: MakeBouncer
) -> None:
    bouncer = pgbouncer("transaction", default_pool_size=2)
    with PooledPg(
        2,
        2,
        2,
        True,
        server_pooling="transaction",
        statement_timeout=0.2,
        dbname=target(bouncer, healthy_cluster),
    ) as pool:
        with pool.connection() as db:  # PgBouncer accepted the login: no options sent
            assert pool.pooler_detected is True
            statement = pooling.begin_statement(pool.server_pooling, pool.statement_timeout)
            assert statement == "SET LOCAL statement_timeout = 200"
            db.begin()
            db.query(statement)
            assert show_timeout(db) == "200ms"
            assert_cancelled(db)
            db.rollback()
            # SET LOCAL ended with the transaction: the server connection, which the next
            # client may get, keeps no timeout.
            assert show_timeout(db) == "0"
        with pool.connection() as a, pool.connection() as b:
            assert show_timeout(a) == show_timeout(b) == "0"


def test_begin_applies_the_statement_timeout_under_transaction_pooling(
    healthy_cluster: TemporaryCluster, pgbouncer: MakeBouncer
) -> None:
    bouncer = pgbouncer("transaction", default_pool_size=2)
    with PooledPg(
        1,
        server_pooling="transaction",
        statement_timeout=0.2,
        dbname=target(bouncer, healthy_cluster),
    ) as pool:
        with pool.connection() as db:
            db.begin()
            try:
                assert_cancelled(db)
            finally:
                db.rollback()
        with pool.transaction() as db:
            assert show_timeout(db) == "200ms"
        with pool.connection() as db:
            assert show_timeout(db) == "0"  # outside a transaction: the role's setting


def test_session_pooling_sets_the_timeout_after_the_login(
    healthy_cluster: TemporaryCluster, pgbouncer: MakeBouncer
) -> None:
    bouncer = pgbouncer("session", default_pool_size=2)
    with (
        PooledPg(
            1,
            server_pooling="session",
            statement_timeout=0.2,
            dbname=target(bouncer, healthy_cluster),
        ) as pool,
        pool.connection() as db,
    ):
        assert show_timeout(db) == "200ms"
        assert_cancelled(db)


def test_the_role_setting_covers_autocommit_statements(
    healthy_cluster: TemporaryCluster, pgbouncer: MakeBouncer
) -> None:
    # What README documents for statements outside begin(): ALTER ROLE ... SET.
    admin = pg.DB(**healthy_cluster.connect_kwargs("postgres"))
    admin.query("CREATE ROLE pgrt_timed LOGIN")
    admin.query("ALTER ROLE pgrt_timed SET statement_timeout = '200ms'")
    bouncer = pgbouncer("transaction", users=["postgres", "pgrt_timed"])
    try:
        dsn = f"{target(bouncer, healthy_cluster)} user=pgrt_timed"
        with PooledPg(1, server_pooling="transaction", dbname=dsn) as pool, pool.connection() as db:
            assert_cancelled(db)
    finally:
        bouncer.stop()  # its server connections log in as the role
        admin.query("DROP ROLE IF EXISTS pgrt_timed")
        admin.close()
