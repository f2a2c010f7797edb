"""Fixtures shared by the whole suite.

Two kinds of server:

* the machine's shared server (``shared_kwargs``, ``shared_dsn``, ``killer``) for ``tests/server``:
  ``PGREGISTRY_TEST_HOST`` (default 127.0.0.1), ``PGREGISTRY_TEST_PORT`` (5432),
  ``PGREGISTRY_TEST_DBNAME`` (test), ``PGREGISTRY_TEST_USER`` (root). When it does not answer, the
  tests that need it fail with a message saying how to start it; they are never skipped silently.
* a throwaway cluster (``session_cluster``, ``cluster``) for ``tests/fault``, which tests may
  stop, restart and kill at will. Tests using it are marked ``slow`` automatically, so
  ``make test-quick`` (``-m 'not slow'``) starts no cluster.

``clean_env`` keeps the developer's configuration out of a test (a module asks for it with
``pytestmark = pytest.mark.usefixtures("clean_env")``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pg
import pytest

from pgregistry.testing import BackendKiller, TemporaryCluster, server_answers

_CLUSTER_FIXTURES = frozenset({"session_cluster", "cluster", "primary_and_standby", "pgbouncer"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test that uses a throwaway cluster as ``slow``."""
    for item in items:
        if _CLUSTER_FIXTURES.intersection(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """No ``PGPOOLS*`` variable set and an empty working directory (``tmp_path/work``, returned),
    so the repository's own ``pgpools.toml`` and the developer's environment never leak in."""
    for name in list(os.environ):
        if name.upper().startswith("PGPOOLS"):
            monkeypatch.delenv(name)
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.chdir(work)
    return work


@pytest.fixture
def connect_attempts(monkeypatch: pytest.MonkeyPatch) -> list[float]:
    """Every ``pg.DB(...)`` connect attempt from now on, as its monotonic start time.

    The real ``pg.DB`` still connects: this only counts, so a test can tell a retry loop from
    a single attempt without timing anything.
    """
    attempts: list[float] = []
    real_db = pg.DB

    def counting_db(*args: Any, **kwargs: Any) -> Any:
        attempts.append(time.monotonic())
        return real_db(*args, **kwargs)

    monkeypatch.setattr(pg, "DB", counting_db)
    return attempts


# -- the shared server ---------------------------------------------------------------------


@pytest.fixture(scope="session")
def shared_kwargs() -> dict[str, Any]:
    """``pg.DB(**shared_kwargs)`` keywords for the shared server (dbname, host, port, user).

    Checked once per session: fails every test using it, with the reason, when the server does
    not answer or refuses the login.
    """
    kwargs: dict[str, Any] = {
        "dbname": os.environ.get("PGREGISTRY_TEST_DBNAME", "test"),
        "host": os.environ.get("PGREGISTRY_TEST_HOST", "127.0.0.1"),
        "port": int(os.environ.get("PGREGISTRY_TEST_PORT", "5432")),
        "user": os.environ.get("PGREGISTRY_TEST_USER", "root"),
    }
    where = f"{kwargs['host']}:{kwargs['port']}"
    if not server_answers(kwargs["host"], kwargs["port"], timeout=5.0):
        pytest.fail(
            f"the shared PostgreSQL server does not answer on {where}; start it (Debian:"
            " pg_ctlcluster --skip-systemctl-redirect 15 main start, or bash .ci/run) or point"
            " PGREGISTRY_TEST_HOST/PGREGISTRY_TEST_PORT at one",
            pytrace=False,
        )
    try:
        pg.DB(**kwargs).close()
    except pg.Error as exc:
        pytest.fail(
            f"the shared PostgreSQL server on {where} refuses database {kwargs['dbname']!r} as"
            f" role {kwargs['user']!r}: {str(exc).strip()}; create them (bash .ci/run does) or"
            " set PGREGISTRY_TEST_DBNAME/PGREGISTRY_TEST_USER",
            pytrace=False,
        )
    return kwargs


@pytest.fixture(scope="session")
def shared_dsn(shared_kwargs: dict[str, Any]) -> str:
    """The shared server as a libpq keyword/value string (``host=... port=... dbname=...``)."""
    return " ".join(f"{key}={value}" for key, value in shared_kwargs.items())


@pytest.fixture
def killer(shared_kwargs: dict[str, Any]) -> Iterator[BackendKiller]:
    """A separate connection to the shared server: ``killer(pid)`` terminates that backend.

    It waits until the backend is gone and returns False when there was no such backend.
    """
    backend_killer = BackendKiller(**shared_kwargs)
    try:
        yield backend_killer
    finally:
        backend_killer.close()


# -- the throwaway cluster -----------------------------------------------------------------


@pytest.fixture(scope="session")
def session_cluster() -> Iterator[TemporaryCluster]:
    """One throwaway cluster for the session (max_connections 100, user and database postgres).

    May be found stopped: use ``cluster`` for a server guaranteed to be up.
    """
    with TemporaryCluster() as temporary:
        yield temporary


@pytest.fixture
def cluster(session_cluster: TemporaryCluster) -> TemporaryCluster:
    """The session's throwaway cluster, running: started again if an earlier test left it down.

    Tests may stop, restart or kill it; connect with ``pg.DB(**cluster.connect_kwargs())``.
    """
    if not session_cluster.is_running():
        session_cluster.start()
    session_cluster.wait_ready(30.0)
    return session_cluster
