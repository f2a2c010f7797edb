"""The registry without a server: name lookup, the default pool, lazy loading, reload bookkeeping.

Pools here have ``mincached = 0``, so building one opens no connection and no server is needed;
nothing in these tests checks a connection out. The tests against a server (connections kept
across reloads, draining, the default registry at exit) are in ``tests/server/test_registry.py``.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pgregistry import (
    ConfigError,
    PoolClosedError,
    Registry,
    ReloadResult,
    ServerUnavailableError,
    UnknownPoolError,
)
from pgregistry.config import Settings, settings_from_mapping

TARGET = {"host": "127.0.0.1", "port": 1, "dbname": "nowhere", "connect_timeout": 1}


def settings(pools: dict[str, dict[str, Any]], default: str | None = None) -> Settings:
    data: dict[str, Any] = {"defaults": TARGET, "pools": pools}
    if default is not None:
        data["default"] = default
    return settings_from_mapping(data, source="test")


pytestmark = pytest.mark.usefixtures("clean_env")  # tests/conftest.py


@pytest.fixture
def registries() -> Iterator[list[Registry]]:
    made: list[Registry] = []
    yield made
    for registry in made:
        registry.close()


def make(registries: list[Registry], *args: Any, **kwargs: Any) -> Registry:
    registry = Registry(*args, **kwargs)
    registries.append(registry)
    return registry


def test_unknown_name_lists_the_configured_names(registries: list[Registry]) -> None:
    registry = make(registries, settings({"b": {}, "a": {}}))

    with pytest.raises(UnknownPoolError) as info:
        registry.get("c")

    assert str(info.value) == "unknown pool 'c'; configured pools: a, b"
    assert isinstance(info.value, KeyError)


def test_no_default_pool_is_an_error_naming_the_ways_to_declare_one(
    registries: list[Registry],
) -> None:
    registry = make(registries, settings({"a": {}}))

    with pytest.raises(UnknownPoolError, match=r'default = "\.\.\.".*configured pools: a$'):
        registry.get()


def test_pool_named_default_serves_get_without_a_name(registries: list[Registry]) -> None:
    registry = make(registries, settings({"a": {}, "default": {}}))

    assert registry.get() is registry.get("default")
    assert registry.get().name == "default"


def test_default_key_wins_over_a_pool_named_default(registries: list[Registry]) -> None:
    registry = make(registries, settings({"a": {}, "default": {}}, default="a"))

    assert registry.get() is registry.get("a")
    assert registry.get("default") is not registry.get()


def test_get_returns_the_same_pool_every_time(registries: list[Registry]) -> None:
    registry = make(registries, settings({"a": {}}))

    assert registry.get("a") is registry.get("a")
    assert repr(registry) == "<Registry built=['a'] open>"


def test_fifty_threads_at_once_build_one_pool(
    registries: list[Registry], caplog: pytest.LogCaptureFixture
) -> None:
    registry = make(registries, settings({"a": {}}))
    barrier = threading.Barrier(50, timeout=10)
    got: list[object] = []

    def worker() -> None:
        barrier.wait()
        got.append(registry.get("a"))

    caplog.set_level(logging.INFO, logger="pgregistry.pool.a")
    threads = [threading.Thread(target=worker, daemon=True) for _ in range(50)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)

    assert len(got) == 50
    assert len({id(pool) for pool in got}) == 1
    assert sum("built" in r.message for r in caplog.records if r.name == "pgregistry.pool.a") == 1


def test_a_lazy_registry_loads_its_configuration_once_on_first_use(
    registries: list[Registry],
) -> None:
    calls: list[int] = []

    def loader() -> Settings:
        calls.append(1)
        return settings({"a": {}})

    registry = make(registries, loader=loader)
    assert calls == []
    barrier = threading.Barrier(20, timeout=10)

    def worker() -> None:
        barrier.wait()
        registry.get("a")

    threads = [threading.Thread(target=worker, daemon=True) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)

    assert calls == [1]
    assert registry.names() == ["a"]


def test_reload_reports_what_changed_and_replaces_only_changed_pools(
    registries: list[Registry],
) -> None:
    registry = make(registries, settings({"same": {}, "changed": {}, "removed": {}}))
    same, changed, removed = (registry.get(n) for n in ("same", "changed", "removed"))

    result = registry.reload(settings({"same": {}, "changed": {"maxcached": 3}, "new": {}}))

    assert result == ReloadResult(
        added=("new",), changed=("changed",), removed=("removed",), unchanged=("same",)
    )
    assert registry.get("same") is same
    assert not same.closed
    assert changed.closed and removed.closed
    assert registry.get("changed") is not changed
    assert registry.get("changed").stats()["maxcached"] == 3
    with pytest.raises(UnknownPoolError, match=r"configured pools: changed, new, same$"):
        registry.get("removed")


def test_reload_follows_a_new_default(registries: list[Registry]) -> None:
    registry = make(registries, settings({"a": {}, "b": {}}, default="a"))
    assert registry.get() is registry.get("a")

    registry.reload(settings({"a": {}, "b": {}}, default="b"))

    assert registry.get() is registry.get("b")


def test_reload_with_an_invalid_file_raises_and_changes_nothing(
    registries: list[Registry], tmp_path: Path
) -> None:
    path = tmp_path / "pools.toml"
    path.write_text('[defaults]\nhost = "127.0.0.1"\n[pools.a]\nmaxcached = 1\n')
    registry = Registry.from_config(path)
    registries.append(registry)
    pool = registry.get("a")
    before = registry.settings

    path.write_text("[pools.a]\nmaxcached = -1\nmincahced = 2\n[pools.b]\nport = 0\n")
    with pytest.raises(ConfigError) as info:
        registry.reload()

    assert "3 problems" in str(info.value)
    for where in ("pools.a.maxcached", "pools.a.mincahced", "pools.b.port"):
        assert where in str(info.value)
    assert registry.settings is before
    assert registry.get("a") is pool
    assert not pool.closed


def test_reload_without_a_loader_needs_the_new_settings(registries: list[Registry]) -> None:
    registry = make(registries, settings({"a": {}}))

    with pytest.raises(ValueError, match="no loader"):
        registry.reload()


def test_a_reload_while_a_pool_is_being_built_does_not_deadlock_the_builder(
    registries: list[Registry],
) -> None:
    """The builder finds its new pool stale and looks again: outside its build lock."""
    registry = make(registries, settings({"a": {}}))
    build = registry._new_pool
    built: list[Any] = []

    def build_then_reload(*args: Any, **kwargs: Any) -> Any:
        pool = build(*args, **kwargs)
        built.append(pool)
        if len(built) == 1:  # a reload lands while the first build is under way
            registry.reload(settings({"a": {"maxcached": 2}}))
        return pool

    registry._new_pool = build_then_reload  # type: ignore[method-assign]
    got: list[Any] = []
    thread = threading.Thread(target=lambda: got.append(registry.get("a")), daemon=True)
    thread.start()
    thread.join(10)

    assert not thread.is_alive(), "get() deadlocked on its own build lock"
    assert len(built) == 2
    assert built[0].closed  # the stale pool is never published
    assert got == [built[1]]
    assert got[0].stats()["maxcached"] == 2


def test_close_closes_every_pool_and_refuses_lookups_and_reloads(
    registries: list[Registry],
) -> None:
    registry = make(registries, settings({"a": {}, "b": {}}))
    a, b = registry.get("a"), registry.get("b")

    registry.close()
    registry.close()  # idempotent

    assert registry.closed and a.closed and b.closed
    assert registry.stats()["pools"] == {}
    with pytest.raises(PoolClosedError):
        registry.get("a")
    with pytest.raises(PoolClosedError):
        registry.connection("a")
    with pytest.raises(PoolClosedError):
        registry.reload(settings({"a": {}}))


def test_from_config_refuses_a_named_file_that_does_not_exist(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        Registry.from_config(tmp_path / "missing.toml")


def test_with_statement_closes_the_registry() -> None:
    with Registry(settings({"a": {}})) as registry:
        pool = registry.get("a")
    assert registry.closed and pool.closed


def test_importing_the_package_for_pooledpg_alone_does_not_import_pydantic() -> None:
    # pydantic (for the configuration) takes longer to import than the rest of the package:
    # a program that only builds PooledPg never pays for it; the registry loads it on first use.
    code = (
        "import sys, pgregistry\n"
        "assert 'pydantic' not in sys.modules, 'pydantic imported'\n"
        "pgregistry.PooledPg\n"
        "from pgregistry.config import load_settings\n"
        "assert 'pydantic' in sys.modules\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


# -- names: the module pgregistry.registry and the instance pgregistry.default_registry --------


def test_registry_name_is_the_module_and_the_instance_is_default_registry() -> None:
    import importlib
    import inspect as _inspect

    import pgregistry
    import pgregistry.registry as module

    assert _inspect.ismodule(module)
    assert pgregistry.registry is importlib.import_module("pgregistry.registry")
    assert isinstance(pgregistry.default_registry, pgregistry.Registry)
    assert module.default_registry is pgregistry.default_registry


@pytest.mark.parametrize(
    "func", ["get", "connection", "transaction", "stats", "reload", "close", "pause", "resume"]
)
def test_module_functions_take_the_registry_methods_arguments(func: str) -> None:
    import inspect as _inspect

    import pgregistry
    import pgregistry.registry as module

    method = _inspect.signature(getattr(pgregistry.Registry, func))
    params = list(method.parameters.values())[1:]  # without self
    assert _inspect.signature(getattr(module, func)) == method.replace(parameters=params)
    if func in pgregistry.__all__:  # pgregistry.stats is the stats module, not this function
        assert getattr(pgregistry, func) is getattr(module, func)


# -- fork safety (#11) --------------------------------------------------------------------------


@pytest.mark.parametrize(("name", "tenant"), [("a", None), ("t", "acme")])
def test_child_forked_during_a_pool_build_does_not_deadlock_in_get(
    registries: list[Registry], name: str, tenant: str | None
) -> None:
    import os
    import time

    data: dict[str, Any] = {"defaults": TARGET, "pools": {"a": {}}}
    data["tenants"] = {"t": {"dbname": "db_{tenant}"}}
    registry = make(registries, settings_from_mapping(data, source="test"))
    parent = os.getpid()
    inside = threading.Event()
    release = threading.Event()
    real_new_pool = registry._new_pool

    def slow_new_pool(*args: Any, **kwargs: Any) -> Any:
        # Stands in for a slow connect inside the build (no server can be held there on cue).
        if os.getpid() == parent:
            inside.set()
            release.wait(10)
        return real_new_pool(*args, **kwargs)

    registry._new_pool = slow_new_pool  # type: ignore[method-assign]
    builder = threading.Thread(target=registry.get, args=(name, tenant), daemon=True)
    builder.start()
    try:
        assert inside.wait(5)  # the builder holds the build lock of "a" now
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child reports through its exit status
            code = 1
            try:
                expected = name if tenant is None else f"{name}.{tenant}"
                code = 0 if registry.get(name, tenant).name == expected else 2
                registry.close()
            finally:
                os._exit(code)
        deadline = time.monotonic() + 20
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() > deadline:
                os.kill(pid, 9)
                os.waitpid(pid, 0)
                pytest.fail("the child forked during a pool build hung in get()")
            time.sleep(0.01)
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        release.set()
        builder.join(10)


def test_failed_build_is_logged_with_the_pool_name(
    registries: list[Registry], caplog: pytest.LogCaptureFixture
) -> None:
    registry = make(registries, settings({"a": {"mincached": 1, "password": "s3cr3t-pw"}}))

    with (
        caplog.at_level(logging.WARNING, logger="pgregistry.registry"),
        pytest.raises(ServerUnavailableError),
    ):
        registry.get("a")

    failures = [r for r in caplog.records if "build failed" in r.getMessage()]
    assert failures and failures[0].levelno == logging.WARNING
    assert "pool 'a'" in failures[0].getMessage()
    assert "s3cr3t-pw" not in caplog.text
