"""Failover to a promoted standby (issue 14): pgregistry beside psycopg_pool, same writer loop.

Each run gets a fresh primary and streaming standby (``pgregistry.testing.primary_and_standby``:
``initdb``, ``pg_basebackup -R``, free ports on 127.0.0.1). 4 writer threads insert
``(thread, seq)`` rows outside transactions through a pool whose target names both servers::

    host=127.0.0.1,127.0.0.1 port=P,S ... target_session_attrs=read-write connect_timeout=2

Two scenarios, after the writers are running:

* **fence**: the primary turns read-only (``primary.fence()``: ``default_transaction_read_only``
  and a reload; ``SELECT 1`` still passes, writes fail with 25006), ``standby.wait_caught_up()``,
  ``standby.promote()``;
* **stop**: ``primary.stop("fast")``, then ``standby.promote()``.

The moment of promotion is taken on the server: a probe polls ``pg_is_in_recovery()`` on the
standby every ~5 ms and notes when it first says false. Reported per pool: time from that moment
to the first acknowledged write, failed writes (a writer that fails sleeps 10 ms before its next
write, so this counts tries), acknowledged writes, and acknowledged writes missing on the new
primary afterwards.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from stats import Column, Result, Row, Stat, Target

WRITERS = 4
MAX_REPEATS = 3  # a repeat is 2 scenarios x 2 pools, each on a new pair: about 40 s on 2 cores
WINDOW_FULL = 10.0  # seconds after the promotion a pool gets to resume writing
WINDOW_QUICK = 6.0
AFTER_RESUME = 2.0  # seconds the writers go on after the first write on the new primary
RECONNECT_TIMEOUT = 20.0
POOL_TIMEOUT = 30.0
PAUSE_OK = 0.002  # a writer's pause after an acknowledged write
PAUSE_FAILED = 0.010  # ... and after a failed one
MAX_WRITES = 20_000  # per thread and run, whatever happens
INSERT_PG = "INSERT INTO writes VALUES ($1, $2)"
INSERT_PSYCOPG = "INSERT INTO writes VALUES (%s, %s)"

FENCE = "fence + promote"
STOP = "stop + promote"
SCENARIOS = (FENCE, STOP)
PGR = "pgregistry PooledPg"
PSY = "psycopg_pool"

# A pool under test: write(thread, seq) runs one INSERT outside a transaction; close().
Subject = tuple[Callable[[int, int], None], Callable[[], None]]


def _pgregistry(target: str) -> Subject:
    from pgregistry import PooledPg

    pool = PooledPg(
        2, 0, 8, True, dbname=target, reconnect_timeout=RECONNECT_TIMEOUT, timeout=POOL_TIMEOUT
    )

    def write(thread: int, seq: int) -> None:
        with pool.connection() as db:
            db.query(INSERT_PG, (thread, seq))

    return write, pool.close


def _psycopg_pool(target: str) -> Subject:
    from psycopg_pool import ConnectionPool

    pool: ConnectionPool[Any] = ConnectionPool(
        target,
        min_size=2,
        max_size=8,
        kwargs={"autocommit": True},  # outside transactions, as PyGreSQL's pg.DB
        check=ConnectionPool.check_connection,
        reconnect_timeout=RECONNECT_TIMEOUT,
        timeout=POOL_TIMEOUT,
        open=True,
    )
    pool.wait(timeout=30.0)

    def write(thread: int, seq: int) -> None:
        with pool.connection() as conn:
            conn.execute(INSERT_PSYCOPG, (thread, seq))

    return write, lambda: pool.close(timeout=5.0)


SUBJECTS: dict[str, Callable[[str], Subject]] = {PGR: _pgregistry, PSY: _psycopg_pool}
CONFIGURED = {
    PGR: (
        f"`PooledPg(2, 0, 8, True, reconnect_timeout={RECONNECT_TIMEOUT:.0f}, "
        f"timeout={POOL_TIMEOUT:.0f})`"
    ),
    PSY: (
        "`ConnectionPool(min_size=2, max_size=8, kwargs={'autocommit': True}, "
        f"check=ConnectionPool.check_connection, reconnect_timeout={RECONNECT_TIMEOUT:.0f}, "
        f"timeout={POOL_TIMEOUT:.0f})`"
    ),
}


@dataclass
class FailoverRun:
    scenario: str
    subject: str
    resume_ms: float | None  # promotion -> first acknowledged write (None: not in the window)
    fault_to_promoted_ms: float  # fault issued -> the standby out of recovery
    failed: int
    failed_after_resume: int  # failed writes started after the first one on the new primary
    acked: int
    lost: int
    longest_write_ms: float  # one write, call to return (acknowledged or not)
    errors: dict[str, int] = field(default_factory=dict)  # failed writes by kind


class _Writers:
    """``WRITERS`` threads calling ``write(thread, seq)`` until stopped (bounded)."""

    def __init__(self, write: Callable[[int, int], None], max_seconds: float) -> None:
        self._write = write
        self.acked: list[list[int]] = [[] for _ in range(WRITERS)]
        self.acked_at: list[float] = []
        self.failed: list[tuple[float, str]] = []
        self.longest = 0.0
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._deadline = time.monotonic() + max_seconds
        self._threads = [
            threading.Thread(target=self._run, args=(n,), name=f"writer-{n}", daemon=True)
            for n in range(WRITERS)
        ]

    def _run(self, number: int) -> None:
        for seq in range(1, MAX_WRITES + 1):
            if self._stop.is_set() or time.monotonic() > self._deadline:
                return
            started = time.monotonic()
            try:
                self._write(number, seq)
            except Exception as exc:
                ended = time.monotonic()
                kind = f"{type(exc).__name__}: {str(exc).strip().splitlines()[0][:70]}"
                with self._lock:
                    self.failed.append((started, kind))
                    self.longest = max(self.longest, ended - started)
                time.sleep(PAUSE_FAILED)
                continue
            ended = time.monotonic()
            self.acked[number].append(seq)
            with self._lock:
                self.acked_at.append(ended)
                self.longest = max(self.longest, ended - started)
            time.sleep(PAUSE_OK)

    def __enter__(self) -> _Writers:
        for thread in self._threads:
            thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(POOL_TIMEOUT + RECONNECT_TIMEOUT + 10)

    def first_ack_after(self, after: float, count: int, timeout: float) -> float | None:
        """Wait (bounded) for ``count`` acks after ``after``; the first one's time, or None."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                later = [t for t in self.acked_at if t > after]
            if len(later) >= count or time.monotonic() >= deadline:
                return later[0] if later else None
            time.sleep(0.01)

    def failed_since(self, since: float) -> int:
        with self._lock:
            return sum(1 for started, _ in self.failed if started > since)


class _PromotionProbe:
    """Polls ``pg_is_in_recovery()`` on the standby every ~5 ms; ``at``: when it first said f."""

    def __init__(self, standby: Any) -> None:
        import pg

        self._db = pg.DB(**standby.connect_kwargs("postgres"))
        self.at: float | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="promotion-probe", daemon=True)

    def _run(self) -> None:
        deadline = time.monotonic() + 60
        while not self._stop.is_set() and time.monotonic() < deadline:
            if not self._db.query("SELECT pg_is_in_recovery()").getresult()[0][0]:
                self.at = time.monotonic()
                return
            time.sleep(0.005)

    @contextlib.contextmanager
    def running(self) -> Iterator[_PromotionProbe]:
        self._thread.start()
        try:
            yield self
        finally:
            self._stop.set()
            self._thread.join(10)
            with contextlib.suppress(Exception):
                self._db.close()


def failover_run(scenario: str, subject: str, window: float) -> FailoverRun:
    """One failover on a new primary and standby; bounded by the pools' timeouts and ``window``."""
    from pgregistry.testing import multihost_conninfo, primary_and_standby

    with primary_and_standby() as (primary, standby):
        primary.execute("CREATE TABLE writes (thread int, seq int, PRIMARY KEY (thread, seq))")
        standby.wait_caught_up()
        target = multihost_conninfo(
            [primary, standby], target_session_attrs="read-write", connect_timeout=2
        )
        write, close = SUBJECTS[subject](target)
        try:
            with _Writers(write, max_seconds=window + 60) as writers:
                if writers.first_ack_after(time.monotonic(), 20, 30.0) is None:
                    raise RuntimeError("no write acknowledged before the fault")
                with _PromotionProbe(standby).running() as probe:
                    fault_at = time.monotonic()
                    if scenario == FENCE:
                        primary.fence()  # 25006 for every write there from now on
                        standby.wait_caught_up()
                    else:
                        primary.stop("fast")
                    fault_done = time.monotonic()
                    standby.promote()
                    returned = time.monotonic()
                    while probe.at is None and time.monotonic() < returned + 5:
                        time.sleep(0.005)
                promoted = probe.at if probe.at is not None else returned
                # The old primary takes no write after fault_done: any later ack is on the new one.
                first = writers.first_ack_after(fault_done, 1, window)
                if first is not None:
                    time.sleep(max(0.0, first + AFTER_RESUME - time.monotonic()))
        finally:
            close()
        rows = {(int(n), int(s)) for n, s in standby.execute("SELECT thread, seq FROM writes")}
    lost = sum((n, s) not in rows for n, acked in enumerate(writers.acked) for s in acked)
    return FailoverRun(
        scenario=scenario,
        subject=subject,
        resume_ms=None if first is None else max(0.0, first - promoted) * 1e3,
        fault_to_promoted_ms=(promoted - fault_at) * 1e3,
        failed=len(writers.failed),
        failed_after_resume=0 if first is None else writers.failed_since(first),
        acked=sum(len(a) for a in writers.acked),
        lost=lost,
        longest_write_ms=writers.longest * 1e3,
        errors=dict(Counter(kind for _, kind in writers.failed).most_common()),
    )


def measure_failover(smoke: bool, repeats: int) -> Result:
    """Measure 11: both scenarios for both pools, ``min(repeats, MAX_REPEATS)`` times each
    (once when ``smoke``)."""
    repeats = 1 if smoke else max(1, min(repeats, MAX_REPEATS))
    window = WINDOW_QUICK if smoke else WINDOW_FULL
    result = Result(
        name="failover",
        title="11. Failover: a fenced or stopped primary, the standby promoted, 4 writers",
        what=(
            f"A fresh primary and streaming standby per run; {WRITERS} threads insert rows "
            "outside transactions through a pool targeting both servers with "
            "`target_session_attrs=read-write connect_timeout=2`. **fence**: `primary.fence()` "
            "(read-only: writes fail with 25006, pings pass), `standby.wait_caught_up()`, "
            '`standby.promote()`; **stop**: `primary.stop("fast")`, `standby.promote()`. '
            "**resume ms**: from the standby leaving recovery (polled every ~5 ms) to the first "
            f"acknowledged write (median over the runs that resumed within {window:.0f} s; "
            "**resumed** says how many did); **failed**: writes that raised (a failing writer "
            f"waits {PAUSE_FAILED * 1e3:.0f} ms before the next), **after resume**: of those, "
            "the ones started after the first write on the new primary (the writers go on "
            f"{AFTER_RESUME:.0f} s after it); **lost**: acknowledged writes "
            "missing on the new primary; **longest write**: one call, start to return."
        ),
        baseline=(
            "none: the same writer loop on each pool; fewer failed and lost writes and a "
            "shorter resume are better"
        ),
        columns=[
            Column("resume", "resume ms", ".0f"),
            Column("resumed", "resumed"),
            Column("failed", "failed", "d"),
            Column("after", "after resume", "d"),
            Column("acked", "acked", "d"),
            Column("lost", "lost", "d"),
            Column("longest", "longest write ms", ".0f"),
            Column("promote", "fault -> promoted ms", ".0f"),
        ],
    )
    runs: dict[tuple[str, str], list[FailoverRun]] = {}
    subjects = list(SUBJECTS)
    for r in range(repeats):
        for scenario in SCENARIOS:
            order = subjects[r % 2 :] + subjects[: r % 2]
            for subject in order:
                try:
                    run = failover_run(scenario, subject, window)
                except Exception as exc:
                    result.notes.append(
                        f"{scenario}, {subject}: run failed: {type(exc).__name__}: {exc}"
                    )
                    continue
                runs.setdefault((scenario, subject), []).append(run)
    for scenario in SCENARIOS:
        for subject in subjects:
            got = runs.get((scenario, subject))
            if not got:
                continue
            resumed = [x.resume_ms for x in got if x.resume_ms is not None]
            result.rows.append(
                Row(
                    f"{scenario}: {subject}",
                    {
                        "resume": Stat(resumed) if resumed else f"none in {window:.0f} s",
                        "resumed": f"{len(resumed)}/{len(got)}",
                        "failed": sum(x.failed for x in got),
                        "after": sum(x.failed_after_resume for x in got),
                        "acked": sum(x.acked for x in got),
                        "lost": sum(x.lost for x in got),
                        "longest": Stat([x.longest_write_ms for x in got]),
                        "promote": Stat([x.fault_to_promoted_ms for x in got]),
                    },
                )
            )
            kinds: Counter[str] = Counter()
            for x in got:
                kinds.update(x.errors)
            if kinds:
                said = "; ".join(f"{n} x {kind}" for kind, n in kinds.most_common(3))
                result.notes.append(f"{scenario}, {subject}: failed writes: {said}")
    result.raw = {f"{s}: {p}": [vars(x) for x in got] for (s, p), got in runs.items()}
    result.targets = [_target(runs.get((scenario, PGR)), scenario) for scenario in SCENARIOS]
    result.notes.append(
        f"{repeats} run(s) per scenario and pool, each on a new primary and standby; sums over "
        "the runs for failed, acked and lost, median (min\u2013max) otherwise."
    )
    result.notes.append(
        "resume ms is 0 when a write landed before the probe (every ~5 ms) saw the promotion."
    )
    result.notes += [f"{name}: {how}." for name, how in CONFIGURED.items()]
    return result


def _target(got: list[FailoverRun] | None, scenario: str) -> Target:
    text = f"failover, {scenario}: pgregistry resumes within 1 s, 0 failed, 0 lost (worst run)"
    if not got:
        return Target(text, None, "not measured")
    resumed = [x.resume_ms for x in got]
    worst = None if None in resumed else max(x for x in resumed if x is not None)
    failed, lost = sum(x.failed for x in got), sum(x.lost for x in got)
    met = worst is not None and worst <= 1000 and failed == 0 and lost == 0
    shown = "did not resume" if worst is None else f"{worst:.0f} ms"
    return Target(text, met, f"{shown}, {failed} failed, {lost} lost")
