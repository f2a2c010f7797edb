"""A server limit as backpressure: a role with ``CONNECTION LIMIT`` on a throwaway cluster.

When the server refuses a connection at its limit (SQLSTATE 53300), a blocking pool's caller
waits within its ``timeout`` for a connection of its pool to come back, or for room, instead of
failing at once; ``stats()`` counts the refusals. Every load loop is bounded in count and time.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator

import pytest

from pgregistry import PooledPg, ServerFullError
from pgregistry.testing import TemporaryCluster

pytestmark = pytest.mark.slow


@pytest.fixture
def limited(healthy_cluster: TemporaryCluster) -> Iterator[tuple[str, str]]:
    """A database and a role ``limited`` with a connection limit (set by each test); the DSN."""
    dbname = healthy_cluster.createdb("pgrt_limited")
    healthy_cluster.execute(
        "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'limited') THEN "
        "CREATE ROLE limited LOGIN; END IF; END $$",
        dbname="postgres",
        user="postgres",
    )
    healthy_cluster.execute("GRANT ALL ON SCHEMA public TO limited", dbname=dbname, user="postgres")
    healthy_cluster.execute("DROP TABLE IF EXISTS hits", dbname=dbname, user="postgres")
    healthy_cluster.execute("CREATE TABLE hits (n int)", dbname=dbname, user="postgres")
    healthy_cluster.execute("GRANT ALL ON hits TO limited", dbname=dbname, user="postgres")
    dsn = f"host={healthy_cluster.host} port={healthy_cluster.port} dbname={dbname} user=limited"
    yield dbname, dsn


def set_limit(cluster: TemporaryCluster, limit: int) -> None:
    cluster.execute(
        f"ALTER ROLE limited CONNECTION LIMIT {limit}", dbname="postgres", user="postgres"
    )


def test_a_checkout_at_the_roles_limit_waits_for_a_connection_to_come_back(
    healthy_cluster: TemporaryCluster, limited: tuple[str, str]
) -> None:
    set_limit(healthy_cluster, 1)
    _dbname, dsn = limited
    with PooledPg(0, 2, 2, True, dbname=dsn, timeout=20) as pool:
        first = pool.connection()
        first.query("SELECT 1")
        got: list[object] = []

        def second() -> None:
            try:
                with pool.connection() as db:
                    got.append(db.query("SELECT 2").getresult())
            except Exception as exc:
                got.append(exc)

        waiter = threading.Thread(target=second)
        waiter.start()
        time.sleep(0.5)  # refused by the server at least once meanwhile
        assert not got, got
        first.close()
        waiter.join(30)
        assert got == [[(2,)]]
        stats = pool.stats()
        assert stats["server_full"] >= 1 and stats["open"] == 1


def test_at_the_limit_for_longer_than_timeout_raises_server_full(
    healthy_cluster: TemporaryCluster, limited: tuple[str, str]
) -> None:
    set_limit(healthy_cluster, 1)
    _dbname, dsn = limited
    with PooledPg(0, 2, 2, True, dbname=dsn, timeout=0.5) as pool:
        held = pool.connection()
        with pytest.raises(ServerFullError, match="too many connections for role"):
            pool.connection()
        held.close()
        assert pool.stats()["open"] == 1  # the refused place was given back


def test_a_non_blocking_pool_fails_at_once(
    healthy_cluster: TemporaryCluster, limited: tuple[str, str]
) -> None:
    set_limit(healthy_cluster, 1)
    _dbname, dsn = limited
    with PooledPg(0, 2, 2, False, dbname=dsn, timeout=20) as pool:
        held = pool.connection()
        started = time.monotonic()
        with pytest.raises(ServerFullError):
            pool.connection()
        assert time.monotonic() - started < 10  # did not wait out the 20 s timeout
        held.close()


WORKER = textwrap.dedent(
    """
    import sys, threading
    from pgregistry import PooledPg

    dsn, threads, ops = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    errors = []
    with PooledPg(0, 10, 10, True, name="worker", timeout=120, dbname=dsn) as pool:
        def work():
            try:
                for i in range(ops):
                    with pool.transaction() as db:
                        db.query("INSERT INTO hits VALUES ($1)", (i,))
                        db.query("SELECT pg_sleep(0.002)")
            except Exception as exc:
                errors.append(repr(exc))
        workers = [threading.Thread(target=work) for _ in range(threads)]
        for t in workers:
            t.start()
        for t in workers:
            t.join(150)
        stats = pool.stats()
    print(len(errors), stats["server_full"], errors[:3], flush=True)
    sys.exit(1 if errors else 0)
    """
)


def test_eight_processes_against_a_role_limit_of_12_get_no_errors(
    healthy_cluster: TemporaryCluster, limited: tuple[str, str], capsys: pytest.CaptureFixture[str]
) -> None:
    set_limit(healthy_cluster, 12)
    dbname, dsn = limited
    peak = [0]
    stop = threading.Event()

    def sample() -> None:
        deadline = time.monotonic() + 170
        while not stop.is_set() and time.monotonic() < deadline:
            rows = healthy_cluster.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE usename = 'limited'",
                dbname="postgres",
                user="postgres",
            )
            peak[0] = max(peak[0], int(rows[0][0]))
            time.sleep(0.005)

    sampler = threading.Thread(target=sample)
    sampler.start()
    started = time.monotonic()
    try:
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", WORKER, dsn, "10", "20"],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
            )
            for _ in range(8)
        ]
        outputs = [proc.communicate(timeout=180)[0] for proc in procs]
    finally:
        stop.set()
        sampler.join(30)
    elapsed = time.monotonic() - started
    assert [proc.returncode for proc in procs] == [0] * 8, outputs
    rows = healthy_cluster.execute("SELECT count(*) FROM hits", dbname=dbname, user="postgres")
    assert int(rows[0][0]) == 8 * 10 * 20  # every transaction committed once
    assert 0 < peak[0] <= 12, peak
    refusals = sum(int(out.split()[1]) for out in outputs)
    with capsys.disabled():
        print(
            f"\nrole limit 12, 8 processes x pools of 10: 0 errors, peak {peak[0]} backends, "
            f"{refusals} refusals waited out, {8 * 10 * 20 / elapsed:.0f} txn/s"
        )
