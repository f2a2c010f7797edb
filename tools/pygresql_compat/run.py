"""``make test-pygresql``: PyGreSQL's own classic ``DB`` tests, plain and through the pool.

Downloads the sdist of the installed PyGreSQL version with pip (cached in ``.compat-cache/``,
git-ignored; nothing of PyGreSQL's is committed), extracts its tests, and runs the tests of
``pg.DB`` once per mode (``plain``: pg.DB itself; ``default`` and ``discard``: every
``pg.DB(...)`` is ``pool.connection()`` of one PooledPg per test module, see compat_plugin.py).
Prints ``N passed, N failed`` per mode and the failing test ids.

The server is PyGreSQL's usual configuration (``PYGRESQL_HOST``/``PORT``/``DB``/``USER``,
falling back to ``PG*``), defaulting here to 127.0.0.1:5432, database ``test``.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import json
import os
import re
import signal
import subprocess
import sys
import tarfile
import time
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent.parent
CACHE = REPO / ".compat-cache"
# The tests of pg.DB in PyGreSQL's sdist (test_classic_connection.py tests pg.Connection).
TESTS = [
    "test_classic_dbwrapper.py",
    "test_classic_notification.py",
    "test_classic.py",
    "test_tutorial.py::TestClassicTutorial",
]
# Passed tests each pooled mode must keep (checked with --check only), of PyGreSQL 6.2.3's:
# discard passes all 340 that plain pg.DB passes; default 297, the rest each creating a
# temporary table the previous test left on the session (session state persists under the
# default reset, by design: SPEC 2).
TARGETS = {"default": 297, "discard": 340}


def fetch_tests(version: str) -> Path:
    """The directory of PyGreSQL ``version``'s tests, downloaded and extracted if needed."""
    target = CACHE / f"pygresql-{version}"
    package = target / "pygresql_tests"
    if (package / "config.py").exists():
        return target
    CACHE.mkdir(exist_ok=True)
    sdists = sorted(CACHE.glob(f"[Pp]y[Gg]re[Ss][Qq][Ll]-{version}.tar.gz"))
    if not sdists:
        subprocess.run(
            [sys.executable, "-m", "pip", "download", "-q", "--no-deps",
             "--no-binary", ":all:", f"PyGreSQL=={version}", "-d", str(CACHE)],
            check=True,
        )
        sdists = sorted(CACHE.glob(f"[Pp]y[Gg]re[Ss][Qq][Ll]-{version}.tar.gz"))
    if not sdists:
        raise SystemExit(f"pip left no PyGreSQL-{version}.tar.gz in {CACHE}")
    package.mkdir(parents=True, exist_ok=True)
    with tarfile.open(sdists[0]) as archive:
        for member in archive.getmembers():
            parts = Path(member.name).parts
            # Only tests/: the sdist's own pg/ package would shadow the installed one.
            if len(parts) == 3 and parts[1] == "tests" and member.isfile():
                source = archive.extractfile(member)
                assert source is not None
                (package / parts[2]).write_bytes(source.read())
    return target


def run_mode(
    mode: str, root: Path, verbose: bool, limit: float
) -> tuple[dict[str, dict[str, str]], float]:
    """Run the tests in one mode; return their outcomes by node id and the seconds taken.

    A test that hangs (stuck in libpq, where pytest-timeout's signal cannot reach it) makes
    pytest stop answering: after ``limit`` seconds without a finished test the run is killed,
    that test counted as failed, and pytest started again without the tests already done.
    """
    report = root / f"report-{mode}.json"
    log = root / f"log-{mode}.txt"
    env = dict(os.environ)
    env["PGREGISTRY_COMPAT_RESET"] = mode
    env["PGREGISTRY_COMPAT_REPORT"] = str(report)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(HERE), env.get("PYTHONPATH")]))
    env.setdefault("PYGRESQL_HOST", env.get("PGHOST", "127.0.0.1"))
    env.setdefault("PYGRESQL_PORT", env.get("PGPORT", "5432"))
    env.setdefault("PYGRESQL_DB", env.get("PGDATABASE", "test"))
    env["PGAPPNAME"] = f"pgregistry-compat-{mode}"
    command = [
        sys.executable, "-m", "pytest", "-c", str(HERE / "pytest.ini"), "--rootdir", str(root),
        "-q", "-rN", *(f"pygresql_tests/{test}" for test in TESTS),
    ]
    tests: dict[str, dict[str, str]] = {}
    started = time.monotonic()
    with log.open("w") as out:
        for _attempt in range(10):
            report.unlink(missing_ok=True)
            deselect = [arg for nodeid in tests for arg in ("--deselect", nodeid)]
            out.flush()
            process = subprocess.Popen(
                command + deselect, cwd=root, env=env, stdout=out, stderr=out
            )
            hung = _wait_while_progressing(process, report, limit)
            if not report.exists():
                raise SystemExit(f"mode {mode}: pytest wrote no report; see {log}")
            data = json.loads(report.read_text())
            tests.update(data["tests"])
            if not hung:
                break
            running = data["running"]
            print(f"mode {mode}: {running or '?'} hung, killed after {limit:.0f} s without "
                  f"progress (stacks in the log); going on without it")
            if not running:
                break
            tests[running] = {"outcome": "failed", "message": f"hung: killed after {limit:.0f} s"}
    took = time.monotonic() - started
    report.write_text(json.dumps({"mode": mode, "running": "", "tests": tests}, indent=1))
    if verbose:
        print(log.read_text())
    return tests, took


def _wait_while_progressing(process: subprocess.Popen[bytes], report: Path, limit: float) -> bool:
    """Wait for ``process``; kill it and return True if ``report`` is older than ``limit`` s."""
    while True:
        try:
            process.wait(1.0)
            return False
        except subprocess.TimeoutExpired:
            pass
        try:
            idle = time.time() - report.stat().st_mtime
        except FileNotFoundError:
            idle = 0.0  # still collecting
        if idle > limit:
            process.send_signal(signal.SIGABRT)  # faulthandler prints every thread's stack
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
            return True


def _cause(message: str) -> str:
    """A failure message with its particulars (names, numbers, addresses) blanked out, so that
    failures of one cause count together."""
    cause = message.partition(": ")[2] or message
    cause = re.sub(r"0x[0-9a-f]+", "0x…", cause)
    cause = re.sub(r"'[^']*'|\"[^\"]*\"", "'…'", cause)
    cause = re.sub(r"\b\d+\b", "N", cause)
    return cause[:100]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--modes", default="plain,default,discard", help="comma-separated: plain,default,discard"
    )
    parser.add_argument("--check", action="store_true",
                        help=f"exit 1 unless plain has no failure and {TARGETS} pass")
    parser.add_argument("--limit", type=float, default=15.0,
                        help="seconds without a finished test before the run is killed as hung "
                        "(default 15)")
    parser.add_argument("--verbose", action="store_true", help="print pytest's output too")
    args = parser.parse_args(argv)
    version = importlib.metadata.version("PyGreSQL")
    root = fetch_tests(version)
    print(f"PyGreSQL {version}: its classic pg.DB tests ({', '.join(TESTS)})")
    ok = True
    for mode in args.modes.split(","):
        tests, took = run_mode(mode, root, args.verbose, args.limit)
        by = {"passed": 0, "failed": 0, "skipped": 0}
        for entry in tests.values():
            by[entry["outcome"]] += 1
        listed = sum(1 for e in tests.values() if "pgregistry skip list" in e["message"])
        print(f"\n== mode {mode} ({took:.1f} s, log in {root / f'log-{mode}.txt'}) ==")
        print(f"{by['passed']} passed, {by['failed']} failed")
        print(f"{by['skipped']} skipped ({listed} by tools/pygresql_compat/skip.txt, "
              f"{by['skipped'] - listed} by PyGreSQL's own conditions)")
        failed = {nodeid: e for nodeid, e in tests.items() if e["outcome"] == "failed"}
        if failed:
            print("failures by cause:")
            causes = Counter(_cause(entry["message"]) for entry in failed.values())
            for cause, count in causes.most_common():
                print(f"  {count:3d}  {cause}")
        for nodeid, entry in sorted(failed.items()):
            print(f"FAILED {nodeid} - {entry['message']}")
        if mode == "plain":
            ok = ok and by["failed"] == 0
        elif mode in TARGETS:
            ok = ok and by["passed"] >= TARGETS[mode]
    return 0 if ok or not args.check else 1


if __name__ == "__main__":
    sys.exit(main())
