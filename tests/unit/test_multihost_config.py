"""Multi-host targets in the configuration: host and port as comma lists or TOML lists."""

from __future__ import annotations

import pytest

from pgregistry import ConfigError
from pgregistry.config import settings_from_mapping


def target_of(pool: dict[str, object]) -> str:
    settings = settings_from_mapping({"pools": {"app": {"dbname": "app", **pool}}})
    described = settings.pools["app"].describe()
    text = described.get("target") or described.get("conninfo")
    assert isinstance(text, str), described
    return text


@pytest.mark.parametrize(
    "pool",
    [
        {"host": "db1,db2", "port": "5432,5433"},
        {"host": ["db1", "db2"], "port": [5432, 5433]},
        {"host": ["db1", "db2"], "port": ["5432", 5433]},
    ],
)
def test_host_and_port_lists_become_libpq_comma_lists(pool: dict[str, object]) -> None:
    text = target_of({**pool, "target_session_attrs": "read-write"})
    assert "host=db1,db2" in text and "port=5432,5433" in text
    assert "target_session_attrs=read-write" in text


def test_one_port_serves_every_host() -> None:
    assert "port=6432" in target_of({"host": ["db1", "db2", "db3"], "port": [6432]})


@pytest.mark.parametrize(
    ("pool", "message"),
    [
        ({"host": ["a", "b", "c"], "port": [1, 2]}, r"2 ports for 3 host\(s\)"),
        ({"host": []}, "non-empty names without commas"),
        ({"host": ["a,b"]}, "non-empty names without commas"),
        ({"host": ["a", 5]}, "non-empty names without commas"),
        ({"port": [True]}, "port numbers 1-65535"),
        ({"port": [0]}, "port number 1-65535"),
        ({"target_session_attrs": "writable"}, "target_session_attrs"),
    ],
)
def test_bad_lists_are_refused_naming_the_field(pool: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as caught:
        settings_from_mapping({"pools": {"app": pool}})
    assert "pools.app." in str(caught.value)


def test_the_ha_example_loads() -> None:
    from pathlib import Path

    from pgregistry.config import load_settings

    settings = load_settings(Path(__file__).parents[2] / "examples" / "ha.toml")
    assert settings.default_pool_name() == "primary"
    assert "target_session_attrs=read-write" in str(settings.pools["primary"].describe())
