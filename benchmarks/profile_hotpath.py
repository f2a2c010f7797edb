#!/usr/bin/env python3
"""Where pgregistry's hot path spends its time: cProfile plus a CPU-time breakdown.

    .bench-venv/bin/python benchmarks/profile_hotpath.py     (after one `make bench`)

Profiles ``pool.connection()`` + ``close()`` and ``connection + query("SELECT 1") + close``
on a throwaway cluster, for pgregistry and DBUtils, and times each layer on its own (queue
get/put, the pool's ``_checkout``/``_checkin``, the proxy, the steady ``query`` wrapper)
with ``process_time_ns``, so a change to ``pool.py`` or ``steady.py`` shows where it helped.
"""

from __future__ import annotations

import cProfile
import gc
import io
import pstats
import queue
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

SQL = "SELECT 1"


def cpu_ns_per_op(fn: Callable[[int], None], n: int, repeats: int = 7) -> float:
    """Median over ``repeats`` of the CPU ns per op of ``fn(n)`` (gc off, after a warm-up)."""
    fn(max(1, n // 10))
    samples = []
    for _ in range(repeats):
        gc.collect()
        gc.disable()
        try:
            t0 = time.process_time_ns()
            fn(n)
            samples.append((time.process_time_ns() - t0) / n)
        finally:
            gc.enable()
    return statistics.median(samples)


def profile(label: str, fn: Callable[[int], None], n: int, top: int = 14) -> None:
    fn(max(1, n // 10))
    profiler = cProfile.Profile()
    gc.collect()
    gc.disable()
    try:
        profiler.enable()
        fn(n)
        profiler.disable()
    finally:
        gc.enable()
    out = io.StringIO()
    stats = pstats.Stats(profiler, stream=out)
    stats.sort_stats("tottime").print_stats(top)
    print(f"\n===== cProfile: {label} ({n} ops) =====")
    lines = out.getvalue().splitlines()
    start = next(i for i, line in enumerate(lines) if "ncalls" in line)
    print("\n".join(lines[start - 2 : start + top + 1]))


def main() -> int:
    import pg
    from dbutils.pooled_pg import PooledPg as DBUtilsPooledPg

    from pgregistry import PooledPg
    from pgregistry.testing import TemporaryCluster

    quick = "--quick" in sys.argv
    n_tight, n_query = (3_000, 500) if quick else (30_000, 4_000)
    with TemporaryCluster(max_connections=50) as server:
        kw = server.connect_kwargs()
        pgr = PooledPg(8, 8, 8, True, **kw)
        dbu = DBUtilsPooledPg(8, 8, 8, True, **kw)
        raw = [pg.DB(**kw) for _ in range(8)]
        q: queue.Queue[Any] = queue.Queue()
        for db in raw:
            q.put(db)

        def checkout_pgr(n: int) -> None:
            connection = pgr.connection
            for _ in range(n):
                connection().close()

        def checkout_dbu(n: int) -> None:
            connection = dbu.connection
            for _ in range(n):
                connection().close()

        def query_pgr(n: int) -> None:
            connection = pgr.connection
            for _ in range(n):
                c = connection()
                c.query(SQL).getresult()
                c.close()

        def query_dbu(n: int) -> None:
            connection = dbu.connection
            for _ in range(n):
                c = connection()
                c.query(SQL).getresult()
                c.close()

        profile("pgregistry connection()+close()", checkout_pgr, n_tight)
        profile("pgregistry connection()+query+close()", query_pgr, n_query)
        profile("DBUtils connection()+query+close()", query_dbu, n_query)

        # Layer by layer, CPU ns per op.
        def queue_get_put(n: int) -> None:
            get, put = q.get, q.put
            for _ in range(n):
                put(get())

        # Internals change; this layer is timed only while they have these names.
        internal = (getattr(pgr, "_checkout", None), getattr(pgr, "_checkin", None))

        def pool_internal(n: int) -> None:
            co, ci = internal
            assert co is not None and ci is not None
            for _ in range(n):
                ci(co())

        steady = pgr.connection()
        raw_db = raw[0]
        proxy = pgr.connection()

        def query_raw(n: int) -> None:
            for _ in range(n):
                raw_db.query(SQL).getresult()

        def query_steady(n: int) -> None:
            for _ in range(n):
                steady.steady.query(SQL).getresult()

        def query_proxy(n: int) -> None:
            for _ in range(n):
                proxy.query(SQL).getresult()

        rows = [
            ("queue.Queue get+put", cpu_ns_per_op(queue_get_put, n_tight)),
            (
                "pgregistry _checkout+_checkin (no proxy)",
                cpu_ns_per_op(pool_internal, n_tight) if all(internal) else float("nan"),
            ),
            ("pgregistry connection()+close()", cpu_ns_per_op(checkout_pgr, n_tight)),
            ("DBUtils connection()+close()", cpu_ns_per_op(checkout_dbu, n_tight)),
            ("raw pg.DB query(SELECT 1).getresult()", cpu_ns_per_op(query_raw, n_query)),
            ("SteadyPgConnection.query", cpu_ns_per_op(query_steady, n_query)),
            ("PooledPgConnection.query (proxy)", cpu_ns_per_op(query_proxy, n_query)),
            ("pgregistry connection+query+close", cpu_ns_per_op(query_pgr, n_query)),
            ("DBUtils connection+query+close", cpu_ns_per_op(query_dbu, n_query)),
        ]
        steady.close()
        proxy.close()
        print("\n===== CPU ns per op (median of 7) =====")
        for label, ns in rows:
            print(f"{label:45s} {ns:10.0f}")
        pgr.close()
        dbu.close()
        for db in raw:
            db.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
