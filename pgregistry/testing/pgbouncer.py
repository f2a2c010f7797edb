"""A throwaway PgBouncer in front of a server, for tests of server-side pooling (issue 15).

:class:`TemporaryPgBouncer` writes its ini and auth file into a temporary directory, listens on a
free port of 127.0.0.1 and runs Debian's ``/usr/sbin/pgbouncer`` in the foreground as a child
process (as the ``postgres`` OS user when this process is root: PgBouncer refuses root). Every
database name is forwarded to the target (``* = host=... port=...``), with ``auth_type = trust``
(the throwaway clusters trust 127.0.0.1)::

    with TemporaryPgBouncer(cluster.host, cluster.port, pool_mode="transaction") as bouncer:
        db = pg.DB(**bouncer.connect_kwargs(cluster.connect_kwargs()))
        bouncer.admin("SHOW POOLS")

Stopped with SIGTERM (then SIGKILL) by :meth:`stop`, ``with``, or an :mod:`atexit` handler.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Literal

import pg

from ._ports import PortReservation, run_as_ids

__all__ = ["PGBOUNCER_ENV", "PgBouncerError", "PoolMode", "TemporaryPgBouncer", "find_pgbouncer"]

PoolMode = Literal["session", "transaction", "statement"]

#: Environment variable naming the pgbouncer binary; wins over PATH and /usr/sbin.
PGBOUNCER_ENV: Final = "PGREGISTRY_PGBOUNCER"


class PgBouncerError(RuntimeError):
    """PgBouncer could not be started or stopped; the message quotes its log."""


def find_pgbouncer() -> Path | None:
    """The pgbouncer binary: ``$PGREGISTRY_PGBOUNCER``, PATH, or ``/usr/sbin/pgbouncer``."""
    explicit = os.environ.get(PGBOUNCER_ENV)
    candidates = [explicit] if explicit else [shutil.which("pgbouncer"), "/usr/sbin/pgbouncer"]
    for candidate in candidates:
        if candidate and os.access(candidate, os.X_OK):
            return Path(candidate)
    return None


class TemporaryPgBouncer:
    """PgBouncer on a free port of 127.0.0.1 forwarding every database to ``host``:``port``.

    Parameters:
        host, port: the PostgreSQL server behind it.
        pool_mode: ``session``, ``transaction`` (default) or ``statement``.
        default_pool_size: server connections per database/user pair (default 10).
        max_client_conn: client connections accepted (default 200).
        users: roles written to the auth file (trust still needs them listed); default
            ``postgres`` and the OS user.
        settings: more ``[pgbouncer]`` settings.
        start_timeout: seconds to wait until it accepts logins (default 30).
        run_as: OS user when this process is root (default ``postgres``).
    """

    host: Final = "127.0.0.1"

    def __init__(
        self,
        host: str,
        port: int,
        *,
        pool_mode: PoolMode = "transaction",
        default_pool_size: int = 10,
        max_client_conn: int = 200,
        users: Iterable[str] | None = None,
        settings: Mapping[str, str | int] | None = None,
        start_timeout: float = 30.0,
        run_as: str | None = None,
    ) -> None:
        if pool_mode not in ("session", "transaction", "statement"):
            raise ValueError(f"pool_mode must be session, transaction or statement ({pool_mode!r})")
        self.target = (host, int(port))
        self.pool_mode = pool_mode
        self.default_pool_size = default_pool_size
        self.max_client_conn = max_client_conn
        self.users = sorted(set(users) if users is not None else {"postgres", _os_user()})
        self.settings = dict(settings or {})
        self.start_timeout = start_timeout
        self._run_as = run_as or "postgres"
        self._dir: Path | None = None
        self._port: PortReservation | None = None
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def port(self) -> int:
        """The port clients connect to."""
        if self._port is None:
            raise PgBouncerError("PgBouncer has not been started")
        return self._port.port

    @property
    def log_file(self) -> Path:
        """PgBouncer's log."""
        if self._dir is None:
            raise PgBouncerError("PgBouncer has not been started")
        return self._dir / "pgbouncer.log"

    def connect_kwargs(self, base: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """``base`` (``pg.DB`` keywords, say ``cluster.connect_kwargs()``) aimed at PgBouncer."""
        kwargs = dict(base or {})
        kwargs.update(host=self.host, port=self.port)
        return kwargs

    def dsn(self, dbname: str = "postgres", user: str = "postgres") -> str:
        """A libpq keyword/value string for ``dbname`` as ``user`` through PgBouncer."""
        return f"host={self.host} port={self.port} dbname={dbname} user={user}"

    def admin(self, command: str) -> list[tuple[Any, ...]]:
        """Run an admin console command (``SHOW POOLS``, ``RELOAD``...); return its rows."""
        db = pg.DB(self.dsn("pgbouncer", "postgres") + " connect_timeout=5")
        try:
            result = db.query(command)
            return list(result.getresult()) if isinstance(result, pg.Query) else []
        finally:
            db.close()

    def __repr__(self) -> str:
        where = f"port {self._port.port}" if self._port else "not started"
        return f"<TemporaryPgBouncer {self.pool_mode} {where} -> {self.target[0]}:{self.target[1]}>"

    def __enter__(self) -> TemporaryPgBouncer:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Write the config, start PgBouncer and wait until it accepts a login."""
        if self._process is not None and self._process.poll() is None:
            return
        binary = find_pgbouncer()
        if binary is None:
            raise PgBouncerError(
                "pgbouncer not found on PATH nor at /usr/sbin/pgbouncer; install it"
                f" (Debian: apt-get install pgbouncer) or set {PGBOUNCER_ENV}"
            )
        ids = run_as_ids(self._run_as, "pgbouncer") if os.geteuid() == 0 else None
        self._dir = Path(tempfile.mkdtemp(prefix="pgregistry-pgbouncer-"))
        self._port = PortReservation(self.host)
        ini = self._write_files()
        if ids is not None:
            for path in (self._dir, *self._dir.iterdir()):
                os.chown(path, *ids)
        extra: dict[str, Any] = {}
        if ids is not None:
            extra = {"user": ids[0], "group": ids[1], "extra_groups": []}
        with _live_lock:
            _live[id(self)] = self
        log = self.log_file.open("ab")
        try:
            self._process = subprocess.Popen(
                [str(binary), str(ini)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self._dir,
                start_new_session=True,  # a ^C of the test run reaches it through us only
                **extra,
            )
        finally:
            log.close()
        self._wait_ready()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop PgBouncer (SIGTERM, then SIGKILL) and remove its directory (idempotent)."""
        process, self._process = self._process, None
        if process is not None and process.poll() is None:
            with contextlib.suppress(OSError):
                process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(timeout)
        if self._port is not None:
            self._port.release()
            self._port = None
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)
            self._dir = None
        with _live_lock:
            _live.pop(id(self), None)

    def is_running(self) -> bool:
        """Tell whether the PgBouncer process is alive."""
        return self._process is not None and self._process.poll() is None

    def _write_files(self) -> Path:
        assert self._dir is not None
        auth = self._dir / "userlist.txt"
        auth.write_text("".join(f'"{u}" ""\n' for u in self.users), encoding="utf-8")
        settings: dict[str, str | int] = {
            "listen_addr": self.host,
            "listen_port": self.port,
            "unix_socket_dir": "",
            "auth_type": "trust",
            "auth_file": str(auth),
            "pool_mode": self.pool_mode,
            "default_pool_size": self.default_pool_size,
            "max_client_conn": self.max_client_conn,
            "admin_users": "postgres",
            "stats_users": "postgres",
            "logfile": str(self.log_file),
            "pidfile": str(self._dir / "pgbouncer.pid"),
            "ignore_startup_parameters": "extra_float_digits",
        }
        settings.update(self.settings)
        self.log_file.touch()  # before the chown: PgBouncer appends to it as its own user
        ini = self._dir / "pgbouncer.ini"
        target = f"host={self.target[0]} port={self.target[1]}"
        lines = ["[databases]", f"* = {target}", "", "[pgbouncer]"]
        lines += [f"{key} = {value}" for key, value in settings.items()]
        ini.write_text("\n".join(lines) + "\n", encoding="utf-8")
        return ini

    def _wait_ready(self) -> None:
        deadline = time.monotonic() + self.start_timeout
        last: Exception | None = None
        while time.monotonic() < deadline:
            if self._process is None or self._process.poll() is not None:
                break
            try:
                self.admin("SHOW VERSION")
                return
            except pg.Error as exc:
                last = exc
            time.sleep(0.05)
        log = self._log_tail()
        self.stop()
        raise PgBouncerError(f"PgBouncer did not accept a login ({last}); log:\n{log}")

    def _log_tail(self) -> str:
        try:
            return "\n".join(self.log_file.read_text(errors="replace").splitlines()[-20:])
        except (OSError, PgBouncerError):
            return "(no log)"


def _os_user() -> str:
    import getpass

    return getpass.getuser()


_live_lock = threading.Lock()
_live: dict[int, TemporaryPgBouncer] = {}


def _stop_live() -> None:
    with _live_lock:
        bouncers = list(_live.values())
    for bouncer in bouncers:
        with contextlib.suppress(Exception):
            bouncer.stop(timeout=5.0)


def _forget_parents() -> None:
    _live.clear()


atexit.register(_stop_live)
os.register_at_fork(after_in_child=_forget_parents)
