"""Configuration: TOML file, environment, secret files, precedence and validation.

Real files in ``tmp_path``; the environment through ``monkeypatch``. Every test runs in an
empty working directory with no ``PGPOOLS*`` variable set, so the repository's own
``pgpools.toml`` and the developer's environment never leak in.
"""

from __future__ import annotations

import inspect
import json
import re
import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr, ValidationError

from pgregistry.config import (
    POOL_OPTION_KEYS,
    TARGET_KEYS,
    PoolSettings,
    Settings,
    check_pool_name,
    load_settings,
    settings_from_mapping,
)
from pgregistry.conninfo import LIBPQ_KEYWORDS, MASK, parse_conninfo
from pgregistry.errors import ConfigError
from pgregistry.policies import PingPolicy, ResetPolicy
from pgregistry.pool import PooledPg

REPO = Path(__file__).resolve().parents[2]


pytestmark = pytest.mark.usefixtures("clean_env")  # tests/conftest.py


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


def plain(value: Any) -> Any:
    return value.get_secret_value() if isinstance(value, SecretStr) else value


def problems_of(exc: pytest.ExceptionInfo[ConfigError]) -> list[str]:
    return exc.value.problems


# -- the table of every key ----------------------------------------------------------------------


@dataclass(frozen=True)
class Key:
    toml: str  # the value as written in TOML
    env: str  # the value as written in an environment variable
    value: Any  # what PoolSettings holds (SecretStr compared by its secret)
    libpq: str | None = None  # what the conninfo string passed to pg.DB says, for libpq keys


KEY_TABLE: dict[str, Key] = {
    # switch
    "enabled": Key("false", "false", False),
    # sizing
    "mincached": Key("2", "2", 2),
    "maxcached": Key("7", "7", 7),
    "maxconnections": Key("9", "9", 9),
    # behaviour
    "blocking": Key("false", "false", False),
    "timeout": Key('"none"', "none", None),
    "maxusage": Key("100", "100", 100),
    "setsession": Key(
        '["SET a = 1", "SET b = 2"]', '["SET a = 1", "SET b = 2"]', ("SET a = 1", "SET b = 2")
    ),
    "reset": Key('"reconnect"', "reconnect", ResetPolicy.RECONNECT),
    "retry_after_reopen": Key("false", "false", False),
    "reconnect_timeout": Key("2.5", "2.5", 2.5),
    # health
    "max_lifetime": Key("60", "60", 60.0),
    "max_idle": Key('"none"', "none", None),
    "ping": Key('"always"', "always", PingPolicy.ALWAYS),
    "ping_after": Key("5", "5", 5.0),
    "leak_threshold": Key("12.5", "12.5", 12.5),
    "server": Key('"main"', "main", "main"),  # needs [servers.main]: see _SERVER_TABLE
    # reads (issue 14)
    "read_pool": Key('"standby"', "standby", "standby"),  # needs [pools.standby]: the same
    "read_fallback": Key("false", "false", False),
    "max_replica_lag": Key("2.5", "2.5", 2.5),
    # server (issue 15)
    "server_pooling": Key('"transaction"', "transaction", "transaction"),
    "statement_timeout": Key("2.5", "2.5", 2.5),
    # connection target
    "host": Key('"db.example.com"', "db.example.com", "db.example.com", "db.example.com"),
    "hostaddr": Key('"10.0.0.1"', "10.0.0.1", "10.0.0.1", "10.0.0.1"),
    "port": Key("6432", "6432", 6432, "6432"),
    "dbname": Key('"billing"', "billing", "billing", "billing"),
    "user": Key('"app"', "app", "app", "app"),
    "password": Key('"p@ss w\'rd\\\\"', "p@ss w'rd\\", "p@ss w'rd\\", "p@ss w'rd\\"),
    "password_file": Key('"/dev/null"', "/dev/null", "/dev/null"),  # not a libpq keyword
    "options": Key(
        '"-c search_path=app"', "-c search_path=app", "-c search_path=app", "-c search_path=app"
    ),
    "service": Key('"billing_svc"', "billing_svc", "billing_svc", "billing_svc"),
    "conninfo": Key('"host=h dbname=d"', "host=h dbname=d", "host=h dbname=d"),
    # other libpq keywords
    "passfile": Key('"/etc/pgpass"', "/etc/pgpass", "/etc/pgpass", "/etc/pgpass"),
    "channel_binding": Key('"require"', "require", "require", "require"),
    "connect_timeout": Key("10", "10", 10, "10"),
    "client_encoding": Key('"UTF8"', "UTF8", "UTF8", "UTF8"),
    "application_name": Key('"my app"', "my app", "my app", "my app"),
    "fallback_application_name": Key('"fb"', "fb", "fb", "fb"),
    "keepalives": Key("true", "1", True, "1"),
    "keepalives_idle": Key("30", "30", 30, "30"),
    "keepalives_interval": Key("5", "5", 5, "5"),
    "keepalives_count": Key("3", "3", 3, "3"),
    "tcp_user_timeout": Key("9000", "9000", 9000, "9000"),
    "sslmode": Key('"verify-full"', "verify-full", "verify-full", "verify-full"),
    "sslnegotiation": Key('"direct"', "direct", "direct", "direct"),
    "sslcompression": Key("false", "0", False, "0"),
    "sslcert": Key('"/c.crt"', "/c.crt", "/c.crt", "/c.crt"),
    "sslkey": Key('"/c.key"', "/c.key", "/c.key", "/c.key"),
    "sslkeylogfile": Key('"/tmp/keys"', "/tmp/keys", "/tmp/keys", "/tmp/keys"),
    "sslcertmode": Key('"require"', "require", "require", "require"),
    "sslpassword": Key('"key pw"', "key pw", "key pw", "key pw"),
    "sslrootcert": Key('"system"', "system", "system", "system"),
    "sslcrl": Key('"/crl.pem"', "/crl.pem", "/crl.pem", "/crl.pem"),
    "sslcrldir": Key('"/crls"', "/crls", "/crls", "/crls"),
    "sslsni": Key("true", "true", True, "1"),
    "requirepeer": Key('"postgres"', "postgres", "postgres", "postgres"),
    "require_auth": Key('"scram-sha-256"', "scram-sha-256", "scram-sha-256", "scram-sha-256"),
    "min_protocol_version": Key('"3.0"', "3.0", "3.0", "3.0"),
    "max_protocol_version": Key('"latest"', "latest", "latest", "latest"),
    "ssl_min_protocol_version": Key('"TLSv1.2"', "TLSv1.2", "TLSv1.2", "TLSv1.2"),
    "ssl_max_protocol_version": Key('"TLSv1.3"', "TLSv1.3", "TLSv1.3", "TLSv1.3"),
    "gssencmode": Key('"disable"', "disable", "disable", "disable"),
    "krbsrvname": Key('"postgres"', "postgres", "postgres", "postgres"),
    "gsslib": Key('"gssapi"', "gssapi", "gssapi", "gssapi"),
    "gssdelegation": Key("false", "false", False, "0"),
    "replication": Key('"database"', "database", "database", "database"),
    "target_session_attrs": Key('"read-write"', "read-write", "read-write", "read-write"),
    "load_balance_hosts": Key('"random"', "random", "random", "random"),
    "scram_client_key": Key('"ck"', "ck", "ck", "ck"),
    "scram_server_key": Key('"sk"', "sk", "sk", "sk"),
    "oauth_issuer": Key('"https://issuer"', "https://issuer", "https://issuer", "https://issuer"),
    "oauth_client_id": Key('"cid"', "cid", "cid", "cid"),
    "oauth_client_secret": Key('"csecret"', "csecret", "csecret", "csecret"),
    "oauth_scope": Key('"openid"', "openid", "openid", "openid"),
}


def test_key_table_lists_every_key() -> None:
    fields = set(PoolSettings.model_fields) - {"name"}
    missing = sorted(fields - set(KEY_TABLE))
    assert not missing, f"add these keys to KEY_TABLE in {__file__}: {missing}"
    stale = sorted(set(KEY_TABLE) - fields)
    assert not stale, f"remove these keys from KEY_TABLE (no such field): {stale}"


def test_every_libpq_keyword_is_a_key() -> None:
    missing = sorted(set(LIBPQ_KEYWORDS) - set(PoolSettings.model_fields))
    assert not missing, f"libpq keywords without a PoolSettings field: {missing}"


def _the_pool(settings: Settings, key: str) -> PoolSettings | None:
    if key == "enabled":
        assert "p" in settings.disabled  # (and [pools.standby] too, under [defaults])
        return None
    return settings.pools["p"]


def _check_key(pool: PoolSettings | None, key: str, spec: Key) -> None:
    if pool is None:
        return
    assert plain(getattr(pool, key)) == spec.value
    if spec.libpq is not None:
        assert pool.libpq_params()[key] == spec.libpq
        assert parse_conninfo(pool.pool_kwargs()["dbname"])[key] == spec.libpq


# The server a pool's "server" key names must be declared.
_SERVER_TABLE = "[servers.main]\nmax_connections = 10\n[pools.standby]\n"


@pytest.mark.parametrize("key", sorted(KEY_TABLE))
def test_key_from_toml(key: str, tmp_path: Path) -> None:
    spec = KEY_TABLE[key]
    path = write(tmp_path / "pgpools.toml", f"[pools.p]\n{key} = {spec.toml}\n{_SERVER_TABLE}")
    settings = load_settings(path)
    _check_key(_the_pool(settings, key), key, spec)


@pytest.mark.parametrize("key", sorted(KEY_TABLE))
def test_key_from_env(key: str, monkeypatch: pytest.MonkeyPatch) -> None:
    spec = KEY_TABLE[key]
    monkeypatch.setenv(f"PGPOOLS__POOLS__P__{key.upper()}", spec.env)
    monkeypatch.setenv("PGPOOLS__SERVERS__MAIN__MAX_CONNECTIONS", "10")
    monkeypatch.setenv("PGPOOLS__POOLS__STANDBY__DBNAME", "standby")  # what read_pool names
    settings = load_settings()
    _check_key(_the_pool(settings, key), key, spec)


@pytest.mark.parametrize("key", sorted(KEY_TABLE))
def test_key_in_defaults(key: str, tmp_path: Path) -> None:
    spec = KEY_TABLE[key]
    text = f"[defaults]\n{key} = {spec.toml}\n[pools.p]\n{_SERVER_TABLE}"
    path = write(tmp_path / "pgpools.toml", text)
    _check_key(_the_pool(load_settings(path), key), key, spec)


# -- files ----------------------------------------------------------------------------------


def test_default_file_in_working_directory_is_read(clean_env: Path) -> None:
    write(clean_env / "pgpools.toml", "[pools.app]\ndbname = 'a'\n")
    settings = load_settings()
    assert settings.pool_names() == ["app"]
    assert settings.source == str(clean_env / "pgpools.toml")


def test_no_default_file_means_environment_only(monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_settings().pools == {}
    monkeypatch.setenv("PGPOOLS__POOLS__BILLING__DBNAME", "billing")
    settings = load_settings()
    assert settings.pools["billing"].dbname == "billing"
    assert settings.source == "environment"


def test_missing_explicit_file_names_it(tmp_path: Path) -> None:
    missing = tmp_path / "nope.toml"
    with pytest.raises(ConfigError) as exc:
        load_settings(missing)
    assert str(missing) in str(exc.value)
    assert "does not exist" in str(exc.value)
    assert len(exc.value.problems) == 1


def test_missing_file_named_by_pgpools_config_names_it_and_the_variable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PGPOOLS_CONFIG", str(tmp_path / "gone.toml"))
    with pytest.raises(ConfigError, match=r"gone\.toml \(named by PGPOOLS_CONFIG\) does not exist"):
        load_settings()


def test_pgpools_config_names_the_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = write(tmp_path / "conf" / "pools.toml", "[pools.x]\n")
    write(Path("pgpools.toml"), "[pools.y]\n")
    monkeypatch.setenv("PGPOOLS_CONFIG", str(path))
    assert load_settings().pool_names() == ["x"]


def test_explicit_path_wins_over_pgpools_config(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("PGPOOLS_CONFIG", str(write(tmp_path / "a.toml", "[pools.a]\n")))
    assert load_settings(write(tmp_path / "b.toml", "[pools.b]\n")).pool_names() == ["b"]


def test_env_argument_replaces_os_environ(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGPOOLS__POOLS__FROM_OS__DBNAME", "x")
    settings = load_settings(env={"PGPOOLS__POOLS__FROM_ARG__DBNAME": "y"})
    assert settings.pool_names() == ["from_arg"]


def test_invalid_toml_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path / "broken.toml", "[pools.x]\nhost = \n")
    with pytest.raises(ConfigError) as exc:
        load_settings(path)
    assert str(path) in str(exc.value) and "not valid TOML" in str(exc.value)


def test_directory_instead_of_file_is_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="is not a file"):
        load_settings(tmp_path)


def test_example_pgpools_toml_loads() -> None:
    settings = load_settings(REPO / "pgpools.toml", env={})
    assert settings.pool_names() == ["app", "reports", "audit"]
    assert settings.default == "app"
    for name in settings.pool_names():
        params = settings.pools[name].libpq_params()
        assert params["host"] == "127.0.0.1" and params["port"] == "5432"
        assert params["user"] == "root" and params["dbname"] == f"pgregistry_{name}"
        assert "password" not in params


def test_documented_example_loads() -> None:
    # The first TOML block of README's configuration section must load as documented.
    text = (REPO / "README.md").read_text(encoding="utf-8")
    block = text.split("## Configuration", 1)[1].split("```toml", 1)[1].split("```", 1)[0]
    settings = settings_from_mapping(tomllib.loads(block))
    assert settings.pool_names() == ["app", "reports", "audit"]
    assert settings.default == "app"


# -- precedence ---------------------------------------------------------------------------------


def test_precedence_env_over_toml(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = write(tmp_path / "p.toml", "[pools.billing]\nhost = 'db'\nmaxcached = 2\n")
    monkeypatch.setenv("PGPOOLS__POOLS__BILLING__MAXCACHED", "8")
    pool = load_settings(path).pools["billing"]
    assert pool.maxcached == 8
    assert pool.host == "db"  # tables merge key by key


def test_precedence_secret_file_over_toml(tmp_path: Path) -> None:
    path = write(tmp_path / "p.toml", "[pools.billing]\npassword = 'from-file'\n")
    write(tmp_path / "secrets" / "pools__billing__password", "from-secret\n")
    pool = load_settings(path, secrets_dir=tmp_path / "secrets").pools["billing"]
    assert plain(pool.password) == "from-secret"  # trailing newline stripped


def test_precedence_env_over_secret_file(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = write(tmp_path / "p.toml", "[pools.billing]\n")
    write(tmp_path / "secrets" / "pools__billing__password", "from-secret")
    monkeypatch.setenv("PGPOOLS_SECRETS_DIR", str(tmp_path / "secrets"))
    monkeypatch.setenv("PGPOOLS__POOLS__BILLING__PASSWORD", "from-env")
    assert plain(load_settings(path).pools["billing"].password) == "from-env"


def test_pool_key_wins_over_defaults(tmp_path: Path) -> None:
    path = write(
        tmp_path / "p.toml",
        "[defaults]\nmaxcached = 3\nhost = 'shared'\n[pools.a]\nmaxcached = 5\n[pools.b]\n",
    )
    settings = load_settings(path)
    assert settings.pools["a"].maxcached == 5
    assert settings.pools["b"].maxcached == 3
    assert settings.pools["a"].host == settings.pools["b"].host == "shared"


def test_pool_key_wins_over_defaults_from_env(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    path = write(tmp_path / "p.toml", "[pools.a]\nmaxcached = 5\n[pools.b]\n")
    monkeypatch.setenv("PGPOOLS__DEFAULTS__MAXCACHED", "4")
    settings = load_settings(path)
    assert settings.pools["a"].maxcached == 5
    assert settings.pools["b"].maxcached == 4


def test_pool_conninfo_replaces_target_keys_of_defaults(tmp_path: Path) -> None:
    path = write(
        tmp_path / "p.toml",
        "[defaults]\nhost = 'h'\nuser = 'u'\nsslmode = 'prefer'\nconnect_timeout = 3\n"
        "[pools.a]\nconninfo = 'postgresql://other@db/x?sslmode=require'\n",
    )
    params = load_settings(path).pools["a"].libpq_params()
    assert params == {
        "user": "other",
        "host": "db",
        "dbname": "x",
        "sslmode": "require",  # the pool's conninfo wins over [defaults]
        "connect_timeout": "3",  # libpq keywords the conninfo does not set still apply
    }


def test_pool_target_keys_replace_conninfo_of_defaults(tmp_path: Path) -> None:
    path = write(
        tmp_path / "p.toml",
        "[defaults]\nconninfo = 'host=h dbname=d'\n[pools.a]\n[pools.b]\nhost = 'other'\n",
    )
    settings = load_settings(path)
    assert settings.pools["a"].libpq_params() == {"host": "h", "dbname": "d"}
    assert settings.pools["b"].conninfo is None
    assert settings.pools["b"].libpq_params() == {"host": "other"}


def test_precedence_env_conninfo_replaces_file_target_keys(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    path = write(
        tmp_path / "p.toml",
        "[pools.a]\nhost = 'dev'\ndbname = 'dev'\nsslmode = 'disable'\nmaxcached = 2\n",
    )
    monkeypatch.setenv("PGPOOLS__POOLS__A__CONNINFO", "postgresql://prod/app?sslmode=require")
    pool = load_settings(path).pools["a"]
    assert pool.libpq_params() == {"host": "prod", "dbname": "app", "sslmode": "require"}
    assert pool.maxcached == 2


def test_precedence_env_target_key_replaces_file_conninfo(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    path = write(tmp_path / "p.toml", "[pools.a]\nconninfo = 'host=dev dbname=dev'\n")
    monkeypatch.setenv("PGPOOLS__POOLS__A__HOST", "other")
    pool = load_settings(path).pools["a"]
    assert pool.conninfo is None and pool.libpq_params() == {"host": "other"}


def test_password_from_secret_file_joins_a_conninfo(tmp_path: Path) -> None:
    path = write(tmp_path / "p.toml", "[pools.a]\nconninfo = 'postgresql://app@db/app'\n")
    write(tmp_path / "s" / "pools__a__password", "pw from file")
    pool = load_settings(path, secrets_dir=tmp_path / "s").pools["a"]
    assert parse_conninfo(pool.pool_kwargs()["dbname"]) == {
        "user": "app",
        "host": "db",
        "dbname": "app",
        "password": "pw from file",
    }


def test_password_in_conninfo_and_as_key_is_refused() -> None:
    with pytest.raises(ConfigError, match=re.escape("pools.a.password: is set both here and in")):
        settings_from_mapping({"pools": {"a": {"conninfo": "host=h password=x", "password": "y"}}})


def test_conninfo_password_replaces_a_password_of_defaults() -> None:
    pool = settings_from_mapping(
        {"defaults": {"password": "d"}, "pools": {"a": {"conninfo": "host=h password=p"}}}
    ).pools["a"]
    assert pool.password is None and pool.libpq_params()["password"] == "p"


def test_aliases_passwd_and_opt(tmp_path: Path) -> None:
    path = write(tmp_path / "p.toml", "[pools.a]\npasswd = 'pw'\nopt = '-c x=1'\n")
    pool = load_settings(path).pools["a"]
    assert plain(pool.password) == "pw" and pool.options == "-c x=1"


def test_pool_alias_overrides_defaults_canonical_key(tmp_path: Path) -> None:
    path = write(tmp_path / "p.toml", "[defaults]\npassword = 'd'\n[pools.a]\npasswd = 'p'\n")
    assert plain(load_settings(path).pools["a"].password) == "p"


def test_reset_accepts_ints_and_names(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = write(
        tmp_path / "p.toml",
        "[pools.a]\nreset = 1\n[pools.b]\nreset = 'rollback'\n[pools.c]\n[pools.d]\n",
    )
    monkeypatch.setenv("PGPOOLS__POOLS__C__RESET", "2")
    monkeypatch.setenv("PGPOOLS__POOLS__D__RESET", "discard")
    pools = load_settings(path).pools
    assert pools["a"].reset is pools["b"].reset is ResetPolicy.ROLLBACK
    assert pools["c"].reset is ResetPolicy.RECONNECT
    assert pools["d"].reset is ResetPolicy.DISCARD


def test_setsession_single_string_is_one_statement(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGPOOLS__POOLS__A__SETSESSION", "SET search_path TO app")
    assert load_settings().pools["a"].setsession == ("SET search_path TO app",)


def test_empty_env_variable_means_unset(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGPOOLS__POOLS__A__DBNAME", "a")
    monkeypatch.setenv("PGPOOLS__POOLS__A__PASSWORD", "")
    assert load_settings().pools["a"].password is None


def test_whole_pool_as_json_variable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGPOOLS__POOLS__A", '{"maxcached": 4, "setsession": ["SET x = 1"]}')
    pool = load_settings().pools["a"]
    assert pool.maxcached == 4 and pool.setsession == ("SET x = 1",)


# -- enabled, default --------------------------------------------------------------------------


def test_env_switches_a_file_pool_off(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = write(tmp_path / "p.toml", "[pools.old]\ndbname = 'x'\n[pools.new]\n")
    monkeypatch.setenv("PGPOOLS__POOLS__OLD__ENABLED", "false")
    settings = load_settings(path)
    assert settings.pool_names() == ["new"]
    assert settings.disabled == ("old",)


def test_pool_declared_from_env_alone(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = write(tmp_path / "p.toml", "[pools.a]\n")
    monkeypatch.setenv("PGPOOLS__POOLS__EXTRA__HOST", "h")
    assert load_settings(path).pool_names() == ["a", "extra"]


def test_default_key_names_the_default_pool(tmp_path: Path) -> None:
    path = write(tmp_path / "p.toml", "default = 'b'\n[pools.a]\n[pools.b]\n")
    assert load_settings(path).default == "b"


def test_pool_named_default_is_the_default(tmp_path: Path) -> None:
    assert load_settings(write(tmp_path / "p.toml", "[pools.default]\n")).default == "default"


def test_no_default_without_key_or_pool_named_default(tmp_path: Path) -> None:
    assert load_settings(write(tmp_path / "p.toml", "[pools.a]\n")).default is None


def test_default_from_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = write(tmp_path / "p.toml", "default = 'a'\n[pools.a]\n[pools.b]\n")
    monkeypatch.setenv("PGPOOLS__DEFAULT", "b")
    assert load_settings(path).default == "b"


def test_default_naming_unknown_pool_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "p.toml", "default = 'nope'\n[pools.a]\n")
    with pytest.raises(ConfigError, match=r"default: names pool 'nope', which is not configured"):
        load_settings(path)


def test_default_naming_disabled_pool_is_refused(tmp_path: Path) -> None:
    path = write(tmp_path / "p.toml", "default = 'a'\n[pools.a]\nenabled = false\n")
    with pytest.raises(ConfigError, match="disabled"):
        load_settings(path)


# -- secrets ----------------------------------------------------------------------------------


def test_password_from_secret_file_named_by_env(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    write(tmp_path / "s" / "pools__billing__password", "hunter2\n")
    write(tmp_path / "s" / "unrelated_app_token", "ignored")
    monkeypatch.setenv("PGPOOLS_SECRETS_DIR", str(tmp_path / "s"))
    monkeypatch.setenv("PGPOOLS__POOLS__BILLING__DBNAME", "billing")
    settings = load_settings()
    assert plain(settings.pools["billing"].password) == "hunter2"
    assert "secret files in" in settings.source


def test_secret_file_cannot_declare_a_pool(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    write(tmp_path / "s" / "pools__biling__password", "x")
    monkeypatch.setenv("PGPOOLS__POOLS__BILLING__DBNAME", "billing")
    with pytest.raises(ConfigError) as exc:
        load_settings(secrets_dir=tmp_path / "s")
    (problem,) = exc.value.problems
    assert problem.startswith("pools.biling: only secret files name this pool")
    assert "pools__biling__password" in problem


def test_missing_secrets_dir_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("PGPOOLS_SECRETS_DIR", str(tmp_path / "nope"))
    with pytest.raises(ConfigError, match=r"secrets directory .*nope does not exist"):
        load_settings()


def test_no_password_is_left_to_libpq(tmp_path: Path) -> None:
    pool = load_settings(write(tmp_path / "p.toml", "[pools.a]\nhost = 'h'\n")).pools["a"]
    assert pool.password is None
    assert "password" not in parse_conninfo(pool.pool_kwargs()["dbname"])


# -- validation ----------------------------------------------------------------------------------

BAD = """\
default = "nope"
pool = 1

[defaults]
maxcahced = 3
timeout = -1

[pools.billing]
maxcached = -1
reset = "rolback"
ping = "sometimes"
sslmode = "required"
port = 99999
bogus = 1
mincached = 5
maxconnections = 2

[pools.Bad]
host = "x"

[pools.mix]
conninfo = "host=a sslmode=require"
host = "b"
sslmode = "disable"

[pools.both]
passwd = "x1234567"
password = "y1234567"

[pools.broken]
conninfo = "host=a password='unterminated"
"""


def test_every_problem_is_listed_at_once_with_its_path(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    path = write(tmp_path / "bad.toml", BAD)
    monkeypatch.setenv("PGPOOLS__POOLS__BILLING__BLOCKING", "maybe")
    monkeypatch.setenv("PGPOOLS__POOLS__ENVONLY__MAXUSAGE", "-3")
    monkeypatch.setenv("PGPOOLS__POOLZ__X__HOST", "h")
    with pytest.raises(ConfigError) as exc:
        load_settings(path)
    text = str(exc.value)
    problems = exc.value.problems
    expected = {
        "pool": "unknown key; did you mean 'pools'?",
        "poolz": "unknown key",
        "defaults.maxcahced": "unknown key; did you mean 'maxcached'?",
        "defaults.timeout": "must be >= 0 (got -1)",
        "pools.billing.maxcached": "must be >= 0 (got -1)",
        "pools.billing.reset": "unknown reset policy 'rolback'",
        "pools.billing.ping": "unknown ping policy 'sometimes'",
        "pools.billing.sslmode": "must be one of",
        "pools.billing.port": "must be a port number",
        "pools.billing.bogus": "unknown key",
        "pools.billing.blocking": "must be true or false (got 'maybe')",
        "pools.billing.mincached": "5 connections cannot be opened at start when maxconnections",
        "pools.Bad": "invalid pool name",
        "pools.mix.conninfo": "cannot be combined with host",
        "pools.mix.sslmode": "is set both here and in conninfo",
        "pools.both.passwd": "passwd and password are both set",
        "pools.broken.conninfo": "cannot be parsed: unterminated quoted value",
        "pools.envonly.maxusage": "must be >= 0",
        "default": "names pool 'nope', which is not configured",
    }
    for where, what in expected.items():
        hits = [p for p in problems if p.startswith(f"{where}: ") and what in p]
        assert hits, f"no problem {where}: {what} in:\n{text}"
    assert len(problems) == len(expected), text
    assert text.startswith(
        f"invalid configuration ({path} + environment): {len(expected)} problems"
    )
    assert all(f"  {p}" in text for p in problems)  # one per line


def test_problem_names_file_or_variable(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    path = write(tmp_path / "p.toml", "[pools.a]\nmaxcached = -1\n")
    monkeypatch.setenv("PGPOOLS__POOLS__A__TIMEOUT", "soon")
    with pytest.raises(ConfigError) as exc:
        load_settings(path)
    assert f"pools.a.maxcached: must be >= 0 (got -1) [{path}]" in exc.value.problems
    assert (
        "pools.a.timeout: must be a number (got 'soon') [environment: PGPOOLS__POOLS__A__TIMEOUT]"
        in exc.value.problems
    )


@pytest.mark.parametrize("name", ["Billing", "1x", "a__b", "a_", "a-b", "x" * 64, "_a", "é"])
def test_bad_pool_names_are_refused(name: str) -> None:
    assert check_pool_name(name) is not None
    with pytest.raises(ConfigError) as exc:
        settings_from_mapping({"pools": {name: {}}})
    assert exc.value.problems[0].startswith(f"pools.{name}: ")


@pytest.mark.parametrize("name", ["a", "billing", "a1_b2", "x" * 63])
def test_good_pool_names(name: str) -> None:
    assert check_pool_name(name) is None


@pytest.mark.parametrize("key", ["mincached", "maxcached", "maxconnections", "maxusage"])
def test_negative_sizes_are_refused(key: str) -> None:
    with pytest.raises(ConfigError, match=rf"pools\.a\.{key}: must be >= 0 \(got -1\)"):
        settings_from_mapping({"pools": {"a": {key: -1}}})


@pytest.mark.parametrize("key", ["mincached", "maxcached", "maxconnections", "timeout"])
def test_true_is_not_a_number(key: str) -> None:
    with pytest.raises(ConfigError, match=rf"pools\.a\.{key}: must be a number"):
        settings_from_mapping({"pools": {"a": {key: True}}})


def test_mincached_above_maxconnections_is_refused() -> None:
    with pytest.raises(
        ConfigError, match=re.escape("pools.a.mincached: 3 connections cannot be opened")
    ):
        settings_from_mapping({"pools": {"a": {"mincached": 3, "maxconnections": 2}}})


def test_size_rules_of_the_original_are_left_to_the_pool() -> None:
    pools = settings_from_mapping(
        {
            "pools": {
                "unlimited": {"mincached": 5, "maxconnections": 0},
                "low_maxcached": {"mincached": 5, "maxcached": 1, "maxconnections": 6},
                "low_maxconn": {"maxcached": 8, "maxconnections": 2},
            }
        }
    ).pools
    assert pools["low_maxcached"].maxcached == 1  # raised to mincached by PooledPg itself
    assert pools["low_maxconn"].maxconnections == 2


def test_defaults_sizes_checked_only_per_pool() -> None:
    # [defaults] mincached 5 with maxconnections 2 is fine while every pool overrides one.
    settings = settings_from_mapping(
        {"defaults": {"mincached": 5, "maxconnections": 2}, "pools": {"a": {"mincached": 1}}}
    )
    assert settings.pools["a"].mincached == 1


def test_conninfo_mixed_with_target_keys_is_refused() -> None:
    with pytest.raises(ConfigError, match="cannot be combined with host, user"):
        settings_from_mapping({"pools": {"a": {"conninfo": "dbname=x", "host": "h", "user": "u"}}})


def test_dbname_holding_a_conninfo_is_refused() -> None:
    with pytest.raises(ConfigError, match="dbname: looks like a connection string"):
        settings_from_mapping({"pools": {"a": {"dbname": "host=x dbname=y"}}})


def test_nul_in_a_libpq_value_is_refused() -> None:
    with pytest.raises(ConfigError, match=re.escape("pools.a.host: must not contain a NUL")):
        settings_from_mapping({"pools": {"a": {"host": "a\x00b"}}})


def test_multi_host_ports() -> None:
    pool = settings_from_mapping({"pools": {"a": {"host": "h1,h2", "port": "5432,5433"}}}).pools[
        "a"
    ]
    assert pool.libpq_params() == {"host": "h1,h2", "port": "5432,5433"}


def test_invalid_json_in_env_list(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PGPOOLS__POOLS__A__SETSESSION", '["SET x"')
    with pytest.raises(ConfigError, match=re.escape("pools.a.setsession: must be a JSON list")):
        load_settings()


def test_non_table_values_are_refused() -> None:
    with pytest.raises(ConfigError) as exc:
        settings_from_mapping({"defaults": 1, "pools": {"a": 2}})
    assert exc.value.problems == [
        "defaults: must be a table of pool settings [mapping]",
        "pools.a: must be a table of pool settings (got 2) [mapping]",
    ]


def test_name_key_in_a_pool_is_refused() -> None:
    with pytest.raises(ConfigError, match=re.escape("pools.a.name: unknown key")):
        settings_from_mapping({"pools": {"a": {"name": "b"}}})


def test_config_error_is_raised_without_pydantic_cause() -> None:
    with pytest.raises(ConfigError) as exc:
        settings_from_mapping({"pools": {"a": {"password": ["hunter2hunter2"]}}})
    chained = exc.value.__cause__ or (
        None if exc.value.__suppress_context__ else exc.value.__context__
    )
    assert chained is None  # a traceback would show pydantic's input_value
    assert "hunter2hunter2" not in str(exc.value)


# -- secrets never shown ------------------------------------------------------------------------

SECRET = "s3cr3t-p@ss w'rd"


def test_password_never_in_repr_str_or_describe(tmp_path: Path) -> None:
    uri = "postgresql://u:" + "s3cr3t-p%40ss%20w'rd" + "@h/db?sslpassword=key-s3cr3t"
    path = write(
        tmp_path / "p.toml",
        f'[pools.a]\npassword = "{SECRET}"\nsslpassword = "key-s3cr3t"\n'
        f'[pools.b]\nconninfo = "{uri}"\n',
    )
    settings = load_settings(path)
    shown = [
        repr(settings),
        str(settings),
        repr(settings.pools["a"]),
        str(settings.pools["b"]),
        json.dumps(settings.describe()),
        settings.pools["a"].model_dump_json(),
        settings.pools["b"].fingerprint(),
    ]
    for text in shown:
        assert SECRET not in text and "key-s3cr3t" not in text and "s3cr3t-p" not in text
    described = settings.pools["a"].describe()
    assert described["password"] == described["sslpassword"] == MASK
    assert f"password={MASK}" in settings.pools["b"].describe()["conninfo"]
    # ...while the pool gets the real thing.
    assert parse_conninfo(settings.pools["b"].pool_kwargs()["dbname"])["password"] == (
        "s3cr3t-p@ss w'rd"
    )


def test_password_never_in_errors(tmp_path: Path) -> None:
    path = write(
        tmp_path / "p.toml",
        f'[pools.a]\npassword = "{SECRET}"\nmaxcached = -1\nhost = 5\n'
        f"[pools.b]\nconninfo = \"host=x password='{SECRET}' bogus=1\"\n"
        f'[pools.c]\nconninfo = "host=x password=\'{SECRET}\'"\nuser = "u"\n'
        f'[pools.d]\nsslpassword = ["{SECRET}"]\n',
    )
    with pytest.raises(ConfigError) as exc:
        load_settings(path)
    assert len(exc.value.problems) == 5, str(exc.value)
    for text in (str(exc.value), repr(exc.value), *exc.value.problems):
        assert "s3cr3t" not in text


def test_direct_construction_errors_hide_the_input() -> None:
    with pytest.raises(ValidationError) as exc:
        PoolSettings(name="a", password=["hunter2hunter2"])  # type: ignore[arg-type]
    assert "hunter2hunter2" not in str(exc.value)


# -- equality, fingerprints, kwargs ----------------------------------------------------------


def test_password_change_is_a_change(tmp_path: Path) -> None:
    def load(password: str) -> PoolSettings:
        path = write(tmp_path / "p.toml", f"[pools.a]\nhost = 'h'\npassword = '{password}'\n")
        return load_settings(path).pools["a"]

    first, same, other = load("one"), load("one"), load("two")
    assert first == same and first.fingerprint() == same.fingerprint()
    assert first != other and first.fingerprint() != other.fingerprint()


def test_any_option_change_is_a_change() -> None:
    base = settings_from_mapping({"pools": {"a": {"host": "h"}}}).pools["a"]
    for key, spec in KEY_TABLE.items():
        if key in ("enabled", "conninfo", "server"):  # server: see the test below
            continue
        value = plain(spec.value)
        value = value.value if isinstance(value, ResetPolicy | PingPolicy) else value
        others: dict[str, Any] = {"standby": {}} if key == "read_pool" else {}
        changed = settings_from_mapping({"pools": {"a": {"host": "h", key: value}, **others}})
        pool = changed.pools["a"]
        assert pool != base and pool.fingerprint() != base.fingerprint(), key


def test_server_change_is_a_change() -> None:
    servers = {"main": {"max_connections": 5}, "other": {"max_connections": 5}}
    one = settings_from_mapping({"pools": {"a": {"server": "main"}}, "servers": servers})
    two = settings_from_mapping({"pools": {"a": {"server": "other"}}, "servers": servers})
    assert one.pools["a"] != two.pools["a"]


def test_pool_kwargs_match_pooledpg() -> None:
    pool = settings_from_mapping(
        {"pools": {"a": {"host": "h", "setsession": ["SET x = 1"], "ping": "always"}}}
    ).pools["a"]
    kwargs = pool.pool_kwargs()
    assert set(kwargs) == {*POOL_OPTION_KEYS, "name", "dbname"} - {"enabled"}
    assert kwargs["name"] == "a" and kwargs["setsession"] == ["SET x = 1"]
    assert kwargs["ping"] is PingPolicy.ALWAYS and kwargs["dbname"] == "host=h"
    parameters = inspect.signature(PooledPg).parameters
    # dbname travels in **kwargs to pg.DB; everything else is a named parameter.
    assert set(kwargs) - {"dbname"} <= set(parameters), set(kwargs) - set(parameters)
    assert any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values())
    # And PooledPg takes them as they are (mincached 0: nothing connects).
    with PooledPg(**kwargs) as built:
        stats = built.stats()
    assert (stats["maxconnections"], stats["maxcached"]) == (10, 0), stats


def test_pool_kwargs_defaults() -> None:
    kwargs = settings_from_mapping({"pools": {"a": {}}}).pools["a"].pool_kwargs()
    assert kwargs == {
        "mincached": 0,
        "maxcached": 0,
        "maxconnections": 10,
        "blocking": True,
        "maxusage": None,
        "setsession": None,
        "reset": ResetPolicy.ROLLBACK_IF_NEEDED,
        "name": "a",
        "timeout": 30.0,
        "retry_after_reopen": True,
        "reconnect_timeout": 0.0,
        "max_lifetime": 3600.0,
        "max_idle": 600.0,
        "ping": PingPolicy.IDLE,
        "ping_after": 30.0,
        "leak_threshold": None,
        "server_pooling": "none",
        "statement_timeout": None,
        "dbname": "",
    }


def test_describe_lists_options_and_target_keys() -> None:
    described = (
        settings_from_mapping({"pools": {"a": {"sslmode": "require"}}}).pools["a"].describe()
    )
    for key in (*POOL_OPTION_KEYS, *TARGET_KEYS, "conninfo", "name", "target"):
        assert key in described
    assert described["sslmode"] == "require" and "sslcert" not in described
    json.dumps(described)


def test_settings_validates_its_own_invariants() -> None:
    pool = PoolSettings(name="a")
    with pytest.raises(ValueError, match=re.escape("pools.b: holds the settings of pool 'a'")):
        Settings(pools={"b": pool})
    with pytest.raises(ValueError, match="default: pool 'x' is not configured"):
        Settings(pools={"a": pool}, default="x")


def test_pool_settings_accepts_aliases_directly() -> None:
    pool = PoolSettings(name="a", passwd="pw", opt="-c x=1")  # type: ignore[call-arg]
    assert plain(pool.password) == "pw" and pool.options == "-c x=1"
    assert "pw" not in repr(pool)
    assert pool.secrets() == ("pw",)
