"""What a steady connection is opened with: the ``pg.DB`` arguments, ``setsession`` and the
retry option, checked when a connection or pool is made, and the passwords among the arguments
(so that messages can be redacted).
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal, TypeAlias

import pg

from .conninfo import ConninfoError, build_conninfo, is_conninfo, parse_conninfo

__all__ = [
    "CONNECT_PARAMETERS",
    "NETWORK_DEFAULTS",
    "PasswordFile",
    "SetSession",
    "check_connect_args",
    "check_retry",
    "normalize_setsession",
    "resolve_password",
    "secrets_of",
    "with_network_defaults",
]

SetSession: TypeAlias = "Sequence[str] | str | Callable[[pg.DB], object] | None"


def normalize_setsession(setsession: object) -> tuple[str, ...] | Callable[[pg.DB], object]:
    """Check ``setsession`` and return it as a tuple of statements or a callable.

    Accepts ``None``, one SQL string, a sequence of SQL strings, or a callable that receives
    the raw ``pg.DB`` after every (re)open.
    """
    if setsession is None:
        return ()
    if isinstance(setsession, str):
        return (setsession,) if setsession.strip() else ()
    if callable(setsession):
        return setsession
    if isinstance(setsession, Iterable) and not isinstance(setsession, bytes | dict):
        statements = tuple(setsession)
        for index, statement in enumerate(statements):
            if not isinstance(statement, str):
                raise TypeError(
                    f"setsession[{index}]: must be an SQL string, got {type(statement).__name__}"
                )
        return tuple(s for s in statements if s.strip())
    raise TypeError(
        "setsession: must be None, an SQL string, a list of SQL strings or a callable taking "
        f"the pg.DB, got {type(setsession).__name__}"
    )


def check_retry(value: object) -> bool | Literal["always"]:
    """``retry_after_reopen``: True (run again only what cannot have reached the server),
    False (never run again) or ``"always"`` (also a statement lost in flight: it may run twice).
    """
    if value == "always":
        return "always"
    if isinstance(value, bool):
        return value
    raise ValueError(f"retry_after_reopen: must be true, false or 'always' (got {value!r})")


# What pg.connect() (and so pg.DB) accepts, in its positional order.
CONNECT_PARAMETERS = ("dbname", "host", "port", "opt", "user", "passwd", "nowait")


def check_connect_args(args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
    """Refuse now what ``pg.connect()`` would refuse at the first open (a TypeError then).

    PyGreSQL takes only ``dbname, host, port, opt, user, passwd, nowait``; every other libpq
    keyword belongs in a conninfo string given as ``dbname``.
    """
    if len(args) > len(CONNECT_PARAMETERS):
        raise TypeError(
            f"pg.DB takes at most {len(CONNECT_PARAMETERS)} connection arguments "
            f"({', '.join(CONNECT_PARAMETERS)}), got {len(args)}"
        )
    for keyword in kwargs:
        if keyword not in CONNECT_PARAMETERS:
            raise TypeError(
                f"{keyword}: not a connection argument of pg.DB (those are "
                f"{', '.join(CONNECT_PARAMETERS)}); put other libpq keywords in a conninfo "
                f"string: dbname='dbname=app {keyword}=...'"
            )
    taken = CONNECT_PARAMETERS[: len(args)]
    for keyword in kwargs:
        if keyword in taken:
            raise TypeError(f"{keyword}: given both by position and by keyword")


# The password of a postgresql:// URI as written (userinfo or ?password=): libpq quotes such a
# token verbatim in errors like 'invalid percent-encoded token: "..."'.
_URI = re.compile(r"\s*postgres(?:ql)?://", re.IGNORECASE)
# Up to the last "@" of the authority, as libpq's echo of "u:p@ss@host" may show "ss".
_URI_USERINFO_PASSWORD = re.compile(
    r"\s*postgres(?:ql)?://[^:@/?#]*:([^/?#]+)@[^@/?#]*(?:$|[/?#])", re.IGNORECASE
)
_URI_PARAM_PASSWORD = re.compile(r"[?&]password=([^&#]+)", re.IGNORECASE)


def secrets_of(args: tuple[Any, ...], kwargs: dict[str, Any]) -> tuple[str, ...]:
    """Literal passwords among the pg.DB arguments (positional ``passwd`` is the 6th)."""
    found = [kwargs.get("passwd"), kwargs.get("password")]
    if len(args) >= 6:
        found.append(args[5])
    dbname = args[0] if args else kwargs.get("dbname")
    if isinstance(dbname, str) and _URI.match(dbname):
        userinfo = _URI_USERINFO_PASSWORD.match(dbname)
        if userinfo:
            password = userinfo.group(1)
            found.append(password)
            # libpq splits "p@ss@host" at the first "@" and may echo "ss@host" as the host:
            # every piece of such a password is a secret too.
            found.extend(password.split("@")[1:])
        found.extend(_URI_PARAM_PASSWORD.findall(dbname))
    return tuple(s for s in found if isinstance(s, str) and s)


# libpq settings that bound how long a dead or unreachable server can hold a caller: a connect
# gives up after connect_timeout; TCP keepalives find a peer gone while the connection is idle
# (30 s + 3 x 10 s); tcp_user_timeout fails a send the peer never acknowledged (30 s). Applied
# only where the connection target does not set them itself.
NETWORK_DEFAULTS: dict[str, str] = {
    "connect_timeout": "10",
    "keepalives": "1",
    "keepalives_idle": "30",
    "keepalives_interval": "10",
    "keepalives_count": "3",
    "tcp_user_timeout": "30000",
}
# Environment variables through which libpq takes some of them: a value there wins too.
_NETWORK_ENV = {"connect_timeout": "PGCONNECT_TIMEOUT"}


def with_network_defaults(
    args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any], float]:
    """The ``pg.DB`` arguments with :data:`NETWORK_DEFAULTS` added where not set, and the
    connect timeout in effect (seconds; the bound for a ping or a reset too).

    The defaults go into ``dbname`` as a keyword conninfo (libpq reads a ``dbname`` holding
    ``=`` as one); ``host``, ``port`` and the other arguments still override it. A target
    naming a ``service`` (its file may set them) or a ``dbname`` that cannot be parsed is left
    as it is.
    """
    positional = bool(args)
    dbname = args[0] if positional else kwargs.get("dbname")
    params: dict[str, str] = {}
    if isinstance(dbname, str) and dbname:
        if is_conninfo(dbname):
            try:
                params = parse_conninfo(dbname)
            except ConninfoError:
                return args, kwargs, _timeout_of({})
        else:
            params = {"dbname": dbname}
    elif dbname is not None:
        return args, kwargs, _timeout_of({})  # not a string: pg.DB reports it
    if "service" in params or os.environ.get("PGSERVICE"):
        return args, kwargs, _timeout_of(params)
    added = {
        key: value
        for key, value in NETWORK_DEFAULTS.items()
        if key not in params and not os.environ.get(_NETWORK_ENV.get(key, ""), "")
    }
    if not added:
        return args, kwargs, _timeout_of(params)
    merged = build_conninfo({**params, **added})
    if positional:
        return (merged, *args[1:]), kwargs, _timeout_of({**params, **added})
    return args, {**kwargs, "dbname": merged}, _timeout_of({**params, **added})


def _timeout_of(params: dict[str, str]) -> float:
    """libpq's connect_timeout as it applies (conninfo, else PGCONNECT_TIMEOUT), in seconds;
    the default's when it is unset, zero (no limit) or not a number."""
    text = params.get("connect_timeout") or os.environ.get("PGCONNECT_TIMEOUT", "")
    try:
        seconds = float(text)
    except ValueError:
        seconds = 0.0
    return seconds if seconds > 0 else float(NETWORK_DEFAULTS["connect_timeout"])


class PasswordFile:
    """A password read afresh from ``path`` for every new connection (credential rotation).

    Pass it, or any callable returning the password, as ``passwd``: a rotated secret file is
    used by the next connection opened, with no reload, while connections opened with the old
    password keep working until their lifetime ends. Surrounding white space and the final
    newline are stripped. Its repr shows the path, never the password.
    """

    __slots__ = ("path",)

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)

    def __call__(self) -> str:
        with open(self.path, encoding="utf-8") as file:
            return file.read().strip()

    def __repr__(self) -> str:
        return f"PasswordFile({self.path!r})"


def resolve_password(
    args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[tuple[Any, ...], dict[str, Any], str | None]:
    """The ``pg.DB`` arguments with a callable ``passwd`` replaced by what it returns now, and
    that password (None when the password is not a callable).

    Raises ValueError naming ``passwd`` (never the password) when the callable fails or does
    not return a string.
    """
    if len(args) >= 6 and callable(args[5]):
        password = _call_password(args[5])
        return (*args[:5], password, *args[6:]), kwargs, password
    source = kwargs.get("passwd")
    if callable(source):
        password = _call_password(source)
        return args, {**kwargs, "passwd": password}, password
    return args, kwargs, None


def _call_password(source: Any) -> str:
    try:
        password = source()
    except Exception as exc:
        raise ValueError(
            f"passwd: the password source {source!r} failed ({type(exc).__name__})"
        ) from None
    if not isinstance(password, str):
        raise ValueError(f"passwd: the password source returned {type(password).__name__}, not str")
    return password
