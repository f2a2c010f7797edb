"""Field types and validators shared by the configuration models, and the key names.

Every validator raises a :class:`~pydantic_core.PydanticCustomError` with a finished message
that never repeats the value (the loader adds ``(got ...)`` itself, except for secrets).
"""

from __future__ import annotations

import json
import re
from typing import Annotated, Any, Literal

from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    StringConstraints,
)
from pydantic_core import PydanticCustomError

from ..conninfo import LIBPQ_KEYWORDS, TARGET_KEYWORDS, ConninfoError, is_conninfo, parse_conninfo
from ..options import KEY_ALIASES, SECRET_KEYS, option
from ..policies import PingPolicy, ResetPolicy, parse_ping, parse_reset
from ..pooling import STATEMENT_TIMEOUT_MAX

#: Keys that name the connection target one by one; ``conninfo`` replaces all of them but
#: ``password``, which may accompany a conninfo that holds none (say, from a secret file).
TARGET_KEYS: tuple[str, ...] = TARGET_KEYWORDS
_EXCLUSIVE_TARGET = tuple(key for key in TARGET_KEYS if key != "password")
#: Other spellings accepted for a key (:data:`pgregistry.options.KEY_ALIASES`).
_ALIASES = KEY_ALIASES
#: Keys whose values are secret (:data:`pgregistry.options.SECRET_KEYS`).
_SECRET_FIELDS = SECRET_KEYS
# Target keys first (easier to read), then the other keywords in libpq's order.
_PARAM_ORDER = TARGET_KEYS + tuple(k for k in LIBPQ_KEYWORDS if k not in TARGET_KEYS)
_POOL_NAME = re.compile(r"[a-z][a-z0-9_]*")
_POOL_NAME_MAX = 63


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


def _host_list(value: object) -> object:
    """A host given as a TOML list (several hosts, tried in order by libpq) as libpq's comma
    list; each entry a non-empty string without a comma."""
    if not isinstance(value, list | tuple):
        return value
    if not value or not all(isinstance(h, str) and h.strip() and "," not in h for h in value):
        raise _fail("host", "a list of hosts must hold non-empty names without commas")
    return ",".join(h.strip() for h in value)


def _port(value: object) -> object:
    if isinstance(value, list | tuple):
        if not value or not all(
            isinstance(p, int | str) and not isinstance(p, bool) for p in value
        ):
            raise _fail("port", "a list of ports must hold port numbers 1-65535, one per host")
        ports = [_port(p) for p in value]
        return ",".join(str(p) for p in ports) if len(ports) > 1 else ports[0]
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
#: statement_timeout: seconds up to PostgreSQL's limit (INT_MAX milliseconds), or none.
_StatementTimeout = Annotated[
    Annotated[float, Field(ge=0, le=STATEMENT_TIMEOUT_MAX, allow_inf_nan=False)] | None,
    BeforeValidator(_none_word),
]
_ServerPooling = Literal["none", "session", "transaction"]
_OptionalCount = Annotated[Annotated[int, Field(ge=0)] | None, BeforeValidator(_none_word)]
_Text = Annotated[str, AfterValidator(_no_nul)]
_Hosts = Annotated[str, BeforeValidator(_host_list), AfterValidator(_no_nul)]
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


def _option(name: str) -> Any:
    """A pool option's field: default and description from :data:`pgregistry.options.OPTIONS`.

    The configuration's default (``effective_config_default``), which may differ from
    ``PooledPg``'s where the table says why; policy names are parsed by the field's validator.
    """
    entry = option(name)
    default = entry.effective_config_default
    if name == "reset":
        default = parse_reset(default)
    elif name == "ping":
        default = parse_ping(default)
    return Field(default=default, description=entry.doc)


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)
