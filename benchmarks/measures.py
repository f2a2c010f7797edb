"""The measures. Each returns a :class:`~stats.Result` whose numbers are ratios to a baseline
measured in the same run, as medians of repeated runs with their spread (min-max).

Single-thread loops run with the garbage collector off (after a ``gc.collect()``), after a
warm-up, and in chunks so that every loop is bounded in both count and time. The subjects of a
repeat run in a rotated order so that drift on a noisy machine does not always hit the same one.
"""

from __future__ import annotations

import gc
import inspect
import statistics
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import failover
import instructions
import scaleout
import storm
from peers import (
    DRIVERS,
    POOL_PEERS,
    ConnectPerRequest,
    DBUtilsPeer,
    Peer,
    PgRegistryPeer,
    PgRegistryVariant,
    PsycopgPoolPeer,
    QueueBaseline,
    RawRoundRobin,
    SQLAlchemyPeer,
    pgregistry_available,
)
from stats import NOT_MEASURED, Column, Result, Row, Stat, Target

from pgregistry.testing import TemporaryCluster as Cluster

__all__ = ["MEASURES", "Context", "Plan"]

SQL = "SELECT 1"
PGR = PgRegistryPeer.name
DBU = DBUtilsPeer.name
PSY = PsycopgPoolPeer.name
SQLA = SQLAlchemyPeer.name
_DASH = "\u2013"


@dataclass(frozen=True)
class Plan:
    """How much of each measure to run; ``full()`` takes about 4-5 minutes on 2 cores."""

    repeats: int
    tight_ops: int  # checkout/checkin and registry loops, per repeat
    query_ops: int  # pooled SELECT 1, per repeat
    connect_ops: int  # connect-per-request, per repeat
    contention_seconds: float
    contention_repeats: int  # at the largest thread count
    contention_threads: tuple[int, ...]
    restart_repeats: int
    restart_window: float  # seconds after the restart for every thread to succeed again
    storm_repeats: int
    storm_ops: int  # ops per thread in a connection storm
    smoke: bool = False  # a --quick run (smaller instruction-count loops)
    contention_repeats_below_top: int = 3  # at the smaller thread counts
    n_connections: int = 8
    loop_budget: float = 8.0  # seconds: no repeat of a single-thread measure runs longer

    @classmethod
    def full(cls) -> Plan:
        return cls(
            repeats=7,
            tight_ops=20_000,
            query_ops=3_000,
            connect_ops=150,
            contention_seconds=2.0,
            contention_repeats=4,
            contention_threads=(8, 16, 32, 64),
            restart_repeats=3,
            restart_window=15.0,
            storm_repeats=3,
            storm_ops=20,
        )

    @classmethod
    def quick(cls) -> Plan:
        return cls(
            repeats=2,
            tight_ops=3_000,
            query_ops=300,
            connect_ops=20,
            contention_seconds=0.5,
            contention_repeats=1,
            contention_threads=(8, 16, 32, 64),
            restart_repeats=1,
            restart_window=10.0,
            storm_repeats=1,
            storm_ops=10,
            smoke=True,
            contention_repeats_below_top=1,
            loop_budget=1.0,
        )

    def with_repeats(self, repeats: int) -> Plan:
        return replace(
            self,
            repeats=repeats,
            contention_repeats=repeats,
            contention_repeats_below_top=repeats,
            restart_repeats=repeats,
            storm_repeats=repeats,
        )


@dataclass
class Context:
    server: Cluster
    plan: Plan

    def __post_init__(self) -> None:
        #: Why pgregistry's pool cannot be measured (None: it can).
        self.pgregistry_missing = pgregistry_available()


# --- helpers ---------------------------------------------------------------------------------


@contextmanager
def _no_gc() -> Iterator[None]:
    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _rotated(items: list[Any], shift: int) -> list[Any]:
    if not items:
        return items
    shift %= len(items)
    return items[shift:] + items[:shift]


def _pool_peers(ctx: Context, result: Result) -> list[Peer]:
    """The pools to compare; pgregistry only if it imports (else a note says why)."""
    peers: list[Peer] = []
    for cls in POOL_PEERS:
        if cls is PgRegistryPeer and not _pgregistry_measurable(ctx, result):
            continue
        peers.append(cls(ctx.server))
    return peers


def _pgregistry_measurable(ctx: Context, result: Result) -> bool:
    """Whether pgregistry's pool imports; when not, a note in ``result`` says why."""
    if ctx.pgregistry_missing:
        result.notes.append(
            f"pgregistry not measured: `from pgregistry import PooledPg` failed "
            f"({ctx.pgregistry_missing})."
        )
        return False
    return True


def _open_with_driver_baselines(
    ctx: Context, result: Result, baseline_cls: Callable[..., Peer]
) -> tuple[dict[str, Peer], list[Peer]]:
    """A ``baseline_cls`` peer per driver and the pools, opened: (baselines by driver, peers).

    Each pool's baseline is the one of its own driver (``baselines[peer.driver]``).
    """
    baselines = {d: baseline_cls(ctx.server, driver=d) for d in DRIVERS}
    pools = _pool_peers(ctx, result)
    return baselines, _open_all([*baselines.values(), *pools], ctx.plan.n_connections, result)


def _open_all(peers: list[Peer], n: int, result: Result) -> list[Peer]:
    opened = []
    for peer in peers:
        try:
            peer.open(n)
        except Exception as exc:
            result.notes.append(f"{peer.label} could not open: {type(exc).__name__}: {exc}")
            continue
        opened.append(peer)
    return opened


def _close_all(peers: list[Peer]) -> None:
    for peer in peers:
        try:
            peer.close()
        except Exception as exc:  # keep closing the others
            print(f"bench: closing {peer.label} failed: {type(exc).__name__}: {exc}")


Body = Callable[[Peer, int], tuple[int, int]]


def _chunk_checkout(peer: Peer, n: int) -> tuple[int, int]:
    """(CPU ns, wall ns) of ``n`` checkout+checkin pairs."""
    checkout, checkin = peer.checkout, peer.checkin
    c0, w0 = time.process_time_ns(), time.perf_counter_ns()
    for _ in range(n):
        checkin(checkout())
    return time.process_time_ns() - c0, time.perf_counter_ns() - w0


def _chunk_query(peer: Peer, n: int) -> tuple[int, int]:
    """(CPU ns, wall ns) of ``n`` checkout + SELECT 1 + checkin."""
    checkout, checkin, query = peer.checkout, peer.checkin, peer.query
    c0, w0 = time.process_time_ns(), time.perf_counter_ns()
    for _ in range(n):
        c = checkout()
        query(c, SQL)
        checkin(c)
    return time.process_time_ns() - c0, time.perf_counter_ns() - w0


def _interleaved(
    peers: list[Peer],
    body: Body,
    rounds: int,
    chunk_of: Callable[[Peer], int],
    budget: float,
    shift: int = 0,
) -> dict[str, tuple[float, float]]:
    """One repeat: the peers take turns, a chunk of ops each, for ``rounds`` rounds.

    Taking turns in small chunks spreads a noisy neighbour's bursts over every peer instead
    of over whichever ran at that moment. Returns (CPU ns, wall ns) per op for each peer.
    Bounded by ``rounds`` and by ``budget`` seconds.
    """
    acc = {p.label: [0, 0, 0] for p in peers}
    stop_at = time.perf_counter() + budget
    with _no_gc():
        for r in range(rounds):
            for peer in _rotated(peers, shift + r):
                n = chunk_of(peer)
                cpu, wall = body(peer, n)
                total = acc[peer.label]
                total[0] += cpu
                total[1] += wall
                total[2] += n
            if time.perf_counter() > stop_at:
                break
    return {label: (cpu / n, wall / n) for label, (cpu, wall, n) in acc.items()}


def _repeat_interleaved(
    plan: Plan,
    peers: list[Peer],
    body: Body,
    rounds: int,
    chunk_of: Callable[[Peer], int],
) -> tuple[dict[str, list[float]], dict[str, list[float]]]:
    """A warm-up round, then ``plan.repeats`` interleaved repeats: (CPU ns, wall ns) lists."""
    _interleaved(peers, body, 1, chunk_of, plan.loop_budget)
    cpu: dict[str, list[float]] = {p.label: [] for p in peers}
    wall: dict[str, list[float]] = {p.label: [] for p in peers}
    for r in range(plan.repeats):
        got = _interleaved(peers, body, rounds, chunk_of, plan.loop_budget, shift=r)
        for label, (c, w) in got.items():
            cpu[label].append(c)
            wall[label].append(w)
    return cpu, wall


def _ratio_samples(num: list[float], den: list[float]) -> Stat:
    return Stat([a / b for a, b in zip(num, den, strict=True) if b])


def _missing_target(text: str) -> Target:
    return Target(text, None, NOT_MEASURED)


def _skip(result: Result, reason: str, target: str) -> Result:
    """``result`` marked skipped for ``reason``, its one ``target`` not measured."""
    result.skipped = reason
    result.targets = [_missing_target(target)]
    return result


def _judge(
    text: str, value: float | None, limit: float, fmt: str, *, at_most: bool = True
) -> Target:
    if value is None:
        return _missing_target(text)
    met = value <= limit if at_most else value >= limit
    return Target(text, met, format(value, fmt))


# --- 1. checkout + checkin -------------------------------------------------------------------


def measure_checkout(ctx: Context) -> Result:
    plan = ctx.plan
    result = Result(
        name="checkout",
        title="1. Checkout + checkin on an idle pool, single thread",
        what=(
            "Borrow a connection and give it back, no query: client CPU time per pair "
            "(`process_time_ns`: a CPU-bound loop, so time the scheduler gave to other "
            "processes does not count), wall time beside it. Ratios use CPU time."
        ),
        baseline="a bare `queue.Queue` get/put of already open connections (pg.DB)",
        columns=[
            Column("cpu", "CPU ns / pair", ".0f"),
            Column("wall", "wall ns / pair", ".0f"),
            Column("ratio", "x baseline", ".2f"),
        ],
    )
    baseline = QueueBaseline(ctx.server, label="queue.Queue get/put (baseline)")
    peers = _open_all([baseline, *_pool_peers(ctx, result)], plan.n_connections, result)
    chunk = 100
    try:
        cpu, wall = _repeat_interleaved(
            plan, peers, _chunk_checkout, max(1, plan.tight_ops // chunk), lambda p: chunk
        )
    finally:
        _close_all(peers)
    base = cpu.get(baseline.label)
    if not base:
        result.skipped = "the baseline could not be measured"
        return result
    for label, samples in cpu.items():
        result.rows.append(
            Row(
                label,
                {
                    "cpu": Stat(samples),
                    "wall": Stat(wall[label]),
                    "ratio": _ratio_samples(samples, base),
                },
            )
        )
    result.raw = {"cpu_ns_per_op": cpu, "wall_ns_per_op": wall}
    pgr, dbu, psy = cpu.get(PGR), cpu.get(DBU), cpu.get(PSY)
    vs_dbu = _ratio_samples(pgr, dbu) if pgr and dbu else None
    vs_psy = _ratio_samples(pgr, psy) if pgr and psy else None
    vs_queue = _ratio_samples(pgr, base) if pgr else None
    result.targets = [
        _judge(
            "checkout+checkin: pgregistry <= 0.6x a bare queue.Queue get/put (CPU)",
            vs_queue.median if vs_queue else None,
            0.6,
            ".2f",
        ),
        _judge(
            "checkout+checkin: pgregistry <= 0.6x DBUtils PooledPg",
            vs_dbu.median if vs_dbu else None,
            0.6,
            ".2f",
        ),
        _judge(
            "checkout+checkin: pgregistry no slower than psycopg_pool",
            vs_psy.median if vs_psy else None,
            1.0,
            ".2f",
        ),
    ]
    for other, ratio in (("DBUtils", vs_dbu), ("psycopg_pool", vs_psy)):
        if ratio is not None:
            result.notes.append(
                f"pgregistry / {other} = {ratio.median:.2f} "
                f"({ratio.lo:.2f}{_DASH}{ratio.hi:.2f}), median of per-repeat CPU ratios."
            )
    return result


# --- 2. registry.get -------------------------------------------------------------------------


def _build_registry(config: Path) -> Any:
    """Build a Registry from a TOML file with whichever of the planned entry points exists."""
    # Not `from pgregistry import registry`: that name is the process-wide default registry.
    from pgregistry.registry import Registry as registry_cls

    if hasattr(registry_cls, "from_config"):
        return registry_cls.from_config(config)
    from pgregistry.config import load_settings

    return registry_cls(load_settings(config))


def _write_config(folder: Path, server: Cluster, body: str) -> Path:
    path = folder / "pgpools.toml"
    path.write_text(
        "[defaults]\n"
        f'host = "{server.host}"\nport = {server.port}\n'
        f'dbname = "{server.dbname}"\nuser = "{server.user}"\n\n' + body
    )
    return path


def _registry_missing() -> str | None:
    try:
        from pgregistry.registry import Registry  # noqa: F401
    except Exception as exc:
        return f"`from pgregistry.registry import Registry` failed ({type(exc).__name__}: {exc})"
    return None


def measure_registry(ctx: Context) -> Result:
    plan = ctx.plan
    result = Result(
        name="registry",
        title="2. `registry.get(name)` on a built pool",
        what=(
            "Cost of looking a pool up by name in a registry where it is already built "
            "(client CPU time per lookup, loop included)."
        ),
        baseline="holding the pool in a local variable",
        columns=[
            Column("ns", "ns / lookup", ".1f"),
            Column("extra", "extra ns vs baseline", ".1f"),
        ],
    )
    target = "registry.get(name): <= 200 ns extra over holding the pool"
    missing = _registry_missing()
    if missing:
        return _skip(result, f"registry not available yet: {missing}", target)
    with tempfile.TemporaryDirectory(prefix="pgregistry-bench-") as folder:
        try:
            config = _write_config(
                Path(folder),
                ctx.server,
                "[pools.bench]\nmincached = 1\nmaxcached = 8\nmaxconnections = 8\n",
            )
            registry = _build_registry(config)
        except Exception as exc:
            return _skip(result, f"could not build a registry: {type(exc).__name__}: {exc}", target)
        try:
            pool = registry.get("bench")
            get = registry.get

            def via_registry(n: int) -> float:
                with _no_gc():
                    t0 = time.process_time_ns()
                    for _ in range(n):
                        get("bench")
                    return (time.process_time_ns() - t0) / n

            def holding(n: int) -> float:
                with _no_gc():
                    t0 = time.process_time_ns()
                    for _ in range(n):
                        pool  # noqa: B018  (the baseline: the pool is at hand)
                    return (time.process_time_ns() - t0) / n

            n = plan.tight_ops * 5
            via_registry(n // 10)
            holding(n // 10)
            got: list[float] = []
            held: list[float] = []
            for r in range(plan.repeats):
                pair = [(got, via_registry), (held, holding)]
                for sink, fn in _rotated(pair, r):
                    sink.append(fn(n))
        finally:
            registry.close()
    extra = [a - b for a, b in zip(got, held, strict=True)]
    result.rows = [
        Row("holding the pool (baseline)", {"ns": Stat(held), "extra": None}),
        Row("registry.get(name)", {"ns": Stat(got), "extra": Stat(extra)}),
    ]
    result.targets = [_judge(target, Stat(extra).median, 200.0, ".0f")]
    return result


# --- 3. pooled SELECT 1, CPU -----------------------------------------------------------------


def measure_query_cpu(ctx: Context) -> Result:
    plan = ctx.plan
    result = Result(
        name="query_cpu",
        title="3. Pooled `SELECT 1` (checkout, query, checkin), single thread, client CPU",
        what=(
            "Client CPU time (`process_time_ns`) per checkout + SELECT 1 + checkin; the pool's "
            "overhead is that minus the same driver's round-robin SELECT 1 on raw connections."
        ),
        baseline="round-robin `SELECT 1` on a list of raw connections of the same driver",
        columns=[
            Column("cpu", "CPU us / op", ".1f"),
            Column("wall", "wall us / op", ".1f"),
            Column("ratio", "CPU x baseline", ".2f"),
            Column("overhead", "pool overhead CPU us", ".2f"),
        ],
    )
    raws, peers = _open_with_driver_baselines(ctx, result, RawRoundRobin)
    chunk = 25
    try:
        cpu, wall = _repeat_interleaved(
            plan, peers, _chunk_query, max(1, plan.query_ops // chunk), lambda p: chunk
        )
    finally:
        _close_all(peers)
    overhead: dict[str, list[float]] = {}
    for peer in peers:
        base = raws[peer.driver].label
        row: dict[str, Any] = {
            "cpu": Stat([x / 1e3 for x in cpu[peer.label]]),
            "wall": Stat([x / 1e3 for x in wall[peer.label]]),
            "ratio": _ratio_samples(cpu[peer.label], cpu[base]) if cpu[base] else None,
            "overhead": None,
        }
        if peer.label != base and cpu[base]:
            overhead[peer.label] = [
                (a - b) / 1e3 for a, b in zip(cpu[peer.label], cpu[base], strict=True)
            ]
            row["overhead"] = Stat(overhead[peer.label])
        result.rows.append(Row(peer.label, row))
    result.raw = {"cpu_ns": cpu, "wall_ns": wall}
    target = "pooled SELECT 1: pgregistry's CPU overhead <= 1/2 of DBUtils'"
    tax = "pooled SELECT 1: pgregistry's CPU overhead over raw pg.DB <= 3.5 us"
    if PGR in overhead and DBU in overhead:
        pgr_over = statistics.median(overhead[PGR])
        dbu_over = statistics.median(overhead[DBU])
        share = pgr_over / dbu_over if dbu_over > 0 else float("inf")
        result.targets = [_judge(tax, pgr_over, 3.5, ".2f"), _judge(target, share, 0.5, ".2f")]
        result.notes.append(
            f"overhead pgregistry {pgr_over:.2f} us vs DBUtils {dbu_over:.2f} us per op "
            f"(ratio {share:.2f}; medians over repeats)."
        )
    else:
        result.targets = [_missing_target(target)]
    result.notes.append(
        "Each pool's baseline is its own driver: pg.DB for pgregistry and DBUtils, psycopg 3 "
        "for psycopg_pool, psycopg2 for SQLAlchemy."
    )
    return result


# --- 4. contention ---------------------------------------------------------------------------


@dataclass
class _ContentionRun:
    ops_s: float
    min_over_mean: float
    min_ops: int
    mean_ops: float
    p99_ms: float
    max_ms: float
    errors: int
    cpu_us: float  # client CPU (all threads) per op: what the hand-offs cost
    quantiles_ms: list[float]  # op latency at LATENCY_PERCENTILES (the charts' distribution)


#: Percentiles kept of every contention run: 1 - 10^(-k/10) for k = 0..40 (0% to 99.99%, evenly
#: spaced on the "nines" scale latency plots use), then the maximum.
LATENCY_PERCENTILES = [100.0 * (1 - 10 ** (-k / 10)) for k in range(41)] + [100.0]


def _quantiles(sorted_ns: list[int]) -> list[float]:
    if not sorted_ns:
        return []
    last = len(sorted_ns) - 1
    return [sorted_ns[min(last, int(len(sorted_ns) * p / 100))] / 1e6 for p in LATENCY_PERCENTILES]


def _contention_run(peer: Peer, threads: int, seconds: float) -> _ContentionRun:
    cap = 2_000_000  # ops per thread: never reached in practice, bounds the loop by count
    latencies: list[list[int]] = [[] for _ in range(threads)]
    ends = [0] * threads
    errors = [0] * threads
    start = threading.Barrier(threads + 1)
    box = [0]

    def worker(i: int) -> None:
        checkout, checkin, query = peer.checkout, peer.checkin, peer.query
        local = latencies[i]
        start.wait(timeout=60)
        deadline = box[0]
        for _ in range(cap):
            t0 = time.perf_counter_ns()
            if t0 >= deadline:
                break
            try:
                c = checkout()
                try:
                    query(c, SQL)
                finally:
                    checkin(c)
            except Exception:
                errors[i] += 1
                time.sleep(0.01)
                continue
            local.append(time.perf_counter_ns() - t0)
        ends[i] = time.perf_counter_ns()

    pool = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(threads)]
    for t in pool:
        t.start()
    cpu_start = time.process_time_ns()
    t_start = time.perf_counter_ns()
    box[0] = t_start + int(seconds * 1e9)
    start.wait(timeout=60)
    for t in pool:
        t.join(timeout=seconds + 60)
    cpu = time.process_time_ns() - cpu_start
    elapsed = (max(ends) - t_start) / 1e9
    counts = [len(x) for x in latencies]
    everything = sorted(x for lat in latencies for x in lat)
    mean = statistics.fmean(counts)
    p99 = everything[min(len(everything) - 1, int(len(everything) * 0.99))] if everything else 0
    return _ContentionRun(
        ops_s=sum(counts) / elapsed if elapsed > 0 else 0.0,
        min_over_mean=min(counts) / mean if mean else 0.0,
        min_ops=min(counts),
        mean_ops=mean,
        p99_ms=p99 / 1e6,
        max_ms=(everything[-1] / 1e6) if everything else 0.0,
        errors=sum(errors),
        cpu_us=cpu / max(1, sum(counts)) / 1e3,
        quantiles_ms=_quantiles(everything),
    )


def measure_contention(ctx: Context) -> Result:
    plan = ctx.plan
    n = plan.n_connections
    top = max(plan.contention_threads)
    result = Result(
        name="contention",
        title=f"4. {n} connections shared by {', '.join(map(str, plan.contention_threads))} "
        f"threads, {plan.contention_seconds:g} s each",
        what=(
            "Each thread loops checkout + SELECT 1 + checkin for a fixed time. ops/s over all "
            "threads, as a ratio to the bare queue and to DBUtils in the same repeat; "
            "per-thread op counts (min/mean: 1.0 = fair, near 0 = a starved thread); p99 and "
            "max latency of one op, waiting for a connection included. "
            f"{plan.contention_repeats} repeats at {top} threads, "
            f"{plan.contention_repeats_below_top} below."
        ),
        baseline=f"a bare `queue.Queue` of {n} open pg.DB connections, same threads",
        columns=[
            Column("threads", "threads", "d"),
            Column("ops", "ops/s", ".0f"),
            Column("ratio", "x baseline", ".2f"),
            Column("vs_dbu", "x DBUtils", ".2f"),
            Column("fair", "thread min/mean", ".2f"),
            Column("mean_ops", "ops/thread mean", ".0f"),
            Column("p99", "p99 ms", ".2f"),
            Column("max", "max ms", ".1f"),
            Column("cpu", "client CPU us/op", ".0f"),
            Column("errors", "errors", "d"),
        ],
    )
    baseline = QueueBaseline(ctx.server, label="queue.Queue (baseline)")
    peers = _open_all([baseline, *_pool_peers(ctx, result)], n, result)
    runs: dict[tuple[int, str], list[_ContentionRun]] = {}
    try:
        for peer in peers:  # warm-up: every connection used once by several threads
            _contention_run(peer, 4, min(0.2, plan.contention_seconds))
        for r in range(plan.contention_repeats):
            for threads in plan.contention_threads:
                if threads != top and r >= plan.contention_repeats_below_top:
                    continue
                for peer in _rotated(peers, r):
                    run = _contention_run(peer, threads, plan.contention_seconds)
                    runs.setdefault((threads, peer.label), []).append(run)
    finally:
        _close_all(peers)
    vs_dbu_by_threads: dict[int, Stat] = {}
    for threads in plan.contention_threads:
        base = [x.ops_s for x in runs.get((threads, baseline.label), [])]
        dbu = [x.ops_s for x in runs.get((threads, DBU), [])]
        for peer in peers:
            got = runs.get((threads, peer.label), [])
            if not got:
                continue
            ops = [x.ops_s for x in got]
            vs_dbu = _ratio_samples(ops, dbu) if len(dbu) == len(ops) else None
            if peer.label == PGR and vs_dbu is not None:
                vs_dbu_by_threads[threads] = vs_dbu
            result.rows.append(
                Row(
                    peer.label,
                    {
                        "threads": threads,
                        "ops": Stat(ops),
                        "ratio": _ratio_samples(ops, base) if len(base) == len(ops) else None,
                        "vs_dbu": vs_dbu,
                        "fair": Stat([x.min_over_mean for x in got]),
                        "mean_ops": Stat([x.mean_ops for x in got]),
                        "p99": Stat([x.p99_ms for x in got]),
                        "max": Stat([x.max_ms for x in got]),
                        "cpu": Stat([x.cpu_us for x in got]),
                        "errors": sum(x.errors for x in got),
                    },
                )
            )
    result.raw = {
        f"{label} @ {threads}": [vars(x) for x in got] for (threads, label), got in runs.items()
    }
    result.raw["latency_percentiles"] = LATENCY_PERCENTILES
    pgr, dbu_runs = runs.get((top, PGR)), runs.get((top, DBU))
    if pgr and dbu_runs and top in vs_dbu_by_threads:
        result.targets = [
            _judge(
                f"{top} threads: pgregistry ops/s >= 1.2x DBUtils (median of per-repeat ratios)",
                vs_dbu_by_threads[top].median,
                1.2,
                ".2f",
                at_most=False,
            ),
            _judge(
                f"{top} threads: no pgregistry thread below half the mean (min/mean, worst run)",
                min(x.min_over_mean for x in pgr),
                0.5,
                ".2f",
                at_most=False,
            ),
            _judge(
                f"{top} threads: pgregistry max op <= 50 ms (median of runs)",
                statistics.median(x.max_ms for x in pgr),
                50.0,
                ".1f",
            ),
        ]
        result.notes.append(
            f"At {top} threads the fairness target is judged on the worst run, the max-latency "
            f"target on the median run (worst run: "
            f"{max(x.max_ms for x in pgr):.1f} ms)."
        )
    else:
        result.targets = [_missing_target(f"{top} threads: pgregistry vs DBUtils")]
    if vs_dbu_by_threads:
        result.notes.append(
            "pgregistry ops/s / DBUtils' by threads: "
            + ", ".join(
                f"{t}: {v.median:.2f} ({v.lo:.2f}{_DASH}{v.hi:.2f})"
                for t, v in sorted(vs_dbu_by_threads.items())
            )
            + "."
        )
    return result


# --- 5. connect per request vs pooled --------------------------------------------------------


def measure_connect(ctx: Context) -> Result:
    plan = ctx.plan
    result = Result(
        name="connect",
        title="5. Connect per request vs pooled",
        what=(
            "Wall time per request (get a connection, SELECT 1, give it back), single thread: "
            "what a pool saves over opening a connection for every request."
        ),
        baseline="connect + SELECT 1 + close with the same driver, no pool",
        columns=[
            Column("wall", "wall us / request", ".1f"),
            Column("cpu", "client CPU us / request", ".1f"),
            Column("ratio", "x baseline", ".3f"),
            Column("saved", "saved us / request", ".0f"),
        ],
    )
    connects, peers = _open_with_driver_baselines(ctx, result, ConnectPerRequest)
    # Each round: 5 connect-per-request ops per driver, 50 pooled requests per pool.
    rounds = max(1, plan.connect_ops // 5)

    def chunk_of(peer: Peer) -> int:
        return 5 if isinstance(peer, ConnectPerRequest) else 50

    try:
        cpu_ns, wall_ns = _repeat_interleaved(plan, peers, _chunk_query, rounds, chunk_of)
    finally:
        _close_all(peers)
    cpu = {label: [x / 1e3 for x in xs] for label, xs in cpu_ns.items()}
    wall = {label: [x / 1e3 for x in xs] for label, xs in wall_ns.items()}
    for peer in peers:
        base = connects[peer.driver].label
        is_base = peer.label == base
        result.rows.append(
            Row(
                peer.label,
                {
                    "wall": Stat(wall[peer.label]),
                    "cpu": Stat(cpu[peer.label]),
                    "ratio": _ratio_samples(wall[peer.label], wall[base]),
                    "saved": None
                    if is_base
                    else Stat([b - a for a, b in zip(wall[peer.label], wall[base], strict=True)]),
                },
            )
        )
    result.raw = {"wall_us": wall, "cpu_us": cpu}
    result.notes.append(
        "Connect-per-request timings include the server forking a backend; the client CPU "
        "column is the Python process only."
    )
    return result


# --- 6. fast restart -------------------------------------------------------------------------


@dataclass
class _RestartRun:
    failed: int
    ok: int
    recovery_ms: float | None  # first success after the server is up again (None: never)
    all_ok_ms: float | None  # until every thread has succeeded again (None: some never did)
    longest_ms: float  # the longest single op: how long a caller was stuck
    outage_ms: float  # restart issued -> server accepts connections (probe)
    errors: list[str]


def _probe_restart(server: Cluster, deadline: float) -> tuple[float, float]:
    """Poll with fresh connections every 10 ms: (first time down, first time up again).

    "Up" is when the first successful attempt started: the server accepted it at most one
    connect time later.
    """
    import pg

    down = up = 0.0
    while time.perf_counter() < deadline:
        t = time.perf_counter()
        try:
            db = pg.DB(**server.connect_kwargs())
            try:
                db.query(SQL)
            finally:
                db.close()
        except Exception:
            if not down:
                down = t
        else:
            if down:
                up = t
                break
        time.sleep(0.01)
    return down, up


def _restart_run(ctx: Context, peer: Peer, threads: int, window: float) -> _RestartRun:
    events: list[list[tuple[float, float, str | None]]] = [[] for _ in range(threads)]
    stop = threading.Event()
    cap = 1_000_000

    def worker(i: int) -> None:
        checkout, checkin, query = peer.checkout, peer.checkin, peer.query
        sink = events[i]
        for _ in range(cap):
            if stop.is_set():
                break
            t0 = time.perf_counter()
            error = None
            try:
                c = checkout()
                try:
                    query(c, SQL)
                finally:
                    checkin(c)
            except Exception as exc:
                error = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:90]}"
            sink.append((t0, time.perf_counter(), error))
            if error:
                time.sleep(0.01)  # a failing pool must not spin

    peer.open(ctx.plan.n_connections)
    workers = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(threads)]
    try:
        for t in workers:
            t.start()
        time.sleep(0.5)
        probe_result: list[tuple[float, float]] = []
        issued = time.perf_counter()
        probe = threading.Thread(
            target=lambda: probe_result.append(_probe_restart(ctx.server, issued + 60)),
            daemon=True,
        )
        probe.start()
        ctx.server.restart("fast")
        probe.join(timeout=65)
        down, up = probe_result[0] if probe_result else (0.0, 0.0)
        if not up:
            up = time.perf_counter()  # the probe missed the outage: pg_ctl says it is up
        give_up = time.perf_counter() + window
        while time.perf_counter() < give_up:
            if all(any(end >= up and not err for _, end, err in ev[-50:]) for ev in events):
                break
            time.sleep(0.05)
        time.sleep(0.2)
    finally:
        stop.set()
        for t in workers:
            t.join(timeout=40)
        peer.close()
    since = down or issued
    firsts = [
        min((end for _, end, err in ev if not err and end >= since), default=None) for ev in events
    ]
    everything = [e for ev in events for e in ev]
    after = [f for f in firsts if f is not None]
    first = min(after) if after else None
    last = max(after) if len(after) == len(firsts) else None
    errors = sorted({err for _, _, err in everything if err})
    return _RestartRun(
        failed=sum(1 for e in everything if e[2]),
        ok=sum(1 for e in everything if not e[2]),
        recovery_ms=max(0.0, (first - up) * 1e3) if first is not None else None,
        all_ok_ms=max(0.0, (last - up) * 1e3) if last is not None else None,
        longest_ms=max((end - start for start, end, _ in everything), default=0.0) * 1e3,
        outage_ms=(up - issued) * 1e3,
        errors=errors[:3],
    )


def measure_restart(ctx: Context) -> Result:
    plan = ctx.plan
    threads = 4
    result = Result(
        name="restart",
        title=f"6. `pg_ctl restart -m fast` while {threads} threads run SELECT 1",
        what=(
            "Failed ops (exceptions a caller saw) across one fast restart of the throwaway "
            "server (TemporaryCluster.restart: `pg_ctl stop -m fast`, then start); time from "
            "the server being up again (a fresh connection is tried every 10 ms; up = start of "
            "the first attempt that succeeds; 0 = the pool was back first) to the pool's first "
            "successful op and until every thread has succeeded again; the longest single op "
            "(how long a caller was stuck). A failing thread sleeps 10 ms before its next try, "
            "so failed ops count tries during the outage."
        ),
        baseline="the outage itself: restart issued until a fresh connection succeeds",
        columns=[
            Column("failed", "failed ops", ".0f"),
            Column("recovery", "up -> first success ms", ".0f"),
            Column("all_ok", "up -> all threads ok ms", ".0f"),
            Column("longest", "longest op ms", ".0f"),
            Column("outage", "outage ms", ".0f"),
        ],
    )
    subjects: list[Peer] = []
    if _pgregistry_measurable(ctx, result):
        subjects += [
            PgRegistryPeer(
                ctx.server, label="pgregistry, reconnect_timeout=10", reconnect_timeout=10.0
            ),
            PgRegistryPeer(
                ctx.server, label="pgregistry, reconnect_timeout=0", reconnect_timeout=0.0
            ),
        ]
    subjects += [
        DBUtilsPeer(ctx.server),
        PsycopgPoolPeer(ctx.server, label="psycopg_pool, check=check_connection", check=True),
        SQLAlchemyPeer(ctx.server, label="SQLAlchemy, pool_pre_ping=True", pre_ping=True),
    ]
    runs: dict[str, list[_RestartRun]] = {}
    for r in range(plan.restart_repeats):
        for peer in _rotated(subjects, r):
            try:
                run = _restart_run(ctx, peer, threads, plan.restart_window)
            except Exception as exc:
                result.notes.append(f"{peer.label}: run failed: {type(exc).__name__}: {exc}")
                continue
            runs.setdefault(peer.label, []).append(run)
    for peer in subjects:
        got = runs.get(peer.label)
        if not got:
            continue
        recovered = [x.recovery_ms for x in got if x.recovery_ms is not None]
        all_ok = [x.all_ok_ms for x in got if x.all_ok_ms is not None]
        result.rows.append(
            Row(
                peer.label,
                {
                    "failed": Stat([float(x.failed) for x in got]),
                    "recovery": Stat(recovered) if recovered else "never",
                    "all_ok": Stat(all_ok) if len(all_ok) == len(got) else "not all",
                    "longest": Stat([x.longest_ms for x in got]),
                    "outage": Stat([x.outage_ms for x in got]),
                },
            )
        )
        errors = sorted({e for x in got for e in x.errors})
        if errors:
            result.notes.append(f"{peer.label}: errors seen: " + "; ".join(errors[:3]))
        if len(recovered) < len(got):
            result.notes.append(
                f"{peer.label}: {len(got) - len(recovered)} of {len(got)} runs had no successful "
                f"op within {plan.restart_window:g} s of the restart."
            )
    result.raw = {label: [vars(x) for x in got] for label, got in runs.items()}
    target = "restart: 0 failed ops for pgregistry when reconnect_timeout covers the outage"
    covered = runs.get("pgregistry, reconnect_timeout=10")
    if covered:
        worst = max(x.failed for x in covered)
        result.targets = [Target(target, worst == 0, f"{worst} (worst of {len(covered)} runs)")]
    else:
        result.targets = [_missing_target(target)]
    return result


# --- 7. tenants ------------------------------------------------------------------------------


def measure_tenants(ctx: Context) -> Result:
    plan = ctx.plan
    result = Result(
        name="tenants",
        title="7. Tenant pool lookup at 10 vs 10,000 tenants",
        what=(
            "`registry.get(name, tenant=key)` on built tenant pools (no connection opened): CPU "
            "time of the calling thread (`thread_time_ns`: the lookup itself) and wall time "
            "(what a caller sees, including the GIL held by the registry's maintenance thread)."
        ),
        baseline="the same lookup with 10 tenants",
        columns=[
            Column("cpu", "thread CPU ns / lookup", ".0f"),
            Column("ratio", "CPU x 10 tenants", ".2f"),
            Column("wall", "wall ns / lookup", ".0f"),
            Column("wall_ratio", "wall x 10 tenants", ".2f"),
        ],
    )
    target = "tenant lookup: 10,000 tenants <= 2x the cost with 10 (thread CPU)"
    missing = _registry_missing()
    if missing is None:
        from pgregistry.registry import Registry

        if "tenant" not in inspect.signature(Registry.get).parameters:
            missing = "`Registry.get` has no `tenant` parameter yet"
    if missing:
        return _skip(result, f"tenants not available yet: {missing}", target)
    cpu: dict[int, list[float]] = {}
    wall: dict[int, list[float]] = {}
    with tempfile.TemporaryDirectory(prefix="pgregistry-bench-") as folder:
        for count in (10, 10_000):
            try:
                config = _write_config(
                    Path(folder),
                    ctx.server,
                    "[tenants.tenant]\nmincached = 0\nmaxconnections = 1\n"
                    f"max_pools = {count + 10}\n"
                    'application_name = "t_{tenant}"\n',
                )
                registry = _build_registry(config)
            except Exception as exc:
                return _skip(
                    result,
                    f"could not build a tenant registry: {type(exc).__name__}: {exc}",
                    target,
                )
            try:
                keys = [f"t{i:05d}" for i in range(count)]
                deadline = time.monotonic() + 60
                for key in keys:  # bounded: 10,000 pools, no connections, 60 s at most
                    registry.get("tenant", tenant=key)
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"building {count} tenant pools took over 60 s")
                probe = keys[:: max(1, count // 10)][:10]
                get = registry.get
                rounds = max(1, plan.tight_ops // len(probe))
                n = rounds * len(probe)
                cpu[count], wall[count] = [], []
                for _ in range(plan.repeats):
                    with _no_gc():
                        c0, w0 = time.thread_time_ns(), time.perf_counter_ns()
                        for _ in range(rounds):
                            for key in probe:
                                get("tenant", tenant=key)
                        cpu[count].append((time.thread_time_ns() - c0) / n)
                        wall[count].append((time.perf_counter_ns() - w0) / n)
            except Exception as exc:
                return _skip(result, f"tenant lookup failed: {type(exc).__name__}: {exc}", target)
            finally:
                registry.close()
    for count in cpu:
        result.rows.append(
            Row(
                f"{count} tenants",
                {
                    "cpu": Stat(cpu[count]),
                    "ratio": _ratio_samples(cpu[count], cpu[10]),
                    "wall": Stat(wall[count]),
                    "wall_ratio": _ratio_samples(wall[count], wall[10]),
                },
            )
        )
    result.raw = {"thread_cpu_ns": cpu, "wall_ns": wall}
    cpu_ratio = _ratio_samples(cpu[10_000], cpu[10]).median
    wall_ratio = _ratio_samples(wall[10_000], wall[10]).median
    shown = f"{cpu_ratio:.2f}x CPU, {wall_ratio:.2f}x wall"
    result.targets = [Target(target, cpu_ratio <= 2.0, shown)]
    return result


# --- 8. instructions (callgrind) ------------------------------------------------------------


def measure_instructions(ctx: Context) -> Result:
    return instructions.measure_instructions(ctx.server, ctx.plan.n_connections, ctx.plan.smoke)


# --- 9. connection storm ---------------------------------------------------------------------


def measure_storm(ctx: Context) -> Result:
    return storm.measure_storm(
        ctx.server, ctx.plan.storm_repeats, ctx.plan.storm_ops, ctx.pgregistry_missing
    )


# --- 10. many processes; 11. failover (their own clusters) ----------------------------------


def measure_options(ctx: Context) -> Result:
    """Checkout + return with one option of pgregistry changed at a time, against its
    defaults in the same run: what the health and observability options cost."""
    result = Result(
        name="options",
        title="1b. What pgregistry's options cost on checkout + checkin, single thread",
        what=(
            "The loop of measure 1 on pgregistry pools that differ from the defaults in one "
            "option each: client CPU time per checkout + checkin, and the ratio to the pool "
            "with every default in the same repeat. The lock-free checkout and return apply "
            'while no option that costs on them is on (see the README, "Closing, threads and '
            'fork"); the others take the pool lock.'
        ),
        baseline='pgregistry with its defaults (`ping="idle"`, `reset` rollback-if-needed)',
        columns=[
            Column("cpu", "CPU ns / pair", ".0f"),
            Column("wall", "wall ns / pair", ".0f"),
            Column("ratio", "x defaults", ".2f"),
        ],
    )
    if not _pgregistry_measurable(ctx, result):
        return _skip(result, "pgregistry does not import", "options: cost over the defaults")
    base_label = "pgregistry, defaults (baseline)"
    variants: list[Peer] = [
        PgRegistryVariant(ctx.server, label=base_label),
        PgRegistryVariant(ctx.server, label='ping = "never"', ping="never"),
        PgRegistryVariant(ctx.server, label="leak_threshold = 60 s", leak_threshold=60.0),
        PgRegistryVariant(ctx.server, label="an observer attached (does nothing)", observe=True),
        PgRegistryVariant(ctx.server, label="DEBUG logging on", debug_log=True),
        PgRegistryVariant(ctx.server, label="maxcached below maxconnections", maxcached_below=True),
        PgRegistryVariant(ctx.server, label='ping = "always" (a round trip)', ping="always"),
    ]
    peers = _open_all(variants, ctx.plan.n_connections, result)
    chunk = 100
    try:
        cpu, wall = _repeat_interleaved(
            ctx.plan,
            peers,
            _chunk_checkout,
            max(1, ctx.plan.tight_ops // chunk // 4),
            lambda p: chunk,
        )
    finally:
        _close_all(peers)
    base = cpu.get(base_label)
    if not base:
        return _skip(result, "the baseline could not be measured", "options")
    costliest = ("", 0.0)
    for label, samples in cpu.items():
        ratio = _ratio_samples(samples, base)
        result.rows.append(
            Row(label, {"cpu": Stat(samples), "wall": Stat(wall[label]), "ratio": ratio})
        )
        if label != base_label and "round trip" not in label and ratio.median > costliest[1]:
            costliest = (label, ratio.median)
    result.raw = {"cpu_ns_per_op": cpu, "wall_ns_per_op": wall}
    result.targets = [
        Target(
            "options: the costliest one without a round trip, x defaults",
            None,
            f"{costliest[1]:.2f} ({costliest[0]})",
        )
    ]
    return result


def measure_scaleout(ctx: Context) -> Result:
    return scaleout.measure_scaleout(ctx.plan.smoke, ctx.plan.repeats)


def measure_failover(ctx: Context) -> Result:
    return failover.measure_failover(ctx.plan.smoke, ctx.plan.repeats)


MEASURES: dict[str, Callable[[Context], Result]] = {
    "checkout": measure_checkout,
    "options": measure_options,
    "registry": measure_registry,
    "query_cpu": measure_query_cpu,
    "contention": measure_contention,
    "connect": measure_connect,
    "restart": measure_restart,
    "tenants": measure_tenants,
    "instructions": measure_instructions,
    "storm": measure_storm,
    "scaleout": measure_scaleout,
    "failover": measure_failover,
}
