"""The connection storm: HikariCP's spike test, for pgregistry, DBUtils and psycopg_pool.

50 threads start at once on a cold pool (no connection open, at most 20), each doing a fixed
number of 2 ms queries (``SELECT pg_sleep(0.002)``); every new connection takes about 150 ms
because it goes through :mod:`slowproxy`, a delaying TCP proxy in a process of its own. The
proxy reports each connection it accepts and closes, so the count of open connections over time
is the same measure for every library, read outside all of them. A pool that opens a connection
for every caller who finds none idle ends at its maximum; one that lets callers wait for a
returned connection (and elides opens it no longer needs) ends with a handful.
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from stats import Column, Result, Row, Stat, Target

HERE = Path(__file__).resolve().parent
SQL = "SELECT pg_sleep(0.002)"
THREADS = 50
MAX_CONNECTIONS = 20
CONNECT_DELAY = 0.150
POOL_TIMEOUT = 30.0
# Percentiles kept of the checkout waits (the chart and the table read them).
_PERCENTILES = (50.0, 90.0, 99.0, 100.0)


@dataclass
class StormRun:
    peak_open: int  # most connections open or opening at once through the proxy
    final_open: int  # open when the last thread finished (before the pool is closed)
    opened: int  # connections the pool started during the burst
    p50_wait_ms: float  # checkout waits of every op of every thread
    p99_wait_ms: float
    max_wait_ms: float
    burst_ms: float  # first thread starts -> last thread done
    errors: int
    timeline: list[tuple[float, int]] = field(default_factory=list)  # (ms since start, open)


class _Proxy:
    """The :mod:`slowproxy` child and the events it reports: (monotonic time, id, what)."""

    def __init__(self, upstream_port: int, delay: float) -> None:
        self.events: list[tuple[float, int, str]] = []
        self._lock = threading.Lock()
        self.process = subprocess.Popen(
            [
                sys.executable,
                str(HERE / "slowproxy.py"),
                "--upstream-port",
                str(upstream_port),
                "--delay",
                str(delay),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self.process.stdout is not None
        first = self.process.stdout.readline().split()
        if len(first) != 2 or first[0] != "port":
            self.close()
            raise RuntimeError(f"slowproxy did not start (said {first!r})")
        self.port = int(first[1])
        self._reader = threading.Thread(target=self._read, name="slowproxy-reader", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            t, conn_id, what = line.split()
            with self._lock:
                self.events.append((float(t), int(conn_id), what))

    def snapshot(self) -> list[tuple[float, int, str]]:
        with self._lock:
            return list(self.events)

    def open_now(self) -> int:
        events = self.snapshot()
        return sum(1 for e in events if e[2] == "accept") - sum(
            1 for e in events if e[2] == "close"
        )

    def close(self) -> None:
        if self.process.stdin is not None:
            self.process.stdin.close()  # the proxy exits when its stdin closes
        try:
            self.process.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=5)


class _Via:
    """The throwaway cluster's address with the port replaced by the proxy's."""

    def __init__(self, server: Any, port: int) -> None:
        self.host, self.port, self.dbname, self.user = server.host, port, server.dbname, server.user

    def connect_kwargs(self) -> dict[str, Any]:
        return {"dbname": self.dbname, "host": self.host, "port": self.port, "user": self.user}

    @property
    def conninfo(self) -> str:
        return f"host={self.host} port={self.port} dbname={self.dbname} user={self.user}"


# Each subject: a cold pool of at most MAX_CONNECTIONS behind the proxy, returned as
# (checkout, checkin, query, close).
Subject = tuple[
    Callable[[], Any], Callable[[Any], Any], Callable[[Any, str], Any], Callable[[], Any]
]


def _pg_query(c: Any, sql: str) -> Any:
    return c.query(sql).getresult()


def _pgregistry(via: _Via) -> Subject:
    from pgregistry import PooledPg

    pool = PooledPg(
        0, MAX_CONNECTIONS, MAX_CONNECTIONS, True, timeout=POOL_TIMEOUT, **via.connect_kwargs()
    )
    return pool.connection, lambda c: c.close(), _pg_query, pool.close


def _dbutils(via: _Via) -> Subject:
    from dbutils.pooled_pg import PooledPg

    pool = PooledPg(0, MAX_CONNECTIONS, MAX_CONNECTIONS, True, **via.connect_kwargs())
    return pool.connection, lambda c: c.close(), _pg_query, pool.close


def _psycopg_pool(via: _Via) -> Subject:
    from psycopg_pool import ConnectionPool

    pool = ConnectionPool(
        via.conninfo,
        min_size=0,
        max_size=MAX_CONNECTIONS,
        kwargs={"autocommit": True},
        timeout=POOL_TIMEOUT,
        open=True,
    )

    def query(c: Any, sql: str) -> Any:
        return c.execute(sql).fetchall()

    return pool.getconn, pool.putconn, query, lambda: pool.close(timeout=5.0)


SUBJECTS: dict[str, Callable[[_Via], Subject]] = {
    "pgregistry PooledPg": _pgregistry,
    "DBUtils PooledPg": _dbutils,
    "psycopg_pool (min_size=0)": _psycopg_pool,
}


def _timeline(
    events: list[tuple[float, int, str]], t0: float, t_end: float
) -> list[tuple[float, int]]:
    """Open (or opening) connections after each event in [t0, t_end], as (ms since t0, count)."""
    out = [(0.0, 0)]
    now = 0
    for t, _, what in sorted(events):
        if t > t_end:
            break
        now += 1 if what == "accept" else -1 if what == "close" else 0
        if what != "open":
            out.append((round((t - t0) * 1e3, 2), now))
    out.append((round((t_end - t0) * 1e3, 2), now))
    return out


def _quantile(sorted_values: list[float], q: float) -> float:
    if not sorted_values:
        return 0.0
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * q / 100))]


def storm_run(proxy: _Proxy, factory: Callable[[_Via], Subject], server: Any, ops: int) -> StormRun:
    """One burst on a new cold pool; bounded by ``ops`` per thread and the pool's timeout."""
    settle = time.monotonic() + 10
    while proxy.open_now() and time.monotonic() < settle:  # the last pool's connections go
        time.sleep(0.02)
    before = len(proxy.snapshot())
    checkout, checkin, query, close = factory(_Via(server, proxy.port))
    waits: list[list[float]] = [[] for _ in range(THREADS)]
    errors = [0] * THREADS
    done_at = [0.0] * THREADS
    start = threading.Barrier(THREADS + 1)

    def worker(i: int) -> None:
        start.wait(timeout=60)
        for _ in range(ops):
            t0 = time.monotonic()
            try:
                c = checkout()
            except Exception:
                errors[i] += 1
                continue
            waits[i].append((time.monotonic() - t0) * 1e3)
            try:
                query(c, SQL)
            except Exception:
                errors[i] += 1
            finally:
                checkin(c)
        done_at[i] = time.monotonic()

    threads = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(THREADS)]
    try:
        for t in threads:
            t.start()
        t_start = time.monotonic()
        start.wait(timeout=60)
        for t in threads:
            t.join(timeout=POOL_TIMEOUT + 60)
        t_end = max(done_at) or time.monotonic()
        time.sleep(0.05)  # let the reader catch up with the proxy's last lines
        final_open = proxy.open_now()
    finally:
        close()
    events = proxy.snapshot()[before:]
    timeline = _timeline(events, t_start, t_end)
    everything = sorted(w for ws in waits for w in ws)
    return StormRun(
        peak_open=max(n for _, n in timeline),
        final_open=final_open,
        opened=sum(1 for t, _, what in events if what == "accept" and t <= t_end),
        p50_wait_ms=_quantile(everything, 50),
        p99_wait_ms=_quantile(everything, 99),
        max_wait_ms=everything[-1] if everything else 0.0,
        burst_ms=(t_end - t_start) * 1e3,
        errors=sum(errors),
        timeline=timeline,
    )


def measure_storm(server: Any, repeats: int, ops: int, missing_pgregistry: str | None) -> Result:
    result = Result(
        name="storm",
        title=(
            f"9. Connection storm: {THREADS} threads on a cold pool (max {MAX_CONNECTIONS}), "
            f"connects slowed to {CONNECT_DELAY * 1e3:.0f} ms"
        ),
        what=(
            f"HikariCP's spike test: {THREADS} threads start at once on a pool with no "
            f"connection open (`mincached` 0 / `min_size` 0, at most {MAX_CONNECTIONS}); each "
            f"does {ops} x (checkout, `{SQL}`, checkin). Every connect goes through a proxy "
            f"that delays it {CONNECT_DELAY * 1e3:.0f} ms (benchmarks/slowproxy.py, its own "
            "process) and reports each connection, so open connections are counted outside the "
            "pools: **peak** open or opening at once, **final** open when the last thread is "
            "done, **opened** during the burst; checkout waits over every op."
        ),
        baseline=(
            f"none: the connections a pool needs are about the ops in flight (at most "
            f"{MAX_CONNECTIONS}); fewer opened for the same waits is better"
        ),
        columns=[
            Column("peak", "peak open", ".0f"),
            Column("final", "final open", ".0f"),
            Column("opened", "opened", ".0f"),
            Column("p50", "p50 wait ms", ".1f"),
            Column("p99", "p99 wait ms", ".0f"),
            Column("max", "max wait ms", ".0f"),
            Column("burst", "burst ms", ".0f"),
            Column("errors", "errors", "d"),
        ],
    )
    subjects = dict(SUBJECTS)
    if missing_pgregistry:
        subjects.pop("pgregistry PooledPg")
        result.notes.append(f"pgregistry not measured: {missing_pgregistry}")
    runs: dict[str, list[StormRun]] = {}
    proxy = _Proxy(server.port, CONNECT_DELAY)
    try:
        names = list(subjects)
        for r in range(repeats):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                try:
                    run = storm_run(proxy, subjects[name], server, ops)
                except Exception as exc:
                    result.notes.append(f"{name}: run failed: {type(exc).__name__}: {exc}")
                    continue
                runs.setdefault(name, []).append(run)
    finally:
        proxy.close()
    for name in subjects:
        got = runs.get(name)
        if not got:
            continue
        result.rows.append(
            Row(
                name,
                {
                    "peak": Stat([float(x.peak_open) for x in got]),
                    "final": Stat([float(x.final_open) for x in got]),
                    "opened": Stat([float(x.opened) for x in got]),
                    "p50": Stat([x.p50_wait_ms for x in got]),
                    "p99": Stat([x.p99_wait_ms for x in got]),
                    "max": Stat([x.max_wait_ms for x in got]),
                    "burst": Stat([x.burst_ms for x in got]),
                    "errors": sum(x.errors for x in got),
                },
            )
        )
    result.raw = {name: [vars(x) for x in got] for name, got in runs.items()}
    mine = runs.get("pgregistry PooledPg")
    target = "storm: pgregistry opens <= 8 connections (worst run)"
    if mine:
        worst = max(x.opened for x in mine)
        peak = max(x.peak_open for x in mine)
        result.targets = [Target(target, worst <= 8, f"{worst} (peak {peak})")]
    else:
        result.targets = [Target(target, None, "not measured")]
    result.notes.append(
        f"{repeats} runs per pool, a fresh cold pool each; median (min\u2013max) over runs. "
        "Open connections counted at the proxy include connects still waiting out the delay."
    )
    if mine:
        median_burst = statistics.median(x.burst_ms for x in mine)
        result.notes.append(f"pgregistry's burst took {median_burst:.0f} ms (median).")
    return result
