"""Server roles: what a connection target asks for (libpq's ``target_session_attrs``), and
whether a connection's server still has it, told without a round trip.
"""

from __future__ import annotations

import os
from typing import Any

from .conninfo import ConninfoError, is_conninfo, parse_conninfo

__all__ = ["required_role", "server_has_role"]


# target_session_attrs values that ask for a role a connection must keep.
_ROLES = frozenset({"read-write", "primary", "read-only", "standby"})


def required_role(args: tuple[Any, ...], kwargs: dict[str, Any]) -> str | None:
    """The server role the connection target asks for (libpq's ``target_session_attrs``, from
    the conninfo or ``PGTARGETSESSIONATTRS``): ``read-write``, ``primary``, ``read-only``,
    ``standby``; None for ``any``, ``prefer-standby`` or when it is not set.
    """
    dbname = args[0] if args else kwargs.get("dbname")
    value = ""
    if isinstance(dbname, str) and is_conninfo(dbname):
        try:
            value = parse_conninfo(dbname).get("target_session_attrs", "")
        except ConninfoError:
            value = ""
    if not value:
        value = os.environ.get("PGTARGETSESSIONATTRS", "")
    value = value.strip().lower()
    return value if value in _ROLES else None


def server_has_role(cnx: Any, role: str | None) -> bool:
    """True unless the server of ``cnx`` now reports a role other than ``role`` asks for.

    No round trip: PostgreSQL 14 and later push ``in_hot_standby`` and
    ``default_transaction_read_only`` to the client when they change (seen on the next
    reply after a promotion or a fence). Older servers report neither: True.
    """
    if role is None or cnx is None:
        return True
    try:
        hot_standby: str | None = cnx.parameter("in_hot_standby")
        if hot_standby is None:
            return True
        standby = hot_standby == "on"
        read_only = standby or cnx.parameter("default_transaction_read_only") == "on"
    except Exception:
        return True  # a closed or broken connection is found by the other checks
    if role == "read-write":
        return not read_only
    if role == "primary":
        return not standby
    if role == "read-only":
        return read_only
    return standby  # "standby"
