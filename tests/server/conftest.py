"""Fixtures for the tests against the shared server.

Every test gets an ``application_name`` of its own (``app_name``) and connects with a conninfo
string carrying it (``dsn``), so it can count and kill *its* backends in ``pg_stat_activity``
without ever touching another session on the shared server. ``make_pool`` builds pools with that
target and closes them (and terminates any backend of the test still open) at teardown;
``make_steady`` and ``make_registry`` do the same for steady connections and registries.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pg
import pytest

from pgregistry import PooledPg, Registry, SteadyPgConnection
from pgregistry.config import settings_from_mapping

# Prefix of every application_name these tests use (at most 63 bytes in total).
APP_PREFIX = "pgrt_"


def wait_until(predicate: Callable[[], bool], timeout: float = 5.0, interval: float = 0.02) -> bool:
    """Poll ``predicate`` until it is true or ``timeout`` seconds passed; return its last value."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() >= deadline:
            return bool(predicate())
        time.sleep(interval)


class Monitor:
    """A connection of its own that looks at (and kills) the backends of one test."""

    def __init__(self, db: pg.DB) -> None:
        self.db = db

    def pids(self, app_name: str) -> set[int]:
        """Client backends whose application_name is ``app_name``."""
        rows = self.db.query(
            "SELECT pid FROM pg_stat_activity WHERE application_name = $1"
            " AND backend_type = 'client backend'",
            (app_name,),
        ).getresult()
        return {row[0] for row in rows}

    def count(self, app_name: str) -> int:
        return len(self.pids(app_name))

    def wait_count(self, app_name: str, expected: int, timeout: float = 5.0) -> int:
        """Wait (bounded) until ``expected`` backends of ``app_name`` exist; return the count."""
        wait_until(lambda: self.count(app_name) == expected, timeout)
        return self.count(app_name)

    def alive(self, pid: int) -> bool:
        rows = self.db.query(
            "SELECT count(*) FROM pg_stat_activity WHERE pid = $1", (pid,)
        ).getresult()
        return bool(rows[0][0])

    def terminate_app(self, app_name: str) -> None:
        """Terminate the backends of ``app_name`` (only a test's own unique name)."""
        self._terminate("application_name = $1", app_name)

    def terminate_like(self, prefix: str) -> None:
        """Terminate the backends whose application_name starts with ``prefix`` (a test's own)."""
        self._terminate("left(application_name, length($1)) = $1", prefix)

    def _terminate(self, match: str, name: str) -> None:
        assert name.startswith(APP_PREFIX)
        self.db.query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
            f" WHERE {match} AND pid <> pg_backend_pid()",
            (name,),
        )


def closed_after(
    build: Callable[..., Any], terminate: Callable[[], object]
) -> Iterator[Callable[..., Any]]:
    """The body of a ``make_*`` fixture: yields ``build`` recording what it made; at teardown
    closes each, then calls ``terminate()`` to end any backend of the test still open."""
    made: list[Any] = []

    def make(*args: Any, **kwargs: Any) -> Any:
        item = build(*args, **kwargs)
        made.append(item)
        return item

    yield make
    for item in made:
        item.close()
    terminate()


def in_child(child: Callable[[], dict[str, Any]], timeout: float = 15.0) -> dict[str, Any]:
    """Run ``child()`` in a forked process; return what it returned (or its error)."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never return into pytest
        code = 1
        try:
            os.close(read_fd)
            try:
                outcome = child()
                code = 0
            except BaseException as exc:
                outcome = {"error": repr(exc)}
            os.write(write_fd, json.dumps(outcome).encode())
            os.close(write_fd)
        finally:
            os._exit(code)
    os.close(write_fd)
    deadline = time.monotonic() + timeout
    status = 0
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        time.sleep(0.02)
    else:
        os.kill(pid, 9)
        os.waitpid(pid, 0)
        os.close(read_fd)
        pytest.fail("the forked child did not finish in time")
    with os.fdopen(read_fd, "rb") as pipe:
        data = pipe.read()
    result: dict[str, Any] = json.loads(data) if data else {}
    assert os.waitstatus_to_exitcode(status) == 0, result
    return result


@contextlib.contextmanager
def alarm(after: float, handler: Callable[[int, Any], None]) -> Iterator[None]:
    """Run ``handler`` on SIGALRM ``after`` seconds in (as a request-timeout handler would);
    the timer is stopped and the previous handler put back on exit."""
    previous = signal.signal(signal.SIGALRM, handler)
    try:
        signal.setitimer(signal.ITIMER_REAL, after)
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@pytest.fixture(name="alarm", scope="session")
def alarm_fixture() -> Callable[..., contextlib.AbstractContextManager[None]]:
    return alarm


@pytest.fixture(name="run_in_child", scope="session")
def run_in_child_fixture() -> Callable[..., dict[str, Any]]:
    """The :func:`in_child` helper: ``run_in_child(func)`` runs ``func`` in a forked child."""
    return in_child


@pytest.fixture(name="wait_until", scope="session")
def wait_until_fixture() -> Callable[..., bool]:
    """The :func:`wait_until` helper: ``wait_until(predicate, timeout=5.0)``."""
    return wait_until


@pytest.fixture(scope="session")
def monitor(shared_kwargs: dict[str, Any]) -> Iterator[Monitor]:
    db = pg.DB(**shared_kwargs)
    # A test that leaves a lock behind must fail the teardown, not hang it.
    db.query("SET lock_timeout = '5s'")
    try:
        yield Monitor(db)
    finally:
        with contextlib.suppress(pg.Error):
            db.close()


@pytest.fixture
def app_name() -> str:
    """An application_name unique to this test."""
    return f"{APP_PREFIX}{uuid.uuid4().hex[:16]}"


def conninfo(shared_kwargs: dict[str, Any], app_name: str) -> str:
    parts = [f"{key}={value}" for key, value in shared_kwargs.items()]
    parts.append(f"application_name={app_name}")
    return " ".join(parts)


@pytest.fixture
def dsn(shared_kwargs: dict[str, Any], app_name: str) -> str:
    """The shared server as a conninfo string carrying this test's application_name."""
    return conninfo(shared_kwargs, app_name)


@pytest.fixture
def shared_defaults(shared_kwargs: dict[str, Any], app_name: str) -> str:
    """A TOML ``[defaults]`` table: the shared server, with this test's application_name.

    No newline at the end, so a configuration may add keys of its own to the table.
    """
    return "\n".join(
        [
            "[defaults]",
            f'host = "{shared_kwargs["host"]}"',
            f"port = {shared_kwargs['port']}",
            f'user = "{shared_kwargs["user"]}"',
            f'dbname = "{shared_kwargs["dbname"]}"',
            f'application_name = "{app_name}"',
        ]
    )


@pytest.fixture
def make_pool(dsn: str, app_name: str, monitor: Monitor) -> Iterator[Callable[..., PooledPg]]:
    """``make_pool(*args, **kwargs)`` builds a PooledPg on this test's target; closed at teardown.

    Positional arguments are PooledPg's (mincached, maxcached, ...); ``dbname`` defaults to
    the test's conninfo and ``name`` to its application_name.
    """

    def build(*args: Any, **kwargs: Any) -> PooledPg:
        kwargs.setdefault("dbname", dsn)
        kwargs.setdefault("name", app_name)
        return PooledPg(*args, **kwargs)

    yield from closed_after(build, lambda: monitor.terminate_app(app_name))


@pytest.fixture
def make_steady(dsn: str, app_name: str, monitor: Monitor) -> Iterator[Callable[..., Any]]:
    """``make_steady(maxusage, setsession, **kwargs)``: a closeable SteadyPgConnection."""

    def build(*args: Any, **kwargs: Any) -> SteadyPgConnection:
        while len(args) < 2:
            args = (*args, None)
        kwargs.setdefault("dbname", dsn)
        return SteadyPgConnection(args[0], args[1], True, *args[2:], **kwargs)

    yield from closed_after(build, lambda: monitor.terminate_app(app_name))


@pytest.fixture
def make_registry(
    app_name: str, monitor: Monitor
) -> Iterator[Callable[[dict[str, Any]], Registry]]:
    """``make_registry(mapping)``: a Registry of that configuration, closed at teardown (and
    every backend whose application_name starts with this test's terminated)."""

    def build(mapping: dict[str, Any]) -> Registry:
        return Registry(settings_from_mapping(mapping))

    yield from closed_after(build, lambda: monitor.terminate_like(app_name))


@pytest.fixture
def table(monitor: Monitor) -> Iterator[str]:
    """A real table ``(id int primary key, name text, n int default 0)`` dropped afterwards."""
    name = f"pgrt_t_{uuid.uuid4().hex[:12]}"
    monitor.db.query(f"CREATE TABLE {name} (id int PRIMARY KEY, name text, n int DEFAULT 0)")
    try:
        yield name
    finally:
        monitor.db.query(f"DROP TABLE IF EXISTS {name}")
