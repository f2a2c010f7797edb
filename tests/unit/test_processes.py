"""Budgets across processes (issue 15): ``[servers.X] processes`` and ``$PGPOOLS_PROCESSES``.

Each process gets ``maxconnections // processes`` (at least 1) of a server's budget; the
registry's budget enforces that share, and the at-start check uses it. No server: the pools
here open no connection (mincached 0, a port where nothing listens).
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from pgregistry.config import PROCESSES_ENV, load_settings, settings_from_mapping
from pgregistry.errors import ConfigError
from pgregistry.registry import Registry

pytestmark = [pytest.mark.timeout(20), pytest.mark.usefixtures("clean_env")]


@pytest.fixture
def dead_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def _toml(tmp_path: Path, servers: str, port: int = 5432, pools: str = "") -> Path:
    path = tmp_path / "pgpools.toml"
    path.write_text(
        f'[defaults]\nhost = "127.0.0.1"\nport = {port}\nserver = "main"\n'
        f"[pools.app]\n{pools}\n[servers.main]\n{servers}\n",
        encoding="utf-8",
    )
    return path


@pytest.mark.parametrize(
    ("maxconnections", "processes", "share"), [(90, 1, 90), (90, 8, 11), (10, 3, 3), (4, 8, 1)]
)
def test_per_process_share_is_the_floor_and_at_least_one(
    maxconnections: int, processes: int, share: int
) -> None:
    server = settings_from_mapping(
        {"servers": {"main": {"maxconnections": maxconnections, "processes": processes}}}
    ).servers["main"]
    assert server.per_process == share
    assert server.describe()["per_process"] == share


def test_processes_defaults_to_one() -> None:
    server = settings_from_mapping({"servers": {"main": {"maxconnections": 9}}}).servers["main"]
    assert (server.processes, server.per_process) == (1, 9)


@pytest.mark.parametrize(
    ("value", "said"),
    [(0, "must be >= 1 (got 0)"), (True, "not true/false"), ("many", "must be a whole number")],
)
def test_bad_processes_is_refused(value: object, said: str) -> None:
    with pytest.raises(ConfigError) as caught:
        settings_from_mapping({"servers": {"main": {"maxconnections": 9, "processes": value}}})
    (problem,) = caught.value.problems
    assert problem.startswith("servers.main.processes: ") and said in problem


def test_environment_variable_sets_servers_without_their_own(tmp_path: Path) -> None:
    path = tmp_path / "pgpools.toml"
    path.write_text(
        "[servers.a]\nmaxconnections = 80\n[servers.b]\nmaxconnections = 80\nprocesses = 2\n"
        "[pools.p]\nhost = 'h'\n",
        encoding="utf-8",
    )
    servers = load_settings(path, env={PROCESSES_ENV: "8"}).servers
    assert (servers["a"].processes, servers["a"].per_process) == (8, 10)
    assert (servers["b"].processes, servers["b"].per_process) == (2, 40)  # its own key wins


def test_per_server_environment_variable_wins_over_both(tmp_path: Path) -> None:
    path = _toml(tmp_path, "maxconnections = 80\nprocesses = 2")
    env = {PROCESSES_ENV: "8", "PGPOOLS__SERVERS__MAIN__PROCESSES": "4"}
    assert load_settings(path, env=env).servers["main"].per_process == 20


def test_a_bad_environment_value_names_the_variable(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(_toml(tmp_path, "maxconnections = 80"), env={PROCESSES_ENV: "eight"})
    (problem,) = caught.value.problems
    assert problem.startswith("servers.main.processes: must be a whole number (got 'eight')")
    assert problem.endswith(f"[environment: {PROCESSES_ENV}]")


def test_an_empty_environment_variable_is_not_set(tmp_path: Path) -> None:
    path = _toml(tmp_path, "maxconnections = 80")
    assert load_settings(path, env={PROCESSES_ENV: " "}).servers["main"].processes == 1


def test_at_start_connections_must_fit_in_the_per_process_share(tmp_path: Path) -> None:
    path = _toml(tmp_path, "maxconnections = 40", pools="mincached = 6")
    assert load_settings(path).servers["main"].per_process == 40
    with pytest.raises(ConfigError) as caught:
        load_settings(path, env={PROCESSES_ENV: "8"})
    (problem,) = caught.value.problems
    assert problem.startswith(
        "servers.main.maxconnections: 40 over 8 processes (5 per process) is below the 6 "
        "connections its pools open at start (mincached: app 6;"
    )
    assert "lower processes" in problem


@pytest.fixture
def registries() -> Iterator[list[Registry]]:
    made: list[Registry] = []
    yield made
    for registry in made:
        registry.close()


def test_the_registry_budget_is_the_per_process_share(
    tmp_path: Path, dead_port: int, registries: list[Registry]
) -> None:
    path = _toml(tmp_path, "maxconnections = 90", port=dead_port)
    registry = Registry(load_settings(path, env={PROCESSES_ENV: "8"}))
    registries.append(registry)
    registry.get("app")  # builds the pool (mincached 0: no connection) and its budget
    assert registry.stats()["servers"]["main"]["max_connections"] == 11


def test_a_reload_applies_a_new_share(
    tmp_path: Path, dead_port: int, registries: list[Registry]
) -> None:
    path = _toml(tmp_path, "maxconnections = 90", port=dead_port)
    env = {PROCESSES_ENV: "8"}
    registry = Registry(loader=lambda: load_settings(path, env=env))
    registries.append(registry)
    registry.get("app")
    env[PROCESSES_ENV] = "3"
    registry.reload()
    registry.get("app")
    assert registry.stats()["servers"]["main"]["max_connections"] == 30
