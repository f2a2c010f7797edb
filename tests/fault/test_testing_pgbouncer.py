"""A real PgBouncer (``pgregistry.testing.TemporaryPgBouncer``) in both pool modes."""

from __future__ import annotations

from collections.abc import Callable

import pg

from pgregistry.testing import TemporaryCluster, TemporaryPgBouncer


def test_transaction_mode_shares_server_sessions_between_clients(
    pgbouncer: Callable[..., TemporaryPgBouncer], healthy_cluster: TemporaryCluster
) -> None:
    bouncer = pgbouncer("transaction", default_pool_size=1)
    kwargs = bouncer.connect_kwargs(healthy_cluster.connect_kwargs())
    first, second = pg.DB(**kwargs), pg.DB(**kwargs)
    try:
        server_pid = first.query("SELECT pg_backend_pid()").getresult()[0][0]
        assert server_pid != first.backend_pid  # the pooler answers libpq's handshake
        first.query("SET statement_timeout = '7s'")
        # One server connection for both clients: the SET leaks to the other one.
        assert second.query("SHOW statement_timeout").getresult() == [("7s",)]
        assert second.query("SELECT pg_backend_pid()").getresult()[0][0] == server_pid
        pools = {row[0]: row for row in bouncer.admin("SHOW POOLS")}
        assert pools[healthy_cluster.dbname][-1] == "transaction"
    finally:
        first.close()
        second.close()


def test_session_mode_keeps_a_server_session_per_client(
    pgbouncer: Callable[..., TemporaryPgBouncer], healthy_cluster: TemporaryCluster
) -> None:
    bouncer = pgbouncer("session", default_pool_size=2)
    kwargs = bouncer.connect_kwargs(healthy_cluster.connect_kwargs())
    first, second = pg.DB(**kwargs), pg.DB(**kwargs)
    try:
        first.query("SET statement_timeout = '7s'")
        assert second.query("SHOW statement_timeout").getresult() != [("7s",)]
        pids = {db.query("SELECT pg_backend_pid()").getresult()[0][0] for db in (first, second)}
        assert len(pids) == 2
    finally:
        first.close()
        second.close()


def test_stop_ends_the_process_and_removes_its_directory(
    pgbouncer: Callable[..., TemporaryPgBouncer],
) -> None:
    bouncer = pgbouncer("transaction")
    directory, process = bouncer.log_file.parent, bouncer._process
    bouncer.stop()
    assert process is not None and process.poll() is not None
    assert not directory.exists()
    assert not bouncer.is_running()
