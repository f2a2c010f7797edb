"""Server-side pooling in the way (``server_pooling``) and the ``statement_timeout`` option.

A server-side pooler (PgBouncer, pgcat, Odyssey, RDS Proxy, Supavisor) in *transaction* mode
hands a server connection to a client for one transaction only, then to the next client. What
a client leaves in the server session (``SET``, ``LISTEN``, ``PREPARE``, temporary tables,
session advisory locks) reaches another client, or is missing in the next transaction. So
under ``server_pooling = "transaction"`` this module refuses, when a pool is configured or
built, what cannot work there, naming the statement and the alternative
(:func:`check_server_pooling`, :func:`transaction_pooling_problems`).

``statement_timeout`` (seconds) reaches the server in the one way each mode allows
(:func:`statement_timeout_via`):

- ``"none"`` (a direct connection): a startup option, ``options=-c statement_timeout=Nms``,
  merged with the target's own ``options`` (:func:`connect_args`). No round trip; ``RESET``
  and ``DISCARD ALL`` restore it, as it is the session's default.
- ``"session"``: PgBouncer refuses every ``options`` startup parameter (``unsupported startup
  parameter: options``), but the session stays with the client: ``SET statement_timeout``
  after every (re)open, before ``setsession`` (:func:`configure`).
- ``"transaction"``: neither works; ``SET LOCAL statement_timeout`` inside each transaction
  begun with ``begin()`` (:func:`begin_statement`, which the steady connection runs). A
  statement outside a transaction gets the role's setting: ``ALTER ROLE app SET
  statement_timeout = '5s'`` on the server.

A leaf: it uses only :mod:`pgregistry.sql`, :mod:`pgregistry.conninfo` and
:mod:`pgregistry.policies`, so the configuration, the pool and the command line share it.
"""

from __future__ import annotations

import functools
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, NamedTuple, TypeAlias

import pg

from .conninfo import ConninfoError, build_conninfo, is_conninfo, parse_conninfo, redact
from .errors import PoolerUnsupportedError
from .policies import ResetPolicy, parse_reset
from .sql import quoted_spans

__all__ = [
    "SERVER_POOLING_MODES",
    "STATEMENT_TIMEOUT_MAX",
    "Configured",
    "PoolingProblem",
    "ServerPooling",
    "begin_statement",
    "check_server_pooling",
    "check_statement_timeout",
    "configure",
    "connect_args",
    "parse_server_pooling",
    "startup_option",
    "statement_timeout_conflicts",
    "statement_timeout_ms",
    "statement_timeout_via",
    "target_options",
    "transaction_pooling_problems",
]

ServerPooling: TypeAlias = Literal["none", "session", "transaction"]
#: The values of ``server_pooling``, in the order the documentation gives them.
SERVER_POOLING_MODES: tuple[ServerPooling, ...] = ("none", "session", "transaction")
#: PostgreSQL's largest statement_timeout: INT_MAX milliseconds (about 24.8 days), in seconds.
STATEMENT_TIMEOUT_MAX = 2147483.647

_TRANSACTION = "server_pooling = 'transaction'"


def parse_server_pooling(value: object) -> ServerPooling:
    """``"none"``, ``"session"`` or ``"transaction"`` (ValueError for anything else)."""
    for mode in SERVER_POOLING_MODES:
        if value == mode:
            return mode
    raise ValueError(f"server_pooling: must be 'none', 'session' or 'transaction' (got {value!r})")


def check_statement_timeout(value: object) -> float | None:
    """``statement_timeout`` in seconds: None (not set), 0 (no timeout, sent explicitly) or a
    number up to :data:`STATEMENT_TIMEOUT_MAX` (ValueError otherwise)."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise ValueError(f"statement_timeout: must be a number of seconds >= 0 (got {value!r})")
    if value < 0 or value > STATEMENT_TIMEOUT_MAX:
        raise ValueError(
            f"statement_timeout: must be between 0 and {STATEMENT_TIMEOUT_MAX} seconds "
            f"(PostgreSQL's limit) (got {value!r})"
        )
    return float(value)


def statement_timeout_ms(seconds: float) -> int:
    """``seconds`` as PostgreSQL's milliseconds: rounded, and at least 1 when above 0 (0 would
    mean no timeout at all)."""
    ms = round(seconds * 1000)
    return max(ms, 1) if seconds > 0 else 0


def startup_option(statement_timeout: float | None, server_pooling: ServerPooling) -> str | None:
    """The ``-c statement_timeout=Nms`` startup option a direct connection sends, else None
    (not set, or a pooler in the way, which refuses ``options``)."""
    if statement_timeout is None or server_pooling != "none":
        return None
    return f"-c statement_timeout={statement_timeout_ms(statement_timeout)}ms"


def _session_statement(
    statement_timeout: float | None, server_pooling: ServerPooling
) -> str | None:
    if statement_timeout is None or server_pooling != "session":
        return None
    return f"SET statement_timeout = {statement_timeout_ms(statement_timeout)}"


def begin_statement(server_pooling: str, statement_timeout: float | None) -> str | None:
    """The SQL the steady connection runs right after ``BEGIN`` in ``begin()``, or None.

    Under ``server_pooling = "transaction"`` with a ``statement_timeout`` set, that is
    ``SET LOCAL statement_timeout = N`` (milliseconds): the setting ends with the transaction,
    so it never reaches the next client of the server connection. Otherwise None (the startup
    option or the session's ``SET`` already applies).
    """
    if statement_timeout is None or server_pooling != "transaction":
        return None
    return f"SET LOCAL statement_timeout = {statement_timeout_ms(statement_timeout)}"


def statement_timeout_via(server_pooling: str, statement_timeout: float | None) -> str:
    """How ``statement_timeout`` reaches the server, in words (for ``pgregistry check``)."""
    if statement_timeout is None:
        return "not set (the server's, role's or database's setting applies)"
    ms = statement_timeout_ms(statement_timeout)
    if server_pooling == "none":
        return f"startup option at connect (options=-c statement_timeout={ms}ms)"
    if server_pooling == "session":
        return f"SET statement_timeout = {ms} after every (re)open (the pooler keeps the session)"
    return (
        f"SET LOCAL statement_timeout = {ms} in transactions begun with begin(); "
        "statements outside them get the role's setting (ALTER ROLE ... SET statement_timeout)"
    )


# -- what a transaction pooler breaks ---------------------------------------------------------


@dataclass(frozen=True)
class PoolingProblem:
    """One thing that cannot work under transaction pooling."""

    #: The setting: ``setsession``, ``reset`` or ``options``.
    field: str
    #: Index of the statement in ``setsession``; None for the other fields.
    index: int | None
    #: What is wrong and what to do instead; names the statement, never a password.
    message: str

    def where(self) -> str:
        """``setsession[0]``, ``reset``, ..."""
        return self.field if self.index is None else f"{self.field}[{self.index}]"


class _Token(NamedTuple):
    kind: Literal["word", "literal", "ident", "punct"]
    text: str  # words lowercased; literals and identifiers unquoted
    start: int
    end: int  # one past the last character


_BARE = re.compile(r"[^\W\d][\w$]*|\d+(?:\.\d*)?|\S")


def _tokens(sql: str) -> list[_Token]:
    """``sql`` as words, literals, quoted identifiers and punctuation; comments dropped.

    Read with standard_conforming_strings on (the default since PostgreSQL 9.1); quotes and
    comments are found by :func:`pgregistry.sql.quoted_spans`.
    """
    out: list[_Token] = []
    pos = 0
    for start, last in [*quoted_spans(sql, False), (len(sql), len(sql))]:
        for match in _BARE.finditer(sql, pos, start):
            text = match.group()
            kind: Literal["word", "punct"] = (
                "word" if text[0].isalnum() or text[0] == "_" else "punct"
            )
            out.append(_Token(kind, text.lower() if kind == "word" else text, *match.span()))
        if start >= len(sql):
            break
        piece = sql[start : last + 1]
        if piece.startswith("'"):
            if out and out[-1].kind == "word" and out[-1].text == "e" and out[-1].end == start:
                out.pop()  # E'...': the E belongs to the literal
            out.append(_Token("literal", piece[1:-1].replace("''", "'"), start, last + 1))
        elif piece.startswith('"'):
            out.append(_Token("ident", piece[1:-1].replace('""', '"'), start, last + 1))
        elif piece.startswith("$"):
            tag = piece[: piece.index("$", 1) + 1]
            out.append(_Token("literal", piece[len(tag) : -len(tag)], start, last + 1))
        pos = last + 1  # a comment is white space
    return out


def _statements(sql: str) -> list[list[_Token]]:
    """The statements of ``sql`` (split at top-level semicolons), empty ones left out."""
    found: list[list[_Token]] = [[]]
    for token in _tokens(sql):
        if token.kind == "punct" and token.text == ";":
            found.append([])
        else:
            found[-1].append(token)
    return [tokens for tokens in found if tokens]


def _words(tokens: Sequence[_Token]) -> list[str]:
    return [t.text if t.kind == "word" else "" for t in tokens]


_SESSION_LOCKS = {
    "pg_advisory_lock": "pg_advisory_xact_lock",
    "pg_advisory_lock_shared": "pg_advisory_xact_lock_shared",
    "pg_try_advisory_lock": "pg_try_advisory_xact_lock",
    "pg_try_advisory_lock_shared": "pg_try_advisory_xact_lock_shared",
}
_FALSE = frozenset({"false", "f", "off", "no", "n", "0"})
_ROLE_SET = "ALTER ROLE ... SET {name} = ... (or ALTER DATABASE ... SET) on the server"


def _set_parameter(words: Sequence[str]) -> str:
    """The parameter of ``SET [SESSION] name ...`` (``time zone`` for ``SET TIME ZONE``)."""
    rest = [w for w in words[1:] if w]
    if rest and rest[0] == "session":
        rest = rest[1:]
    if rest[:2] == ["time", "zone"]:
        return "timezone"
    return rest[0] if rest else "..."


def _call_args(tokens: Sequence[_Token], open_at: int) -> list[list[_Token]]:
    """The comma-separated arguments of the call whose ``(`` is ``tokens[open_at]``."""
    args: list[list[_Token]] = [[]]
    depth = 0
    for token in tokens[open_at + 1 :]:
        if token.kind == "punct" and token.text in "([":
            depth += 1
        elif token.kind == "punct" and token.text in ")]":
            if depth == 0:
                break
            depth -= 1
        elif token.kind == "punct" and token.text == "," and depth == 0:
            args.append([])
            continue
        args[-1].append(token)
    return args


def _session_state(tokens: Sequence[_Token]) -> str | None:
    """What in one statement sets session state, with the alternative; None if nothing does."""
    words = _words(tokens)
    first = words[0]
    second = next((w for w in words[1:] if w), "")
    if first == "set" and second not in ("local", "transaction", "constraints"):
        name = _set_parameter(words)
        if name == "role" or (second == "session" and "authorization" in words[:4]):
            return (
                "changes the role of the server connection, which the pooler gives to other "
                "clients; connect as that role instead (user = ...)"
            )
        return (
            "sets session state (SET without LOCAL), which the pooler gives to the next client "
            f"of the server connection; use {_ROLE_SET.format(name=name)}, or SET LOCAL inside "
            "each transaction"
        )
    if first == "reset":
        return (
            "changes session state of a server connection other clients share; use SET LOCAL "
            "inside the transaction instead"
        )
    if first == "listen":
        return (
            "needs a session: notifications arrive on a server connection the next transaction "
            "may not get; listen on a pool with server_pooling = 'none' (a direct connection)"
        )
    if first == "prepare" and second != "transaction":
        return (
            "prepares a statement in one server session, which the next transaction may not "
            "get; run it with query() and parameters instead"
        )
    if first == "create":
        rest = [w for w in words[1:] if w not in ("or", "replace", "global", "local")]
        if rest and rest[0] in ("temp", "temporary"):
            return (
                "creates a temporary object that stays on a server connection other clients "
                "get; create it inside the transaction that uses it (CREATE TEMP TABLE ... ON "
                "COMMIT DROP), or use an ordinary table"
            )
    if first in ("select", "with"):
        for i, word in enumerate(words[:-2]):
            if word == "into" and words[i + 1] in ("temp", "temporary") and words[i + 2] != "from":
                return (
                    "creates a temporary table (SELECT ... INTO TEMP) that stays on a server "
                    "connection other clients get; use it inside one transaction, or an "
                    "ordinary table"
                )
    if first == "declare" and any(
        words[i : i + 2] == ["with", "hold"] for i in range(len(words) - 1)
    ):
        return (
            "declares a cursor WITH HOLD, which outlives the transaction on a server connection "
            "other clients get; use a cursor without HOLD inside the transaction"
        )
    for i, token in enumerate(tokens[:-1]):
        follows = tokens[i + 1]
        if token.kind not in ("word", "ident") or follows.kind != "punct" or follows.text != "(":
            continue
        if token.text in _SESSION_LOCKS:
            return (
                f"takes a session advisory lock ({token.text}), which stays held on a server "
                "connection other clients get; use "
                f"{_SESSION_LOCKS[token.text]}() inside a transaction (released at its end)"
            )
        if token.text == "set_config":
            args = _call_args(tokens, i + 1)
            flag = args[2] if len(args) == 3 else []
            if (
                len(flag) == 1
                and flag[0].kind in ("word", "literal")
                and flag[0].text.lower() in _FALSE
            ):
                return (
                    "sets session state (set_config with is_local false), which the pooler "
                    "gives to the next client of the server connection; use "
                    "set_config(..., true) inside each transaction, or ALTER ROLE ... SET"
                )
    return None


def _shown(statement: str) -> str:
    """A statement for a message: on one line, cut to 60 characters, passwords masked."""
    text = " ".join(statement.split())
    if len(text) > 60:
        text = text[:57] + "..."
    return repr(redact(text))


_OPTION_SETTING = re.compile(r"(?:-c\s*|--)([A-Za-z_][\w.]*)\s*=", re.IGNORECASE)


def _sets_statement_timeout(tokens: Sequence[_Token]) -> bool:
    words = _words(tokens)
    return words[0] == "set" and _set_parameter(words) == "statement_timeout"


def transaction_pooling_problems(
    setsession: Sequence[str] | Callable[..., object] | None,
    reset: object,
    options: str | None = None,
    options_from: str = "options",
) -> list[PoolingProblem]:
    """What cannot work under ``server_pooling = "transaction"``, each with the alternative.

    ``setsession``: statements run after every (re)open (a callable cannot be looked into and
    is taken as it is); ``reset``: the return policy (``"discard"`` is refused); ``options``:
    the target's ``options`` startup parameter, which PgBouncer refuses (or, with
    ``ignore_startup_parameters``, drops without a word), reported under ``options_from``
    (``options``, ``opt`` or ``PGOPTIONS``).
    """
    problems: list[PoolingProblem] = []
    if isinstance(setsession, str):
        setsession = (setsession,)
    if setsession is not None and not callable(setsession):
        for index, statement in enumerate(setsession):
            for tokens in _statements(statement):
                why = _session_state(tokens)
                if why:
                    problems.append(
                        PoolingProblem(
                            "setsession", index, f"{_shown(statement)} {why} ({_TRANSACTION})"
                        )
                    )
                    break
    try:
        policy = parse_reset(reset)
    except ValueError:
        policy = None  # refused by the reset check itself
    if policy is ResetPolicy.DISCARD:
        problems.append(
            PoolingProblem(
                "reset",
                None,
                "'discard' runs DISCARD ALL on a server connection the pooler shares, and no "
                "session state of ours outlives a transaction there to discard; use reset = "
                f"'rollback_if_needed' (the default) or 'rollback' ({_TRANSACTION})",
            )
        )
    if options and options.strip():
        settings = sorted({m.group(1).lower() for m in _OPTION_SETTING.finditer(options)})
        what = f" (sets {', '.join(settings)})" if settings else ""
        problems.append(
            PoolingProblem(
                options_from,
                None,
                f"the options startup parameter{what} is refused by PgBouncer ('unsupported "
                "startup parameter: options') and would set session state for every client "
                "of a server connection; use ALTER ROLE ... SET (or ALTER DATABASE ... SET) "
                f"on the server, or SET LOCAL inside each transaction ({_TRANSACTION})",
            )
        )
    return problems


def statement_timeout_conflicts(
    statement_timeout: float | None,
    setsession: Sequence[str] | Callable[..., object] | None,
    options: str | None,
    options_from: str = "options",
) -> list[PoolingProblem]:
    """``statement_timeout`` set twice: by the key and by ``options`` or a ``setsession`` SET
    (one would silently win over the other)."""
    if statement_timeout is None:
        return []
    problems: list[PoolingProblem] = []
    keep = "; keep one (the statement_timeout key reaches the server whatever server_pooling is)"
    if options and any(
        m.group(1).lower() == "statement_timeout" for m in _OPTION_SETTING.finditer(options)
    ):
        problems.append(
            PoolingProblem(
                options_from,
                None,
                "sets statement_timeout, as the statement_timeout key does" + keep,
            )
        )
    if isinstance(setsession, str):
        setsession = (setsession,)
    if setsession is not None and not callable(setsession):
        for index, statement in enumerate(setsession):
            if any(_sets_statement_timeout(tokens) for tokens in _statements(statement)):
                problems.append(
                    PoolingProblem(
                        "setsession",
                        index,
                        f"{_shown(statement)} sets statement_timeout, as the statement_timeout "
                        "key does" + keep,
                    )
                )
    return problems


def check_server_pooling(
    server_pooling: str,
    setsession: Sequence[str] | Callable[..., object] | None,
    reset: object,
    options: str | None = None,
    statement_timeout: float | None = None,
    options_from: str = "options",
) -> None:
    """Raise ValueError listing what cannot work with these settings (see
    :func:`transaction_pooling_problems` and :func:`statement_timeout_conflicts`)."""
    problems = statement_timeout_conflicts(statement_timeout, setsession, options, options_from)
    if server_pooling == "transaction":
        problems += transaction_pooling_problems(setsession, reset, options, options_from)
    if problems:
        raise ValueError("; ".join(f"{p.where()}: {p.message}" for p in problems))


# -- the connect arguments --------------------------------------------------------------------

# pg.connect()'s positional order: dbname, host, port, opt, user, passwd, nowait.
_OPT_POSITION = 3


def _dbname(args: Sequence[Any], kwargs: Mapping[str, Any]) -> object:
    return args[0] if args else kwargs.get("dbname")


def _opt(args: Sequence[Any], kwargs: Mapping[str, Any]) -> object:
    return args[_OPT_POSITION] if len(args) > _OPT_POSITION else kwargs.get("opt")


def target_options(args: Sequence[Any], kwargs: Mapping[str, Any]) -> tuple[str | None, str]:
    """The ``options`` the ``pg.DB`` arguments send, and where they come from: a conninfo
    ``dbname``'s (``"options"``, which wins in libpq), else ``"opt"``, else ``"PGOPTIONS"``
    (the environment); ``(None, "options")`` when none is set."""
    dbname = _dbname(args, kwargs)
    if isinstance(dbname, str) and is_conninfo(dbname):
        try:
            params = parse_conninfo(dbname)
        except ConninfoError:
            params = {}  # libpq says what is wrong at the first open
        if "options" in params:
            return params["options"], "options"
    opt = _opt(args, kwargs)
    if isinstance(opt, str) and opt:
        return opt, "opt"
    from_env = os.environ.get("PGOPTIONS")
    return (from_env, "PGOPTIONS") if from_env else (None, "options")


def connect_args(
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
    *,
    statement_timeout: float | None,
    server_pooling: ServerPooling,
) -> tuple[tuple[Any, ...], dict[str, Any]]:
    """The ``pg.DB`` arguments with ``statement_timeout`` added as a startup option.

    Only for a direct connection (``server_pooling = "none"``) with a timeout set; otherwise
    the arguments come back as they are. The option is appended to the options the target
    already sends (:func:`target_options`: a conninfo's ``options``, ``opt``, else
    ``$PGOPTIONS``): into a conninfo ``dbname`` when it is one (libpq lets it override
    ``opt``; a URI is rewritten as a keyword string), else into ``opt``.
    """
    option = startup_option(statement_timeout, server_pooling)
    if option is None:
        return args, kwargs
    existing, _ = target_options(args, kwargs)
    merged = f"{existing} {option}" if existing else option
    dbname = _dbname(args, kwargs)
    if isinstance(dbname, str) and is_conninfo(dbname):
        try:
            params = parse_conninfo(dbname)
        except ConninfoError:
            return args, kwargs  # libpq refuses it at the first open, with its own words
        params["options"] = merged
        rebuilt = build_conninfo(params)
        if args:
            return (rebuilt, *args[1:]), kwargs
        return args, {**kwargs, "dbname": rebuilt}
    if len(args) > _OPT_POSITION:
        return (*args[:_OPT_POSITION], merged, *args[_OPT_POSITION + 1 :]), kwargs
    return args, {**kwargs, "opt": merged}


class Configured(NamedTuple):
    """What :func:`configure` returns to ``PooledPg``."""

    server_pooling: ServerPooling
    statement_timeout: float | None
    #: The ``pg.DB`` arguments, with the startup option when it applies.
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    #: ``setsession``, led by ``SET statement_timeout`` under session pooling.
    setsession: tuple[str, ...] | Callable[[Any], object]


def configure(
    server_pooling: object,
    statement_timeout: object,
    setsession: tuple[str, ...] | Callable[[Any], object],
    reset: object,
    args: tuple[Any, ...],
    kwargs: dict[str, Any],
) -> Configured:
    """Check ``server_pooling`` and ``statement_timeout`` against the other settings of a pool
    (ValueError naming the statement and the alternative) and return what the pool opens its
    connections with."""
    mode = parse_server_pooling(server_pooling)
    timeout = check_statement_timeout(statement_timeout)
    options, options_from = target_options(args, kwargs)
    check_server_pooling(mode, setsession, reset, options, timeout, options_from)
    args, kwargs = connect_args(args, kwargs, statement_timeout=timeout, server_pooling=mode)
    first = _session_statement(timeout, mode)
    if first is not None:
        setsession = _prefixed(first, setsession)
    return Configured(mode, timeout, args, kwargs, setsession)


def _prefixed(
    first: str, setsession: tuple[str, ...] | Callable[[Any], object]
) -> tuple[str, ...] | Callable[[Any], object]:
    if callable(setsession):
        return _Prefixed(first, setsession)
    return (first, *setsession)


class _Prefixed:
    """A callable ``setsession`` that runs one statement first."""

    def __init__(self, statement: str, then: Callable[[Any], object]) -> None:
        self.statement = statement
        self.then = then

    def __call__(self, db: Any) -> object:
        db.query(self.statement)
        return self.then(db)

    def __repr__(self) -> str:
        return f"<setsession {self.statement!r}, then {self.then!r}>"


# A LISTEN or UNLISTEN statement (see behind_transaction_pooler).
_LISTENS = re.compile(r"\s*(listen|unlisten)\b", re.IGNORECASE)


def _carried_or_refused(method: Callable[..., Any], name: str) -> Callable[..., Any]:
    """``method`` with a prepared statement the transaction pooler lost reported clearly."""

    @functools.wraps(method)
    def call(*args: Any, **kwargs: Any) -> Any:
        try:
            return method(*args, **kwargs)
        except pg.Error as exc:
            if getattr(exc, "sqlstate", None) != "26000":
                raise
            raise PoolerUnsupportedError(
                f"{name}(): the prepared statement is not on the server connection the "
                "transaction pooler picked (PgBouncer before 1.21, or max_prepared_statements "
                "= 0); use query() with parameters, or PgBouncer 1.21+ with "
                "max_prepared_statements"
            ) from exc

    return call


def refuse_what_breaks(conn: Any) -> None:
    """Make the steady connection ``conn`` raise a clear :class:`PoolerUnsupportedError` for
    what breaks behind a transaction pooler, instead of a confusing server error or a silent
    loss.

    ``LISTEN``/``UNLISTEN`` and ``delete_prepared()`` (SQL ``DEALLOCATE``, which PgBouncer
    does not track) are refused before anything is sent; a prepared statement the pooler
    did not carry to this server connection (SQLSTATE 26000, PgBouncer before 1.21 or
    without ``max_prepared_statements``) is reported as such. Only this connection's
    methods change: other pools pay nothing.
    """
    query = conn.query

    def guarded_query(command: str, *args: Any) -> Any:
        if isinstance(command, str) and _LISTENS.match(command):
            raise PoolerUnsupportedError(
                f"{command.split()[0].upper()} behind a transaction pooler "
                '(server_pooling = "transaction"): notifications go to whichever server '
                "connection the pooler picks; use a direct pool for listeners"
            )
        return query(command, *args)

    def refused_delete_prepared(name: str | None = None) -> Any:
        raise PoolerUnsupportedError(
            "delete_prepared() behind a transaction pooler: it sends SQL DEALLOCATE, which "
            "PgBouncer does not track; let prepared statements end with the connection"
        )

    conn.query = guarded_query
    conn.delete_prepared = refused_delete_prepared
    for name in ("query_prepared", "describe_prepared"):
        setattr(conn, name, _carried_or_refused(getattr(conn, name), name))
