"""What a steady connection is opened with: the ``pg.DB`` arguments, ``setsession`` and the
retry option, checked when a connection or pool is made, and the passwords among the arguments
(so that messages can be redacted).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Literal, TypeAlias

import pg

__all__ = [
    "CONNECT_PARAMETERS",
    "SetSession",
    "check_connect_args",
    "check_retry",
    "normalize_setsession",
    "secrets_of",
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
