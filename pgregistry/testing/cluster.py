"""Throwaway PostgreSQL clusters for tests, the demo and the benchmarks.

:class:`TemporaryCluster` runs ``initdb`` into a fresh temporary directory and starts a private
server with ``pg_ctl`` on a free TCP port of 127.0.0.1 (plus a unix socket inside that directory),
with trust authentication and durability switched off for speed. Fault tests can stop, restart
and kill it at will without disturbing a shared server::

    from pgregistry.testing import TemporaryCluster

    with TemporaryCluster(max_connections=20) as cluster:
        db = pg.DB(**cluster.connect_kwargs())
        ...
        cluster.kill_backends()  # every client connection is cut

Running as root: ``initdb`` and ``pg_ctl`` refuse to run as root, so when the effective user is
root they run as the ``postgres`` system user (``run_as``) and the temporary directory is handed
to that user. The bootstrap superuser is ``postgres``; a superuser role named after the current OS
user (``root`` when run as root) is created too, so both ``user='postgres'`` and the libpq default
user can connect.

A cluster never outlives its process: :meth:`TemporaryCluster.cleanup` (called by ``__exit__``)
stops the server and removes the directory, and an :mod:`atexit` handler cleans up clusters that
were left running. Every wait is bounded in time. Only a process killed with SIGKILL can leave a
server behind (its directory is named ``pgregistry-cluster-*`` in the temporary directory).

:func:`server_answers` tells whether a PostgreSQL server answers on a host and port, without
logging in; the demo uses it to decide whether it needs a cluster of its own.
"""

from __future__ import annotations

import atexit
import contextlib
import getpass
import glob
import os
import shutil
import signal
import socket
import struct
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Literal

import pg

from ..conninfo import quote_value
from ..sql import quote_ident, quote_literal
from ._ports import PortError, PortReservation, process_alive, run_as_ids

__all__ = [
    "BackendKiller",
    "ClusterError",
    "StopMode",
    "TemporaryCluster",
    "find_pg_bindir",
    "server_answers",
]

StopMode = Literal["smart", "fast", "immediate"]
"""``pg_ctl stop -m`` modes: wait for clients, roll back and disconnect them, or abort at once."""

_STOP_MODES: Final = ("smart", "fast", "immediate")

#: Where distributions put the server binaries when they are not on PATH (Debian, Ubuntu).
_PG_LIB_GLOB: Final = "/usr/lib/postgresql/*/bin"

#: Environment variable naming a directory holding ``initdb`` and ``pg_ctl``; wins over PATH.
BINDIR_ENV: Final = "PGREGISTRY_PG_BINDIR"

#: Lock files (one per port) shared by every process on the machine, so that parallel test runs
#: that pick the same free port do not both try to use it.

#: The SSLRequest message: length 8, then the magic request code 80877103.
_SSL_REQUEST: Final = struct.pack("!ii", 8, 80877103)

#: How many lines of the server log a failed start or a timeout quotes.
_LOG_TAIL_LINES: Final = 40


class ClusterError(RuntimeError):
    """A temporary cluster could not be created, started or stopped; the message quotes the log."""


# --------------------------------------------------------------------------------------------
# Finding the server binaries
# --------------------------------------------------------------------------------------------


def _has_server_binaries(directory: Path) -> bool:
    return all(os.access(directory / name, os.X_OK) for name in ("initdb", "pg_ctl"))


def _version_key(directory: Path) -> tuple[int, ...]:
    # /usr/lib/postgresql/<version>/bin: "15" or "9.6"; anything else sorts first.
    try:
        return tuple(int(part) for part in directory.parent.name.split("."))
    except ValueError:
        return ()


def find_pg_bindir() -> Path:
    """Return the directory holding the PostgreSQL server binaries ``initdb`` and ``pg_ctl``.

    Looks, in order, at ``$PGREGISTRY_PG_BINDIR``, at ``initdb`` on ``PATH`` (symlinks resolved, so
    ``pg_ctl`` and ``postgres`` are found beside it) and at ``/usr/lib/postgresql/*/bin``, newest
    version first. Raises :class:`RuntimeError` saying what to install when none is found.
    """
    explicit = os.environ.get(BINDIR_ENV)
    if explicit:
        directory = Path(explicit)
        if not _has_server_binaries(directory):
            raise RuntimeError(
                f"{BINDIR_ENV}={explicit!r} does not hold executable initdb and pg_ctl"
            )
        return directory
    on_path = shutil.which("initdb")
    if on_path is not None:
        directory = Path(on_path).resolve().parent
        if _has_server_binaries(directory):
            return directory
    candidates = [Path(p) for p in glob.glob(_PG_LIB_GLOB) if _has_server_binaries(Path(p))]
    if candidates:
        return max(candidates, key=_version_key)
    raise RuntimeError(
        "PostgreSQL server binaries (initdb, pg_ctl) not found on PATH nor under "
        f"{_PG_LIB_GLOB}; install the server (Debian/Ubuntu: apt-get install postgresql) "
        f"or set {BINDIR_ENV} to the directory holding them"
    )


# --------------------------------------------------------------------------------------------
# Checking a server
# --------------------------------------------------------------------------------------------


def server_answers(host: str = "127.0.0.1", port: int = 5432, timeout: float = 2.0) -> bool:
    """Tell whether a PostgreSQL server answers on ``host``:``port`` within ``timeout`` seconds.

    Sends the protocol's SSLRequest and expects the one-byte ``S``/``N`` answer only a PostgreSQL
    server gives, so no role, database or password is needed and nothing is logged in. A ``host``
    starting with ``/`` is a unix socket directory, as in libpq.
    """
    deadline = time.monotonic() + timeout
    try:
        if host.startswith("/"):
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            address: Any = os.path.join(host, f".s.PGSQL.{port}")
        else:
            info = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0]
            sock = socket.socket(info[0], info[1], info[2])
            address = info[4]
        with sock:
            sock.settimeout(max(deadline - time.monotonic(), 0.001))
            sock.connect(address)
            sock.settimeout(max(deadline - time.monotonic(), 0.001))
            sock.sendall(_SSL_REQUEST)
            answer = sock.recv(1)
    except (OSError, IndexError):
        return False
    return answer in (b"S", b"N")


class BackendKiller:
    """A connection of its own that terminates other backends of a server.

    ``killer(pid)`` calls ``pg_terminate_backend`` and waits (at most ``timeout`` seconds) until
    the backend is gone, so the victim's next statement surely finds its connection lost. The
    connecting role must be a superuser or the victim's own role.
    """

    def __init__(self, **connect_kwargs: Any) -> None:
        """Open the killing connection; ``connect_kwargs`` go to ``pg.DB``."""
        self.db: Any = pg.DB(**connect_kwargs)

    def __call__(self, pid: int, timeout: float = 5.0) -> bool:
        """Terminate backend ``pid``; return False when no such backend existed."""
        return bool(_terminate(self.db, [int(pid)], timeout))

    def close(self) -> None:
        """Close the killing connection."""
        with contextlib.suppress(pg.Error):
            self.db.close()


def _terminate(db: Any, pids: list[int] | None, timeout: float) -> int:
    """Terminate ``pids`` (every other client backend when None); wait until they are gone."""
    if pids is None:
        rows = db.query(
            "SELECT pid FROM pg_stat_activity"
            " WHERE backend_type = 'client backend' AND pid <> pg_backend_pid()"
        ).getresult()
        pids = [row[0] for row in rows]
    pids = [pid for pid in pids if pid != db.backend_pid]
    if not pids:
        return 0
    array = "{" + ",".join(str(pid) for pid in pids) + "}"
    killed = [
        row[0]
        for row in db.query(
            "SELECT pid FROM unnest($1::int[]) AS pid WHERE pg_terminate_backend(pid)", (array,)
        ).getresult()
    ]
    deadline = time.monotonic() + timeout
    while killed and time.monotonic() < deadline:
        alive = db.query(
            "SELECT count(*) FROM pg_stat_activity WHERE pid = ANY($1::int[])", (array,)
        ).getresult()[0][0]
        if not alive:
            break
        time.sleep(0.02)
    return len(killed)


# --------------------------------------------------------------------------------------------
# Clusters left running at exit
# --------------------------------------------------------------------------------------------

_live_lock = threading.Lock()
_live: dict[int, TemporaryCluster] = {}


def _cleanup_live_clusters() -> None:
    with _live_lock:
        clusters = list(_live.values())
    for cluster in clusters:
        with contextlib.suppress(Exception):
            cluster.cleanup()


def _forget_parents_clusters() -> None:
    # A forked child must not stop its parent's clusters when it exits.
    _live.clear()


atexit.register(_cleanup_live_clusters)
os.register_at_fork(after_in_child=_forget_parents_clusters)


# --------------------------------------------------------------------------------------------
# The cluster
# --------------------------------------------------------------------------------------------


def _conf_value(value: str | int | float | bool) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, int | float):
        return str(value)
    return "'" + value.replace("\\", "\\\\").replace("'", "''") + "'"


class TemporaryCluster:
    """A private PostgreSQL server in a temporary directory, for tests that break servers.

    Nothing happens until :meth:`start` (or ``with``). The first start runs ``initdb`` (about a
    second), later starts reuse the data directory and the port, so a restarted server is found
    where clients expect it.

    Parameters:
        max_connections: the server's ``max_connections`` (default 100). ``shared_buffers`` grows
            with it (at least 16 MB).
        dbname: database of :meth:`connect_kwargs`; created at the first start unless it is
            ``postgres``.
        user: role of :meth:`connect_kwargs` (default ``postgres``, the bootstrap superuser);
            created as a superuser when it is another name.
        settings: more ``postgresql.conf`` settings (``{"idle_session_timeout": "5s"}``).
        start_timeout, stop_timeout: seconds ``pg_ctl`` may wait for the server (defaults 60, 30).
        bindir: where ``initdb`` and ``pg_ctl`` are; default :func:`find_pg_bindir`.
        parent_dir: where the temporary directory is made (default: the system's temp dir).
        run_as: OS user running ``initdb``/``pg_ctl`` when this process is root (default
            ``postgres``); ignored otherwise, as only root can switch users.
    """

    host: Final = "127.0.0.1"

    def __init__(
        self,
        *,
        max_connections: int = 100,
        dbname: str = "postgres",
        user: str = "postgres",
        settings: Mapping[str, str | int | float | bool] | None = None,
        start_timeout: float = 60.0,
        stop_timeout: float = 30.0,
        bindir: str | os.PathLike[str] | None = None,
        parent_dir: str | os.PathLike[str] | None = None,
        run_as: str | None = None,
    ) -> None:
        if max_connections < 1:
            raise ValueError(f"max_connections must be >= 1 (got {max_connections})")
        self.max_connections = max_connections
        self.dbname = dbname
        self.user = user
        self.settings: dict[str, str | int | float | bool] = dict(settings or {})
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
        self._bindir = Path(bindir) if bindir is not None else None
        self._parent_dir = parent_dir
        self._run_as_name = run_as
        self._ids: tuple[int, int] | None = None  # (uid, gid) to switch to, when root
        self._base_dir: Path | None = None
        self._port: PortReservation | None = None
        self._bootstrapped = False
        self._owner_pid = os.getpid()
        self._lock = threading.RLock()

    # -- paths and addresses -----------------------------------------------------------------

    @property
    def base_dir(self) -> Path:
        """The temporary directory (data, socket and log live inside); set by the first start."""
        if self._base_dir is None:
            raise ClusterError("the cluster has not been started yet")
        return self._base_dir

    @property
    def data_dir(self) -> Path:
        """The cluster's data directory (``PGDATA``)."""
        return self.base_dir / "data"

    @property
    def socket_dir(self) -> Path:
        """The directory of the server's unix socket; usable as ``host`` in libpq."""
        return self.base_dir / "socket"

    @property
    def log_file(self) -> Path:
        """The server's log file."""
        return self.base_dir / "server.log"

    @property
    def port(self) -> int:
        """The TCP port on 127.0.0.1; kept across stops and restarts."""
        if self._port is None:
            raise ClusterError("the cluster has not been started yet")
        return self._port.port

    def connect_kwargs(self, dbname: str | None = None) -> dict[str, Any]:
        """Keyword arguments for ``pg.DB(**kwargs)``: dbname, host, port, user (TCP, trust)."""
        return {
            "dbname": dbname or self.dbname,
            "host": self.host,
            "port": self.port,
            "user": self.user,
        }

    @property
    def conninfo(self) -> str:
        """A libpq keyword/value connection string for the cluster."""
        return f"host={self.host} port={self.port} dbname={self.dbname} user={self.user}"

    @property
    def dsn(self) -> str:
        """A ``postgresql://`` URI for the cluster."""
        return f"postgresql://{self.user}@{self.host}:{self.port}/{self.dbname}"

    def __repr__(self) -> str:
        where = f"port {self._port.port}" if self._port is not None else "not started"
        return f"<TemporaryCluster {where}, dir {self._base_dir}>"

    # -- context manager ---------------------------------------------------------------------

    def __enter__(self) -> TemporaryCluster:
        try:
            self.start()
        except BaseException:
            self.cleanup()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.cleanup()

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Start the server (running ``initdb`` first if needed); do nothing if it is running.

        Waits until the server accepts connections. Raises :class:`ClusterError` quoting the
        server log when it does not start within ``start_timeout`` seconds.
        """
        with self._lock:
            if self._base_dir is None:
                self._create()
            if self.is_running():
                return
            with _live_lock:
                _live[id(self)] = self
            for attempt in range(5):
                if self._port is None:
                    try:
                        self._port = PortReservation(self.host)
                    except PortError as exc:
                        raise ClusterError(str(exc)) from None
                    self._write_port_conf()
                result = self._pg_ctl(
                    "start", "-w", "-t", str(int(self.start_timeout)),
                    "-l", str(self.log_file),
                    timeout=self.start_timeout + 10,
                )  # fmt: skip
                if result is not None and result.returncode == 0:
                    break
                # Someone else took the port between our check and the server's bind: next port.
                self._stop_quietly()
                if attempt < 4 and "already in use" in self._log_tail():
                    self._port.release()
                    self._port = None
                    continue
                raise ClusterError(self._failure("could not start", result))
            self.wait_ready(self.start_timeout)
            if not self._bootstrapped:
                self._bootstrap()

    def stop(self, mode: StopMode = "fast") -> None:
        """Stop the server with ``pg_ctl stop -m mode``; do nothing if it is not running.

        A server that does not stop within ``stop_timeout`` seconds is stopped ``immediate``, and
        finally killed, so that this never hangs nor leaves a server behind.
        """
        if mode not in _STOP_MODES:
            raise ValueError(f"mode must be one of {', '.join(_STOP_MODES)} (got {mode!r})")
        with self._lock:
            if self._base_dir is None or not self.is_running():
                return
            result = self._pg_ctl(
                "stop", "-w", "-m", mode, "-t", str(int(self.stop_timeout)),
                timeout=self.stop_timeout + 10,
            )  # fmt: skip
            if result is not None and result.returncode == 0 and not self.is_running():
                return
            self._stop_quietly()
            if self.is_running():
                raise ClusterError(self._failure(f"could not stop ({mode})", result))

    def restart(self, mode: StopMode = "fast") -> None:
        """Stop the server (``mode``) and start it again on the same port."""
        with self._lock:
            self.stop(mode)
            self.start()

    def is_running(self) -> bool:
        """Tell whether the cluster's postmaster process is alive (as ``pg_ctl status`` does)."""
        pid = self._postmaster_pid()
        return pid is not None and process_alive(pid)

    def wait_ready(self, timeout: float = 30.0) -> None:
        """Wait at most ``timeout`` seconds until the server accepts a login and a query."""
        deadline = time.monotonic() + timeout
        last: Exception | None = None
        while True:
            try:
                self.execute("SELECT 1", dbname="postgres", user="postgres", connect_timeout=2)
                return
            except pg.Error as exc:
                last = exc
            if time.monotonic() >= deadline:
                break
            time.sleep(0.05)
        raise ClusterError(
            f"server on port {self.port} not ready after {timeout:.1f} s ({last});"
            f" log {self.log_file}:\n{self._log_tail()}"
        )

    def cleanup(self) -> None:
        """Stop the server if it runs, release the port and remove the directory (idempotent)."""
        with self._lock:
            try:
                if self._base_dir is not None and self.is_running():
                    try:
                        self.stop("fast")
                    except ClusterError:
                        self._stop_quietly()
            finally:
                if self._port is not None:
                    self._port.release()
                    self._port = None
                if self._base_dir is not None:
                    shutil.rmtree(self._base_dir, ignore_errors=True)
                    self._base_dir = None
                self._bootstrapped = False
                with _live_lock:
                    _live.pop(id(self), None)

    # -- SQL helpers -------------------------------------------------------------------------

    def execute(
        self,
        sql: str,
        params: Iterable[Any] | None = None,
        *,
        dbname: str | None = None,
        user: str | None = None,
        connect_timeout: int = 10,
    ) -> list[tuple[Any, ...]]:
        """Run one statement on a connection of its own; return the rows ([] if none).

        ``params`` fill ``$1``, ``$2`` ... placeholders. Errors are PyGreSQL's.
        """
        db = pg.DB(
            f"host={self.host} port={self.port} dbname={quote_value(dbname or self.dbname)}"
            f" user={quote_value(user or self.user)} connect_timeout={connect_timeout}"
        )
        try:
            result = db.query(sql, tuple(params)) if params is not None else db.query(sql)
            if isinstance(result, pg.Query):
                return list(result.getresult())
            return []
        finally:
            db.close()

    def psql(self, sql: str) -> list[tuple[Any, ...]]:
        """Same as :meth:`execute` (kept for the spelling people reach for first)."""
        return self.execute(sql)

    def createdb(self, name: str) -> str:
        """Create database ``name`` unless it exists; return the name."""
        exists = self.execute(
            "SELECT 1 FROM pg_database WHERE datname = $1", (name,), dbname="postgres",
            user="postgres",
        )  # fmt: skip
        if not exists:
            self.execute(f"CREATE DATABASE {quote_ident(name)}", dbname="postgres", user="postgres")
        return name

    def kill_backends(self, pids: Iterable[int] | None = None, timeout: float = 5.0) -> int:
        """Terminate client backends (all of them, or ``pids``); return how many were signalled.

        Waits at most ``timeout`` seconds until they are gone, so a victim's next statement finds
        its connection lost. Background processes (checkpointer, ...) are never touched.
        """
        db = pg.DB(
            f"host={self.host} port={self.port} dbname=postgres user=postgres connect_timeout=10"
        )
        try:
            return _terminate(db, None if pids is None else [int(p) for p in pids], timeout)
        finally:
            db.close()

    # -- roles: fencing a primary, recovery ------------------------------------------------

    def reload(self) -> None:
        """Make the server reread its configuration (``pg_reload_conf()``)."""
        self.execute("SELECT pg_reload_conf()", dbname="postgres", user="postgres")

    def fence(self, timeout: float = 10.0) -> None:
        """Make the server read-only, as an operator fences an old primary during a failover.

        ``ALTER SYSTEM SET default_transaction_read_only = on`` and a reload: every write fails
        with SQLSTATE 25006 (``cannot execute INSERT in a read-only transaction``), on new
        connections and on existing ones from their next statement, while ``SELECT 1`` still
        passes. Waits at most ``timeout`` seconds until a new connection sees it.
        """
        self.execute(
            "ALTER SYSTEM SET default_transaction_read_only = on",
            dbname="postgres",
            user="postgres",
        )
        self.reload()
        self._wait_setting("default_transaction_read_only", "on", timeout)

    def unfence(self, timeout: float = 10.0) -> None:
        """Undo :meth:`fence` (``ALTER SYSTEM RESET``, reload) and wait until writes pass."""
        self.execute(
            "ALTER SYSTEM RESET default_transaction_read_only", dbname="postgres", user="postgres"
        )
        self.reload()
        self._wait_setting("default_transaction_read_only", "off", timeout)

    def is_in_recovery(self) -> bool:
        """Tell whether the server is a standby (``pg_is_in_recovery()``)."""
        rows = self.execute("SELECT pg_is_in_recovery()", dbname="postgres", user="postgres")
        return bool(rows[0][0])

    def _wait_setting(self, name: str, value: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            # A reload reaches the backends asynchronously: ask new connections until one agrees.
            seen = self.execute(f"SHOW {name}", dbname="postgres", user="postgres")[0][0]
            if seen == value:
                return
            if time.monotonic() >= deadline:
                raise ClusterError(
                    f"server on port {self.port}: {name} is {seen!r}, not {value!r},"
                    f" {timeout:.1f} s after the reload"
                )
            time.sleep(0.02)

    # -- internals ---------------------------------------------------------------------------

    def _create(self) -> None:
        """Make the directory, hand it to the server's OS user and fill the data directory."""
        bindir = self._bindir or find_pg_bindir()
        if not _has_server_binaries(bindir):
            raise RuntimeError(f"{bindir} does not hold executable initdb and pg_ctl")
        self._bindir = bindir
        if os.geteuid() == 0:
            self._ids = run_as_ids(self._run_as_name or "postgres", "initdb and pg_ctl")
        base = Path(tempfile.mkdtemp(prefix="pgregistry-cluster-", dir=self._parent_dir))
        self._base_dir = base
        (base / "socket").mkdir()
        if self._ids is not None:
            for path in (base, base / "socket"):
                os.chown(path, *self._ids)
            probe = self._run(["test", "-w", str(base)], timeout=10)
            if probe is None or probe.returncode != 0:
                raise ClusterError(
                    f"{base} is not writable by OS user {self._run_as_name or 'postgres'}"
                    " (a parent directory is closed to it); pass parent_dir= or set TMPDIR"
                )
        self._init_data_dir(bindir)
        self._write_conf()
        self._write_hba()

    def _init_data_dir(self, bindir: Path) -> None:
        """Fill the empty data directory: ``initdb`` here, a base backup for a standby."""
        result = self._run(
            [
                str(bindir / "initdb"), "-D", str(self.data_dir), "-U", "postgres",
                "--auth=trust", "--encoding=UTF8", "--locale=C", "--no-sync",
            ],
            timeout=120,
        )  # fmt: skip
        if result is None or result.returncode != 0:
            raise ClusterError(self._failure("initdb failed", result))

    def _write_hba(self) -> None:
        # Trust for everyone over the socket and 127.0.0.1, replication included, so that
        # pg_basebackup and a standby's walreceiver can connect as postgres.
        path = self.data_dir / "pg_hba.conf"
        path.write_text(
            "# pgregistry.testing: trust on the private socket and 127.0.0.1 only\n"
            "local all all trust\n"
            "local replication all trust\n"
            f"host all all {self.host}/32 trust\n"
            f"host replication all {self.host}/32 trust\n",
            encoding="utf-8",
        )
        if self._ids is not None:
            os.chown(path, *self._ids)

    def _write_conf(self) -> None:
        shared_buffers_mb = max(16, self.max_connections * 16 // 1024 + 1)
        settings: dict[str, str | int | float | bool] = {
            "listen_addresses": self.host,
            "unix_socket_directories": str(self.socket_dir),
            "max_connections": self.max_connections,
            "shared_buffers": f"{shared_buffers_mb}MB",
            "fsync": False,
            "synchronous_commit": False,
            "full_page_writes": False,
            "logging_collector": False,
            "log_min_messages": "warning",
            "log_line_prefix": "%m [%p] %q%u@%d ",
            "dynamic_shared_memory_type": "posix",
            # What a streaming standby (pgregistry.testing.TemporaryStandby) needs.
            "wal_level": "replica",
            "max_wal_senders": 10,
            "hot_standby": True,
        }
        settings.update(self.settings)
        lines = [f"{key} = {_conf_value(value)}" for key, value in settings.items()]
        conf = self.data_dir / "postgresql.conf"
        with conf.open("a", encoding="utf-8") as handle:
            handle.write("\n# pgregistry.testing\n" + "\n".join(lines) + "\n")
            handle.write("include_if_exists = 'pgregistry_port.conf'\n")

    def _write_port_conf(self) -> None:
        path = self.data_dir / "pgregistry_port.conf"
        path.write_text(f"port = {self.port}\n", encoding="utf-8")
        if self._ids is not None:
            os.chown(path, *self._ids)

    def _bootstrap(self) -> None:
        """Create the roles and the database that connect_kwargs names (first start only)."""
        roles = {self.user, getpass.getuser()} - {"postgres"}
        for role in sorted(roles):
            self.execute(
                "DO $$BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = "
                f"{quote_literal(role)}) THEN CREATE ROLE {quote_ident(role)} SUPERUSER LOGIN;"
                " END IF; END$$",
                dbname="postgres",
                user="postgres",
            )
        if self.dbname != "postgres":
            self.createdb(self.dbname)
        self._bootstrapped = True

    def _pg_ctl(self, *args: str, timeout: float) -> subprocess.CompletedProcess[str] | None:
        assert self._bindir is not None
        return self._run([str(self._bindir / "pg_ctl"), *args, "-D", str(self.data_dir)], timeout)

    def _run(self, argv: list[str], timeout: float) -> subprocess.CompletedProcess[str] | None:
        """Run a command as the server's OS user; None when it timed out (it is killed)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env.update(LC_ALL="C", LANG="C")
        extra: dict[str, Any] = {}
        if self._ids is not None:
            extra = {"user": self._ids[0], "group": self._ids[1], "extra_groups": []}
            env["HOME"] = str(self.base_dir)
        try:
            return subprocess.run(
                argv,
                stdin=subprocess.DEVNULL,
                capture_output=True,
                text=True,
                timeout=timeout,
                env=env,
                cwd=self.base_dir,  # the server's user may not enter our working directory
                check=False,
                **extra,
            )
        except subprocess.TimeoutExpired:
            return None

    def _postmaster_pid(self) -> int | None:
        if self._base_dir is None:
            return None
        try:
            first = (self.data_dir / "postmaster.pid").read_text(encoding="utf-8").split("\n")[0]
            return int(first)
        except (OSError, ValueError):
            return None

    def _stop_quietly(self) -> None:
        """Get rid of the server by any means: immediate stop, then SIGKILL. Never raises."""
        if not self.is_running():
            return
        self._pg_ctl("stop", "-w", "-m", "immediate", "-t", "10", timeout=20)
        pid = self._postmaster_pid()
        if pid is not None and process_alive(pid):
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
            deadline = time.monotonic() + 10
            while process_alive(pid) and time.monotonic() < deadline:
                time.sleep(0.05)
            # The backends notice the postmaster's death and exit by themselves.

    def _log_tail(self) -> str:
        try:
            lines = self.log_file.read_text(encoding="utf-8", errors="replace").splitlines()
        except OSError:
            return "(no server log)"
        return "\n".join(lines[-_LOG_TAIL_LINES:])

    def _failure(self, what: str, result: subprocess.CompletedProcess[str] | None) -> str:
        if result is None:
            output = "(timed out)"
        else:
            output = f"exit status {result.returncode}: {(result.stdout + result.stderr).strip()}"
        return f"temporary cluster in {self._base_dir}: {what}; {output}\n{self._log_tail()}"
