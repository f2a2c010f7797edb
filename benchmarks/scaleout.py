"""Many processes against one server (issue 15): direct, through PgBouncer, under a role limit.

8 worker processes, each with a pgregistry pool of 10 (blocking) shared by 10 threads, run a
fixed number of short transactions each (``INSERT`` + ``SELECT pg_sleep(0.002)`` inside
``pool.transaction()``) in three setups on a throwaway cluster of this measure's own:

(a) direct, no limit: up to 80 backends (the baseline);
(b) through a real PgBouncer in transaction mode, ``default_pool_size = 10``, the pools declaring
    ``server_pooling = "transaction"``: at most 10 backends;
(c) direct, as a role with ``CONNECTION LIMIT 12``: the server refuses the 13th connection
    (SQLSTATE 53300) and pgregistry's callers wait for a connection of their pool to come back
    or for room, counted in ``stats()["server_full"]``.

Every setup uses the same non-superuser role (a superuser ignores ``CONNECTION LIMIT``). The
workers start, open their pools (empty) and report ready; then all get "go" at once and time
their own run with the system-wide monotonic clock, so throughput is every transaction over
(last end - first start), process start-up excluded. A sampler in this process counts the role's
client backends in ``pg_stat_activity`` every ~5 ms. Each run starts with none left over.
"""

from __future__ import annotations

import contextlib
import json
import selectors
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from stats import Column, Result, Row, Stat, Target

PROCESSES = 8
THREADS = 10  # per process, sharing its pool
POOL_SIZE = 10  # each process's pool: PooledPg(0, 10, 10, True)
BOUNCER_POOL = 10  # PgBouncer's default_pool_size
ROLE_LIMIT = 12
MAX_REPEATS = 3  # a repeat is three setups of 8 processes: about 15 s on 2 cores
OPS_FULL = 100  # transactions per thread: 8 x 10 x 100 = 8,000 per run (2-4 s)
OPS_QUICK = 8
ROLE = "scaleout"
DBNAME = "scaleout"
SAMPLE_EVERY = 0.005
RUN_TIMEOUT = 150.0  # seconds a run may take, whatever happens
POOL_TIMEOUT = 120.0  # the workers' pool timeout: long enough to wait out every refusal

DIRECT = "(a) direct, no limit"
BOUNCER = f"(b) PgBouncer, transaction mode, default_pool_size={BOUNCER_POOL}"
LIMITED = f"(c) direct, role CONNECTION LIMIT {ROLE_LIMIT}"
SETUPS = (DIRECT, BOUNCER, LIMITED)

# One worker process: its pool, its threads, a JSON line of what happened. It waits for "go" on
# stdin after opening its (empty) pool, so that interpreter start-up is not timed.
WORKER = textwrap.dedent(
    """
    import json, sys, threading, time
    from pgregistry import PooledPg

    dsn, server_pooling = sys.argv[1], sys.argv[2]
    threads, ops, pool_size, timeout = (int(sys.argv[3]), int(sys.argv[4]),
                                        int(sys.argv[5]), float(sys.argv[6]))
    errors = []
    lock = threading.Lock()
    with PooledPg(0, pool_size, pool_size, True, name="scaleout", timeout=timeout,
                  server_pooling=server_pooling, dbname=dsn) as pool:
        print("ready", flush=True)
        if sys.stdin.readline().strip() != "go":
            sys.exit(2)

        def work(n):
            for i in range(ops):
                try:
                    with pool.transaction() as db:
                        db.query("INSERT INTO hits VALUES ($1, $2)", (n, i))
                        db.query("SELECT pg_sleep(0.002)")
                except Exception as exc:
                    with lock:
                        errors.append(type(exc).__name__ + ": " + str(exc)[:200])
                    time.sleep(0.01)

        workers = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
        started = time.monotonic()
        for t in workers:
            t.start()
        for t in workers:
            t.join(timeout + 30)
        ended = time.monotonic()
        stats = pool.stats()
    print(json.dumps({"started": started, "ended": ended, "errors": len(errors),
                      "samples": errors[:3], "server_full": stats["server_full"],
                      "stuck": sum(t.is_alive() for t in workers)}), flush=True)
    """
)


@dataclass
class ScaleRun:
    setup: str
    txn_per_s: float
    seconds: float
    errors: int
    committed: int  # rows in the table after the run
    expected: int
    peak_backends: int
    refusals: int  # stats()["server_full"] summed over the processes
    error_samples: list[str]


class _Sampler:
    """Counts the role's client backends every ~5 ms on one connection of its own."""

    def __init__(self, server: Any) -> None:
        import pg

        self._db = pg.DB(**server.connect_kwargs("postgres"))
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="scaleout-sampler", daemon=True)

    def _count(self) -> int:
        rows = self._db.query(
            "SELECT count(*) FROM pg_stat_activity"
            " WHERE usename = $1 AND backend_type = 'client backend'",
            (ROLE,),
        ).getresult()
        return int(rows[0][0])

    def settle(self, timeout: float = 15.0) -> int:
        """Wait (bounded) until no backend of the role is left from a previous run."""
        deadline = time.monotonic() + timeout
        while (left := self._count()) and time.monotonic() < deadline:
            time.sleep(0.05)
        return left

    def _run(self) -> None:
        deadline = time.monotonic() + RUN_TIMEOUT + 30
        while not self._stop.is_set() and time.monotonic() < deadline:
            self.peak = max(self.peak, self._count())
            time.sleep(SAMPLE_EVERY)

    @contextlib.contextmanager
    def sampling(self) -> Iterator[None]:
        self.peak = 0
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name="scaleout-sampler", daemon=True)
        self._thread.start()
        try:
            yield
        finally:
            self._stop.set()
            self._thread.join(30)

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._db.close()


def _prepare(server: Any) -> None:
    """The role (no superuser: CONNECTION LIMIT applies to it) and the table, as postgres."""
    server.execute(
        f"DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{ROLE}') THEN "
        f"CREATE ROLE {ROLE} LOGIN; END IF; END $$",
        dbname="postgres",
        user="postgres",
    )
    server.createdb(DBNAME)
    server.execute(f"ALTER DATABASE {DBNAME} OWNER TO {ROLE}", dbname="postgres", user="postgres")
    server.execute("DROP TABLE IF EXISTS hits", dbname=DBNAME, user=ROLE)
    server.execute("CREATE TABLE hits (worker int, seq int)", dbname=DBNAME, user=ROLE)


def _set_limit(server: Any, limit: int) -> None:
    server.execute(
        f"ALTER ROLE {ROLE} CONNECTION LIMIT {limit}", dbname="postgres", user="postgres"
    )


def _wait_ready(procs: list[subprocess.Popen[str]], timeout: float) -> list[str]:
    """Read each worker's first line ("ready"), within ``timeout`` seconds for all."""
    deadline = time.monotonic() + timeout
    first: dict[int, str] = {}
    with selectors.DefaultSelector() as sel:
        for i, proc in enumerate(procs):
            assert proc.stdout is not None
            sel.register(proc.stdout, selectors.EVENT_READ, i)
        while len(first) < len(procs) and time.monotonic() < deadline:
            for key, _ in sel.select(timeout=max(0.0, deadline - time.monotonic())):
                i = key.data
                stream = procs[i].stdout
                assert stream is not None
                first[i] = stream.readline().strip()
                sel.unregister(key.fileobj)
    return [first.get(i, "(no answer)") for i in range(len(procs))]


def scale_run(
    server: Any, sampler: _Sampler, setup: str, dsn: str, pooling: str, ops: int
) -> ScaleRun:
    """One run of 8 processes for ``setup``; bounded by RUN_TIMEOUT."""
    server.execute("TRUNCATE hits", dbname=DBNAME, user="postgres")
    sampler.settle()
    argv = [sys.executable, "-c", WORKER, dsn, pooling, str(THREADS), str(ops), str(POOL_SIZE)]
    argv.append(str(POOL_TIMEOUT))
    # stderr is inherited: during a bench run that is benchmarks/results/raw-last-run.log.
    procs = [
        subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        for _ in range(PROCESSES)
    ]
    reports: list[dict[str, Any]] = []
    try:
        ready = _wait_ready(procs, 60.0)
        if any(line != "ready" for line in ready):
            raise RuntimeError(f"workers did not start: {ready}")
        with sampler.sampling():
            for proc in procs:
                assert proc.stdin is not None
                proc.stdin.write("go\n")
                proc.stdin.flush()
            deadline = time.monotonic() + RUN_TIMEOUT
            for proc in procs:
                proc.wait(timeout=max(1.0, deadline - time.monotonic()))
        for proc in procs:
            assert proc.stdout is not None
            out = proc.stdout.read().strip().splitlines()
            if proc.returncode != 0 or not out:
                raise RuntimeError(f"a worker exited with {proc.returncode}: {out[-3:]}")
            reports.append(json.loads(out[-1]))
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)
            for stream in (proc.stdin, proc.stdout):
                if stream is not None:
                    with contextlib.suppress(Exception):
                        stream.close()
    committed = int(server.execute("SELECT count(*) FROM hits", dbname=DBNAME)[0][0])
    seconds = max(r["ended"] for r in reports) - min(r["started"] for r in reports)
    samples = [s for r in reports for s in r["samples"]]
    stuck = sum(int(r["stuck"]) for r in reports)
    if stuck:
        samples.append(f"{stuck} threads still running at the end")
    return ScaleRun(
        setup=setup,
        txn_per_s=committed / seconds if seconds > 0 else 0.0,
        seconds=seconds,
        errors=sum(int(r["errors"]) for r in reports) + stuck,
        committed=committed,
        expected=PROCESSES * THREADS * ops,
        peak_backends=sampler.peak,
        refusals=sum(int(r["server_full"]) for r in reports),
        error_samples=samples[:3],
    )


def _rotated(items: list[str], shift: int) -> list[str]:
    shift %= len(items)
    return items[shift:] + items[:shift]


def measure_scaleout(smoke: bool, repeats: int) -> Result:
    """Measure 10: the three setups, ``min(repeats, MAX_REPEATS)`` times each (once when
    ``smoke``), interleaved."""
    from pgregistry.testing import TemporaryCluster, find_pgbouncer
    from pgregistry.testing.pgbouncer import TemporaryPgBouncer

    repeats = 1 if smoke else max(1, min(repeats, MAX_REPEATS))
    ops = OPS_QUICK if smoke else OPS_FULL
    total = PROCESSES * THREADS * ops
    result = Result(
        name="scaleout",
        title=(
            f"10. Many processes: {PROCESSES} processes x pools of {POOL_SIZE}, direct, through "
            f"PgBouncer, under a role limit of {ROLE_LIMIT}"
        ),
        what=(
            f"{PROCESSES} worker processes, each with a blocking pgregistry pool of {POOL_SIZE} "
            f"shared by {THREADS} threads, run {ops} transactions per thread ({total:,} in all): "
            "`INSERT` + `SELECT pg_sleep(0.002)` in `pool.transaction()`. Setups: (a) straight "
            f"to the server; (b) through PgBouncer in transaction mode with `default_pool_size = "
            f'{BOUNCER_POOL}` and `server_pooling="transaction"`; (c) straight, as a role with '
            f"`CONNECTION LIMIT {ROLE_LIMIT}`, where refused connects (53300) are waited out "
            '(**refusals**: `stats()["server_full"]` over all processes). **peak backends**: '
            "the role's client backends in `pg_stat_activity`, sampled every ~5 ms."
        ),
        baseline="(a) direct, no limit, in the same repeat",
        columns=[
            Column("tps", "txn/s", ".0f"),
            Column("ratio", "x (a)"),
            Column("errors", "errors", "d"),
            Column("peak", "peak backends", ".0f"),
            Column("refusals", "refusals", ".0f"),
        ],
    )
    setups = list(SETUPS)
    if find_pgbouncer() is None:
        setups.remove(BOUNCER)
        result.notes.append(
            "(b) skipped: no pgbouncer binary installed (apt-get install pgbouncer, or set "
            "PGREGISTRY_PGBOUNCER to one)."
        )
    runs: dict[str, list[ScaleRun]] = {s: [] for s in setups}
    ratios: dict[str, list[float]] = {s: [] for s in setups}
    with TemporaryCluster(max_connections=PROCESSES * POOL_SIZE + 20) as server:
        _prepare(server)
        direct = f"host={server.host} port={server.port} dbname={DBNAME} user={ROLE}"
        sampler = _Sampler(server)
        try:
            for r in range(repeats):
                got: dict[str, ScaleRun] = {}
                for setup in _rotated(setups, r):
                    try:
                        got[setup] = _one(server, sampler, setup, direct, ops, TemporaryPgBouncer)
                    except Exception as exc:
                        result.notes.append(f"{setup}: run failed: {type(exc).__name__}: {exc}")
                for setup, run in got.items():
                    runs[setup].append(run)
                    base = got.get(DIRECT)
                    if base is not None and base.txn_per_s:
                        ratios[setup].append(run.txn_per_s / base.txn_per_s)
        finally:
            sampler.close()
            with contextlib.suppress(Exception):
                _set_limit(server, -1)
    for setup in setups:
        done = runs[setup]
        if not done:
            continue
        result.rows.append(
            Row(
                setup,
                {
                    "tps": Stat([x.txn_per_s for x in done]),
                    "ratio": Stat(ratios[setup]) if ratios[setup] else None,
                    "errors": sum(x.errors for x in done),
                    "peak": Stat([float(x.peak_backends) for x in done]),
                    "refusals": Stat([float(x.refusals) for x in done]),
                },
            )
        )
        short = [x for x in done if x.committed != x.expected]
        if short:
            result.notes.append(
                f"{setup}: committed {[x.committed for x in short]} of {total} transactions"
            )
        samples = [s for x in done for s in x.error_samples]
        if samples:
            result.notes.append(f"{setup}: errors such as {samples[:2]}")
    result.raw = {s: [vars(x) for x in got_runs] for s, got_runs in runs.items()}
    result.targets = [
        _target(
            runs.get(BOUNCER),
            f"scaleout: through PgBouncer, 0 errors and backends <= {BOUNCER_POOL}",
            BOUNCER_POOL,
        ),
        _target(
            runs.get(LIMITED),
            f"scaleout: role limit {ROLE_LIMIT}, 0 errors and backends <= {ROLE_LIMIT}",
            ROLE_LIMIT,
        ),
    ]
    result.notes.append(
        f"{repeats} repeat(s), the setups in turn (rotated each repeat), {PROCESSES} fresh "
        "processes each run, a fresh PgBouncer for each (b) run; median (min\u2013max). "
        "Throughput counts committed rows over first start to last end across processes."
    )
    return result


def _one(
    server: Any,
    sampler: _Sampler,
    setup: str,
    direct: str,
    ops: int,
    bouncer_cls: Callable[..., Any],
) -> ScaleRun:
    if setup == LIMITED:
        _set_limit(server, ROLE_LIMIT)
        try:
            return scale_run(server, sampler, setup, direct, "none", ops)
        finally:
            _set_limit(server, -1)
    if setup == BOUNCER:
        with bouncer_cls(
            server.host,
            server.port,
            pool_mode="transaction",
            default_pool_size=BOUNCER_POOL,
            max_client_conn=PROCESSES * POOL_SIZE + 20,
            users=["postgres", ROLE],
        ) as bouncer:
            dsn = f"host={bouncer.host} port={bouncer.port} dbname={DBNAME} user={ROLE}"
            return scale_run(server, sampler, setup, dsn, "transaction", ops)
    return scale_run(server, sampler, setup, direct, "none", ops)


def _target(done: list[ScaleRun] | None, text: str, limit: int) -> Target:
    if not done:
        return Target(text, None, "not measured")
    errors = sum(x.errors for x in done) + sum(x.expected - x.committed for x in done)
    peak = max(x.peak_backends for x in done)
    return Target(text, errors == 0 and peak <= limit, f"{errors} errors, peak {peak}")
