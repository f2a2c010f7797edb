"""Validated pool configuration from ``pgpools.toml``, the environment and secret files.

::

    default = "app"                       # the pool used when none is named

    [defaults]                            # applies to every pool; a pool's own key wins
    host = "127.0.0.1"
    user = "root"
    maxconnections = 20
    sslmode = "prefer"                    # any libpq keyword

    [pools.app]
    dbname = "pgregistry_app"
    mincached = 2

    [pools.reports]
    conninfo = "postgresql://reporter@replica/reports?target_session_attrs=read-only"

The same keys come from ``PGPOOLS__POOLS__APP__MAXCACHED=8`` style variables (lists as JSON)
and from secret files such as ``$PGPOOLS_SECRETS_DIR/pools__app__password``; precedence is
file < secret files < environment (:mod:`pgregistry.config_sources` reads and merges them).

:func:`load_settings` returns a frozen :class:`Settings` or raises one
:class:`~pgregistry.errors.ConfigError` that lists every problem with its path and source.
No message, ``repr`` or :meth:`PoolSettings.describe` ever holds a password or the secret part
of a ``conninfo``.
"""

from __future__ import annotations

import contextlib
import difflib
import hashlib
import hmac
import json
import os
import re
from collections.abc import Callable, Iterator, Mapping
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    StringConstraints,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from .config_sources import (
    CONFIG_ENV,
    DEFAULT_CONFIG_FILE,
    ENV_PREFIX,
    SECRETS_DIR_ENV,
    TOP_LEVEL_KEYS,
    RawConfig,
    read_sources,
    replaced_by,
)
from .conninfo import (
    LIBPQ_KEYWORDS,
    MASK,
    SECRET_KEYWORDS,
    TARGET_KEYWORDS,
    ConninfoError,
    build_conninfo,
    escape_option,
    is_conninfo,
    mask_conninfo,
    parse_conninfo,
    quote_ident,
    quote_literal,
    redact,
)
from .errors import ConfigError, InvalidTenantError
from .policies import PingPolicy, ResetPolicy, parse_ping, parse_reset

__all__ = [
    "CONFIG_ENV",
    "DEFAULT_CONFIG_FILE",
    "ENV_PREFIX",
    "POOL_OPTION_KEYS",
    "SECRETS_DIR_ENV",
    "TARGET_KEYS",
    "PoolSettings",
    "ServerSettings",
    "Settings",
    "TenantSettings",
    "check_pool_name",
    "load_settings",
    "settings_from_mapping",
]

#: Keys that name the connection target one by one; ``conninfo`` replaces all of them but
#: ``password``, which may accompany a conninfo that holds none (say, from a secret file).
TARGET_KEYS: tuple[str, ...] = TARGET_KEYWORDS
_EXCLUSIVE_TARGET = tuple(key for key in TARGET_KEYS if key != "password")
#: Other spellings accepted for a key, as ``pg.DB`` names them.
_ALIASES = {"passwd": "password", "opt": "options"}
#: Keys whose values are secret: never echoed, masked in :meth:`PoolSettings.describe`.
_SECRET_FIELDS = frozenset(
    {
        "password",
        "passwd",
        "conninfo",
        "sslpassword",
        "oauth_client_secret",
        "scram_client_key",
        "scram_server_key",
    }
)
# Target keys first (easier to read), then the other keywords in libpq's order.
_PARAM_ORDER = TARGET_KEYS + tuple(k for k in LIBPQ_KEYWORDS if k not in TARGET_KEYS)
_POOL_NAME = re.compile(r"[a-z][a-z0-9_]*")
_POOL_NAME_MAX = 63
# Process-wide key for fingerprints: equal settings give equal fingerprints within one process,
# and a fingerprint (which covers the password) is useless to anyone outside it.
_FINGERPRINT_KEY = os.urandom(32)


def check_pool_name(name: object) -> str | None:
    """Return what is wrong with ``name`` as a pool name, or None when it is fine.

    A name is ``[a-z][a-z0-9_]*``, at most 63 characters, without ``__`` and not ending in
    ``_``: ``__`` separates the parts of an environment variable name
    (``PGPOOLS__POOLS__<NAME>__MAXCACHED``), so such a name could not be addressed from there.
    """
    if not isinstance(name, str):
        return "a pool name must be a string"
    if not _POOL_NAME.fullmatch(name):
        return "invalid pool name: use lowercase letters, digits and _, starting with a letter"
    if "__" in name or name.endswith("_"):
        return "invalid pool name: no '__' and no trailing '_' (they break PGPOOLS__ variables)"
    if len(name) > _POOL_NAME_MAX:
        return f"invalid pool name: at most {_POOL_NAME_MAX} characters"
    return None


# -- field types -------------------------------------------------------------------------------


def _fail(kind: str, message: str) -> PydanticCustomError:
    return PydanticCustomError(kind, message)


def _no_bool(value: object) -> object:
    # pydantic would take true as 1: a typo'd "maxcached = true" must not mean one connection.
    if isinstance(value, bool):
        raise _fail("number_type", "must be a number, not true/false")
    return value


def _none_word(value: object) -> object:
    # TOML has no null: "none" (any case) spells "no limit" in files and variables alike.
    if isinstance(value, str) and value.strip().lower() in ("none", "null"):
        return None
    return _no_bool(value)


def _no_nul(value: str) -> str:
    if "\x00" in value:
        raise _fail("nul_character", "must not contain a NUL character")
    return value


def _secret_no_nul(value: SecretStr) -> SecretStr:
    _no_nul(value.get_secret_value())
    return value


def _reset_policy(value: object) -> ResetPolicy:
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)
    try:
        return parse_reset(value)
    except ValueError as exc:
        raise _fail("reset_policy", str(exc).removeprefix("reset: ")) from None


def _ping_policy(value: object) -> PingPolicy:
    try:
        return parse_ping(value)
    except ValueError as exc:
        raise _fail("ping_policy", str(exc).removeprefix("ping: ")) from None


def _statements(value: object) -> object:
    if value is None:
        return ()
    if isinstance(value, str):
        if not value.lstrip().startswith("["):
            return (value,)  # one statement
        try:
            return json.loads(value)
        except ValueError:
            raise _fail("json_list", "must be a JSON list of SQL strings") from None
    return value


_DIGITS = re.compile(r"[0-9]+")


def _port(value: object) -> object:
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= 65535:
        return value
    if isinstance(value, str):
        text = value.strip()
        if _DIGITS.fullmatch(text):
            return _port(int(text))
        parts = text.split(",")
        if len(parts) > 1 and all(
            not part or (_DIGITS.fullmatch(part) and 1 <= int(part) <= 65535) for part in parts
        ):
            return text  # one port per host of a multi-host "host"
    raise _fail(
        "port", "must be a port number 1-65535, or a comma-separated list of them (one per host)"
    )


def _flag_text(value: object) -> object:
    return ("true" if value else "false") if isinstance(value, bool) else value


def _not_conninfo(value: str) -> str:
    if is_conninfo(value):
        raise _fail("dbname_conninfo", "looks like a connection string; put it in conninfo")
    return value


def _valid_conninfo(value: SecretStr) -> SecretStr:
    try:
        params = parse_conninfo(value.get_secret_value())
    except ConninfoError as exc:
        raise _fail("conninfo", f"cannot be parsed: {exc}") from None
    if "dbname" in params and is_conninfo(params["dbname"]):
        raise _fail("conninfo", "its dbname is itself a connection string")
    return value


_Count = Annotated[int, BeforeValidator(_no_bool), Field(ge=0)]
_Seconds = Annotated[float, BeforeValidator(_no_bool), Field(ge=0, allow_inf_nan=False)]
_OptionalSeconds = Annotated[
    Annotated[float, Field(ge=0, allow_inf_nan=False)] | None, BeforeValidator(_none_word)
]
_OptionalCount = Annotated[Annotated[int, Field(ge=0)] | None, BeforeValidator(_none_word)]
_Text = Annotated[str, AfterValidator(_no_nul)]
_Secret = Annotated[SecretStr, AfterValidator(_secret_no_nul)]
_Statement = Annotated[str, StringConstraints(min_length=1)]

# libpq's enumerated values (libpq compares them case-sensitively).
_SslMode = Literal["disable", "allow", "prefer", "require", "verify-ca", "verify-full"]
_Mode3 = Literal["disable", "prefer", "require"]
_TlsVersion = Literal["TLSv1", "TLSv1.1", "TLSv1.2", "TLSv1.3"]
_SessionAttrs = Literal["any", "read-write", "read-only", "primary", "standby", "prefer-standby"]
_Replication = Annotated[
    Literal["true", "false", "on", "off", "yes", "no", "1", "0", "database"],
    BeforeValidator(_flag_text),
]


def _doc(text: str, default: Any = None) -> Any:
    return Field(default=default, description=text)


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)


class PoolSettings(_Frozen):
    """One pool's settings: the :class:`~pgregistry.pool.PooledPg` arguments and its target.

    Every field is a config key of the same name (``passwd`` and ``opt`` are accepted for
    ``password`` and ``options``). libpq keywords other than the target's (``sslmode``,
    ``connect_timeout``, ...) are fields too, ``None`` when unset. Equality compares
    everything, secrets included, so a changed password makes a changed pool.
    """

    name: str = Field(description="The pool's name: its [pools.NAME] table.")
    enabled: bool = _doc("false switches the pool off (it is left out of Settings.pools).", True)

    # sizing
    mincached: _Count = _doc("Connections opened at start (0: none).", 0)
    maxcached: _Count = _doc("Most idle connections kept (0: no limit).", 0)
    maxconnections: _Count = _doc("Most connections open at once (0: no limit).", 0)

    # behaviour
    blocking: bool = _doc("At maxconnections: wait (true) or fail at once (false).", False)
    timeout: _OptionalSeconds = _doc("Seconds a blocking checkout waits (none: forever).", 30.0)
    maxusage: _OptionalCount = _doc("Reopen a connection after this many uses (0/none: never).")
    setsession: Annotated[tuple[_Statement, ...], BeforeValidator(_statements)] = _doc(
        "SQL statements run after every (re)open, in order.", ()
    )
    reset: Annotated[ResetPolicy, BeforeValidator(_reset_policy)] = _doc(
        "On return: 0/rollback_if_needed, 1/rollback, 2/reconnect, discard.",
        ResetPolicy.ROLLBACK_IF_NEEDED,
    )
    retry_after_reopen: bool | Literal["always"] = _doc(
        "After a transparent reopen, run the call again when it cannot have reached the server"
        " (true), never (false), or also when it was lost in flight ('always': it may run twice).",
        True,
    )
    reconnect_timeout: _Seconds = _doc("Seconds an (re)open keeps retrying (0: once).", 0.0)

    # health
    max_lifetime: _OptionalSeconds = _doc("Seconds a connection lives (0/none: forever).", 3600.0)
    max_idle: _OptionalSeconds = _doc("Seconds an idle surplus connection is kept.", 600.0)
    ping: Annotated[PingPolicy, BeforeValidator(_ping_policy)] = _doc(
        "Check at checkout: never, idle, always.", PingPolicy.IDLE
    )
    ping_after: _Seconds = _doc("With ping=idle: check after this many idle seconds.", 30.0)
    leak_threshold: _OptionalSeconds = _doc("Log a connection held longer (0/none: off).")
    server: Annotated[str, AfterValidator(_no_nul)] | None = _doc(
        "The [servers.NAME] budget this pool counts against (unset: matched by host and port)."
    )

    # connection target
    host: _Text | None = _doc("Host name, IP address or socket directory (comma list: several).")
    hostaddr: _Text | None = _doc("IP address, to skip the host name lookup.")
    port: Annotated[int | str | None, BeforeValidator(_port)] = _doc("Port number.")
    dbname: Annotated[str, AfterValidator(_no_nul), AfterValidator(_not_conninfo)] | None = _doc(
        "Database name."
    )
    user: _Text | None = _doc("User name.")
    password: _Secret | None = _doc("Password (alias passwd); unset: .pgpass or PGPASSWORD.")
    options: _Text | None = _doc("Server options such as '-c search_path=app' (alias opt).")
    service: _Text | None = _doc("A pg_service.conf entry.")
    conninfo: Annotated[SecretStr, AfterValidator(_valid_conninfo)] | None = _doc(
        "The whole target as a libpq keyword string or postgresql:// URI."
    )

    # other libpq keywords, passed through
    passfile: _Text | None = _doc("Password file (default ~/.pgpass).")
    channel_binding: _Mode3 | None = _doc("SCRAM channel binding.")
    connect_timeout: _Count | None = _doc("Seconds to wait for a connection (libpq).")
    client_encoding: _Text | None = _doc("Client encoding.")
    application_name: _Text | None = _doc("application_name shown in pg_stat_activity.")
    fallback_application_name: _Text | None = _doc("application_name when none is set.")
    keepalives: bool | None = _doc("TCP keepalives on/off.")
    keepalives_idle: _Count | None = _doc("Seconds idle before a TCP keepalive.")
    keepalives_interval: _Count | None = _doc("Seconds between TCP keepalives.")
    keepalives_count: _Count | None = _doc("Lost keepalives before the connection is dead.")
    tcp_user_timeout: _Count | None = _doc("Milliseconds unacknowledged data may wait.")
    sslmode: _SslMode | None = _doc("TLS: disable, allow, prefer, require, verify-ca, verify-full.")
    sslnegotiation: Literal["postgres", "direct"] | None = _doc("TLS negotiation (libpq 17+).")
    sslcompression: bool | None = _doc("TLS compression.")
    sslcert: _Text | None = _doc("Client certificate file.")
    sslkey: _Text | None = _doc("Client key file.")
    sslkeylogfile: _Text | None = _doc("File TLS session keys are written to (libpq 18+).")
    sslcertmode: Literal["disable", "allow", "require"] | None = _doc("Client cert use (16+).")
    sslpassword: _Secret | None = _doc("Password of the client key.")
    sslrootcert: _Text | None = _doc("Root certificate file (or 'system').")
    sslcrl: _Text | None = _doc("Certificate revocation list file.")
    sslcrldir: _Text | None = _doc("Certificate revocation list directory.")
    sslsni: bool | None = _doc("Send the host name in TLS SNI.")
    requirepeer: _Text | None = _doc("Required OS user of the server (Unix sockets).")
    require_auth: _Text | None = _doc("Allowed authentication methods (libpq 16+).")
    min_protocol_version: _Text | None = _doc("Lowest protocol version (libpq 18+).")
    max_protocol_version: _Text | None = _doc("Highest protocol version (libpq 18+).")
    ssl_min_protocol_version: _TlsVersion | None = _doc("Lowest TLS version.")
    ssl_max_protocol_version: _TlsVersion | None = _doc("Highest TLS version.")
    gssencmode: _Mode3 | None = _doc("GSSAPI encryption.")
    krbsrvname: _Text | None = _doc("Kerberos service name.")
    gsslib: _Text | None = _doc("GSS library (Windows).")
    gssdelegation: bool | None = _doc("Delegate GSS credentials.")
    replication: _Replication | None = _doc("Replication connection.")
    target_session_attrs: _SessionAttrs | None = _doc("Which server of several to accept.")
    load_balance_hosts: Literal["disable", "random"] | None = _doc("Try hosts in random order.")
    scram_client_key: _Secret | None = _doc("SCRAM client key (libpq 18+, internal use).")
    scram_server_key: _Secret | None = _doc("SCRAM server key (libpq 18+, internal use).")
    oauth_issuer: _Text | None = _doc("OAuth issuer URL (libpq 18+).")
    oauth_client_id: _Text | None = _doc("OAuth client id (libpq 18+).")
    oauth_client_secret: _Secret | None = _doc("OAuth client secret (libpq 18+).")
    oauth_scope: _Text | None = _doc("OAuth scope (libpq 18+).")

    # -- validation ---------------------------------------------------------------------------

    @model_validator(mode="before")
    @classmethod
    def _accept_aliases(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and any(alias in data for alias in _ALIASES):
            data = dict(data)
            for alias, key in _ALIASES.items():
                if alias in data:
                    if key in data:
                        raise _fail("alias", f"{alias} and {key} are both set; keep one")
                    data[key] = data.pop(alias)
        return data

    @field_validator("name")
    @classmethod
    def _valid_name(cls, value: str) -> str:
        problem = check_pool_name(value)
        if problem:
            raise _fail("pool_name", problem)
        return value

    @model_validator(mode="after")
    def _valid_combination(self, info: ValidationInfo) -> PoolSettings:
        context = info.context if isinstance(info.context, dict) else {}
        problems = self._combination_problems(layer=context.get("layer"))
        sink = context.get("problems")
        if problems and isinstance(sink, list):
            sink.extend(problems)  # the loader reports them with paths and sources
        elif problems:
            raise _fail("combination", "; ".join(f"{key}: {msg}" for key, msg in problems))
        return self

    def _combination_problems(self, layer: str | None = None) -> list[tuple[str, str]]:
        problems: list[tuple[str, str]] = []
        if self.conninfo is not None:
            mixed = [key for key in _EXCLUSIVE_TARGET if getattr(self, key) is not None]
            if mixed:
                problems.append(
                    (
                        "conninfo",
                        f"cannot be combined with {', '.join(mixed)}: give the whole target in"
                        " conninfo, or use the separate keys only",
                    )
                )
            for key in self._conninfo_params():
                if key not in _EXCLUSIVE_TARGET and self._extra_value(key) is not None:
                    problems.append((key, "is set both here and in conninfo; keep one"))
        if layer != "defaults" and self.maxconnections and self.mincached > self.maxconnections:
            problems.append(
                (
                    "mincached",
                    f"{self.mincached} connections cannot be opened at start when "
                    f"maxconnections is {self.maxconnections}; raise maxconnections or lower "
                    "mincached",
                )
            )
        return problems

    # -- the connection target ----------------------------------------------------------------

    def _conninfo_params(self) -> dict[str, str]:
        if self.conninfo is None:
            return {}
        return parse_conninfo(self.conninfo.get_secret_value())

    def _extra_value(self, key: str) -> str | None:
        value = getattr(self, key, None)
        if value is None:
            return None
        if isinstance(value, SecretStr):
            return value.get_secret_value()
        if isinstance(value, bool):
            return "1" if value else "0"
        return str(value)

    def libpq_params(self) -> dict[str, str]:
        """Every libpq keyword this pool sets, as libpq takes it (secrets in clear text).

        From ``conninfo`` when it is set (in its order), else from the separate target keys;
        then every other libpq keyword set as a key, in libpq's order.
        """
        params = self._conninfo_params()
        for keyword in _PARAM_ORDER:
            value = self._extra_value(keyword)
            if value is not None:
                params[keyword] = value
        return params

    def dsn(self) -> str:
        """The libpq keyword string for this pool's target, password included: never log it."""
        return build_conninfo(self.libpq_params())

    def pool_kwargs(self) -> dict[str, Any]:
        """Keyword arguments for ``PooledPg(**kwargs)``.

        The target is one libpq keyword string passed as ``dbname`` (libpq expands a ``dbname``
        holding ``=``); it contains the password, so it must go through ``redact()`` before
        being shown anywhere.
        """
        return {
            "mincached": self.mincached,
            "maxcached": self.maxcached,
            "maxconnections": self.maxconnections,
            "blocking": self.blocking,
            "maxusage": self.maxusage,
            "setsession": list(self.setsession) or None,
            "reset": self.reset,
            "name": self.name,
            "timeout": self.timeout,
            "retry_after_reopen": self.retry_after_reopen,
            "reconnect_timeout": self.reconnect_timeout,
            "max_lifetime": self.max_lifetime,
            "max_idle": self.max_idle,
            "ping": self.ping,
            "ping_after": self.ping_after,
            "leak_threshold": self.leak_threshold,
            "dbname": self.dsn(),
        }

    def secrets(self) -> tuple[str, ...]:
        """Every secret value of this pool, for ``redact(text, secrets)``."""
        found = [self._extra_value(key) for key in _SECRET_FIELDS if key in type(self).model_fields]
        params = self._conninfo_params()
        found += [value for key, value in params.items() if key in SECRET_KEYWORDS]
        return tuple(sorted({s for s in found if s}))

    # -- views ----------------------------------------------------------------------------------

    def describe(self) -> dict[str, Any]:
        """A JSON-able view of every setting, with every secret replaced by ``********``.

        Options and target keys are always present (``None`` when unset); other libpq keywords
        only when set. ``target`` is the conninfo string the pool will use, masked.
        """
        out: dict[str, Any] = {}
        for key in type(self).model_fields:
            value = getattr(self, key)
            always = key in POOL_OPTION_KEYS or key in TARGET_KEYS or key in ("name", "conninfo")
            if value is None and not always:
                continue
            if key == "conninfo" and isinstance(value, SecretStr):
                out[key] = mask_conninfo(value.get_secret_value())
            elif isinstance(value, SecretStr):
                out[key] = MASK
            elif isinstance(value, ResetPolicy | PingPolicy):
                out[key] = value.value
            elif isinstance(value, tuple):
                out[key] = list(value)
            else:
                out[key] = value
        out["target"] = mask_conninfo(self.dsn())
        return out

    def _canonical(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key in type(self).model_fields:
            value = getattr(self, key)
            if isinstance(value, SecretStr):
                value = value.get_secret_value()
            elif isinstance(value, ResetPolicy | PingPolicy):
                value = value.value
            elif isinstance(value, tuple):
                value = list(value)
            out[key] = value
        return out

    def fingerprint(self) -> str:
        """A digest of every setting, secrets included: equal within one process iff equal.

        Keyed with a random per-process key, so it can be logged without exposing anything
        about the password; it is not comparable across processes.
        """
        payload = json.dumps(self._canonical(), sort_keys=True, separators=(",", ":"))
        return hmac.new(_FINGERPRINT_KEY, payload.encode(), hashlib.sha256).hexdigest()[:32]

    def __repr_args__(self) -> Iterator[tuple[str | None, Any]]:
        # Only what differs from the defaults: the 50 unset libpq keywords are noise. Secrets
        # are SecretStr, whose repr is masked.
        for key, info in type(self).model_fields.items():
            value = getattr(self, key)
            if key == "name" or value != info.default:
                yield key, value


#: The pool option keys (everything but the name and the connection target).
POOL_OPTION_KEYS: tuple[str, ...] = (
    "enabled",
    "mincached",
    "maxcached",
    "maxconnections",
    "blocking",
    "timeout",
    "maxusage",
    "setsession",
    "reset",
    "retry_after_reopen",
    "reconnect_timeout",
    "max_lifetime",
    "max_idle",
    "ping",
    "ping_after",
    "leak_threshold",
)


#: Tenant keys allowed unless a template sets ``tenant_pattern``.
DEFAULT_TENANT_PATTERN = "[a-z0-9][a-z0-9_]*"
TENANT = "{tenant}"
TENANT_LITERAL = "{tenant_literal}"
#: Template fields where ``{tenant}`` may appear (``{tenant_literal}`` only in SQL).
PLACEHOLDER_FIELDS = ("dbname", "user", "options", "application_name", "setsession", "search_path")
_PLACEHOLDER = re.compile(r"\{tenant(?:_literal)?\}")
# In SQL, {tenant} becomes a quoted identifier and must stand alone as one (next to another
# placeholder, two quoted tokens would run together).
_SQL_PLACEHOLDER_ALONE = re.compile(r"(?<![\w\"$'}])\{tenant(?:_literal)?\}(?![\w\"$'{])")
_DOLLAR_TAG = re.compile(r"\$(?:[^\W\d$][\w]*)?\$")


def _quoted_spans(sql: str, backslash_escapes: bool) -> list[tuple[int, int]]:
    """Where ``sql`` has string literals, quoted identifiers, dollar quotes and comments.

    A placeholder inside one would be substituted into the middle of it, where the quoting of
    the key no longer protects anything. ``backslash_escapes``: read plain '...' strings as
    with standard_conforming_strings off (E'...' strings always are). An unterminated one runs
    to the end.
    """
    spans: list[tuple[int, int]] = []
    i, n = 0, len(sql)
    while i < n:
        char, start = sql[i], i
        before = sql[i - 1] if i else " "
        if char == "'":
            escapes = backslash_escapes or (
                before in "eE" and (i < 2 or not (sql[i - 2].isalnum() or sql[i - 2] in "_$"))
            )
            i += 1
            while i < n:
                if escapes and sql[i] == "\\":
                    i += 2
                elif sql[i] == "'":
                    if sql[i + 1 : i + 2] == "'":
                        i += 2
                    else:
                        break
                else:
                    i += 1
        elif char == '"':
            i += 1
            while i < n and not (sql[i] == '"' and sql[i + 1 : i + 2] != '"'):
                i += 2 if sql[i] == '"' else 1
        elif char == "$" and not (before.isalnum() or before in "_$"):
            tag = _DOLLAR_TAG.match(sql, i)
            if tag is None:
                i += 1
                continue
            end = sql.find(tag.group(), tag.end())
            i = n if end < 0 else end + len(tag.group()) - 1
        elif sql.startswith("--", i):
            end = sql.find("\n", i)
            i = n if end < 0 else end
        elif sql.startswith("/*", i):
            depth, i = 1, i + 2
            while i < n and depth:
                if sql.startswith("/*", i):
                    depth, i = depth + 1, i + 2
                elif sql.startswith("*/", i):
                    depth, i = depth - 1, i + 2
                else:
                    i += 1
            i -= 1
        else:
            i += 1
            continue
        spans.append((start, min(i, n - 1)))
        i += 1
    return spans


def _placeholders_stand_alone(statement: str) -> bool:
    """Every placeholder in ``statement`` is a token of its own, outside quotes and comments
    (read both with and without standard_conforming_strings)."""
    found = [m.start() for m in _PLACEHOLDER.finditer(statement)]
    if not found:
        return True
    if len(found) != len(_SQL_PLACEHOLDER_ALONE.findall(statement)):
        return False
    for escapes in (False, True):
        spans = _quoted_spans(statement, escapes)
        if any(a <= pos <= b for pos in found for a, b in spans):
            return False
    return True


def _pattern(value: object) -> object:
    if value == "":
        raise _fail("tenant_pattern", "must not be empty")
    if isinstance(value, str):
        try:
            re.compile(value)
        except re.error as exc:
            raise _fail("tenant_pattern", f"is not a valid regular expression: {exc}") from None
    return value


def _schemas(value: object) -> object:
    if isinstance(value, str) and value.lstrip().startswith("["):
        return _statements(value)  # a JSON list, as environment variables give lists
    if isinstance(value, str):
        return tuple(part.strip() for part in value.split(",") if part.strip())
    return value


class TenantSettings(PoolSettings):
    """A ``[tenants.NAME]`` template: the settings of one pool per tenant key.

    ``{tenant}`` may appear in ``dbname``, ``user``, ``options``, ``application_name``,
    ``setsession`` and ``search_path``; :meth:`for_tenant` substitutes a checked key, quoted
    for each place (see there). Tenant pools are built on demand, at most ``max_pools`` at a
    time (the least recently used idle one is closed first), and closed after
    ``idle_pool_timeout`` seconds unused.
    """

    max_pools: Annotated[int, BeforeValidator(_no_bool), Field(ge=1)] = _doc(
        "Most tenant pools open at once.", 100
    )
    idle_pool_timeout: _OptionalSeconds = _doc(
        "Seconds a tenant pool may go unused before it is closed (none: never).", 300.0
    )
    tenant_pattern: Annotated[str, BeforeValidator(_pattern), StringConstraints(min_length=1)] = (
        _doc("Regular expression a whole tenant key must match.", DEFAULT_TENANT_PATTERN)
    )
    tenant_max_length: Annotated[int, BeforeValidator(_no_bool), Field(ge=1, le=1000)] = _doc(
        "Longest tenant key accepted.", 48
    )
    search_path: Annotated[tuple[_Statement, ...], BeforeValidator(_schemas)] = _doc(
        "Schemas set as search_path after every (re)open; {tenant} allowed.", ()
    )
    overrides: dict[str, dict[str, Any]] = _doc(
        "Per-tenant settings: [tenants.NAME.overrides.KEY] maxconnections = 20.", {}
    )

    @model_validator(mode="after")
    def _placeholders_where_allowed(self, info: ValidationInfo) -> TenantSettings:
        problems: list[tuple[str, str]] = []
        for key in type(self).model_fields:
            if key in PLACEHOLDER_FIELDS or key in ("name", "tenant_pattern", "overrides"):
                continue
            value = getattr(self, key)
            text = value.get_secret_value() if isinstance(value, SecretStr) else value
            if isinstance(text, str) and _PLACEHOLDER.search(text):
                problems.append(
                    (key, f"{{tenant}} is allowed only in {', '.join(PLACEHOLDER_FIELDS)}")
                )
        for key in ("dbname", "user", "options", "application_name"):
            text = getattr(self, key)
            if isinstance(text, str) and TENANT_LITERAL in text:
                problems.append((key, "use {tenant}; {tenant_literal} is for SQL"))
        for index, statement in enumerate(self.setsession):
            if not _placeholders_stand_alone(statement):
                problems.append(
                    (
                        f"setsession[{index}]",
                        "{tenant} must stand alone, outside quotes and comments (it becomes a "
                        "quoted identifier; {tenant_literal} a quoted string); use search_path "
                        "for schema names built from the key",
                    )
                )
        context = info.context if isinstance(info.context, dict) else {}
        sink = context.get("problems")
        if problems and isinstance(sink, list):
            sink.extend(problems)  # the loader reports them with paths and sources
        elif problems:
            raise _fail("placeholder", "; ".join(f"{key}: {msg}" for key, msg in problems))
        return self

    def check_tenant(self, key: object) -> str:
        """Return ``key`` if it is an acceptable tenant key, else raise InvalidTenantError.

        Checked before anything touches the network: a string matching ``tenant_pattern`` as
        a whole, at most ``tenant_max_length`` characters, without NUL.
        """
        if (
            not isinstance(key, str)
            or len(key) > self.tenant_max_length
            or "\x00" in key
            or re.fullmatch(self.tenant_pattern, key) is None
        ):
            shown = repr(key) if not isinstance(key, str) or len(key) <= 40 else repr(key[:37])
            if isinstance(key, str) and len(key) > 40:
                shown += f"... ({len(key)} characters)"
            raise InvalidTenantError(
                f"tenant template {self.name!r}: invalid tenant key {shown}; a key must match "
                f"{self.tenant_pattern} and have at most {self.tenant_max_length} characters"
            )
        return key

    def for_tenant(self, key: str) -> PoolSettings:
        """The settings of ``key``'s pool: placeholders substituted, overrides applied.

        The key is checked first (:meth:`check_tenant`). In libpq values (``dbname``,
        ``user``, ``application_name``) it is inserted as is, and the whole value is quoted
        when the connection string is built; in ``options`` white space and backslashes are
        escaped; in SQL, ``{tenant}`` becomes a quoted identifier and ``{tenant_literal}`` a
        quoted string; each ``search_path`` entry becomes one quoted identifier.
        """
        self.check_tenant(key)
        data = {name: getattr(self, name) for name in PoolSettings.model_fields}
        # Overrides first: their values get the same substitution, and an overridden
        # setsession still runs after the search_path (the tenant's isolation).
        data.update(self.overrides.get(key, {}))
        for name in ("dbname", "user", "application_name"):
            if isinstance(data[name], str):
                data[name] = data[name].replace(TENANT, key)
        if isinstance(data["options"], str):
            data["options"] = data["options"].replace(TENANT, escape_option(key))
        statements = []
        if self.search_path:
            schemas = ", ".join(quote_ident(s.replace(TENANT, key)) for s in self.search_path)
            statements.append(f"SET search_path TO {schemas}")
        ident, literal = quote_ident(key), quote_literal(key)

        def quoted(match: re.Match[str]) -> str:
            return literal if match.group() == TENANT_LITERAL else ident

        # One pass: a key that itself holds "{tenant}" is never substituted again.
        statements += [_PLACEHOLDER.sub(quoted, statement) for statement in data["setsession"]]
        data["setsession"] = tuple(statements)
        return PoolSettings.model_construct(**data)

    def describe(self) -> dict[str, Any]:
        out = super().describe()
        out["search_path"] = list(self.search_path)
        out["overrides"] = {
            key: {k: (MASK if k in _SECRET_FIELDS else v) for k, v in table.items()}
            for key, table in self.overrides.items()
        }
        return out


class ServerSettings(_Frozen):
    """A ``[servers.NAME]`` budget: at most ``max_connections`` for all its pools together."""

    name: str
    host: _Text | None = _doc("Host of the server; pools with this host and port belong to it.")
    port: Annotated[int | None, BeforeValidator(_port)] = _doc("Port of the server.", None)
    max_connections: Annotated[int, BeforeValidator(_no_bool), Field(ge=1)] = Field(
        description="Most connections all pools on this server may hold together."
    )

    def describe(self) -> dict[str, Any]:
        return self.model_dump()


class Settings(_Frozen):
    """The whole configuration: enabled pools and tenant templates with ``[defaults]`` merged
    in, and the server budgets.
    """

    pools: dict[str, PoolSettings] = Field(default_factory=dict)
    default: str | None = Field(
        default=None,
        description="The pool used when none is named: the 'default' key, else a pool named "
        "'default', else None.",
    )
    source: str = Field(default="", description="Where the settings came from, for messages.")
    disabled: tuple[str, ...] = Field(default=(), description="Pools switched off (enabled=false).")
    tenants: dict[str, TenantSettings] = Field(default_factory=dict)
    servers: dict[str, ServerSettings] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        for key, pool in self.pools.items():
            if key != pool.name:
                raise _fail("pool_key", f"pools.{key}: holds the settings of pool {pool.name!r}")
        if self.default is not None and self.default not in self.pools:
            raise _fail("default", f"default: pool {self.default!r} is not configured")
        return self

    def pool_names(self) -> list[str]:
        """Names of the enabled pools, in the order they were declared."""
        return list(self.pools)

    def describe(self) -> dict[str, Any]:
        """A JSON-able view of everything, secrets masked (for ``pgregistry check``)."""
        return {
            "source": self.source,
            "default": self.default,
            "disabled": list(self.disabled),
            "pools": {name: pool.describe() for name, pool in self.pools.items()},
            "tenants": {name: t.describe() for name, t in self.tenants.items()},
            "servers": {name: server.describe() for name, server in self.servers.items()},
        }

    def server_of(self, pool: PoolSettings) -> str | None:
        """The budget ``pool`` counts against: its ``server`` key, else the server whose host
        and port (default 5432) are the pool's."""
        return _server_of(pool, self.servers)


def _server_of(pool: PoolSettings, servers: Mapping[str, ServerSettings]) -> str | None:
    if pool.server is not None:
        return pool.server
    params = pool.libpq_params()
    host, port = params.get("host"), params.get("port") or "5432"
    for name, server in servers.items():
        if server.host is not None and server.host == host and str(server.port or 5432) == port:
            return name
    return None


# -- loading -------------------------------------------------------------------------------------


def load_settings(
    path: str | os.PathLike[str] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    secrets_dir: str | os.PathLike[str] | None = None,
) -> Settings:
    """Read, merge and validate the configuration.

    ``path``: the TOML file; None means ``$PGPOOLS_CONFIG``, else ``./pgpools.toml``. A file
    named by either must exist; without one, the default file may be absent (then the
    environment alone configures). ``env``: the environment (default ``os.environ``).
    ``secrets_dir``: a directory of secret files (default ``$PGPOOLS_SECRETS_DIR``, else none).

    Raises :class:`~pgregistry.errors.ConfigError` listing every problem at once.
    """
    environ: Mapping[str, str] = os.environ if env is None else env
    return _build(read_sources(path, environ, secrets_dir))


def settings_from_mapping(data: Mapping[str, Any], *, source: str = "mapping") -> Settings:
    """Validate an already-parsed configuration (the TOML shape) with the same rules."""
    return _build(RawConfig.from_mapping(data, source))


def _dotted(path: tuple[Any, ...]) -> str:
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _got(value: object) -> str:
    if isinstance(value, bool):
        return f" (got {'true' if value else 'false'})"
    if isinstance(value, int | float):
        return f" (got {value!r})"
    if isinstance(value, str):
        shown = value if len(value) <= 40 else value[:37] + "..."
        return f" (got {shown!r})"
    if isinstance(value, Mapping):
        return " (got a table)"
    if isinstance(value, list | tuple):
        return " (got a list)"
    return " (got another type)"


def _message(error: Mapping[str, Any], keys: tuple[str, ...]) -> str:
    """Our own wording for a pydantic error, never echoing a secret field's value."""
    kind = error["type"]
    ctx = error.get("ctx") or {}
    loc = tuple(error["loc"])
    secret = any(part in _SECRET_FIELDS for part in loc)
    got = "" if secret or "input" not in error else _got(error["input"])
    if kind == "extra_forbidden":
        key = str(loc[-1]) if loc else ""
        close = difflib.get_close_matches(key.lower(), keys, n=1, cutoff=0.75)
        return "unknown key" + (f"; did you mean {close[0]!r}?" if close else "")
    simple = {
        "missing": "is required",
        "int_type": "must be a whole number",
        "int_parsing": "must be a whole number",
        "int_from_float": "must be a whole number",
        "float_type": "must be a number",
        "float_parsing": "must be a number",
        "finite_number": "must be a finite number",
        "bool_type": "must be true or false",
        "bool_parsing": "must be true or false",
        "string_type": "must be a string",
        "list_type": "must be a list of strings",
        "tuple_type": "must be a list of strings",
        "dict_type": "must be a table",
        "model_type": "must be a table",
        "string_too_short": "must not be empty",
    }
    if kind in simple:
        return simple[kind] + got
    if kind in ("greater_than_equal", "greater_than", "less_than_equal", "less_than"):
        op = {"greater_than_equal": ">=", "greater_than": ">", "less_than_equal": "<="}.get(
            kind, "<"
        )
        limit = next(iter(ctx.values()), "?")
        if isinstance(limit, float) and limit.is_integer():
            limit = int(limit)
        return f"must be {op} {limit}{got}"
    if kind in ("literal_error", "enum"):
        return f"must be one of {ctx.get('expected', '?')}{got}"
    # Our own PydanticCustomErrors carry finished messages without values; pydantic's other
    # messages do not repeat the input either.
    return str(error["msg"]).removeprefix("Value error, ")


_POOL_KEYS = tuple(k for k in PoolSettings.model_fields if k != "name")


def _normalize(layer: Mapping[Any, Any]) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """Apply the aliases (passwd, opt) and drop keys no pool may set, saying why."""
    out: dict[str, Any] = {}
    problems: list[tuple[str, str]] = []
    for key, value in layer.items():
        key = str(key)
        canonical = _ALIASES.get(key, key)
        if key == "name":
            problems.append((key, "unknown key (a pool's name is the name of its table)"))
        elif canonical in out or (canonical != key and canonical in layer):
            problems.append((key, f"{key} and {canonical} are both set; keep one"))
        else:
            out[canonical] = value
    return out, problems


def _apply_defaults(
    defaults: Mapping[str, Any], layer: Mapping[str, Any]
) -> tuple[dict[str, Any], dict[str, str]]:
    """Merge ``[defaults]`` under one pool's keys; return the merge and each key's origin.

    The target is taken as a whole (:func:`~pgregistry.config_sources.replaced_by`): a pool
    with ``conninfo`` ignores the separate target keys of ``[defaults]`` and the libpq keywords
    its conninfo sets; a pool with separate target keys ignores a ``conninfo`` there.
    """
    skip = replaced_by(layer)
    merged: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for key, value in defaults.items():
        if key not in skip:
            merged[key], origin[key] = value, "defaults"
    for key, value in layer.items():
        merged[key], origin[key] = value, "pool"
    return merged, origin


def _secret_values(data: Mapping[str, Any]) -> list[str]:
    """Every secret-looking value in the raw data, to mask anything that might echo one."""
    found: list[str] = []
    stack: list[Any] = [data]
    while stack:
        node = stack.pop()
        if not isinstance(node, Mapping):
            continue
        for key, value in node.items():
            if isinstance(value, Mapping):
                stack.append(value)
            elif str(key) in _SECRET_FIELDS:
                text = value.get_secret_value() if isinstance(value, SecretStr) else str(value)
                found.append(text)
                if str(key) == "conninfo":
                    try:
                        params = parse_conninfo(text)
                    except ConninfoError:
                        continue
                    found += [v for k, v in params.items() if k in _SECRET_FIELDS]
    # Very short secrets would mask ordinary words of the messages; they are never echoed by
    # construction anyway (this is a second line of defence).
    return [s for s in found if len(s) >= 4]


_Report = Callable[[tuple[Any, ...], str], None]
_ReportErrors = Callable[[ValidationError, tuple[str, ...], Mapping[str, str] | None], None]


def _validate_pool(
    name: str,
    merged: Mapping[str, Any],
    base: tuple[str, ...],
    origin: Mapping[str, str],
    report: _Report,
    report_errors: _ReportErrors,
    model: type[PoolSettings] = PoolSettings,
) -> PoolSettings | None:
    """Validate one pool (or template); report every problem; return it when it has none."""
    sink: list[tuple[str, str]] = []
    try:
        pool = model.model_validate({**merged, "name": name}, context={"problems": sink})
    except ValidationError as exc:
        report_errors(exc, base, origin)
        # The combination checks (conninfo vs. host, mincached vs. maxconnections) run only on
        # a valid model: check again without the keys already reported, so that one wrong
        # key does not hide a conflict between two others.
        bad = {str(error["loc"][0]) for error in exc.errors() if error["loc"]}
        rest = {key: value for key, value in merged.items() if key not in bad}
        with contextlib.suppress(ValidationError):
            model.model_validate({**rest, "name": name}, context={"problems": sink})
        pool = None
    for key, msg in sink:
        report((*base, key), msg)
    return None if sink else pool


def _build(raw: RawConfig) -> Settings:
    problems: list[str] = list(raw.problems)

    secrets = _secret_values(raw.data)

    def report(path: tuple[Any, ...], message: str) -> None:
        # The path is ours and holds no value; redact() would take "password: ..." for a
        # password, so only the message and the source go through it.
        where = raw.where(tuple(str(p) for p in path if not isinstance(p, int)))
        line = f"{_dotted(path)}: {redact(message, secrets)}"
        if where:
            line += f" [{redact(where, secrets)}]"
        if line not in problems:
            problems.append(line)

    def report_errors(
        exc: ValidationError, base: tuple[str, ...], origin: Mapping[str, str] | None = None
    ) -> None:
        for error in exc.errors(include_url=False):
            loc = tuple(error["loc"])
            path: tuple[Any, ...] = base
            if loc and origin is not None and origin.get(str(loc[0])) == "defaults":
                path = ("defaults",)
            report(path + loc, _message(error, _POOL_KEYS))

    data = raw.data
    for key in data:
        if key not in TOP_LEVEL_KEYS:
            close = difflib.get_close_matches(str(key), sorted(TOP_LEVEL_KEYS), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            report((str(key),), f"unknown key{hint}")

    defaults_raw = data.get("defaults", {})
    if not isinstance(defaults_raw, Mapping):
        report(("defaults",), "must be a table of pool settings")
        defaults_raw = {}
    defaults, alias_problems = _normalize(defaults_raw)
    for key, msg in alias_problems:
        report(("defaults", key), msg)
    sink: list[tuple[str, str]] = []
    try:
        PoolSettings.model_validate(
            {**defaults, "name": "defaults"}, context={"layer": "defaults", "problems": sink}
        )
    except ValidationError as exc:
        report_errors(exc, ("defaults",))
    for key, msg in sink:
        report(("defaults", key), msg)

    pools_raw = data.get("pools", {})
    pools_raw = pools_raw if isinstance(pools_raw, Mapping) else {}
    pools: dict[str, PoolSettings] = {}
    disabled: list[str] = []
    for name, base, layer_raw in _named_tables(data, "pools", "pool", report):
        layer, alias_problems = _normalize(layer_raw)
        for key, msg in alias_problems:
            report((*base, key), msg)
        merged, origin = _apply_defaults(defaults, layer)
        pool = _validate_pool(name, merged, base, origin, report, report_errors)
        if pool is None or alias_problems:
            continue
        if pool.enabled:
            pools[pool.name] = pool
        else:
            disabled.append(pool.name)

    tenants = _build_tenants(data, defaults, pools_raw, report, report_errors)
    servers = _build_servers(data, report, report_errors)
    _check_budgets(pools, tenants, servers, report)

    default = data.get("default")
    if default is not None:
        if not isinstance(default, str):
            report(("default",), "must be a pool name" + _got(default))
        elif default in disabled:
            report(("default",), f"names pool {default!r}, which is disabled (enabled = false)")
        elif default not in pools and default not in pools_raw:
            known = ", ".join(pools) or "none"
            report(
                ("default",), f"names pool {default!r}, which is not configured (pools: {known})"
            )
    elif "default" in pools:
        default = "default"

    if problems:
        count = f"{len(problems)} problem" + ("s" if len(problems) != 1 else "")
        header = f"invalid configuration ({redact(raw.source, secrets)}): {count}"
        raise ConfigError(header + "\n  " + "\n  ".join(problems), problems)
    return Settings(
        pools=pools,
        default=default if isinstance(default, str) else None,
        source=raw.source,
        disabled=tuple(disabled),
        tenants=tenants,
        servers=servers,
    )


def _named_tables(
    data: Mapping[str, Any], section: str, what: str, report: _Report
) -> Iterator[tuple[str, tuple[str, str], Mapping[str, Any]]]:
    """The ``[SECTION.NAME]`` tables with a valid name, reporting the others."""
    tables = data.get(section, {})
    if not isinstance(tables, Mapping):
        report((section,), f"must be a table of {what}s")
        return
    for name, table in tables.items():
        base = (section, str(name))
        problem = check_pool_name(name)
        if problem:
            report(base, problem.replace("pool name", f"{what} name"))
        elif not isinstance(table, Mapping):
            report(base, f"must be a table of {what} settings" + _got(table))
        else:
            yield str(name), base, table


def _build_tenants(
    data: Mapping[str, Any],
    defaults: Mapping[str, Any],
    pools_raw: Mapping[str, Any],
    report: _Report,
    report_errors: _ReportErrors,
) -> dict[str, TenantSettings]:
    """Validate the ``[tenants.NAME]`` templates and their per-tenant overrides."""
    tenants: dict[str, TenantSettings] = {}
    for name, base, layer_raw in _named_tables(data, "tenants", "template", report):
        if name in pools_raw:
            report(base, f"a pool is also named {name!r}; pools and templates share names")
            continue
        layer, alias_problems = _normalize(layer_raw)
        for key, msg in alias_problems:
            report((*base, key), msg)
        overrides_raw = layer.pop("overrides", {})
        merged, origin = _apply_defaults(defaults, layer)
        template = _validate_pool(
            name, merged, base, origin, report, report_errors, model=TenantSettings
        )
        if not isinstance(template, TenantSettings) or alias_problems:
            continue
        overrides = _build_overrides(template, merged, overrides_raw, base, report, report_errors)
        if overrides is None:
            continue
        if template.enabled:
            tenants[name] = template.model_copy(update={"overrides": overrides})
    return tenants


_TEMPLATE_ONLY = frozenset(TenantSettings.model_fields) - frozenset(PoolSettings.model_fields)


def _build_overrides(
    template: TenantSettings,
    merged: Mapping[str, Any],
    overrides_raw: object,
    base: tuple[str, ...],
    report: _Report,
    report_errors: _ReportErrors,
) -> dict[str, dict[str, Any]] | None:
    """Check each ``[tenants.NAME.overrides.KEY]`` table against the template's pool keys."""
    if not isinstance(overrides_raw, Mapping):
        report((*base, "overrides"), "must be a table of tenant keys")
        return None
    out: dict[str, dict[str, Any]] = {}
    ok = True
    pool_layer = {k: v for k, v in merged.items() if k not in _TEMPLATE_ONLY}
    for key, table in overrides_raw.items():
        where = (*base, "overrides", str(key))
        try:
            template.check_tenant(key)
        except InvalidTenantError as exc:
            report(where, str(exc))
            ok = False
            continue
        if not isinstance(table, Mapping):
            report(where, "must be a table of pool settings" + _got(table))
            ok = False
            continue
        layer, alias_problems = _normalize(table)
        for k, msg in alias_problems:
            report((*where, k), msg)
        sink: list[tuple[str, str]] = []
        try:
            checked = PoolSettings.model_validate(
                {**pool_layer, **layer, "name": template.name}, context={"problems": sink}
            )
        except ValidationError as exc:
            report_errors(exc, where, None)
            ok = False
            continue
        if not sink:
            # The template's placeholder rules hold for the override's values too.
            with contextlib.suppress(ValidationError):  # its other checks passed above
                TenantSettings.model_validate(
                    {**merged, **layer, "name": template.name}, context={"problems": sink}
                )
        for k, msg in sink:
            report((*where, k), msg)
        if sink or alias_problems:
            ok = False
            continue
        out[str(key)] = {k: getattr(checked, k) for k in layer}
    return out if ok else None


def _build_servers(
    data: Mapping[str, Any], report: _Report, report_errors: _ReportErrors
) -> dict[str, ServerSettings]:
    servers: dict[str, ServerSettings] = {}
    for name, base, table in _named_tables(data, "servers", "server", report):
        try:
            servers[name] = ServerSettings.model_validate({**table, "name": name})
        except ValidationError as exc:
            report_errors(exc, base, None)
    return servers


def _check_budgets(
    pools: Mapping[str, PoolSettings],
    tenants: Mapping[str, TenantSettings],
    servers: Mapping[str, ServerSettings],
    report: _Report,
) -> None:
    """Every ``server`` key names a server; no server's pools open more than its budget."""
    at_start: dict[str, list[tuple[str, int]]] = {name: [] for name in servers}
    members: list[tuple[tuple[str, str], PoolSettings, int]] = [
        (("pools", name), pool, 1) for name, pool in pools.items()
    ] + [(("tenants", name), t, t.max_pools) for name, t in tenants.items()]
    for path, pool, copies in members:
        server = _server_of(pool, servers)
        if server is None:
            continue
        if server not in servers:
            known = ", ".join(servers) or "none"
            report(
                (*path, "server"),
                f"names server {server!r}, which is not configured (servers: {known})",
            )
            continue
        if pool.mincached:
            at_start[server].append((path[1], pool.mincached * copies))
    for name, entries in at_start.items():
        total = sum(n for _, n in entries)
        budget = servers[name].max_connections
        if total > budget:
            parts = ", ".join(f"{pool} {n}" for pool, n in entries)
            report(
                ("servers", name, "max_connections"),
                f"{budget} is below the {total} connections its pools open at start "
                f"(mincached: {parts}; a template counts mincached x max_pools); raise "
                "max_connections or lower mincached",
            )
