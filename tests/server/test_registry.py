"""The registry against the shared server: lazy builds, the default pool, close, reload, stats.

Every pool of a test gets an ``application_name`` of its own (``<app_name>_<pool>``), so the
test can count and look up *its* backends in ``pg_stat_activity``. Configurations are real
TOML files in ``tmp_path``; the environment goes through ``monkeypatch`` (no ``PGPOOLS*``
variable of the developer leaks in). The process-wide default registry is only used in a
subprocess, so that its atexit close can be observed.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pg
import pytest

from pgregistry import (
    ConfigError,
    PoolClosedError,
    Registry,
    ReloadResult,
    UnknownPoolError,
)

Monitor = Any  # tests/server/conftest.py: Monitor
WaitUntil = Callable[..., bool]
REPO = Path(__file__).resolve().parents[2]


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, list | tuple):
        return "[" + ", ".join(toml_value(item) for item in value) + "]"
    raise TypeError(f"no TOML for {value!r}")


def toml_text(
    pools: dict[str, dict[str, Any]],
    defaults: dict[str, Any] | None = None,
    default: str | None = None,
) -> str:
    lines = [f"default = {toml_value(default)}"] if default else []
    for title, table in [("defaults", defaults or {})] + [
        (f"pools.{name}", table) for name, table in pools.items()
    ]:
        lines.append(f"[{title}]")
        lines += [f"{key} = {toml_value(value)}" for key, value in table.items()]
    return "\n".join(lines) + "\n"


def backend(conn: Any) -> int:
    pid: int = conn.query("SELECT pg_backend_pid()").getresult()[0][0]
    return pid


def join_all(threads: list[threading.Thread], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(max(deadline - time.monotonic(), 0.0))
    assert not any(thread.is_alive() for thread in threads), "a thread did not finish in time"


class Setup:
    """Writes this test's configuration file and names its pools' application_names."""

    def __init__(self, path: Path, shared_kwargs: dict[str, Any], app_name: str) -> None:
        self.path = path
        self.app_name = app_name
        self.defaults: dict[str, Any] = {
            "host": shared_kwargs["host"],
            "port": int(shared_kwargs["port"]),
            "user": shared_kwargs["user"],
            "dbname": shared_kwargs["dbname"],
            "connect_timeout": 5,
            "blocking": True,
            "timeout": 10.0,
        }
        self.registries: list[Registry] = []

    def app(self, pool: str) -> str:
        """The application_name of this test's pool ``pool``."""
        return f"{self.app_name}_{pool}"

    def write(
        self, pools: dict[str, dict[str, Any]], default: str | None = None, **defaults: Any
    ) -> Path:
        tables = {
            name: {"application_name": self.app(name), **table} for name, table in pools.items()
        }
        self.path.write_text(toml_text(tables, {**self.defaults, **defaults}, default))
        return self.path

    def registry(
        self, pools: dict[str, dict[str, Any]], default: str | None = None, **defaults: Any
    ) -> Registry:
        registry = Registry.from_config(self.write(pools, default, **defaults))
        self.registries.append(registry)
        return registry


@pytest.fixture
def setup(
    tmp_path: Path,
    shared_kwargs: dict[str, Any],
    app_name: str,
    monitor: Monitor,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[Setup]:
    for name in list(os.environ):
        if name.upper().startswith("PGPOOLS"):
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    made = Setup(tmp_path / "pgpools.toml", shared_kwargs, app_name)
    yield made
    for registry in made.registries:
        registry.close()
    rows = monitor.db.query(
        "SELECT DISTINCT application_name FROM pg_stat_activity WHERE application_name LIKE $1",
        (app_name + "%",),
    ).getresult()
    for (name,) in rows:
        monitor.terminate_app(name)


# -- lookup ------------------------------------------------------------------------------------


def test_get_builds_the_pool_on_first_use_and_returns_the_same_object_after(
    setup: Setup, monitor: Monitor
) -> None:
    registry = setup.registry({"app": {"mincached": 1}, "other": {"mincached": 1}})
    assert monitor.count(setup.app("app")) == 0  # nothing is opened before the first use

    pool = registry.get("app")

    assert registry.get("app") is pool
    assert monitor.wait_count(setup.app("app"), 1) == 1
    assert monitor.count(setup.app("other")) == 0  # only the pool asked for is built


def test_thundering_herd_of_50_threads_builds_the_pool_exactly_once(
    setup: Setup, monitor: Monitor, caplog: pytest.LogCaptureFixture
) -> None:
    registry = setup.registry({"herd": {"mincached": 2, "maxconnections": 60}})
    barrier = threading.Barrier(50, timeout=20)
    got: list[Any] = []
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            barrier.wait()
            got.append(registry.get("herd"))
        except BaseException as exc:
            errors.append(exc)

    caplog.set_level(logging.INFO, logger="pgregistry.pool.herd")
    threads = [threading.Thread(target=worker) for _ in range(50)]
    for thread in threads:
        thread.start()
    join_all(threads)

    assert not errors
    assert len(got) == 50
    assert len({id(pool) for pool in got}) == 1
    built = [r for r in caplog.records if r.name == "pgregistry.pool.herd" and "built" in r.message]
    assert len(built) == 1
    # One pool with mincached=2: two backends, not 2 x 50.
    assert monitor.wait_count(setup.app("herd"), 2) == 2


def test_connection_checks_out_from_the_named_pool(setup: Setup) -> None:
    registry = setup.registry({"app": {}, "reports": {}})

    with registry.connection("reports") as db:
        name = db.query("SELECT current_setting('application_name')").getresult()[0][0]
        assert name == setup.app("reports")
        assert registry.get("reports").stats()["in_use"] == 1
    assert registry.get("reports").stats()["in_use"] == 0


def test_transaction_commits_on_success_and_gives_the_connection_back(setup: Setup) -> None:
    registry = setup.registry({"app": {}})
    table = f"tx_{setup.app('app')}"
    with registry.connection("app") as db:
        db.query(f"CREATE TABLE IF NOT EXISTS {table} (v int)")
        db.query(f"TRUNCATE {table}")
    try:
        with registry.transaction("app") as db:
            db.query(f"INSERT INTO {table} VALUES (1)")
            assert db.transaction() != pg.TRANS_IDLE  # begun
            assert registry.get("app").stats()["in_use"] == 1
        assert registry.get("app").stats()["in_use"] == 0
        with pytest.raises(ZeroDivisionError), registry.transaction("app") as db:
            db.query(f"INSERT INTO {table} VALUES (2)")
            raise ZeroDivisionError
        assert registry.get("app").stats()["in_use"] == 0
        with registry.connection("app") as db:
            assert db.query(f"SELECT v FROM {table}").getresult() == [(1,)]
    finally:
        with registry.connection("app") as db:
            db.query(f"DROP TABLE IF EXISTS {table}")


def test_get_without_a_name_uses_the_pool_named_default(setup: Setup) -> None:
    registry = setup.registry({"other": {}, "default": {}})

    assert registry.get() is registry.get("default")
    with registry.connection() as db:
        name = db.query("SELECT current_setting('application_name')").getresult()[0][0]
    assert name == setup.app("default")


def test_get_without_a_name_uses_the_pool_named_by_the_default_key(setup: Setup) -> None:
    registry = setup.registry({"default": {}, "app": {}}, default="app")

    assert registry.get() is registry.get("app")
    assert registry.get() is not registry.get("default")


def test_unknown_name_raises_listing_the_configured_names(setup: Setup) -> None:
    registry = setup.registry({"app": {}, "reports": {}})

    with pytest.raises(UnknownPoolError) as info:
        registry.get("billing")
    assert str(info.value) == "unknown pool 'billing'; configured pools: app, reports"
    assert isinstance(info.value, KeyError)
    with pytest.raises(UnknownPoolError, match=r"no default pool.*configured pools: app, reports"):
        registry.connection()


# -- closing -----------------------------------------------------------------------------------


def test_close_closes_every_pool_and_refuses_new_checkouts(setup: Setup, monitor: Monitor) -> None:
    registry = setup.registry({"a": {"mincached": 2}, "b": {"mincached": 1}})
    registry.get("a")
    held = registry.connection("b")
    assert monitor.wait_count(setup.app("a"), 2) == 2

    registry.close()

    assert registry.closed
    assert monitor.wait_count(setup.app("a"), 0) == 0
    # A connection still out is usable until returned, then closed.
    assert held.query("SELECT 1").getresult() == [(1,)]
    held.close()
    assert monitor.wait_count(setup.app("b"), 0) == 0
    with pytest.raises(PoolClosedError):
        registry.get("a")
    registry.close()  # idempotent


def test_with_from_config_closes_on_exit(setup: Setup, monitor: Monitor) -> None:
    path = setup.write({"app": {"mincached": 1}})

    with Registry.from_config(path) as registry:
        with registry.connection("app") as db:
            assert db.query("SELECT 1").getresult() == [(1,)]
        assert monitor.wait_count(setup.app("app"), 1) == 1

    assert registry.closed
    assert monitor.wait_count(setup.app("app"), 0) == 0


def test_from_config_without_a_path_reads_pgpools_config(
    setup: Setup, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    elsewhere = tmp_path / "elsewhere.toml"
    setup.path = elsewhere
    setup.write({"named": {}})
    monkeypatch.setenv("PGPOOLS_CONFIG", str(elsewhere))

    with Registry.from_config() as registry:
        assert registry.names() == ["named"]
        with registry.connection("named") as db:
            assert db.query("SELECT 1").getresult() == [(1,)]


# -- reload ------------------------------------------------------------------------------------


def test_reload_keeps_the_connections_of_an_unchanged_pool(setup: Setup) -> None:
    registry = setup.registry({"keep": {"mincached": 2}, "other": {"maxcached": 1}})
    pool = registry.get("keep")
    first, second = registry.connection("keep"), registry.connection("keep")
    pids = {backend(first), backend(second)}
    first.close()
    second.close()

    setup.write({"keep": {"mincached": 2}, "other": {"maxcached": 2}})
    result = registry.reload()

    assert result == ReloadResult(changed=("other",), unchanged=("keep",))
    assert registry.get("keep") is pool
    first, second = registry.connection("keep"), registry.connection("keep")
    assert {backend(first), backend(second)} == pids
    first.close()
    second.close()


def test_reload_replaces_a_changed_pool_while_the_old_one_drains(
    setup: Setup, monitor: Monitor
) -> None:
    registry = setup.registry({"app": {"mincached": 1, "maxcached": 2}})
    old_pool = registry.get("app")
    held = registry.connection("app")
    held_pid = backend(held)
    idle_pids = monitor.pids(setup.app("app")) - {held_pid}

    setup.write({"app": {"mincached": 1, "maxcached": 3}})
    assert registry.reload().changed == ("app",)

    # New checkouts get the new pool; the old one's idle connections are closed at once.
    new_pool = registry.get("app")
    assert new_pool is not old_pool
    assert old_pool.closed
    with registry.connection("app") as db:
        assert backend(db) != held_pid
    assert not any(monitor.alive(pid) for pid in idle_pids)
    # The connection still out keeps working, and is closed when it comes back.
    assert held.query("SELECT 2").getresult() == [(2,)]
    assert monitor.alive(held_pid)
    held.close()
    assert wait_gone(monitor, held_pid)
    assert new_pool.stats()["open"] >= 1


def wait_gone(monitor: Monitor, pid: int, timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while monitor.alive(pid):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.02)
    return True


def test_reload_drains_and_closes_a_removed_pool(setup: Setup, monitor: Monitor) -> None:
    registry = setup.registry({"app": {}, "gone": {"mincached": 2}})
    registry.get("gone")
    held = registry.connection("gone")
    assert monitor.wait_count(setup.app("gone"), 2) == 2

    setup.write({"app": {}})
    result = registry.reload()

    assert result.removed == ("gone",)
    assert monitor.wait_count(setup.app("gone"), 1) == 1  # the idle one closed at once
    with pytest.raises(UnknownPoolError, match=r"configured pools: app$"):
        registry.get("gone")
    assert held.query("SELECT 1").getresult() == [(1,)]
    held.close()
    assert monitor.wait_count(setup.app("gone"), 0) == 0


def test_reload_adds_a_new_pool(setup: Setup) -> None:
    registry = setup.registry({"app": {}})
    registry.get("app")

    setup.write({"app": {}, "added": {}})
    assert registry.reload() == ReloadResult(added=("added",), unchanged=("app",))

    with registry.connection("added") as db:
        assert db.query("SELECT 1").getresult() == [(1,)]


def test_reload_sees_a_changed_environment(setup: Setup, monkeypatch: pytest.MonkeyPatch) -> None:
    registry = setup.registry({"app": {"maxcached": 1}})
    old = registry.get("app")

    monkeypatch.setenv("PGPOOLS__POOLS__APP__MAXCACHED", "4")
    assert registry.reload().changed == ("app",)

    assert registry.get("app") is not old
    assert registry.get("app").stats()["maxcached"] == 4


def test_reload_with_an_invalid_configuration_raises_and_changes_nothing(
    setup: Setup, monitor: Monitor
) -> None:
    registry = setup.registry({"app": {"mincached": 1}, "other": {}}, default="app")
    pool = registry.get()
    pids = monitor.pids(setup.app("app"))
    settings = registry.settings

    setup.path.write_text(
        setup.path.read_text().replace("mincached = 1", "mincached = -1\nmaxcahced = 3")
        + "[pools.Bad]\n"
    )
    with pytest.raises(ConfigError) as info:
        registry.reload()

    message = str(info.value)
    assert "pools.app.mincached" in message
    assert "pools.app.maxcahced" in message
    assert "Bad" in message
    assert registry.settings is settings
    assert registry.get() is pool
    assert registry.get("app") is pool
    assert not pool.closed
    assert monitor.pids(setup.app("app")) == pids
    with registry.connection() as db:
        assert db.query("SELECT 1").getresult() == [(1,)]


def test_reload_under_load_fails_no_checkout_and_closes_old_connections(
    setup: Setup, monitor: Monitor
) -> None:
    """8 threads check out and query while 5 reloads change one pool and keep another."""
    registry = setup.registry(
        {"steady": {"maxconnections": 8}, "moving": {"maxconnections": 8, "maxcached": 1}}
    )
    stop = threading.Event()
    errors: list[BaseException] = []
    done = [0] * 8
    kept_pool = registry.get("steady")
    moving_pools = [registry.get("moving")]

    def worker(index: int) -> None:
        name = "moving" if index % 2 else "steady"
        deadline = time.monotonic() + 30
        for _ in range(100_000):
            if stop.is_set() or time.monotonic() > deadline:
                break
            try:
                with registry.connection(name) as db:
                    assert db.query("SELECT $1::int", (index,)).getresult() == [(index,)]
                done[index] += 1
            except BaseException as exc:
                errors.append(exc)
                break

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    try:
        for round_ in range(5):
            time.sleep(0.15)
            setup.write(
                {"steady": {"maxconnections": 8}, "moving": {"maxconnections": 8 + round_ + 1}}
            )
            result = registry.reload()
            assert result.changed == ("moving",)
            assert result.unchanged == ("steady",)
            moving_pools.append(registry.get("moving"))
        time.sleep(0.15)
    finally:
        stop.set()
        join_all(threads)

    assert not errors, errors[:3]
    assert all(count > 0 for count in done), done
    assert registry.get("steady") is kept_pool
    assert len({id(pool) for pool in moving_pools}) == 6
    assert all(pool.closed for pool in moving_pools[:-1])
    # Every connection of the replaced pools is closed: only the current pool's remain.
    current = registry.get("moving").stats()["open"]
    assert monitor.wait_count(setup.app("moving"), current) == current
    assert registry.get("moving").stats()["maxconnections"] == 13


def test_connection_takes_the_successor_when_a_reload_retires_the_pool_after_lookup(
    setup: Setup,
) -> None:
    """A reload between ``get()`` and the checkout must not fail the caller (PoolClosedError)."""
    registry = setup.registry({"app": {"maxcached": 1}})
    first = registry.get("app")
    lookup = registry.get

    def get_then_reload(
        name: str | None = None, tenant: str | None = None, *, readonly: bool = False
    ) -> Any:
        pool = lookup(name, tenant, readonly=readonly)
        if pool is first:  # as if the reload came right after this thread's lookup
            setup.write({"app": {"maxcached": 2}})
            registry.reload()
        return pool

    registry.get = get_then_reload  # type: ignore[method-assign]
    with registry.connection("app") as db:
        assert db.query("SELECT 1").getresult() == [(1,)]

    assert first.closed
    assert lookup("app") is not first
    assert lookup("app").stats()["checkouts"] == 1


# -- stats -------------------------------------------------------------------------------------


def test_stats_gathers_every_built_pool_by_name(setup: Setup) -> None:
    registry = setup.registry({"a": {"mincached": 1}, "b": {}, "unused": {}})
    with registry.connection("a"), registry.connection("b"):
        stats = registry.stats()["pools"]

    assert sorted(stats) == ["a", "b"]  # pools never used are not built
    assert stats["a"]["name"] == "a"
    assert stats["a"]["in_use"] == 1
    assert stats["b"]["checkouts"] == 1
    assert registry.stats()["pools"]["a"]["in_use"] == 0


# -- the process-wide default registry ---------------------------------------------------------

CHILD = """
import logging, os, sys
logging.basicConfig(level=logging.INFO, stream=sys.stderr, format="%(name)s %(message)s")
import pgregistry
assert "built=[]" in repr(pgregistry.default_registry), repr(pgregistry.default_registry)
import pgregistry.registry as m
assert type(m).__name__ == "module" and m.default_registry is pgregistry.default_registry
os.environ["PGPOOLS_CONFIG"] = sys.argv[1]   # read on first use, not at import
db = pgregistry.connection()
print("default", db.query("SELECT pg_backend_pid()").getresult()[0][0], flush=True)
db.close()
with pgregistry.connection("other") as db:
    print("other", db.query("SELECT pg_backend_pid()").getresult()[0][0], flush=True)
assert pgregistry.get("app") is pgregistry.get()
assert pgregistry.get("other") is pgregistry.registry.get("other")
print("open", sorted(pgregistry.registry.stats()["pools"]), flush=True)
"""


def test_default_registry_loads_lazily_and_closes_at_interpreter_exit(
    setup: Setup, monitor: Monitor, tmp_path: Path
) -> None:
    config = tmp_path / "child.toml"
    setup.path = config
    setup.write({"app": {"mincached": 2}, "other": {"mincached": 1}}, default="app")
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("PGPOOLS")}
    env["PYTHONPATH"] = str(REPO)

    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(CHILD), str(config)],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )

    assert proc.returncode == 0, proc.stderr
    lines = dict(line.split(" ", 1) for line in proc.stdout.splitlines())
    assert lines["open"] == "['app', 'other']"
    pids = {int(lines["default"]), int(lines["other"])}
    # atexit closed both pools (logged by the pools themselves) ...
    assert "pgregistry.pool.app pool 'app' closed" in proc.stderr
    assert "pgregistry.pool.other pool 'other' closed" in proc.stderr
    # ... and no backend of the child is left.
    assert monitor.wait_count(setup.app("app"), 0) == 0
    assert monitor.wait_count(setup.app("other"), 0) == 0
    assert not any(monitor.alive(pid) for pid in pids)
