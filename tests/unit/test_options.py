"""One source of truth: ``pgregistry.options`` against the config, ``PooledPg`` and README.

Each test says what to update when a setting drifts; the only deliberate differences between
``PooledPg()``'s defaults and a configured pool's are the options whose ``differs_because``
says why (issue #16: configured pools are bounded and wait).
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest

from pgregistry.config import POOL_OPTION_KEYS, PoolSettings, Settings, settings_from_mapping
from pgregistry.options import (
    CONFIG_ONLY,
    DEFAULT_POOL,
    KEY_ALIASES,
    OPTIONS,
    SECRET_KEYS,
    default_pool_name,
    option,
)
from pgregistry.policies import parse_ping, parse_reset
from pgregistry.pool import PooledPg

README = Path(__file__).resolve().parents[2] / "README.md"
OPTIONS_FILE = "pgregistry/options.py"


def _canonical(name: str, value: object) -> object:
    """A default as the table writes it: policy names, () for no statements."""
    if name == "reset":
        return parse_reset(value).value
    if name == "ping":
        return parse_ping(value).value
    if name == "setsession":
        assert value is None or isinstance(value, list | tuple)
        return tuple(value or ())
    return value


POOLED_PARAMETERS = inspect.signature(PooledPg.__init__).parameters


@pytest.mark.parametrize("entry", OPTIONS, ids=lambda o: o.name)
def test_every_option_is_a_pooledpg_parameter_with_the_same_default(entry: object) -> None:
    from pgregistry.options import Option

    assert isinstance(entry, Option)
    assert entry.name in POOLED_PARAMETERS, (
        f"{entry.name} is in {OPTIONS_FILE} but PooledPg.__init__ has no such parameter: "
        "remove it from OPTIONS or add the parameter"
    )
    default = _canonical(entry.name, POOLED_PARAMETERS[entry.name].default)
    assert default == entry.default, (
        f"PooledPg's default for {entry.name} is {default!r}, {OPTIONS_FILE} says "
        f"{entry.default!r}: update OPTIONS (or PooledPg)"
    )


def test_every_pooledpg_setting_is_in_the_table() -> None:
    not_settings = {"self", "args", "kwargs", "name", "maintenance", "budget"}
    missing = set(POOLED_PARAMETERS) - not_settings - {o.name for o in OPTIONS}
    assert not missing, f"add {sorted(missing)} to OPTIONS in {OPTIONS_FILE}"


@pytest.mark.parametrize("entry", OPTIONS, ids=lambda o: o.name)
def test_config_default_equals_pooledpg_unless_documented(entry: object) -> None:
    from pgregistry.options import Option

    assert isinstance(entry, Option)
    field = PoolSettings.model_fields[entry.name]
    configured = _canonical(entry.name, getattr(field.default, "value", field.default))
    if entry.differs_because:
        assert configured == entry.config_default != entry.default, entry.name
    else:
        assert configured == entry.default, (
            f"the config's default for {entry.name} is {configured!r}, PooledPg's is "
            f"{entry.default!r}: make them equal, or set config_default and differs_because "
            f"in {OPTIONS_FILE}"
        )


def test_only_the_bounded_defaults_differ() -> None:
    # Issue #16: a configured pool is bounded (10) and waits; PooledPg() is the original.
    assert {o.name for o in OPTIONS if o.differs_because} == {"maxconnections", "blocking"}
    assert (option("maxconnections").config_default, option("blocking").config_default) == (
        10,
        True,
    )
    pool = settings_from_mapping({"pools": {"a": {"host": "h"}}}).pools["a"]
    assert (pool.maxconnections, pool.blocking) == (10, True)
    assert (POOLED_PARAMETERS["maxconnections"].default, POOLED_PARAMETERS["blocking"].default) == (
        0,
        False,
    )


@pytest.mark.parametrize("entry", OPTIONS, ids=lambda o: o.name)
def test_every_option_is_documented(entry: object) -> None:
    from pgregistry.options import Option

    assert isinstance(entry, Option)
    assert len(entry.doc) >= 20 and entry.unit is not None and entry.section, (
        f"document {entry.name} (doc, unit, section) in {OPTIONS_FILE}"
    )
    assert PoolSettings.model_fields[entry.name].description == entry.doc, (
        f"PoolSettings.{entry.name} must take its description from {OPTIONS_FILE} (_option())"
    )


README_TEXT = README.read_text(encoding="utf-8")


@pytest.mark.parametrize("name", [o.name for o in OPTIONS] + sorted(CONFIG_ONLY))
def test_every_setting_has_a_readme_heading(name: str) -> None:
    assert re.search(rf"^#### {re.escape(name)}$", README_TEXT, re.M), (
        f"README.md has no '#### {name}' heading: document the setting there (unit, default)"
    )


def test_readme_states_both_defaults_of_the_bounded_settings() -> None:
    for name in ("maxconnections", "blocking"):
        section = README_TEXT.split(f"#### {name}\n", 1)[1].split("\n#### ", 1)[0]
        assert "PooledPg()" in section and "configuration" in section, (
            f"README's {name} section must give both defaults side by side"
        )


def test_pool_option_keys_follow_the_table() -> None:
    assert ("enabled", *(o.name for o in OPTIONS)) == POOL_OPTION_KEYS


def test_secret_keys_are_masked_everywhere() -> None:
    # Every secret pool key is a field (or an alias of one) and is masked by describe().
    fields = set(PoolSettings.model_fields)
    for key in SECRET_KEYS:
        assert KEY_ALIASES.get(key, key) in fields, f"{key}: not a PoolSettings field"
    pool = settings_from_mapping(
        {"pools": {"a": {"host": "h", "password": "s3cret-pw", "sslpassword": "k3y-pw"}}}
    ).pools["a"]
    shown = str(pool.describe()) + repr(pool)
    assert "s3cret-pw" not in shown and "k3y-pw" not in shown
    assert set(pool.secrets()) == {"s3cret-pw", "k3y-pw"}


def test_default_pool_rule_is_one_function() -> None:
    assert default_pool_name("app", {"app", "default"}) == "app"
    assert default_pool_name(None, {"app", DEFAULT_POOL}) == DEFAULT_POOL
    assert default_pool_name(None, {"app"}) is None
    named = settings_from_mapping({"pools": {"default": {"host": "h"}, "b": {"host": "h"}}})
    assert named.default_pool_name() == "default"
    # A Settings built by hand follows the same rule.
    hand = Settings(pools={"default": named.pools["default"]})
    assert hand.default is None and hand.default_pool_name() == "default"
