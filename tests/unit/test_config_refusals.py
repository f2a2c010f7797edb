"""What the loader refuses since issues 10, 11 and 16: typos from the environment, bad bytes,
ambiguous URIs, identifiers PostgreSQL would cut, and the two spellings of maxconnections."""

from __future__ import annotations

from pathlib import Path

import pytest

from pgregistry.config import TenantSettings, load_settings, settings_from_mapping
from pgregistry.conninfo import ConninfoError, parse_conninfo
from pgregistry.errors import ConfigError, InvalidTenantError

pytestmark = pytest.mark.usefixtures("clean_env")  # tests/conftest.py

FILE = '[pools.main]\nhost = "h"\ndbname = "app"\n'


def _file(tmp_path: Path, text: str | bytes = FILE) -> Path:
    path = tmp_path / "pgpools.toml"
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


# -- issue 16: an environment typo does not create a pool -----------------------------------


def test_env_only_pool_without_target_close_to_a_file_pool_is_refused(tmp_path: Path) -> None:
    env = {"PGPOOLS__POOLS__MIAN__MAXCACHED": "8"}
    with pytest.raises(ConfigError) as caught:
        load_settings(_file(tmp_path), env=env)
    (problem,) = caught.value.problems
    assert problem.startswith("pools.mian: only the environment names this pool")
    assert "did you mean 'main'?" in problem
    assert "PGPOOLS__POOLS__MIAN__MAXCACHED" in problem


def test_env_only_pool_with_a_target_is_declared(tmp_path: Path) -> None:
    env = {"PGPOOLS__POOLS__MIAN__DBNAME": "other", "PGPOOLS__POOLS__MIAN__MAXCACHED": "8"}
    settings = load_settings(_file(tmp_path), env=env)
    assert settings.pools["mian"].maxcached == 8 and settings.pools["mian"].dbname == "other"


def test_env_key_of_a_file_pool_still_overrides(tmp_path: Path) -> None:
    settings = load_settings(_file(tmp_path), env={"PGPOOLS__POOLS__MAIN__MAXCACHED": "8"})
    assert list(settings.pools) == ["main"] and settings.pools["main"].maxcached == 8


def test_env_only_pool_with_no_similar_file_pool_is_declared(tmp_path: Path) -> None:
    settings = load_settings(_file(tmp_path), env={"PGPOOLS__POOLS__BATCH__MAXCACHED": "2"})
    assert settings.pools["batch"].maxcached == 2


# -- issue 16: configured pools are bounded -------------------------------------------------


def test_configured_pool_is_bounded_and_blocks_by_default() -> None:
    pool = settings_from_mapping({"pools": {"a": {"host": "h"}}}).pools["a"]
    assert (pool.maxconnections, pool.blocking) == (10, True)
    kwargs = pool.pool_kwargs()
    assert (kwargs["maxconnections"], kwargs["blocking"]) == (10, True)


def test_unset_bound_rises_to_mincached_and_maxcached_instead_of_refusing() -> None:
    pools = settings_from_mapping(
        {"pools": {"a": {"mincached": 12}, "b": {"maxcached": 15}, "c": {"maxconnections": 0}}}
    ).pools
    assert (pools["a"].maxconnections, pools["b"].maxconnections) == (12, 15)
    assert pools["c"].maxconnections == 0  # written: no limit, as asked
    with pytest.raises(ConfigError, match=r"pools\.d\.mincached: 12 connections"):
        settings_from_mapping({"pools": {"d": {"mincached": 12, "maxconnections": 4}}})


def test_defaults_bound_counts_as_set() -> None:
    pool = settings_from_mapping(
        {"defaults": {"maxconnections": 3}, "pools": {"a": {"mincached": 2}}}
    ).pools["a"]
    assert pool.maxconnections == 3


# -- issue 10: one spelling of maxconnections ------------------------------------------------


@pytest.mark.parametrize("spelling", ["maxconnections", "max_connections"])
def test_both_spellings_in_pools_and_servers(spelling: str) -> None:
    settings = settings_from_mapping(
        {"pools": {"a": {"host": "h", spelling: 4}}, "servers": {"s": {"host": "h", spelling: 9}}}
    )
    assert settings.pools["a"].maxconnections == 4
    server = settings.servers["s"]
    assert server.maxconnections == server.max_connections == 9
    described = settings.describe()
    assert described["servers"]["s"]["maxconnections"] == 9
    assert "max_connections" not in described["servers"]["s"]
    assert "max_connections" not in described["pools"]["a"]


def test_both_spellings_at_once_are_refused() -> None:
    with pytest.raises(ConfigError, match="max_connections and maxconnections are both set"):
        settings_from_mapping({"pools": {"a": {"maxconnections": 4, "max_connections": 4}}})
    with pytest.raises(ConfigError, match="max_connections and maxconnections are both set"):
        settings_from_mapping({"servers": {"s": {"maxconnections": 4, "max_connections": 4}}})


# -- issue 11 item 12: bad bytes and bad URIs ------------------------------------------------


def test_invalid_utf8_in_the_file_names_the_file(tmp_path: Path) -> None:
    path = _file(tmp_path, b'[pools.main]\nhost = "h"\npassword = "p\xff\xfesecret"\n')
    with pytest.raises(ConfigError) as caught:
        load_settings(path, env={})
    text = str(caught.value)
    assert str(path) in text and "not valid UTF-8" in text and "secret" not in text
    assert not isinstance(caught.value.__cause__, UnicodeDecodeError)


def test_invalid_utf8_in_a_secret_file_names_the_file(tmp_path: Path) -> None:
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "pools__main__password").write_bytes(b"pw\xff\xfetail")
    with pytest.raises(ConfigError) as caught:
        load_settings(_file(tmp_path), env={}, secrets_dir=secrets)
    text = str(caught.value)
    assert str(secrets / "pools__main__password") in text and "not valid UTF-8" in text
    assert "tail" not in text


def test_invalid_utf8_in_a_variable_names_the_variable(tmp_path: Path) -> None:
    # os.environ keeps undecodable bytes as lone surrogates (surrogateescape).
    value = b"pw\xfftail".decode("utf-8", "surrogateescape")
    with pytest.raises(ConfigError) as caught:
        load_settings(_file(tmp_path), env={"PGPOOLS__POOLS__MAIN__PASSWORD": value})
    text = str(caught.value)
    assert "PGPOOLS__POOLS__MAIN__PASSWORD" in text and "not valid UTF-8" in text
    assert "tail" not in text


def test_uri_with_an_unescaped_at_in_the_password_is_refused_without_echo() -> None:
    uri = "postgresql://u:p@ss-secret-tail@host/db"
    with pytest.raises(ConninfoError) as caught:
        parse_conninfo(uri)
    assert "secret" not in str(caught.value) and "%40" in str(caught.value)
    with pytest.raises(ConfigError) as config_error:
        settings_from_mapping({"pools": {"a": {"conninfo": uri}}})
    assert "pools.a.conninfo" in str(config_error.value)
    assert "secret" not in str(config_error.value) and "ss-" not in str(config_error.value)
    # Escaped, it is the password it means.
    assert parse_conninfo("postgresql://u:p%40ss@host/db")["password"] == "p@ss"
    assert parse_conninfo("postgresql://u:p%40ss@host/db")["host"] == "host"


# -- issue 11 item 7: identifiers PostgreSQL would cut ---------------------------------------


def test_search_path_that_can_pass_63_bytes_is_refused_at_load() -> None:
    with pytest.raises(ConfigError) as caught:
        settings_from_mapping(
            {"tenants": {"shop": {"search_path": ["customer_data_schema_{tenant}"]}}}
        )
    (problem,) = caught.value.problems
    assert problem.startswith("tenants.shop.search_path: with a tenant key of")
    assert "69 bytes" in problem and "lower tenant_max_length to 42" in problem


def test_template_that_fits_loads() -> None:
    settings = settings_from_mapping(
        {
            "tenants": {
                "shop": {"search_path": ["customer_data_schema_{tenant}"], "tenant_max_length": 42}
            }
        }
    )
    assert settings.tenants["shop"].tenant_max_length == 42


@pytest.mark.parametrize("field", ["dbname", "user"])
def test_libpq_names_that_can_pass_63_bytes_are_refused_at_load(field: str) -> None:
    with pytest.raises(ConfigError, match=f"tenants.shop.{field}: with a tenant key"):
        settings_from_mapping({"tenants": {"shop": {field: "a_rather_long_prefix_{tenant}"}}})


def test_application_name_is_left_to_postgresql_to_cut() -> None:
    # It names no object: two tenants with one cut application_name share no data.
    shop = _template(application_name="a_rather_long_application_name_prefix_{tenant}")
    assert shop.for_tenant("k" * 48).application_name is not None


def _template(**keys: object) -> TenantSettings:
    return settings_from_mapping({"tenants": {"shop": keys}}).tenants["shop"]


def test_multibyte_key_over_63_bytes_is_refused_at_lookup_naming_the_field() -> None:
    # 31 characters, 62 bytes (+2 of the prefix): fits the character limit, not PostgreSQL's.
    shop = _template(search_path=["s_{tenant}"], tenant_pattern="(?s).+", tenant_max_length=31)
    key = "ä" * 31
    with pytest.raises(InvalidTenantError, match="64-byte identifier in search_path"):
        shop.for_tenant(key)
    with pytest.raises(InvalidTenantError, match="search_path"):
        shop.check_tenant(key)
    assert shop.for_tenant("ä" * 30).setsession  # 62 bytes with the prefix: fits


def test_setsession_identifier_over_63_bytes_is_refused_at_lookup() -> None:
    shop = _template(
        setsession=["SET ROLE {tenant}"], tenant_pattern="(?s).+", tenant_max_length=63
    )
    with pytest.raises(InvalidTenantError, match="in setsession"):
        shop.for_tenant("é" * 32)
    assert shop.for_tenant("e" * 63).setsession == ('SET ROLE "' + "e" * 63 + '"',)


def test_two_long_keys_never_share_a_schema() -> None:
    # The case: two keys that differ only after byte 63 of the schema name.
    shop = _template(search_path=["customer_data_schema_{tenant}"], tenant_max_length=42)
    one, two = "a" * 42, "a" * 41 + "b"
    assert shop.for_tenant(one).setsession != shop.for_tenant(two).setsession
