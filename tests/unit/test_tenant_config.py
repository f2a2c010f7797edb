"""Tenant templates and server budgets in the configuration: no server needed.

Placeholders, how each is quoted, hostile tenant keys (rejected by the default pattern; quoted
harmlessly under a permissive one), overrides, and the config checks (budgets, unknown servers,
placeholders where they do not belong, name clashes). The same keys against a real server are
in ``tests/server/test_tenants.py`` and ``tests/server/test_budget.py``.
"""

from __future__ import annotations

import re
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from _helpers import LIBPQ, libpq_parse

from pgregistry import InvalidTenantError, Registry, UnknownPoolError
from pgregistry.config import (
    DEFAULT_TENANT_PATTERN,
    PoolSettings,
    ServerSettings,
    Settings,
    TenantSettings,
    load_settings,
    settings_from_mapping,
)
from pgregistry.conninfo import escape_option, parse_conninfo, quote_ident, quote_literal
from pgregistry.errors import ConfigError

pytestmark = pytest.mark.usefixtures("clean_env")  # tests/conftest.py


def template(**keys: Any) -> TenantSettings:
    """The template ``shop`` with ``keys``."""
    return settings_from_mapping({"tenants": {"shop": keys}}).tenants["shop"]


def problems(data: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as exc:
        settings_from_mapping(data)
    return exc.value.problems


# Keys an attacker might send: quotes, white space, '=', ';', backslashes, unicode, control
# characters, NUL, and very long strings.
HOSTILE_KEYS = [
    "x' password='y",
    "x dbname=postgres",
    'a"; DROP TABLE victim; --',
    "b\\' host=127.0.0.2 x=",
    "a b",
    "a=b",
    "a;b",
    "-c",
    "a\tb",
    "a\nb",
    "a\x00b",
    "ä",
    "acme\u200b",  # zero-width space: looks like "acme"
    "\uff41\uff43\uff4d\uff45",  # fullwidth "acme"
    "Acme",
    "_acme",
    "acme-1",
    "acme.1",
    "{tenant}",
    "{tenant}'; DROP TABLE victim; --",  # substituted twice, it would close the literal
    "",
    "a" * 49,
    "a" * 10_000,
    "a" * 10_000 + "'",
]


def read_like_libpq(text: str) -> dict[str, str]:
    """libpq's own reading of a keyword string (set values only); our parser without libpq."""
    if LIBPQ is None:
        return parse_conninfo(text)
    parsed = libpq_parse(text)
    assert parsed is not None, f"libpq refused {text!r}"
    return parsed


def server_split_options(options: str) -> list[str]:
    """How the server splits ``options`` into words (pg_split_opts): white space separates,
    a backslash takes the next character literally."""
    words: list[str] = []
    word: list[str] = []
    escaped = False
    for char in options:
        if escaped:
            word.append(char)
            escaped = False
        elif char == "\\":
            escaped = True
        elif char.isspace():
            if word:
                words.append("".join(word))
                word = []
        else:
            word.append(char)
    if word:
        words.append("".join(word))
    return words


def sql_identifier(text: str) -> str:
    """The name a quoted SQL identifier stands for; fails if ``text`` is not exactly one."""
    match = re.fullmatch(r'"((?:[^"]|"")*)"', text)
    assert match, f"not one quoted identifier: {text!r}"
    return match.group(1).replace('""', '"')


def sql_literal(text: str) -> str:
    """The string an SQL literal stands for ('...' or E'...'); fails if ``text`` is not one."""
    match = re.fullmatch(r"'((?:[^'\\]|'')*)'", text)
    if match:
        return match.group(1).replace("''", "'")
    match = re.fullmatch(r"E'((?:[^'\\]|''|\\\\)*)'", text)
    assert match, f"not one SQL literal: {text!r}"
    return match.group(1).replace("''", "'").replace("\\\\", "\\")


# -- placeholders and quoting ---------------------------------------------------------------------


FULL = {
    "host": "127.0.0.1",
    "dbname": "db_{tenant}",
    "user": "u_{tenant}",
    "options": "-c app.opt={tenant}",
    "application_name": "app_{tenant}",
    "search_path": ["s_{tenant}", "public"],
    "setsession": ["SET app.ident = {tenant}", "SET app.lit = {tenant_literal}"],
}


def test_placeholders_are_substituted_in_every_allowed_field() -> None:
    pool = template(**FULL).for_tenant("acme")
    assert isinstance(pool, PoolSettings) and not isinstance(pool, TenantSettings)
    assert read_like_libpq(pool.dsn()) == {
        "host": "127.0.0.1",
        "dbname": "db_acme",
        "user": "u_acme",
        "options": "-c app.opt=acme",
        "application_name": "app_acme",
    }
    assert pool.setsession == (
        'SET search_path TO "s_acme", "public"',
        'SET app.ident = "acme"',
        "SET app.lit = 'acme'",
    )
    assert pool.name == "shop"


@pytest.mark.parametrize("key", [k for k in HOSTILE_KEYS if "\x00" in k or len(k) < 60])
def test_a_permissive_pattern_still_quotes_every_key_for_libpq(key: str) -> None:
    shop = template(**FULL, tenant_pattern="(?s).+", tenant_max_length=59)
    if not key or "\x00" in key:
        with pytest.raises(InvalidTenantError):
            shop.for_tenant(key)
        return
    pool = shop.for_tenant(key)
    # Exactly the template's keywords, each holding the key as data: no keyword was added.
    assert read_like_libpq(pool.dsn()) == {
        "host": "127.0.0.1",
        "dbname": f"db_{key}",
        "user": f"u_{key}",
        "options": f"-c app.opt={escape_option(key)}",
        "application_name": f"app_{key}",
    }
    # The server splits options into exactly two words: no extra -c.
    assert server_split_options(read_like_libpq(pool.dsn())["options"]) == ["-c", f"app.opt={key}"]


@pytest.mark.parametrize("key", [k for k in HOSTILE_KEYS if k and "\x00" not in k and len(k) < 60])
def test_a_permissive_pattern_still_quotes_every_key_for_sql(key: str) -> None:
    pool = template(**FULL, tenant_pattern="(?s).+", tenant_max_length=59).for_tenant(key)
    search_path, ident, lit = pool.setsession
    prefix = "SET search_path TO "
    assert search_path.startswith(prefix) and search_path.endswith(', "public"')
    assert sql_identifier(search_path[len(prefix) : -len(', "public"')]) == f"s_{key}"
    assert ident.startswith("SET app.ident = ")
    assert sql_identifier(ident.removeprefix("SET app.ident = ")) == key
    assert lit.startswith("SET app.lit = ")
    assert sql_literal(lit.removeprefix("SET app.lit = ")) == key


def test_quoting_helpers_are_the_ones_used() -> None:
    key = 'o\'h\\ "x"'
    pool = template(**FULL, tenant_pattern=".+").for_tenant(key)
    assert pool.setsession[1] == f"SET app.ident = {quote_ident(key)}"
    assert pool.setsession[2] == f"SET app.lit = {quote_literal(key)}"
    assert pool.options == f"-c app.opt={escape_option(key)}"


def test_the_template_itself_is_unchanged_by_substitution() -> None:
    shop = template(**FULL)
    shop.for_tenant("acme")
    assert shop.dbname == "db_{tenant}"
    assert shop.setsession == ("SET app.ident = {tenant}", "SET app.lit = {tenant_literal}")


def test_search_path_as_a_comma_separated_string() -> None:
    pool = template(search_path="s_{tenant}, public").for_tenant("acme")
    assert pool.setsession == ('SET search_path TO "s_acme", "public"',)


def test_search_path_comes_before_the_setsession_statements() -> None:
    pool = template(search_path=["{tenant}"], setsession=["SELECT 1"]).for_tenant("acme")
    assert pool.setsession == ('SET search_path TO "acme"', "SELECT 1")


# -- untrusted keys -------------------------------------------------------------------------------


@pytest.mark.parametrize("key", HOSTILE_KEYS, ids=lambda k: repr(k[:20]) + f"/{len(k)}")
def test_default_pattern_rejects_hostile_keys(key: str) -> None:
    shop = template(**FULL)
    with pytest.raises(InvalidTenantError) as exc:
        shop.check_tenant(key)
    with pytest.raises(InvalidTenantError):
        shop.for_tenant(key)
    message = str(exc.value)
    assert "tenant template 'shop'" in message and DEFAULT_TENANT_PATTERN in message
    assert len(message) < 300  # a 10 kB key is not echoed whole


@pytest.mark.parametrize("key", ["acme", "0day", "a_b", "a1", "a" * 48, "a__"])
def test_default_pattern_accepts_plain_keys(key: str) -> None:
    assert template().check_tenant(key) == key


@pytest.mark.parametrize("key", [5, None, b"acme", ["acme"], {"a": 1}, 1.5])
def test_keys_that_are_not_strings_are_rejected(key: object) -> None:
    with pytest.raises(InvalidTenantError):
        template().check_tenant(key)


def test_pattern_and_length_are_configurable() -> None:
    shop = template(tenant_pattern="[A-Z]{2}-[0-9]+", tenant_max_length=6)
    assert shop.check_tenant("DE-123") == "DE-123"
    for key in ("DE-1234", "de-123", "DE-12x", "xDE-12"):
        with pytest.raises(InvalidTenantError):
            shop.check_tenant(key)


def test_the_whole_key_must_match_the_pattern() -> None:
    shop = template(tenant_pattern="[a-z]+")
    with pytest.raises(InvalidTenantError):
        shop.check_tenant("acme\n")  # re.match("[a-z]+$") would take it
    with pytest.raises(InvalidTenantError):
        shop.check_tenant("acme x")


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """A TCP socket listening on a free port that nobody should ever connect to."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(8)
    sock.setblocking(False)
    try:
        yield sock
    finally:
        sock.close()


def _no_connection_reached(sock: socket.socket) -> bool:
    try:
        conn, _ = sock.accept()
    except BlockingIOError:
        return True
    conn.close()
    return False


@pytest.mark.parametrize("key", [*HOSTILE_KEYS, ["acme"], {"a": 1}, 5])
def test_registry_rejects_a_bad_key_before_touching_the_network(
    key: Any, listener: socket.socket
) -> None:
    port = listener.getsockname()[1]
    settings = settings_from_mapping(
        {"tenants": {"shop": {**FULL, "port": port, "mincached": 1, "connect_timeout": 2}}}
    )
    with Registry(settings) as reg:
        with pytest.raises(InvalidTenantError):
            reg.get("shop", tenant=key)
        with pytest.raises(InvalidTenantError):
            reg.connection("shop", tenant=key)
        assert reg.stats()["tenants"] == {"shop": {}}
    assert _no_connection_reached(listener)


def test_registry_tells_templates_and_pools_apart() -> None:
    settings = settings_from_mapping({"pools": {"app": {}}, "tenants": {"shop": {}}})
    with Registry(settings) as reg:
        with pytest.raises(UnknownPoolError, match="tenant template"):
            reg.get("shop")
        with pytest.raises(UnknownPoolError, match="not a tenant template"):
            reg.get("app", tenant="acme")
        with pytest.raises(UnknownPoolError, match="unknown tenant template"):
            reg.get("nope", tenant="acme")


# -- overrides ------------------------------------------------------------------------------------


def test_overrides_apply_to_their_tenant_only() -> None:
    shop = template(
        maxconnections=5,
        overrides={"acme": {"maxconnections": 20, "setsession": ["SET app.flag = 'on'"]}},
    )
    assert shop.for_tenant("acme").maxconnections == 20
    assert shop.for_tenant("acme").setsession == ("SET app.flag = 'on'",)
    assert shop.for_tenant("globex").maxconnections == 5
    assert shop.for_tenant("globex").setsession == ()


def test_an_overridden_setsession_keeps_the_search_path() -> None:
    # search_path is the tenant's isolation: replacing setsession must not drop it.
    shop = template(
        search_path=["s_{tenant}"],
        setsession=["SET app.a = 1"],
        overrides={"acme": {"setsession": ["SET app.b = {tenant_literal}"]}},
    )
    assert shop.for_tenant("acme").setsession == (
        'SET search_path TO "s_acme"',
        "SET app.b = 'acme'",
    )
    assert shop.for_tenant("globex").setsession == (
        'SET search_path TO "s_globex"',
        "SET app.a = 1",
    )


def test_placeholders_in_overrides_are_substituted() -> None:
    shop = template(dbname="db_{tenant}", overrides={"acme": {"dbname": "big_{tenant}"}})
    assert shop.for_tenant("acme").dbname == "big_acme"


def test_overrides_follow_the_placeholder_rules() -> None:
    found = problems(
        {"tenants": {"shop": {"overrides": {"acme": {"setsession": ["SET x = 'a{tenant}'"]}}}}}
    )
    assert any(p.startswith("tenants.shop.overrides.acme") and "stand alone" in p for p in found)
    found = problems({"tenants": {"shop": {"overrides": {"acme": {"host": "{tenant}.db"}}}}})
    assert any(p.startswith("tenants.shop.overrides.acme.host") for p in found), found


def test_override_for_an_invalid_key_is_a_config_error() -> None:
    found = problems({"tenants": {"shop": {"overrides": {"Bad Key": {"maxconnections": 1}}}}})
    assert len(found) == 1
    assert found[0].startswith("tenants.shop.overrides.Bad Key: ")
    assert "invalid tenant key" in found[0]


def test_override_key_checked_against_the_template_pattern() -> None:
    ok = settings_from_mapping(
        {"tenants": {"shop": {"tenant_pattern": "[A-Z]+", "overrides": {"ACME": {"maxcached": 1}}}}}
    )
    assert ok.tenants["shop"].for_tenant("ACME").maxcached == 1


def test_override_problems_are_listed_by_path() -> None:
    found = problems(
        {
            "tenants": {
                "shop": {
                    "overrides": {
                        "acme": {"maxconnections": -1, "max_pools": 3},
                        "globex": "big",
                    }
                }
            }
        }
    )
    assert any(
        p.startswith("tenants.shop.overrides.acme.maxconnections: must be >= 0") for p in found
    )
    assert any(p.startswith("tenants.shop.overrides.acme.max_pools: unknown key") for p in found)
    assert any(p.startswith("tenants.shop.overrides.globex: must be a table") for p in found)


# -- config checks --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "key, value",
    [
        ("host", "{tenant}.db.example.com"),
        ("port", "{tenant}"),
        ("password", "pw_{tenant}"),
        ("passfile", "/etc/{tenant}.pgpass"),
        ("service", "svc_{tenant}"),
        ("conninfo", "dbname={tenant}"),
        ("sslcert", "/certs/{tenant}.crt"),
        ("server", "{tenant}"),
        ("fallback_application_name", "{tenant}"),
    ],
)
def test_placeholders_outside_the_allowed_fields_are_refused(key: str, value: str) -> None:
    found = problems({"tenants": {"shop": {key: value}}})
    assert any(p.startswith("tenants.shop") for p in found), found
    assert "pw_" not in "\n".join(found)  # a password is never echoed


def test_tenant_literal_only_in_sql() -> None:
    found = problems({"tenants": {"shop": {"dbname": "db_{tenant_literal}"}}})
    assert any("tenants.shop" in p and "tenant_literal" in p for p in found), found


@pytest.mark.parametrize(
    "statement",
    [
        "SET app.x = 'a{tenant}'",
        "SET search_path = s_{tenant}",
        "SET app.x = {tenant}_x",
        'SET app.x = "{tenant}"',
        "SET app.x = '{tenant_literal}'",
        "SET app.x = ${tenant}",
        "SELECT {tenant}{tenant}",
        "SET app.x = 'hello {tenant} there'",  # inside a string: the quoting would not hold
        "SET app.x = 'a ' || 'b {tenant_literal} c'",
        "SET app.x = E'it\\'s {tenant} x'",
        "SET app.x = 'it\\' || {tenant} || ' x'",  # a string either way you read backslashes
        'SET app."x {tenant} y" = 1',
        "SELECT $$ {tenant} $$",
        "SELECT $q$ {tenant} $q$",
        "SELECT 1 -- {tenant}",
        "SELECT /* a /* b */ {tenant} */ 1",
        "SET app.x = 'unterminated {tenant}",
    ],
)
def test_a_placeholder_not_standing_alone_in_setsession_is_refused(statement: str) -> None:
    found = problems({"tenants": {"shop": {"setsession": ["SELECT 1", statement]}}})
    assert any("tenants.shop" in p and "setsession[1]" in p and "stand alone" in p for p in found)


@pytest.mark.parametrize(
    "statement",
    [
        "SET app.x = {tenant}",
        "SELECT set_config('app.x', {tenant_literal}, false)",
        "SET ROLE {tenant}",
        "SET app.x = {tenant};",
        "SELECT set_config('app.a', 'x', false), set_config('app.b', {tenant_literal}, false)",
        "SELECT $$x$$, {tenant}, 'it''s', \"q\"\"\", {tenant_literal} /* c */ -- d",
        "SELECT E'\\'', {tenant}",  # the escaped quote does not open a string
        "SELECT a$b, {tenant}",  # $ inside an identifier starts no dollar quote
    ],
)
def test_a_placeholder_standing_alone_in_setsession_is_accepted(statement: str) -> None:
    assert template(setsession=[statement]).setsession == (statement,)


def test_template_and_pool_with_one_name_is_refused() -> None:
    found = problems({"pools": {"shop": {}}, "tenants": {"shop": {}}})
    assert found == [
        "tenants.shop: a pool is also named 'shop'; pools and templates share names [mapping]"
    ]


@pytest.mark.parametrize(
    "key, value, expected",
    [
        ("max_pools", 0, "tenants.shop.max_pools: must be >= 1"),
        ("max_pools", True, "tenants.shop.max_pools: must be a number"),
        ("idle_pool_timeout", -1, "tenants.shop.idle_pool_timeout: must be >= 0"),
        ("tenant_pattern", "(", "tenants.shop.tenant_pattern: is not a valid regular expression"),
        ("tenant_pattern", "", "tenants.shop.tenant_pattern: must not be empty"),
        ("tenant_max_length", 0, "tenants.shop.tenant_max_length: must be >= 1"),
        ("tenant_max_length", 5000, "tenants.shop.tenant_max_length: must be <= 1000"),
    ],
)
def test_bad_template_keys_are_refused(key: str, value: Any, expected: str) -> None:
    found = problems({"tenants": {"shop": {key: value}}})
    assert any(p.startswith(expected) for p in found), found


def test_bad_template_names_are_refused() -> None:
    found = problems({"tenants": {"Shop": {}, "a__b": {}}})
    assert len(found) == 2 and all("invalid template name" in p for p in found)


def test_unknown_server_name_is_refused() -> None:
    found = problems(
        {
            "servers": {"main": {"max_connections": 10}},
            "pools": {"app": {"server": "mian"}},
            "tenants": {"shop": {"server": "other"}},
        }
    )
    assert any(
        p.startswith(
            "pools.app.server: names server 'mian', which is not configured (servers: main)"
        )
        for p in found
    ), found
    assert any(p.startswith("tenants.shop.server: names server 'other'") for p in found), found


def test_mincached_over_the_budget_is_refused_with_the_server_path() -> None:
    found = problems(
        {
            "servers": {"main": {"max_connections": 10}},
            "pools": {"app": {"server": "main", "mincached": 4}},
            "tenants": {"shop": {"server": "main", "mincached": 2, "max_pools": 4}},
        }
    )
    assert len(found) == 1
    message = found[0]
    assert message.startswith("servers.main.maxconnections: 10 is below the 12 connections")
    assert "app 4" in message and "shop 8" in message  # a template counts mincached x max_pools


def test_mincached_at_the_budget_is_accepted() -> None:
    settings = settings_from_mapping(
        {
            "servers": {"main": {"max_connections": 10}},
            "pools": {"app": {"server": "main", "mincached": 4}},
            "tenants": {"shop": {"server": "main", "mincached": 2, "max_pools": 3}},
        }
    )
    assert settings.servers["main"].max_connections == 10


def test_pools_are_matched_to_a_server_by_host_and_port() -> None:
    data = {
        "servers": {
            "main": {"host": "db1", "max_connections": 3},
            "other": {"host": "db1", "port": 6432, "max_connections": 100},
        },
        "pools": {
            "a": {"host": "db1", "mincached": 2},
            "b": {"host": "db1", "port": 5432, "mincached": 2},
            "c": {"host": "db1", "port": 6432, "mincached": 50},
            "d": {"host": "db2", "mincached": 50},
        },
    }
    found = problems(data)
    assert len(found) == 1 and found[0].startswith("servers.main.maxconnections: 3 is below")
    data["servers"]["main"]["max_connections"] = 4
    settings = settings_from_mapping(data)
    assert [settings.server_of(settings.pools[n]) for n in "abcd"] == [
        "main",
        "main",
        "other",
        None,
    ]


def test_an_explicit_server_wins_over_host_matching() -> None:
    settings = settings_from_mapping(
        {
            "servers": {"main": {"host": "db1", "max_connections": 3}, "b": {"max_connections": 5}},
            "pools": {"a": {"host": "db1", "server": "b"}},
        }
    )
    assert settings.server_of(settings.pools["a"]) == "b"


@pytest.mark.parametrize(
    "table, expected",
    [
        ({}, "servers.main.maxconnections: is required"),
        ({"max_connections": 0}, "servers.main.maxconnections: must be >= 1"),
        ({"max_connections": 5, "port": 0}, "servers.main.port: must be a port number"),
        ({"max_connections": 5, "hots": "x"}, "servers.main.hots: unknown key"),
    ],
)
def test_bad_server_tables_are_refused(table: dict[str, Any], expected: str) -> None:
    found = problems({"servers": {"main": table}})
    assert any(p.startswith(expected) for p in found), found


# -- every template and server key from TOML and the environment ----------------------------------


@dataclass(frozen=True)
class Key:
    toml: str  # as written in TOML
    env: str  # as written in an environment variable
    value: Any  # what the settings hold


TEMPLATE_KEYS: dict[str, Key] = {
    "max_pools": Key("7", "7", 7),
    "idle_pool_timeout": Key('"none"', "none", None),
    "tenant_pattern": Key('"[a-z]+"', "[a-z]+", "[a-z]+"),
    "tenant_max_length": Key("12", "12", 12),
    "search_path": Key(
        '["s_{tenant}", "public"]', '["s_{tenant}", "public"]', ("s_{tenant}", "public")
    ),
    # From the environment one variable per override key (see the test below).
    "overrides": Key(
        "{ acme = { maxconnections = 20 } }",
        "ACME__MAXCONNECTIONS=20",
        {"acme": {"maxconnections": 20}},
    ),
}
SERVER_KEYS: dict[str, Key] = {
    "host": Key('"db1"', "db1", "db1"),
    "port": Key("6432", "6432", 6432),
    "maxconnections": Key("90", "90", 90),
    "processes": Key("4", "4", 4),  # issue 15
}


def test_template_key_table_lists_every_template_key() -> None:
    only = set(TenantSettings.model_fields) - set(PoolSettings.model_fields)
    assert only == set(TEMPLATE_KEYS), f"update TEMPLATE_KEYS in {__file__}"
    assert set(ServerSettings.model_fields) - {"name"} == set(SERVER_KEYS)


def test_template_defaults() -> None:
    shop = template()
    assert (shop.max_pools, shop.idle_pool_timeout) == (100, 300.0)
    assert (shop.tenant_pattern, shop.tenant_max_length) == ("[a-z0-9][a-z0-9_]*", 48)
    assert (shop.search_path, shop.overrides, shop.server) == ((), {}, None)


def _write(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


@pytest.mark.parametrize("key", sorted(TEMPLATE_KEYS))
def test_template_key_from_toml(key: str, tmp_path: Path) -> None:
    spec = TEMPLATE_KEYS[key]
    path = _write(tmp_path / "pgpools.toml", f"[tenants.shop]\n{key} = {spec.toml}\n")
    assert getattr(load_settings(path).tenants["shop"], key) == spec.value


@pytest.mark.parametrize("key", sorted(TEMPLATE_KEYS))
def test_template_key_from_env(key: str, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = TEMPLATE_KEYS[key]
    if key == "overrides":
        name, value = spec.env.split("=")
        monkeypatch.setenv(f"PGPOOLS__TENANTS__SHOP__OVERRIDES__{name}", value)
    else:
        monkeypatch.setenv(f"PGPOOLS__TENANTS__SHOP__{key.upper()}", spec.env)
    assert getattr(load_settings().tenants["shop"], key) == spec.value


@pytest.mark.parametrize("key", sorted(SERVER_KEYS))
def test_server_key_from_toml(key: str, tmp_path: Path) -> None:
    spec = SERVER_KEYS[key]
    extra = "" if key == "maxconnections" else "maxconnections = 5\n"
    path = _write(tmp_path / "pgpools.toml", f"[servers.main]\n{key} = {spec.toml}\n{extra}")
    assert getattr(load_settings(path).servers["main"], key) == spec.value


@pytest.mark.parametrize("key", sorted(SERVER_KEYS))
def test_server_key_from_env(key: str, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = SERVER_KEYS[key]
    monkeypatch.setenv(f"PGPOOLS__SERVERS__MAIN__{key.upper()}", spec.env)
    if key != "maxconnections":
        monkeypatch.setenv("PGPOOLS__SERVERS__MAIN__MAX_CONNECTIONS", "5")
    assert getattr(load_settings().servers["main"], key) == spec.value


def test_override_from_env_joins_the_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = _write(tmp_path / "pgpools.toml", "[tenants.shop]\ndbname = 'db_{tenant}'\n")
    monkeypatch.setenv("PGPOOLS__TENANTS__SHOP__OVERRIDES__ACME__MAXCONNECTIONS", "20")
    shop = load_settings(path).tenants["shop"]
    assert shop.for_tenant("acme").maxconnections == 20
    assert shop.for_tenant("acme").dbname == "db_acme"


def test_describe_shows_templates_and_servers_without_secrets() -> None:
    settings = settings_from_mapping(
        {
            "servers": {"main": {"host": "db1", "max_connections": 9}},
            "tenants": {
                "shop": {
                    "host": "db1",
                    "search_path": ["s_{tenant}"],
                    "overrides": {"acme": {"password": "sekrit-pw", "maxconnections": 3}},
                }
            },
        }
    )
    described = settings.describe()
    assert described["servers"]["main"]["maxconnections"] == 9
    shop = described["tenants"]["shop"]
    assert shop["search_path"] == ["s_{tenant}"] and shop["max_pools"] == 100
    assert shop["overrides"]["acme"]["maxconnections"] == 3
    assert "sekrit-pw" not in repr(described) and "sekrit-pw" not in repr(settings)
    assert isinstance(settings, Settings)


# -- the documentation and the example ------------------------------------------------------------

REPO = Path(__file__).resolve().parents[2]


def test_readme_tenant_example_loads(tmp_path: Path) -> None:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Multi-tenant services", 1)[1]
    toml = section.split("```toml\n", 1)[1].split("```", 1)[0]
    settings = load_settings(_write(tmp_path / "pgpools.toml", toml))
    shop = settings.tenants["shop"]
    acme = shop.for_tenant("acme")
    assert (acme.maxconnections, shop.for_tenant("globex").maxconnections) == (20, 5)
    assert (
        acme.user == "shop_acme"
        and acme.setsession[0] == 'SET search_path TO "tenant_acme", "public"'
    )
    assert settings.server_of(shop) == "main"


def test_example_tenants_toml_loads() -> None:
    settings = load_settings(REPO / "examples" / "tenants.toml")
    assert settings.server_of(settings.tenants["shop"]) == "main"
    assert settings.server_of(settings.pools["admin"]) == "main"
    assert settings.tenants["shop"].for_tenant("acme").maxconnections == 4
