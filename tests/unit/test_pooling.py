"""``server_pooling`` and ``statement_timeout`` without a server (issue 15, pgregistry.pooling).

What a transaction pooler breaks is refused by ``PooledPg`` (ValueError) and by the loader
(ConfigError by path), naming the statement and the alternative and never a password; the
statement_timeout startup option is merged into the ``pg.DB`` arguments the way libpq reads
them. Every pool here targets a port where nothing listens and opens no connection.
"""

from __future__ import annotations

import socket
from typing import Any

import pytest
from _helpers import libpq_parse, needs_libpq

from pgregistry import PooledPg, pooling
from pgregistry.config import settings_from_mapping
from pgregistry.conninfo import parse_conninfo
from pgregistry.errors import ConfigError

pytestmark = [pytest.mark.timeout(20), pytest.mark.usefixtures("clean_env")]

SECRET = "s3cret-Pw9"


@pytest.fixture
def dead_dsn() -> str:
    """A conninfo for a local port where nothing listens, with a password."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"host=127.0.0.1 port={port} dbname=test user=root password={SECRET}"


# -- what a transaction pooler breaks ----------------------------------------------------------

# statement -> words the refusal must contain (what it is, and the alternative).
REFUSED = {
    "SET search_path = app": ("SET without LOCAL", "ALTER ROLE ... SET search_path", "SET LOCAL"),
    "set SESSION statement_timeout TO '5s'": ("SET without LOCAL", "SET LOCAL"),
    "SET TIME ZONE 'UTC'": ("ALTER ROLE ... SET timezone",),
    "SET ROLE app_rw": ("role", "connect as that role"),
    "SET SESSION AUTHORIZATION app": ("role", "connect as that role"),
    "RESET ALL": ("session state", "SET LOCAL"),
    "LISTEN jobs": ("needs a session", "server_pooling = 'none'"),
    "PREPARE q (int) AS SELECT $1": ("prepares a statement", "query() and parameters"),
    "CREATE TEMP TABLE scratch (a int)": ("temporary", "ON COMMIT DROP"),
    "create global temporary table scratch (a int)": ("temporary", "ON COMMIT DROP"),
    "CREATE OR REPLACE TEMP VIEW v AS SELECT 1": ("temporary",),
    "SELECT 1 AS a INTO TEMP scratch": ("temporary table", "ordinary table"),
    "SELECT pg_advisory_lock(42)": ("session advisory lock", "pg_advisory_xact_lock()"),
    "SELECT pg_try_advisory_lock_shared(1, 2)": ("pg_try_advisory_xact_lock_shared()",),
    "select pg_catalog.pg_advisory_lock(7)": ("pg_advisory_xact_lock()",),
    "SELECT set_config('app.tenant', 'acme', false)": ("is_local false", "set_config(..., true)"),
    "DECLARE c CURSOR WITH HOLD FOR SELECT 1": ("WITH HOLD", "without HOLD"),
    "SELECT 1; SET work_mem = '64MB'": ("SET without LOCAL",),
    "/* first */ SET search_path = app -- why": ("SET without LOCAL",),
}

ALLOWED = [
    "SET LOCAL search_path = app",
    "SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
    "SET CONSTRAINTS ALL DEFERRED",
    "SELECT 1",
    "SELECT 'SET search_path = app'",
    "-- SET search_path = app\nSELECT 1",
    "/* LISTEN x */ SELECT 1",
    "SELECT $$ pg_advisory_lock(1) $$",
    "SELECT pg_advisory_xact_lock(42)",
    "SELECT set_config('app.tenant', 'acme', true)",
    "CREATE TABLE temp (a int)",
    "INSERT INTO temp VALUES (1)",
    "PREPARE TRANSACTION 'tx1'",
    "DECLARE c CURSOR FOR SELECT 1",
    "UNLISTEN *",
]


@pytest.mark.parametrize("statement", sorted(REFUSED))
def test_session_state_in_setsession_is_refused_naming_statement_and_alternative(
    statement: str,
) -> None:
    (problem,) = pooling.transaction_pooling_problems([statement], "rollback_if_needed")
    assert problem.where() == "setsession[0]"
    assert repr(" ".join(statement.split())) in problem.message
    for words in REFUSED[statement]:
        assert words in problem.message, (statement, problem.message)
    assert "server_pooling = 'transaction'" in problem.message


@pytest.mark.parametrize("statement", ALLOWED)
def test_transaction_scoped_statements_are_allowed(statement: str) -> None:
    assert pooling.transaction_pooling_problems([statement], 0) == []


def test_each_refused_statement_is_reported_at_its_index() -> None:
    problems = pooling.transaction_pooling_problems(
        ["SELECT 1", "LISTEN a", "SET LOCAL x = 1", "SET y = 2"], 0
    )
    assert [p.where() for p in problems] == ["setsession[1]", "setsession[3]"]


def test_a_callable_setsession_cannot_be_looked_into_and_is_taken() -> None:
    assert pooling.transaction_pooling_problems(lambda db: db.query("SET a = 1"), 0) == []


@pytest.mark.parametrize("reset", ["discard", "DISCARD", " discard "])
def test_reset_discard_is_refused(reset: str) -> None:
    (problem,) = pooling.transaction_pooling_problems((), reset)
    assert problem.where() == "reset"
    assert "DISCARD ALL" in problem.message and "'rollback_if_needed'" in problem.message


@pytest.mark.parametrize("reset", [None, 0, 1, 2, "rollback", "reconnect"])
def test_other_reset_policies_are_allowed(reset: object) -> None:
    assert pooling.transaction_pooling_problems((), reset) == []


def test_only_transaction_pooling_refuses() -> None:
    for mode in ("none", "session"):
        pooling.check_server_pooling(mode, ["SET a = 1", "LISTEN x"], "discard", "-c a=b")
    with pytest.raises(ValueError, match=r"^setsession\[0\]: 'SET a = 1' sets session state"):
        pooling.check_server_pooling("transaction", ["SET a = 1"], 0)


def test_pooledpg_refuses_at_construction_naming_statement_and_alternative(
    dead_dsn: str,
) -> None:
    with pytest.raises(ValueError) as caught:
        PooledPg(
            setsession=["SET search_path = app", "LISTEN jobs"],
            reset="discard",
            server_pooling="transaction",
            dbname=dead_dsn,
        )
    message = str(caught.value)
    assert message.startswith("setsession[0]: 'SET search_path = app' sets session state")
    assert "ALTER ROLE ... SET search_path" in message
    assert "setsession[1]: 'LISTEN jobs' needs a session" in message
    assert "reset: 'discard' runs DISCARD ALL" in message
    assert SECRET not in message


def test_a_refused_statement_holding_a_password_is_shown_masked(dead_dsn: str) -> None:
    statements = [f"SET app.remote = 'host=r password={SECRET}'", f"LISTEN x -- password={SECRET}"]
    with pytest.raises(ValueError) as caught:
        PooledPg(setsession=statements, server_pooling="transaction", dbname=dead_dsn)
    message = str(caught.value)
    assert "setsession[0]: \"SET app.remote = 'host=r password=********" in message
    assert "setsession[1]" in message and SECRET not in message


@pytest.mark.parametrize(
    "target",
    [
        {"dbname": "host=127.0.0.1 options='-c search_path=app' password=" + SECRET},
        {"dbname": f"postgresql://root:{SECRET}@127.0.0.1/test?options=-c%20search_path%3Dapp"},
        {"dbname": "test", "host": "127.0.0.1", "opt": "-c search_path=app", "passwd": SECRET},
    ],
    ids=["conninfo", "uri", "opt"],
)
def test_pooledpg_refuses_an_options_startup_parameter(target: dict[str, Any]) -> None:
    with pytest.raises(ValueError) as caught:
        PooledPg(server_pooling="transaction", **target)
    message = str(caught.value)
    assert "options startup parameter (sets search_path)" in message
    assert "unsupported startup parameter: options" in message and "ALTER ROLE" in message
    assert SECRET not in message


def test_pgoptions_from_the_environment_is_refused_by_name(
    dead_dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PGOPTIONS", "-c work_mem=64MB")
    with pytest.raises(ValueError, match=r"^PGOPTIONS: the options startup parameter"):
        PooledPg(server_pooling="transaction", dbname=dead_dsn)


def test_pooledpg_keeps_its_settings_as_attributes(dead_dsn: str) -> None:
    with PooledPg(server_pooling="transaction", statement_timeout=2, dbname=dead_dsn) as pool:
        assert (pool.server_pooling, pool.statement_timeout) == ("transaction", 2.0)
    with PooledPg(dbname=dead_dsn) as pool:
        assert (pool.server_pooling, pool.statement_timeout) == ("none", None)


@pytest.mark.parametrize("value", ["Transaction", "pgbouncer", None, 1, ""])
def test_bad_server_pooling_is_refused(value: object, dead_dsn: str) -> None:
    with pytest.raises(ValueError, match="server_pooling: must be 'none', 'session' or"):
        PooledPg(server_pooling=value, dbname=dead_dsn)  # type: ignore[arg-type]


@pytest.mark.parametrize("value", [-1, -0.001, True, "5", float("nan"), float("inf"), 3e6])
def test_bad_statement_timeout_is_refused(value: object, dead_dsn: str) -> None:
    with pytest.raises(ValueError, match=r"^statement_timeout: must be"):
        PooledPg(statement_timeout=value, dbname=dead_dsn)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("seconds", "ms"), [(0, 0), (0.0001, 1), (0.25, 250), (2.5, 2500), (2147483.647, 2147483647)]
)
def test_statement_timeout_in_milliseconds_never_rounds_to_off(seconds: float, ms: int) -> None:
    assert pooling.statement_timeout_ms(seconds) == ms


def test_statement_timeout_set_twice_is_refused(dead_dsn: str) -> None:
    with pytest.raises(ValueError, match=r"^opt: sets statement_timeout, as the .* keep one"):
        PooledPg(statement_timeout=1, opt="-c statement_timeout=5s", dbname="test")
    with pytest.raises(ValueError, match=r"^setsession\[1\]: 'SET statement_timeout = 9'"):
        PooledPg(setsession=["SELECT 1", "SET statement_timeout = 9"], statement_timeout=1,
                 dbname=dead_dsn)  # fmt: skip
    # Without the key, either alone is the user's business.
    PooledPg(opt="-c statement_timeout=5s", dbname="test").close()


# -- where statement_timeout goes -------------------------------------------------------------


def test_begin_statement_only_under_transaction_pooling() -> None:
    assert pooling.begin_statement("transaction", 2.5) == "SET LOCAL statement_timeout = 2500"
    assert pooling.begin_statement("transaction", 0) == "SET LOCAL statement_timeout = 0"
    assert pooling.begin_statement("transaction", None) is None
    assert pooling.begin_statement("none", 2.5) is None
    assert pooling.begin_statement("session", 2.5) is None


def test_startup_option_only_on_direct_connections() -> None:
    assert pooling.startup_option(1.5, "none") == "-c statement_timeout=1500ms"
    assert pooling.startup_option(None, "none") is None
    assert pooling.startup_option(1.5, "session") is None
    assert pooling.startup_option(1.5, "transaction") is None


def _startup(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[tuple[Any, ...], Any]:
    return pooling.connect_args(args, kwargs, statement_timeout=2, server_pooling="none")


def test_startup_option_goes_into_opt_when_dbname_is_a_name() -> None:
    assert _startup((), {"dbname": "app"}) == (
        (),
        {"dbname": "app", "opt": "-c statement_timeout=2000ms"},
    )
    assert _startup((), {"dbname": "app", "opt": "-c search_path=a"})[1]["opt"] == (
        "-c search_path=a -c statement_timeout=2000ms"
    )
    args, kwargs = _startup(("app", "h", 5432, "-c search_path=a", "u"), {})
    assert args == ("app", "h", 5432, "-c search_path=a -c statement_timeout=2000ms", "u")
    assert kwargs == {}


def test_startup_option_goes_into_a_conninfo_dbname_which_libpq_prefers_to_opt() -> None:
    _, kwargs = _startup((), {"dbname": "host=h dbname=app options='-c search_path=a'", "opt": "x"})
    assert parse_conninfo(kwargs["dbname"]) == {
        "host": "h",
        "dbname": "app",
        "options": "-c search_path=a -c statement_timeout=2000ms",
    }
    # A conninfo without options: the opt it would have let through is kept in the merge.
    _, kwargs = _startup((), {"dbname": "host=h dbname=app", "opt": "-c search_path=b"})
    assert parse_conninfo(kwargs["dbname"])["options"] == (
        "-c search_path=b -c statement_timeout=2000ms"
    )


def test_pgoptions_is_kept_in_the_merge(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGOPTIONS", "-c work_mem=64MB")
    assert _startup((), {"dbname": "app"})[1]["opt"] == (
        "-c work_mem=64MB -c statement_timeout=2000ms"
    )


@needs_libpq
def test_a_uri_is_rewritten_to_what_libpq_reads_from_it_plus_the_option() -> None:
    uri = f"postgresql://u:{SECRET}@h1:5433,h2/app?sslmode=prefer&options=-c%20search_path%3Da"
    (rebuilt,), _ = _startup((uri,), {})
    expected = libpq_parse(uri)
    assert expected is not None
    expected["options"] = "-c search_path=a -c statement_timeout=2000ms"
    assert libpq_parse(rebuilt) == expected


def test_nothing_changes_behind_a_pooler_or_without_a_timeout() -> None:
    kwargs: dict[str, Any] = {"dbname": "host=h dbname=app", "opt": "-c a=b"}
    cases: list[tuple[pooling.ServerPooling, float | None]] = [
        ("session", 2.0),
        ("transaction", 2.0),
        ("none", None),
    ]
    for mode, timeout in cases:
        got = pooling.connect_args((), kwargs, statement_timeout=timeout, server_pooling=mode)
        assert got == ((), kwargs)


def test_session_pooling_sets_the_timeout_first_after_every_open() -> None:
    configured = pooling.configure("session", 0.25, ("SET a = 1",), 0, (), {"dbname": "app"})
    assert configured.setsession == ("SET statement_timeout = 250", "SET a = 1")
    assert configured.kwargs == {"dbname": "app"}  # no startup option: PgBouncer refuses it
    ran: list[str] = []

    class DB:
        def query(self, sql: str) -> None:
            ran.append(sql)

    callable_one = pooling.configure("session", 1, lambda db: db.query("SELECT 1"), 0, (), {})
    assert callable(callable_one.setsession)
    callable_one.setsession(DB())  # a stand-in for pg.DB: only query() is called
    assert ran == ["SET statement_timeout = 1000", "SELECT 1"]


def test_statement_timeout_via_says_which_applies() -> None:
    assert pooling.statement_timeout_via("none", None).startswith("not set")
    assert "options=-c statement_timeout=5000ms" in pooling.statement_timeout_via("none", 5)
    assert "SET statement_timeout = 5000" in pooling.statement_timeout_via("session", 5)
    said = pooling.statement_timeout_via("transaction", 5)
    assert "SET LOCAL statement_timeout = 5000" in said and "ALTER ROLE" in said


# -- the configuration --------------------------------------------------------------------------


def _problems(mapping: dict[str, Any]) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        settings_from_mapping(mapping, source="pgpools.toml")
    return caught.value.problems


def test_config_refuses_by_pool_and_field_without_the_password() -> None:
    problems = _problems(
        {
            "pools": {
                "bounced": {
                    "host": "h",
                    "password": SECRET,
                    "server_pooling": "transaction",
                    "setsession": ["SELECT 1", "SET search_path = app"],
                    "reset": "discard",
                    "options": "-c search_path=app",
                }
            }
        }
    )
    assert [p.split(":", 1)[0] for p in problems] == [
        "pools.bounced.setsession",
        "pools.bounced.reset",
        "pools.bounced.options",
    ]
    assert "'SET search_path = app' sets session state" in problems[0]
    assert all(p.endswith("[pgpools.toml]") for p in problems)
    assert not any(SECRET in p for p in problems)


def test_config_refuses_options_inside_a_conninfo() -> None:
    (problem,) = _problems(
        {
            "pools": {
                "bounced": {
                    "conninfo": f"host=h password={SECRET} options='-c search_path=app'",
                    "server_pooling": "transaction",
                }
            }
        }
    )
    assert problem.startswith("pools.bounced.options: the options startup parameter")
    assert SECRET not in problem


def test_server_pooling_from_defaults_applies_to_each_pool() -> None:
    problems = _problems(
        {
            "defaults": {"server_pooling": "transaction", "host": "h"},
            "pools": {"a": {"setsession": "LISTEN x"}, "b": {}},
        }
    )
    assert [p.split(":", 1)[0] for p in problems] == ["pools.a.setsession"]


def test_a_pool_may_opt_out_of_the_defaults_server_pooling() -> None:
    settings = settings_from_mapping(
        {
            "defaults": {"server_pooling": "transaction", "host": "h"},
            "pools": {"direct": {"server_pooling": "none", "setsession": "LISTEN x"}},
        }
    )
    assert settings.pools["direct"].server_pooling == "none"


def test_a_template_search_path_is_refused_under_transaction_pooling() -> None:
    (problem,) = _problems(
        {
            "tenants": {
                "shop": {
                    "dbname": "shop",
                    "search_path": ["{tenant}"],
                    "server_pooling": "transaction",
                }
            }
        }
    )
    assert problem.startswith("tenants.shop.search_path: becomes SET search_path TO")
    assert "ALTER ROLE ... SET search_path" in problem


def test_a_tenant_override_is_checked_too() -> None:
    (problem,) = _problems(
        {
            "tenants": {
                "shop": {
                    "dbname": "shop_{tenant}",
                    "server_pooling": "transaction",
                    "overrides": {"acme": {"setsession": ["SET work_mem = '1GB'"]}},
                }
            }
        }
    )
    assert problem.startswith(
        "tenants.shop.overrides.acme.setsession: \"SET work_mem = '1GB'\" sets session state"
    )


@pytest.mark.parametrize(
    ("value", "said"),
    [
        ("pgbouncer", "must be one of 'none', 'session' or 'transaction' (got 'pgbouncer')"),
        (True, "must be one of"),
    ],
)
def test_config_refuses_a_bad_server_pooling(value: object, said: str) -> None:
    (problem,) = _problems({"pools": {"a": {"host": "h", "server_pooling": value}}})
    assert problem.startswith("pools.a.server_pooling: ") and said in problem


@pytest.mark.parametrize(
    ("value", "said"),
    [
        (-1, "must be >= 0 (got -1)"),
        (3e6, "must be <= 2147483.647"),
        (True, "must be a number, not true/false"),
        ("soon", "must be a number"),
    ],
)
def test_config_refuses_a_bad_statement_timeout(value: object, said: str) -> None:
    (problem,) = _problems({"pools": {"a": {"host": "h", "statement_timeout": value}}})
    assert problem.startswith("pools.a.statement_timeout: ") and said in problem


def test_config_statement_timeout_none_word_and_zero() -> None:
    pools = settings_from_mapping(
        {"pools": {"a": {"statement_timeout": "none"}, "b": {"statement_timeout": 0}}}
    ).pools
    assert (pools["a"].statement_timeout, pools["b"].statement_timeout) == (None, 0.0)


def test_config_refuses_statement_timeout_set_twice() -> None:
    problems = _problems(
        {
            "pools": {
                "a": {
                    "host": "h",
                    "statement_timeout": 5,
                    "options": "-c statement_timeout=1s",
                    "setsession": ["SET statement_timeout TO 100"],
                }
            }
        }
    )
    assert [p.split(":", 1)[0] for p in problems] == ["pools.a.options", "pools.a.setsession"]
    assert all("keep one" in p for p in problems)


def test_configured_pool_gets_both_keywords(dead_dsn: str) -> None:
    pool_settings = settings_from_mapping(
        {
            "pools": {
                "a": {"conninfo": dead_dsn, "server_pooling": "session", "statement_timeout": 3}
            }
        }
    ).pools["a"]
    kwargs = pool_settings.pool_kwargs()
    assert (kwargs["server_pooling"], kwargs["statement_timeout"]) == ("session", 3.0)
    with PooledPg(**kwargs) as pool:
        assert (pool.server_pooling, pool.statement_timeout) == ("session", 3.0)
