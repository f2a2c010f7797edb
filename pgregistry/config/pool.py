"""``PoolSettings``: one pool's validated settings, its connection target and its views.

The pool options take their defaults and descriptions from :mod:`pgregistry.options`; the
libpq keywords are fields of their own (``None`` when unset).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
from collections.abc import Iterator, Mapping
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BeforeValidator,
    Field,
    SecretStr,
    ValidationInfo,
    field_validator,
    model_validator,
)

from ..connect_args import PasswordFile
from ..conninfo import MASK, SECRET_KEYWORDS, build_conninfo, mask_conninfo, parse_conninfo
from ..options import CONFIG_ONLY, OPTIONS
from ..policies import PingPolicy, ResetPolicy
from ..pooling import statement_timeout_conflicts, transaction_pooling_problems
from .fields import (
    _ALIASES,
    _EXCLUSIVE_TARGET,
    _PARAM_ORDER,
    _SECRET_FIELDS,
    TARGET_KEYS,
    _Count,
    _doc,
    _fail,
    _Frozen,
    _Hosts,
    _Mode3,
    _no_nul,
    _not_conninfo,
    _option,
    _OptionalCount,
    _OptionalSeconds,
    _ping_policy,
    _port,
    _Replication,
    _reset_policy,
    _Seconds,
    _Secret,
    _ServerPooling,
    _SessionAttrs,
    _SslMode,
    _Statement,
    _statements,
    _StatementTimeout,
    _Text,
    _TlsVersion,
    _valid_conninfo,
    check_pool_name,
)

__all__ = ["POOL_OPTION_KEYS", "PoolSettings"]

# Process-wide key for fingerprints: equal settings give equal fingerprints within one process,
# and a fingerprint (which covers the password) is useless to anyone outside it.
_FINGERPRINT_KEY = os.urandom(32)


class PoolSettings(_Frozen):
    """One pool's settings: the :class:`~pgregistry.pool.PooledPg` arguments and its target.

    Every field is a config key of the same name (``passwd`` and ``opt`` are accepted for
    ``password`` and ``options``). libpq keywords other than the target's (``sslmode``,
    ``connect_timeout``, ...) are fields too, ``None`` when unset. Equality compares
    everything, secrets included, so a changed password makes a changed pool.
    """

    name: str = Field(description="The pool's name: its [pools.NAME] table.")
    enabled: bool = _doc(CONFIG_ONLY["enabled"], True)

    # The pool options: default and description from pgregistry.options (one source of truth).
    # sizing
    mincached: _Count = _option("mincached")
    maxcached: _Count = _option("maxcached")
    maxconnections: _Count = _option("maxconnections")

    # behaviour
    blocking: bool = _option("blocking")
    timeout: _OptionalSeconds = _option("timeout")
    maxusage: _OptionalCount = _option("maxusage")
    setsession: Annotated[tuple[_Statement, ...], BeforeValidator(_statements)] = _option(
        "setsession"
    )
    reset: Annotated[ResetPolicy, BeforeValidator(_reset_policy)] = _option("reset")
    retry_after_reopen: bool | Literal["always"] = _option("retry_after_reopen")
    reconnect_timeout: _Seconds = _option("reconnect_timeout")

    # health
    max_lifetime: _OptionalSeconds = _option("max_lifetime")
    max_idle: _OptionalSeconds = _option("max_idle")
    ping: Annotated[PingPolicy, BeforeValidator(_ping_policy)] = _option("ping")
    ping_after: _Seconds = _option("ping_after")
    leak_threshold: _OptionalSeconds = _option("leak_threshold")
    server: Annotated[str, AfterValidator(_no_nul)] | None = _doc(
        "The [servers.NAME] budget this pool counts against (unset: matched by host and port)."
    )

    # reads (issue 14: a standby for reads, the primary as fallback)
    read_pool: Annotated[str, AfterValidator(_no_nul)] | None = _doc(
        "A configured pool that serves this pool's readonly=True checkouts (a standby)."
    )
    read_fallback: bool = _doc(
        "When the read_pool cannot serve (down, or lagging past its max_replica_lag), use this "
        "pool instead (default true); false raises the read pool's error.",
        True,
    )
    max_replica_lag: Annotated[float, Field(ge=0)] | None = _doc(
        "On a read pool: seconds of replication lag past which it is not used until it has "
        "caught up (checked by the upkeep workers, never per checkout); unset: no limit.",
    )

    # server (issue 15: a pooler in the way; pgregistry.pooling)
    server_pooling: _ServerPooling = _option("server_pooling")
    statement_timeout: _StatementTimeout = _option("statement_timeout")

    # connection target
    host: _Hosts | None = _doc(
        "Host name, IP address or socket directory; several (a comma list or a TOML list) are "
        "tried in order (see target_session_attrs)."
    )
    hostaddr: _Text | None = _doc("IP address, to skip the host name lookup.")
    port: Annotated[int | str | None, BeforeValidator(_port)] = _doc("Port number.")
    dbname: Annotated[str, AfterValidator(_no_nul), AfterValidator(_not_conninfo)] | None = _doc(
        "Database name."
    )
    user: _Text | None = _doc("User name.")
    password: _Secret | None = _doc("Password (alias passwd); unset: .pgpass or PGPASSWORD.")
    password_file: _Text | None = _doc(
        "A file holding the password, read afresh for every new connection (rotation)."
    )
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
    def _bounded_by_default(self) -> PoolSettings:
        # A configured pool is bounded by default (#16), but never below what the pool itself
        # asks for: an unset maxconnections is raised to mincached and maxcached, as PooledPg
        # raises a maxconnections below maxcached, instead of refusing a key never written.
        if "maxconnections" not in self.model_fields_set and self.maxconnections:
            bound = max(self.maxconnections, self.mincached, self.maxcached)
            object.__setattr__(self, "maxconnections", bound)  # frozen: set once, here
        return self

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
        if self.password_file is not None:
            if self.password is not None or "password" in self._conninfo_params():
                problems.append(("password_file", "cannot be combined with a password; keep one"))
            elif layer != "defaults":
                try:
                    PasswordFile(self.password_file)()
                except (OSError, UnicodeError) as exc:
                    problems.append(("password_file", f"cannot be read ({type(exc).__name__})"))
        hosts = len(self.host.split(",")) if self.host else 1
        ports = len(str(self.port).split(",")) if self.port is not None else 1
        if ports > 1 and ports != hosts:
            problems.append(
                ("port", f"{ports} ports for {hosts} host(s): give one port, or one per host")
            )
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
        if layer != "defaults":
            problems += self._pooling_problems()
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

    def _pooling_problems(self) -> list[tuple[str, str]]:
        """What ``server_pooling`` and ``statement_timeout`` refuse (:mod:`pgregistry.pooling`):
        what a transaction pooler breaks, and a statement_timeout set twice."""
        options = self.libpq_params().get("options")
        found = statement_timeout_conflicts(self.statement_timeout, self.setsession, options)
        if self.server_pooling == "transaction":
            found += transaction_pooling_problems(self.setsession, self.reset, options)
        return [(problem.field, problem.message) for problem in found]

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
        kwargs: dict[str, Any] = {option.name: getattr(self, option.name) for option in OPTIONS}
        kwargs["setsession"] = list(self.setsession) or None
        kwargs["name"] = self.name
        kwargs["dbname"] = self.dsn()
        if self.password_file is not None:
            kwargs["passwd"] = PasswordFile(self.password_file)
        return kwargs

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
POOL_OPTION_KEYS: tuple[str, ...] = ("enabled", *(o.name for o in OPTIONS))
