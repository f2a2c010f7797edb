"""What one borrower leaves on a pooled connection, and how it is cleaned before the next.

A ``pg.DB`` carries state on the client side (``debug``, typecasts, ``use_regtypes``, the
notice receiver, the cast hook, non-blocking mode) and caches of what it learnt from the
server (table columns, generated columns, primary keys, privileges, types). The session on the
server carries ``LISTEN`` registrations, undelivered notifications and temporary objects.
Nothing of that may reach the next borrower, and none of it may cost a round trip when the
borrower did not touch it: the proxy notes what a borrower does as *dirt* (bits below), and
the return path cleans only what is dirty.

Client state survives a transparent reopen within a checkout (:class:`ClientState` carries it
to the new ``pg.DB``); the caches are flushed whenever the server session changes (``DISCARD``,
``reset()``, a new connection), since they may describe temporary tables that are gone.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

import pg
from pg.adapt import DbType, DbTypes

__all__ = [
    "CLIENT",
    "LISTENED",
    "RAW",
    "SCHEMA",
    "SESSION",
    "TEMP",
    "UNLISTEN_ALL",
    "ClientState",
    "PooledDbTypes",
    "drain_notifications",
    "flush_caches",
    "reset_client_state",
    "scan_statement",
]

#: The borrower changed client-side state of the pg.DB (debug, typecasts, regtypes, hooks).
CLIENT = 1
#: The borrower ran LISTEN: notifications may be pending, registrations may be left.
LISTENED = 2
#: The borrower created temporary objects (tables, views, sequences).
TEMP = 4
#: LISTEN registrations unknown to us may exist: send ``UNLISTEN *``.
UNLISTEN_ALL = 8
#: The borrower changed the schema, privileges or name resolution: flush pg.DB's caches.
SCHEMA = 16
#: The borrower had the raw ``pg.Connection`` (``db.db``): anything may have been done to it.
RAW = CLIENT | LISTENED | TEMP | UNLISTEN_ALL | SCHEMA
#: Dirt that only the server can clean (a round trip on return).
SESSION = LISTENED | TEMP | UNLISTEN_ALL

# Object ids below this are PostgreSQL's own (FirstNormalObjectId): built-in types never change,
# so what is known about them survives any session change.
_FIRST_NORMAL_OID = 16384

# LISTEN/UNLISTEN and their channel, a word that creates a temporary object, or one that changes
# what pg.DB's caches describe (schema, privileges, name resolution). Matched on lower case.
_WORDS = re.compile(
    # after LISTEN: blanks or comments (the server reads those as blanks), or a quote at once
    r'\b(?:(un)?listen(?:(?:\s|/\*[\s\S]*?\*/|--[^\n]*\n)+|(?="))'
    r'("(?:[^"]|"")+"|[a-z_][a-z0-9_$]*|\*)'
    r"|(temp(?:orary)?\b|pg_temp)"
    r"|(?:create|drop|alter|grant|revoke|comment)\b|search_path\b"
    r"|(?:set|reset)\s+(?:session\s+)?(?:role|authorization)\b)"
)
_WORDS_ANY_CASE = re.compile(_WORDS.pattern, re.IGNORECASE)
# Cheap substring tests first: most statements contain none of these.
_HINTS = (
    "listen",
    "temp",
    "create",
    "drop",
    "alter",
    "grant",
    "revoke",
    "comment",
    "search_path",
    "role",
    "authorization",
)


def scan_statement(command: str, channels: set[str], utility: bool = True) -> int:
    """The dirt ``command`` leaves (LISTENED, TEMP, SCHEMA); ``channels`` follows LISTEN.

    ``utility``: the statement returned neither rows nor a count (LISTEN, CREATE, SET, ...);
    for one that returned a count (INSERT, CREATE TABLE AS, SELECT INTO) only temporary
    objects are looked for, so that DML pays a substring test and nothing more.

    A text test, not a parser: a word in a string literal counts too (the price is a flush or
    a needless round trip on return, never a leak). Channels are kept quoted, folded to lower
    case when written unquoted, as the server does.
    """
    lowered = command.lower()
    if utility:
        if not any(hint in lowered for hint in _HINTS):
            return 0
    elif "temp" not in lowered:
        return 0
    dirt = 0
    # Matched on the lower-cased text, unless lowering changed its length (a few non-ASCII
    # letters do): positions must be the original's, for a quoted channel.
    same = len(lowered) == len(command)
    words = _WORDS.finditer(lowered) if same else _WORDS_ANY_CASE.finditer(command)
    for match in words:
        un, channel, temp = match.group(1, 2, 3)
        if temp is not None:
            dirt |= TEMP
        elif not utility:
            continue
        elif channel is None:
            dirt |= SCHEMA
        else:
            dirt |= LISTENED
            if channel == "*":
                if un:
                    channels.clear()
                continue
            if channel.startswith('"'):  # quoted: its case matters, take it from the original
                channel = command[match.start(2) : match.end(2)]
            else:
                channel = f'"{channel.lower()}"'
            if un:
                channels.discard(channel)
            else:
                channels.add(channel)
    return dirt


def drain_notifications(cnx: Any, limit: int = 100_000) -> int:
    """Drop the notifications libpq has received and not handed out; return how many."""
    for count in range(limit):
        if cnx.getnotify() is None:
            return count
    return limit


class PooledDbTypes(DbTypes):
    """pg.DB's type cache, remembering built-in types across session changes.

    ``rows`` (shared by every pg.DB of one steady connection) keeps the ``pg_type`` row of
    each built-in type met: after a flush, looking a built-in type up again costs no round
    trip. Typecasts the borrower sets with :meth:`set_typecast` or removes with
    :meth:`reset_typecast` are recorded, so that they can be carried to a new connection
    (:class:`ClientState`) and undone on return.
    """

    def __init__(self, db: pg.DB, rows: dict[int | str, tuple[Any, ...]]) -> None:
        super().__init__(db)
        self._rows = rows
        #: The borrower's typecast calls, in order: (type or types, cast or None to reset).
        self.borrower_casts: list[tuple[str | Sequence[str] | None, Callable[..., Any] | None]]
        self.borrower_casts = []

    def __missing__(self, key: int | str) -> DbType:
        row = self._rows.get(key)
        if row is None:
            typ = super().__missing__(key)
            if typ.oid < _FIRST_NORMAL_OID:
                row = (
                    typ.oid,
                    typ.pgtype,
                    typ.regtype,
                    typ.typlen,
                    typ.typtype,
                    typ.category,
                    typ.delim,
                    typ.relid,
                )
                self._rows[key] = self._rows[typ.oid] = self._rows[typ.pgtype] = row
            return typ
        typ = self.add(*row)
        self[typ.oid] = self[typ.pgtype] = typ
        return typ

    def set_typecast(self, typ: str | Sequence[str], cast: Callable[..., Any]) -> None:
        super().set_typecast(typ, cast)
        self.borrower_casts.append((typ, cast))

    def reset_typecast(self, typ: str | Sequence[str] | None = None) -> None:
        super().reset_typecast(typ)
        self.borrower_casts.append((typ, None))

    def replay(
        self, casts: list[tuple[str | Sequence[str] | None, Callable[..., Any] | None]]
    ) -> None:
        """Apply typecast calls recorded on another connection (recorded here again)."""
        for typ, cast in casts:
            if cast is None:
                self.reset_typecast(typ)
            else:
                assert typ is not None
                self.set_typecast(typ, cast)

    def forget(self) -> None:
        """Drop every cached type and typecast; keep the borrower's own typecasts."""
        self.clear()
        self._typecasts.clear()
        if self.borrower_casts:
            casts = list(self.borrower_casts)
            self.borrower_casts.clear()
            self.replay(casts)


# pg.DB's caches of table facts (PyGreSQL 6: db.py, DB.__init__).
_CACHES = ("_attnames", "_generated", "_pkeys", "_privileges")


def flush_caches(db: pg.DB) -> None:
    """Forget what ``db`` cached about the session (no I/O): after ``DISCARD``, a reset.

    Columns, generated columns, primary keys and privileges of tables (a temporary table of
    the same name may have gone or come), and types and typecasts (composite types of
    temporary tables); built-in types come back without a round trip (:class:`PooledDbTypes`).
    """
    for name in _CACHES:
        cache = getattr(db, name, None)  # pg.DB's private caches: absent ones are skipped
        if cache is not None:
            cache.clear()
    dbtypes = db.dbtypes
    if isinstance(dbtypes, PooledDbTypes):
        dbtypes.forget()
    else:
        dbtypes.clear()
        dbtypes.reset_typecast()


_DEFAULT = object()  # the cast hook pg.DB installs itself


class ClientState:
    """The client-side state a borrower set on a pg.DB, to carry to a reopened connection."""

    __slots__ = ("casts", "debug", "hook", "non_blocking", "receiver", "regtypes")

    def __init__(self, db: pg.DB) -> None:
        self.debug = db.debug
        dbtypes = db.dbtypes
        self.regtypes: bool = dbtypes._regtypes
        self.casts = list(getattr(dbtypes, "borrower_casts", ()))
        self.receiver: Any = None
        self.hook: Any = _DEFAULT
        self.non_blocking = False
        cnx: Any = db.db
        try:  # a lost connection still answers these; a closed one does not
            self.receiver = cnx.get_notice_receiver()
            hook = cnx.get_cast_hook()
            if hook != dbtypes.typecast:
                self.hook = hook
            self.non_blocking = cnx.is_non_blocking()
        except Exception:
            pass

    def apply(self, db: pg.DB) -> None:
        """Set this state on the (new) ``db``."""
        db.debug = self.debug
        if self.regtypes:
            db.use_regtypes(True)
        dbtypes = db.dbtypes
        if self.casts and isinstance(dbtypes, PooledDbTypes):
            dbtypes.replay(self.casts)
        cnx: Any = db.db
        if self.receiver is not None:
            cnx.set_notice_receiver(self.receiver)
        if self.hook is not _DEFAULT:
            cnx.set_cast_hook(self.hook)
        if self.non_blocking:
            cnx.set_non_blocking(True)


def reset_client_state(db: pg.DB) -> bool:
    """Put ``db``'s client-side state back as a new pg.DB has it; True if typecasts changed.

    ``debug`` off, simple type names (``use_regtypes(False)``), the borrower's typecasts
    undone, no notice receiver, pg.DB's own cast hook, blocking mode. No I/O.
    """
    db.debug = None
    dbtypes = db.dbtypes
    changed = False
    if dbtypes._regtypes:
        db.use_regtypes(False)  # clears the type and column caches itself
        changed = True
    if isinstance(dbtypes, PooledDbTypes) and dbtypes.borrower_casts:
        dbtypes.reset_typecast()
        dbtypes.borrower_casts.clear()
        changed = True
    cnx: Any = db.db
    if cnx.get_notice_receiver() is not None:
        cnx.set_notice_receiver(None)
    if cnx.get_cast_hook() != dbtypes.typecast:
        cnx.set_cast_hook(dbtypes.typecast)
        changed = True
    if cnx.is_non_blocking():
        cnx.set_non_blocking(False)
    return changed
