"""Property-based tests of the configuration (hypothesis).

* generated valid configurations load, from a mapping, a TOML file and the environment, and
  ``describe()`` / ``pool_kwargs()`` say what was put in;
* the conninfo string handed to ``PooledPg`` reads back (with our parser and with libpq's own
  ``PQconninfoParse`` through ctypes) to the same keywords and values;
* generated invalid configurations raise ``ConfigError`` and nothing else;
* a generated password, full of quotes, backslashes, spaces, ``@ : = / ?``, appears in no
  error message, ``str``, ``repr`` or ``describe()``.
"""

from __future__ import annotations

import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any
from urllib.parse import quote

from _helpers import CONNINFO_CHARS, LIBPQ, libpq_parse, needs_libpq
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from pgregistry.config import (
    PoolSettings,
    Settings,
    check_pool_name,
    load_settings,
    settings_from_mapping,
)
from pgregistry.conninfo import build_conninfo, parse_conninfo
from pgregistry.errors import ConfigError
from pgregistry.policies import PingPolicy, parse_reset

FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# -- strategies ----------------------------------------------------------------------------------

names = st.from_regex(r"[a-z][a-z0-9_]{0,12}", fullmatch=True).filter(
    lambda n: check_pool_name(n) is None
)
texts = st.text(
    alphabet=CONNINFO_CHARS,
    min_size=1,
    max_size=12,
)
plain_names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789_-.", min_size=1, max_size=12)
seconds = st.floats(min_value=0, max_value=1e6, allow_nan=False, allow_infinity=False)

OPTIONS: dict[str, st.SearchStrategy[Any]] = {
    "mincached": st.integers(0, 20),
    "maxcached": st.integers(0, 50),
    "maxconnections": st.integers(0, 50),
    "blocking": st.booleans(),
    "timeout": st.none() | seconds,
    "maxusage": st.none() | st.integers(0, 10_000),
    "setsession": st.lists(texts, max_size=3),
    "reset": st.sampled_from([0, 1, 2, "rollback_if_needed", "rollback", "reconnect", "discard"]),
    "retry_after_reopen": st.booleans(),
    "reconnect_timeout": seconds,
    "max_lifetime": st.none() | seconds,
    "max_idle": st.none() | seconds,
    "ping": st.sampled_from(["never", "idle", "always"]),
    "ping_after": seconds,
    "leak_threshold": st.none() | seconds,
}


@st.composite
def options(draw: st.DrawFn) -> dict[str, Any]:
    keys = draw(st.sets(st.sampled_from(sorted(OPTIONS))))
    out = {key: draw(OPTIONS[key]) for key in sorted(keys)}
    if out.get("maxconnections") and out.get("mincached", 0) > out["maxconnections"]:
        out["mincached"] = out["maxconnections"]
    return out


@st.composite
def targets(draw: st.DrawFn) -> dict[str, Any]:
    """Discrete target keys, or a conninfo (keyword string or URI); secrets included."""
    params: dict[str, Any] = {}
    for key, strategy in (
        ("host", plain_names),
        ("port", st.integers(1, 65535)),
        ("dbname", texts.filter(lambda t: "=" not in t and not t.startswith("postgres"))),
        ("user", texts),
        ("password", texts),
        ("options", texts),
        ("application_name", texts),
        ("sslmode", st.sampled_from(["disable", "require", "verify-full"])),
    ):
        if draw(st.booleans()):
            params[key] = draw(strategy)
    form = draw(st.sampled_from(["keys", "conninfo", "uri"]))
    if form == "keys":
        return params
    if form == "conninfo":
        return {"conninfo": build_conninfo(params)}
    return {"conninfo": _uri(params)}


def _uri(params: dict[str, Any]) -> str:
    enc: Callable[[object], str] = lambda v: quote(str(v), safe="")  # noqa: E731
    user = enc(params["user"]) if "user" in params else ""
    if "password" in params:
        user += ":" + enc(params["password"])
    uri = "postgresql://" + (user + "@" if user else "")
    uri += enc(params.get("host", "")) + (f":{params['port']}" if "port" in params else "")
    uri += "/" + enc(params.get("dbname", ""))
    query = [
        f"{k}={enc(params[k])}" for k in ("options", "application_name", "sslmode") if k in params
    ]
    return uri + ("?" + "&".join(query) if query else "")


def _merge_dicts(first: dict[str, Any], second: dict[str, Any]) -> dict[str, Any]:
    return {**first, **second}


@st.composite
def valid_configs(draw: st.DrawFn) -> dict[str, Any]:
    pools: dict[str, dict[str, Any]] = draw(
        st.dictionaries(names, st.builds(_merge_dicts, options(), targets()), max_size=4)
    )
    data: dict[str, Any] = {"pools": pools}
    with_default: bool = draw(st.booleans())
    if pools and with_default:
        data["default"] = draw(st.sampled_from(sorted(pools)))
    return data


# -- expectations --------------------------------------------------------------------------------


def _expected_target(pool: dict[str, Any]) -> dict[str, str]:
    if "conninfo" in pool:
        return parse_conninfo(pool["conninfo"])
    return {k: str(v) for k, v in pool.items() if k not in OPTIONS}


def _check_pool(pool: PoolSettings, given_: dict[str, Any]) -> None:
    described = pool.describe()
    kwargs = pool.pool_kwargs()
    json.dumps(described)
    for key, value in given_.items():
        if key not in OPTIONS:
            continue
        if key == "reset":
            assert kwargs[key] is parse_reset(value)
            assert described[key] == parse_reset(value).value
        elif key == "ping":
            assert kwargs[key] is PingPolicy(value)
            assert described[key] == value
        elif key == "setsession":
            assert kwargs[key] == (value or None)
            assert described[key] == value
        else:
            assert kwargs[key] == value and described[key] == value, key
    assert pool.libpq_params() == _expected_target(given_)
    assert parse_conninfo(kwargs["dbname"]) == pool.libpq_params()
    if LIBPQ is not None:
        assert libpq_parse(kwargs["dbname"]) == pool.libpq_params()


def _check_settings(result: Settings, data: dict[str, Any]) -> None:
    assert result.pool_names() == list(data["pools"])
    for name, given_ in data["pools"].items():
        _check_pool(result.pools[name], given_)
    assert result.default == data.get("default", "default" if "default" in data["pools"] else None)


@FAST
@given(valid_configs())
def test_valid_configs_load_and_round_trip(data: dict[str, Any]) -> None:
    _check_settings(settings_from_mapping(data), data)


def _toml(value: Any) -> str:
    if value is None:
        return '"none"'
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    # A JSON string is a TOML basic string, once DEL is escaped too.
    return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")


def _env_text(value: Any) -> str:
    if value is None:
        return "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return json.dumps(value)
    return repr(value) if isinstance(value, float) else str(value)


@FAST
@given(valid_configs(), st.randoms(use_true_random=False))
def test_valid_configs_load_from_toml_and_environment(data: dict[str, Any], rnd: Any) -> None:
    lines = [f"default = {_toml(data['default'])}"] if "default" in data else []
    env: dict[str, str] = {}
    for name, pool in data["pools"].items():
        lines.append(f"[pools.{name}]")
        for key, value in pool.items():
            if key in OPTIONS and rnd.random() < 0.5:
                env[f"PGPOOLS__POOLS__{name.upper()}__{key.upper()}"] = _env_text(value)
            else:
                lines.append(f"{key} = {_toml(value)}")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "pgpools.toml"
        path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        result = load_settings(path, env=env)
    _check_settings(result, data)


# -- invalid input: ConfigError and nothing else ---------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=6,
)
any_key = st.sampled_from([*sorted(PoolSettings.model_fields), "passwd", "opt", "name"]) | st.text(
    max_size=8
)


@FAST
@given(
    st.dictionaries(
        st.sampled_from(["default", "defaults", "pools", "tenants"]) | st.text(max_size=5),
        json_values
        | st.dictionaries(
            names | st.text(max_size=6),
            st.dictionaries(any_key, json_values, max_size=4),
            max_size=3,
        )
        | st.dictionaries(any_key, json_values, max_size=4),
        max_size=4,
    )
)
def test_any_mapping_gives_settings_or_config_error(data: dict[str, Any]) -> None:
    try:
        settings_from_mapping(data)
    except ConfigError as exc:
        assert exc.problems and all(isinstance(p, str) for p in exc.problems)


@FAST
@given(
    st.dictionaries(
        st.tuples(names, st.sampled_from([*sorted(PoolSettings.model_fields), "passwd", "bogus"])),
        st.text(
            alphabet=st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00"),
            max_size=10,
        ),
        max_size=5,
    )
)
def test_any_environment_gives_settings_or_config_error(values: dict[tuple[str, str], str]) -> None:
    env = {f"PGPOOLS__POOLS__{n.upper()}__{k.upper()}": v for (n, k), v in values.items()}
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "pgpools.toml"
        path.write_text("", encoding="utf-8")
        try:
            load_settings(path, env=env)
        except ConfigError as exc:
            assert exc.problems


# -- passwords are never shown ---------------------------------------------------------------

passwords = st.text(
    alphabet=st.sampled_from(list("abcXYZ019 '\"\\@:=/?&#%;,{}[]()$"))
    | st.characters(blacklist_categories=["Cs", "Cc"]),
    min_size=6,
    max_size=24,
).filter(lambda p: p.strip() == p and p.strip())


def _shown(password: str, broken: bool) -> str:
    """Everything the user might see about a configuration holding ``password``."""
    pools: dict[str, Any] = {
        "a": {"host": "h", "password": password, "sslpassword": password},
        "b": {"conninfo": build_conninfo({"host": "h", "password": password})},
        "c": {"conninfo": _uri({"host": "h", "user": "u", "password": password})},
        "d": {"defaults_password": 1} if broken else {},
    }
    if broken:
        pools["a"]["maxcached"] = -1
        pools["a"]["host"] = ["not", "a", "string"]
        pools["b"]["user"] = "mixing target keys with conninfo"
        pools["c"]["bogus"] = password
        pools["e"] = {"password": [password], "conninfo": 5}
        pools["f"] = {"conninfo": build_conninfo({"password": password}) + " user='open"}
    try:
        result = settings_from_mapping({"pools": pools, "defaults": {"passwd": password}})
    except ConfigError as exc:
        return "\n".join([str(exc), repr(exc), *exc.problems])
    return "\n".join(
        [
            str(result),
            repr(result),
            json.dumps(result.describe()),
            *(repr(p) for p in result.pools.values()),
            *(p.fingerprint() for p in result.pools.values()),
            *(p.model_dump_json() for p in result.pools.values()),
        ]
    )


@settings(max_examples=100, deadline=None)
@given(passwords, st.booleans())
def test_generated_password_is_never_shown(password: str, broken: bool) -> None:
    text = _shown(password, broken)
    placeholder = "Q" * len(password)
    assume(password != placeholder)
    # A password that happens to be ordinary text of the output ("pools.a") is no leak.
    assume(password not in _shown(placeholder, broken))
    assert password not in text
    assert quote(password, safe="") not in text or quote(password, safe="") in _shown(
        placeholder, broken
    )


def test_password_property_covers_both_outcomes() -> None:
    assert "problem" in _shown("hunter2!", True)
    assert "PoolSettings" in _shown("hunter2!", False)


# -- libpq through ctypes (no server needed) ---------------------------------------------------


@needs_libpq
def test_libpq_reads_a_generated_target_like_we_do() -> None:
    pool = settings_from_mapping(
        {"pools": {"a": {"host": "h", "password": "it's a \\ test", "options": "-c x=1"}}}
    ).pools["a"]
    assert libpq_parse(pool.pool_kwargs()["dbname"]) == {
        "host": "h",
        "password": "it's a \\ test",
        "options": "-c x=1",
    }
