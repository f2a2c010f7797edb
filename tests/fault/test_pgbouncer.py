"""pgregistry behind a real PgBouncer (Debian's package) in front of a throwaway cluster (#15).

Many processes, each with its own pools: PgBouncer's ``default_pool_size`` bounds the server
backends, whatever the clients' pools add up to. Every load loop is bounded in count and time.
"""

from __future__ import annotations

import io
import logging
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from pgregistry import PooledPg, cli
from pgregistry.testing import TemporaryCluster
from pgregistry.testing.pgbouncer import TemporaryPgBouncer

MakeBouncer = Callable[..., TemporaryPgBouncer]


def target(bouncer: TemporaryPgBouncer, cluster: TemporaryCluster, dbname: str) -> str:
    kwargs = bouncer.connect_kwargs(cluster.connect_kwargs(dbname))
    return " ".join(f"{key}={value}" for key, value in kwargs.items())


def test_a_pool_behind_pgbouncer_says_once_that_a_pooler_is_in_the_way(
    healthy_cluster: TemporaryCluster, pgbouncer: MakeBouncer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="pgregistry")
    bouncer = pgbouncer("transaction")
    with PooledPg(
        2, 2, 4, True, name="bounced", dbname=target(bouncer, healthy_cluster, "postgres")
    ) as pool:
        for _ in range(3):
            with pool.connection() as db:
                db.query("SELECT 1")
        assert pool.pooler_detected is True
    said = [r for r in caplog.records if "connection pooler such as PgBouncer" in r.getMessage()]
    assert len(said) == 1 and "'bounced'" in said[0].getMessage()
    assert 'declare it with server_pooling = "transaction"' in said[0].getMessage()


def test_a_direct_pool_finds_no_pooler(healthy_cluster: TemporaryCluster) -> None:
    with PooledPg(
        1, dbname=" ".join(f"{k}={v}" for k, v in healthy_cluster.connect_kwargs().items())
    ) as pool:
        assert pool.pooler_detected is False


def test_ping_reports_the_pooler(
    healthy_cluster: TemporaryCluster,
    pgbouncer: MakeBouncer,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    bouncer = pgbouncer("transaction")
    kwargs = bouncer.connect_kwargs(healthy_cluster.connect_kwargs("postgres"))
    config = tmp_path / "pools.toml"
    config.write_text(
        "[pools.bounced]\n"
        + "".join(
            f'{k} = "{v}"\n' if isinstance(v, str) else f"{k} = {v}\n" for k, v in kwargs.items()
        )
    )
    monkeypatch.delenv("PGPOOLS_CONFIG", raising=False)
    out = io.StringIO()
    assert cli.main(["ping", "--config", str(config)], out=out) == 0
    assert "through a connection pooler such as PgBouncer" in out.getvalue()


WORKER = textwrap.dedent(
    """
    import sys, threading
    from pgregistry import PooledPg

    dsn, threads, ops = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    errors = []
    with PooledPg(0, 10, 10, True, name="worker", timeout=60, dbname=dsn) as pool:
        def work():
            try:
                for i in range(ops):
                    with pool.transaction() as db:
                        db.query("INSERT INTO hits (worker) VALUES ($1)", (i,))
                        db.query("SELECT pg_sleep(0.002)")
            except Exception as exc:
                errors.append(repr(exc))
        workers = [threading.Thread(target=work) for _ in range(threads)]
        for t in workers:
            t.start()
        for t in workers:
            t.join(120)
    print(len(errors), errors[:3], flush=True)
    sys.exit(1 if errors else 0)
    """
)


def test_eight_processes_through_transaction_pooling_stay_within_pgbouncers_pool(
    healthy_cluster: TemporaryCluster, pgbouncer: MakeBouncer
) -> None:
    dbname = healthy_cluster.createdb("pgrt_bouncer")
    healthy_cluster.execute("CREATE TABLE IF NOT EXISTS hits (worker int)", dbname=dbname)
    healthy_cluster.execute("TRUNCATE hits", dbname=dbname)
    bouncer = pgbouncer("transaction", default_pool_size=10, max_client_conn=200)
    dsn = target(bouncer, healthy_cluster, dbname)
    peak = [0]
    stop = threading.Event()

    def sample() -> None:
        deadline = time.monotonic() + 120
        while not stop.is_set() and time.monotonic() < deadline:
            rows = healthy_cluster.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = $1"
                " AND backend_type = 'client backend'",
                (dbname,),
                dbname="postgres",
            )
            peak[0] = max(peak[0], int(rows[0][0]))
            time.sleep(0.005)

    sampler = threading.Thread(target=sample)
    sampler.start()
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
    assert [proc.returncode for proc in procs] == [0] * 8, outputs
    rows = healthy_cluster.execute("SELECT count(*) FROM hits", dbname=dbname)
    assert int(rows[0][0]) == 8 * 10 * 20  # every transaction committed once
    assert 0 < peak[0] <= 10, peak  # 8 processes x pools of 10, PgBouncer's pool of 10
    print(f"peak server backends {peak[0]} for 8 processes x 10 connections")
