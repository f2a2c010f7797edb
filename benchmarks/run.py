#!/usr/bin/env python3
"""Benchmarks of pgregistry against DBUtils, psycopg_pool and SQLAlchemy: ``make bench``.

Run with any Python >= 3.11: the script makes its own virtual environment (``.bench-venv`` at the
repository root) with pgregistry (editable) and every peer library, re-executes itself inside it,
starts a throwaway PostgreSQL cluster on a free 127.0.0.1 port, runs the measures, and writes
``benchmarks/RESULTS.md`` and ``benchmarks/results/latest.json``.

    python3 benchmarks/run.py              # everything, about 5 minutes on 2 cores
    python3 benchmarks/run.py --quick      # a smoke run of every measure, well under a minute
    python3 benchmarks/run.py --only restart
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
VENV = ROOT / ".bench-venv"
STAMP = VENV / ".bench-installed"
RESULTS_MD = HERE / "RESULTS.md"
RESULTS_JSON = HERE / "results" / "latest.json"
RUN_LOG = HERE / "results" / "raw-last-run.log"

# The peers are installed by name, at their newest release; the versions actually measured are
# written with the results. pgregistry itself is installed editable so a run measures the tree.
REQUIREMENTS = [
    "DBUtils>=3.1",
    "PyGreSQL>=6.0",
    "psycopg[binary]>=3.2",
    "psycopg_pool>=3.2",
    "SQLAlchemy>=2.0",
    "psycopg2-binary>=2.9",
    # Charts for docs/benchmarks.md; a benchmark tool, never a dependency of pgregistry.
    "matplotlib>=3.8",
]
_REEXEC_MARK = "PGREGISTRY_BENCH_VENV"
# Every pool of a measure is open at once (up to 8 pools/baselines x 8 connections), plus the
# connect-per-request and restart probes.
CLUSTER_MAX_CONNECTIONS = 200


def _stamp_text() -> str:
    """What the venv was built from; a change (new requirement, edited pyproject) rebuilds it."""
    digest = hashlib.sha256()
    digest.update("\n".join(REQUIREMENTS).encode())
    digest.update((ROOT / "pyproject.toml").read_bytes())
    digest.update(sys.version.encode())
    return digest.hexdigest()


def _in_bench_venv() -> bool:
    return Path(sys.prefix).resolve() == VENV.resolve()


def bootstrap() -> None:
    """Make ``.bench-venv`` if needed and re-execute this script inside it (once)."""
    if _in_bench_venv():
        return
    if os.environ.get(_REEXEC_MARK):
        sys.exit(f"bench: re-executed into {VENV} but sys.prefix is {sys.prefix}; giving up")
    python = VENV / "bin" / "python"
    stamp = _stamp_text()
    if not (python.exists() and STAMP.exists() and STAMP.read_text() == stamp):
        print(f"bench: preparing {VENV.name} (pgregistry editable + peers)", flush=True)
        started = time.monotonic()
        subprocess.run([sys.executable, "-m", "venv", str(VENV)], check=True)
        pip = [str(python), "-m", "pip", "install", "-q", "--disable-pip-version-check"]
        log = VENV / "pip.log"
        with log.open("w") as out:
            for step in (["--upgrade", "pip"], ["-e", str(ROOT), *REQUIREMENTS]):
                done = subprocess.run([*pip, *step], stdout=out, stderr=subprocess.STDOUT)
                if done.returncode:
                    sys.exit(
                        f"bench: pip install {' '.join(step)} failed (see {log}); PyGreSQL "
                        "builds against libpq: apt-get install libpq-dev gcc"
                    )
        STAMP.write_text(stamp)
        print(f"bench: venv ready in {time.monotonic() - started:.0f} s", flush=True)
    env = dict(os.environ, **{_REEXEC_MARK: "1"})
    os.execve(str(python), [str(python), str(Path(__file__).resolve()), *sys.argv[1:]], env)


@contextlib.contextmanager
def _stderr_to(path: Path) -> Iterator[None]:
    """Send file descriptor 2 to ``path`` (appending): libpq prints server notices such as
    "FATAL: terminating connection" there from C, past Python's logging."""
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with path.open("a") as log:
            os.dup2(log.fileno(), 2)
            try:
                yield
            finally:
                sys.stderr.flush()
                os.dup2(saved, 2)
    finally:
        os.close(saved)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from measures import MEASURES

    parser = argparse.ArgumentParser(
        prog="benchmarks/run.py",
        description="pgregistry against DBUtils, psycopg_pool and SQLAlchemy, as ratios to "
        "baselines measured in the same run.",
    )
    parser.add_argument("--quick", action="store_true", help="a short smoke run of every measure")
    parser.add_argument(
        "--only",
        action="append",
        metavar="NAME",
        choices=list(MEASURES),
        help=f"run only this measure (repeatable): {', '.join(MEASURES)}",
    )
    parser.add_argument(
        "--repeats",
        type=int,
        default=None,
        help="repeats per measure (default 7; contention 4, restart 3; quick 1-2)",
    )
    parser.add_argument(
        "--no-write",
        action="store_true",
        help="print the table but leave RESULTS.md and latest.json alone",
    )
    args = parser.parse_args(argv)
    if args.repeats is not None and not 1 <= args.repeats <= 50:
        parser.error("--repeats must be between 1 and 50")
    return args


def main(argv: list[str] | None = None) -> int:
    bootstrap()
    args = parse_args(argv)

    import measures
    import report

    from pgregistry.testing import TemporaryCluster

    def _terminate(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)  # unwinds the with-blocks: the cluster is removed

    signal.signal(signal.SIGTERM, _terminate)

    plan = measures.Plan.quick() if args.quick else measures.Plan.full()
    if args.repeats is not None:
        plan = plan.with_repeats(args.repeats)
    names = args.only or list(measures.MEASURES)

    started = time.monotonic()
    print(f"bench: {'quick' if args.quick else 'full'} run of {', '.join(names)}", flush=True)
    RUN_LOG.parent.mkdir(parents=True, exist_ok=True)
    print(f"bench: library warnings and libpq notices go to {RUN_LOG.relative_to(ROOT)}")
    logging.basicConfig(
        filename=RUN_LOG,
        filemode="w",
        level=logging.INFO,
        format="%(asctime)s %(threadName)s %(name)s %(levelname)s %(message)s",
        force=True,
    )
    # Its own server: the restart measure stops and starts it; the shared one is never touched.
    with TemporaryCluster(max_connections=CLUSTER_MAX_CONNECTIONS) as server:
        print(f"bench: throwaway cluster {server!r}", flush=True)
        context = measures.Context(server=server, plan=plan)
        results = []
        for name in names:
            t0 = time.monotonic()
            print(f"bench: [{name}] ...", flush=True)
            with _stderr_to(RUN_LOG):
                result = measures.MEASURES[name](context)
            result.seconds = time.monotonic() - t0
            print(f"bench: [{name}] done in {time.monotonic() - t0:.1f} s", flush=True)
            results.append(result)
        run = report.Run.collect(
            results=results,
            server_version=str(server.execute("SHOW server_version")[0][0]),
            quick=args.quick,
            repeats=plan.repeats,
            seconds=time.monotonic() - started,
        )
    markdown = report.to_markdown(run)
    print(markdown)
    if args.no_write:
        return 0
    if args.only or args.quick:
        # A partial or smoke run must not overwrite the table of the last full run.
        stamp = time.strftime("%Y%m%d-%H%M%S")
        target_md = HERE / "results" / f"raw-{stamp}.md"
        target_json = HERE / "results" / f"raw-{stamp}.json"
    else:
        target_md, target_json = RESULTS_MD, RESULTS_JSON
    report.write(run, markdown_path=target_md, json_path=target_json)
    print(f"bench: wrote {target_md.relative_to(ROOT)} and {target_json.relative_to(ROOT)}")
    import charts

    img = charts.DOCS_IMG if target_md == RESULTS_MD else target_md.with_suffix("")
    try:
        for path in charts.draw(report.to_json(run), img):
            print(f"bench: chart {path.relative_to(ROOT)}")
    except Exception as exc:  # a chart must not cost the run's numbers
        print(f"bench: charts failed: {type(exc).__name__}: {exc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
