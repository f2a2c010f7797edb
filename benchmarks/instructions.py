"""Instruction counts under valgrind's callgrind: figures that do not wobble on a busy machine.

Timings on a shared 2-core machine swing by 2x between runs; the number of instructions the
CPU retires for the same work does not (to well under 1%), so a regression of a few percent
on the hot path is visible here when the timed measures cannot show it.

How: the parent runs this file as a child under ``valgrind --tool=callgrind`` twice per
subject and repeat, once with ``N1`` and once with ``N2`` operations after the same set-up and
warm-up (``PYTHONHASHSEED`` fixed, the garbage collector off), and takes
``(total(N2) - total(N1)) / (N2 - N1)``: interpreter start-up, imports, connects and the
warm-up are in both totals and cancel out, leaving the instructions of one operation (the
loop's own bytecode included, which the same-run baseline pays too).

Two bodies:

- ``checkout``: checkout + checkin on an idle pool; baseline a bare ``queue.Queue`` get/put.
- ``query``: checkout + ``SELECT 1`` + fetch + checkin; baseline round-robin ``SELECT 1`` on
  raw connections of the same driver. The client side of the server round trip (libpq,
  the driver's result objects) is in both and cancels in the difference.

Instruction counts are user-space only: the kernel's side of a syscall is not counted, so the
``query`` figures understate CPU time but compare like with like. Every child is bounded by a
timeout.
"""

from __future__ import annotations

import argparse
import gc
import os
import re
import shutil
import subprocess
import sys
import tempfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stats import NOT_MEASURED, Column, Result, Row, Stat, Target

HERE = Path(__file__).resolve().parent
SQL = "SELECT 1"
HASHSEED = "0"
# A libc function nothing else in the child calls: callgrind dumps its counters on entry.
MARKER = "getppid"
CHILD_TIMEOUT = 300.0  # seconds one child may take under valgrind before it is killed
WARMUP_OPS = 300
VALGRIND_HINT = "valgrind not found: instruction counts skipped (apt-get install valgrind)"

# (body, subject key, what the report calls it, baseline key of that subject or None)
SUBJECTS: list[tuple[str, str, str, str | None]] = [
    ("checkout", "queue", "queue.Queue get/put (baseline)", None),
    ("checkout", "pgregistry", "pgregistry PooledPg", "queue"),
    ("checkout", "dbutils", "DBUtils PooledPg", "queue"),
    ("checkout", "psycopg_pool", "psycopg_pool", "queue"),
    ("query", "raw_pg", "raw pg connections (baseline)", None),
    ("query", "pgregistry", "pgregistry PooledPg", "raw_pg"),
    ("query", "dbutils", "DBUtils PooledPg", "raw_pg"),
    ("query", "raw_psycopg", "raw psycopg connections (baseline)", None),
    ("query", "psycopg_pool", "psycopg_pool", "raw_psycopg"),
]


@dataclass(frozen=True)
class Sizes:
    """Operations per child: ``n1`` and ``n2`` per body; ``repeats`` pairs of children."""

    checkout: tuple[int, int]
    query: tuple[int, int]
    repeats: int

    def of(self, body: str) -> tuple[int, int]:
        return self.checkout if body == "checkout" else self.query


FULL = Sizes(checkout=(500, 2_500), query=(100, 500), repeats=3)
QUICK = Sizes(checkout=(100, 600), query=(25, 125), repeats=2)


def valgrind_missing() -> str | None:
    """None when valgrind can run, else what to install."""
    return None if shutil.which("valgrind") else VALGRIND_HINT


# --- the parent side -------------------------------------------------------------------------


def _server_args(server: Any) -> list[str]:
    return [
        "--host",
        server.host,
        "--port",
        str(server.port),
        "--dbname",
        server.dbname,
        "--user",
        server.user,
    ]


def segment_counts(
    body: str, subject: str, segments: list[int], server: Any, n_connections: int
) -> list[int]:
    """Instructions of each loop of ``segments`` operations, from one child under callgrind.

    The child calls ``os.getppid()`` before each loop and after the last; callgrind dumps its
    counters each time libc's ``getppid`` is entered (``--dump-before``), so every dump between
    two markers holds one loop (plus the marker's own few instructions, the same each time).
    """
    with tempfile.TemporaryDirectory(prefix="pgregistry-callgrind-") as folder:
        out = Path(folder) / "callgrind.out"
        argv = [
            "valgrind",
            "--tool=callgrind",
            f"--callgrind-out-file={out}",
            f"--dump-before={MARKER}",
            "--dump-line=no",
            sys.executable,
            str(Path(__file__).resolve()),
            "--body",
            body,
            "--subject",
            subject,
            "--segments",
            ",".join(map(str, segments)),
            "--connections",
            str(n_connections),
            *_server_args(server),
        ]
        env = dict(os.environ, PYTHONHASHSEED=HASHSEED, PYTHONDONTWRITEBYTECODE="1")
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=CHILD_TIMEOUT, env=env, check=False
        )
        if done.returncode:
            tail = " | ".join(done.stderr.strip().splitlines()[-3:])
            raise RuntimeError(f"{body}/{subject}: child exited {done.returncode}: {tail}")
        # out.1 is start-up up to the first marker, out.2 ... the loops; out itself the exit.
        dumps = sorted(Path(folder).glob("callgrind.out.*"), key=lambda f: int(f.suffix[1:]))
        if len(dumps) != len(segments) + 1:
            raise RuntimeError(
                f"{body}/{subject}: expected {len(segments) + 1} callgrind dumps at "
                f"{MARKER}(), got {len(dumps)} (is something else calling it?)"
            )
        return [_total(f.read_text()) for f in dumps[1:]]


def _total(text: str) -> int:
    found = re.search(r"^(?:totals|summary):\s*(\d+)", text, re.MULTILINE)
    if not found:
        raise RuntimeError("no totals line in the callgrind output")
    return int(found.group(1))


def per_op_samples(
    body: str, subject: str, sizes: Sizes, server: Any, n_connections: int
) -> list[float]:
    """Instructions per operation, one sample per (n1, n2) pair of loops in one child."""
    n1, n2 = sizes.of(body)
    counts = segment_counts(body, subject, [n1, n2] * sizes.repeats, server, n_connections)
    return [(big - small) / (n2 - n1) for small, big in zip(counts[::2], counts[1::2], strict=True)]


def measure_all(
    server: Any, sizes: Sizes, n_connections: int, workers: int = 2
) -> dict[tuple[str, str], list[float] | str]:
    """Samples per (body, subject) for every subject; a string where a child failed."""
    results: dict[tuple[str, str], list[float] | str] = {}
    with ThreadPoolExecutor(max_workers=workers) as executor:
        futures = {
            (body, subject): executor.submit(
                per_op_samples, body, subject, sizes, server, n_connections
            )
            for body, subject, _, _ in SUBJECTS
        }
        for key, future in futures.items():
            try:
                results[key] = future.result()
            except Exception as exc:  # one failing subject leaves the others measured
                results[key] = f"{type(exc).__name__}: {exc}"
    return results


def measure_instructions(server: Any, n_connections: int, quick: bool) -> Result:
    """The callgrind measure: instructions per operation, minus the same run's baseline."""
    sizes = QUICK if quick else FULL
    result = Result(
        name="instructions",
        title="8. Instructions per operation (valgrind callgrind), single thread",
        what=(
            "Instructions retired per operation, counted by callgrind: checkout + checkin on an "
            "idle pool, and the pooled `SELECT 1` (checkout, query, fetch, checkin). Each sample "
            "is `(I(n2) - I(n1)) / (n2 - n1)` from loops of n1 and n2 operations in one child "
            f"(`PYTHONHASHSEED={HASHSEED}`, gc off, after {WARMUP_OPS} warm-up operations), so "
            "start-up and connects cancel. Unlike the timings these do not move with the "
            "machine's load: a change of 1% is real. User space only (the kernel's side of a "
            "syscall is not counted)."
        ),
        baseline=(
            "for checkout, a bare `queue.Queue` get/put; for the query, round-robin `SELECT 1` "
            "on raw connections of the same driver (pg.DB; psycopg for psycopg_pool)"
        ),
        columns=[
            Column("body", "operation", "s"),
            Column("ir", "instructions / op", ".0f"),
            Column("extra", "over baseline", ".0f"),
            Column("ratio", "x baseline", ".3f"),
        ],
    )
    missing = valgrind_missing()
    if missing:
        result.skipped = missing
        result.targets = [Target("instructions: pgregistry", None, NOT_MEASURED)]
        return result
    got = measure_all(server, sizes, n_connections)
    samples: dict[tuple[str, str], list[float]] = {}
    for key, value in got.items():
        if isinstance(value, str):
            result.notes.append(f"{key[0]} / {key[1]}: not measured ({value})")
        else:
            samples[key] = value
    for body, subject, label, base in SUBJECTS:
        mine = samples.get((body, subject))
        if mine is None:
            continue
        theirs = samples.get((body, base)) if base else None
        result.rows.append(
            Row(
                label,
                {
                    "body": "checkout + checkin" if body == "checkout" else "pooled SELECT 1",
                    "ir": Stat(mine),
                    "extra": Stat([a - b for a, b in zip(mine, theirs, strict=True)])
                    if theirs
                    else None,
                    "ratio": Stat([a / b for a, b in zip(mine, theirs, strict=True)])
                    if theirs
                    else None,
                },
            )
        )
    result.raw = {f"{body} / {subject}": v for (body, subject), v in samples.items()}
    n1c, n2c = sizes.checkout
    n1q, n2q = sizes.query
    result.notes.append(
        f"n1/n2 = {n1c}/{n2c} checkouts and {n1q}/{n2q} queries; {sizes.repeats} pairs per "
        "subject, median (min\u2013max) over the pairs."
    )
    result.targets = _targets(samples)
    return result


def _targets(samples: dict[tuple[str, str], list[float]]) -> list[Target]:
    out = []
    pgr, queue_ = samples.get(("checkout", "pgregistry")), samples.get(("checkout", "queue"))
    if pgr and queue_:
        ratio = Stat([a / b for a, b in zip(pgr, queue_, strict=True)]).median
        out.append(
            Target(
                "instructions, checkout+checkin: pgregistry <= 0.6x queue.Queue get/put",
                ratio <= 0.6,
                f"{ratio:.2f}",
            )
        )
    q_pgr, q_raw = samples.get(("query", "pgregistry")), samples.get(("query", "raw_pg"))
    q_dbu = samples.get(("query", "dbutils"))
    if q_pgr and q_raw:
        extra = Stat([a - b for a, b in zip(q_pgr, q_raw, strict=True)]).median
        shown = f"{extra:,.0f}"
        if q_dbu:
            dbu = Stat([a - b for a, b in zip(q_dbu, q_raw, strict=True)]).median
            shown += f" (DBUtils {dbu:,.0f})"
        out.append(Target("instructions, pooled SELECT 1: pgregistry over raw pg.DB", None, shown))
    return out


# --- the child side (runs under valgrind) ----------------------------------------------------


class _Server:
    """What the peer adapters read from a cluster, rebuilt from the command line."""

    def __init__(self, host: str, port: int, dbname: str, user: str) -> None:
        self.host, self.port, self.dbname, self.user = host, port, dbname, user

    def connect_kwargs(self) -> dict[str, Any]:
        return {"dbname": self.dbname, "host": self.host, "port": self.port, "user": self.user}

    @property
    def conninfo(self) -> str:
        return f"host={self.host} port={self.port} dbname={self.dbname} user={self.user}"

    @property
    def dsn(self) -> str:
        return f"postgresql://{self.user}@{self.host}:{self.port}/{self.dbname}"


def _peer(subject: str, server: Any, n: int) -> Any:
    import peers

    if subject == "pgregistry":
        # Lazily filled (mincached 0), then every place opened once: with mincached > 0 the
        # pool's upkeep runs every second, and under valgrind (about 50x slower) those rounds
        # would be counted against the operations. Checkout and return take the same path.
        from pgregistry import PooledPg

        pool = PooledPg(0, n, n, True, timeout=peers.POOL_TIMEOUT, **server.connect_kwargs())
        peer = peers.PgRegistryPeer(server)
        peer.pool, peer.checkout, peer.checkin = pool, pool.connection, peers._close
        peer._prefill(n)
        return peer
    made: Any = {
        "queue": lambda: peers.QueueBaseline(server),
        "raw_pg": lambda: peers.RawRoundRobin(server, driver="pg"),
        "raw_psycopg": lambda: peers.RawRoundRobin(server, driver="psycopg"),
        "dbutils": lambda: peers.DBUtilsPeer(server),
        "psycopg_pool": lambda: peers.PsycopgPoolPeer(server),
    }[subject]()
    made.open(n)
    return made


def _loop(peer: Any, body: str, ops: int) -> None:
    checkout, checkin, query = peer.checkout, peer.checkin, peer.query
    if body == "checkout":
        for _ in range(ops):
            checkin(checkout())
    else:
        for _ in range(ops):
            c = checkout()
            query(c, SQL)
            checkin(c)


def child(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="one callgrind child (run by the bench)")
    parser.add_argument("--body", choices=("checkout", "query"), required=True)
    parser.add_argument("--subject", required=True)
    parser.add_argument("--segments", required=True, help="ops per loop, comma-separated")
    parser.add_argument("--connections", type=int, default=8)
    parser.add_argument("--host", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--dbname", required=True)
    parser.add_argument("--user", required=True)
    args = parser.parse_args(argv)
    sys.path.insert(0, str(HERE))
    server = _Server(args.host, args.port, args.dbname, args.user)
    peer = _peer(args.subject, server, args.connections)
    _loop(peer, args.body, WARMUP_OPS)
    segments = [min(int(x), 10_000_000) for x in args.segments.split(",")]
    gc.collect()
    gc.disable()
    marker = os.getppid
    for ops in segments:
        marker()
        _loop(peer, args.body, ops)
    marker()
    # Leave without closing: nothing after the last marker is counted.
    sys.stdout.flush()
    os._exit(0)


if __name__ == "__main__":
    child()
