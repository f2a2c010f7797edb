"""libpq connection targets: keywords, quoting, building, parsing and redaction.

libpq takes a connection target in two spellings: a keyword string (``host=db port=5432``) and
a ``postgresql://`` URI. This module writes the first and reads both, the way libpq itself does
(``conninfo_parse`` and ``conninfo_uri_parse`` in ``fe-connect.c``), so that configuration can be
validated, merged and masked before anything reaches a server.

Every message, repr, log record and CLI line that could contain a connection string passes
through :func:`redact` first, so a password never leaves the process in text. The parsers'
own errors (:class:`ConninfoError`) never repeat a value either: they say what is wrong and
where (a character position or a keyword name), never what the value was.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping

from .options import SECRET_KEYS
from .sql import escape_option, quote_ident, quote_literal

__all__ = [
    "LIBPQ_KEYWORDS",
    "MASK",
    "SECRET_KEYWORDS",
    "TARGET_KEYWORDS",
    "ConninfoError",
    "build_conninfo",
    "escape_option",
    "is_conninfo",
    "is_uri",
    "mask_conninfo",
    "parse_conninfo",
    "parse_keyword_conninfo",
    "parse_uri",
    "quote_ident",
    "quote_literal",
    "quote_value",
    "redact",
]

MASK = "********"

#: Every connection keyword of libpq 18, in libpq's own order (``PQconninfoOptions``). An older
#: libpq refuses the newer ones when connecting ("invalid connection option"), which is the
#: clearest message there can be; refusing them here would stop a config that a newer libpq on
#: the deployment machine accepts.
LIBPQ_KEYWORDS: tuple[str, ...] = (
    "service",
    "user",
    "password",
    "passfile",
    "channel_binding",
    "connect_timeout",
    "dbname",
    "host",
    "hostaddr",
    "port",
    "client_encoding",
    "options",
    "application_name",
    "fallback_application_name",
    "keepalives",
    "keepalives_idle",
    "keepalives_interval",
    "keepalives_count",
    "tcp_user_timeout",
    "sslmode",
    "sslnegotiation",
    "sslcompression",
    "sslcert",
    "sslkey",
    "sslkeylogfile",
    "sslcertmode",
    "sslpassword",
    "sslrootcert",
    "sslcrl",
    "sslcrldir",
    "sslsni",
    "requirepeer",
    "require_auth",
    "min_protocol_version",
    "max_protocol_version",
    "ssl_min_protocol_version",
    "ssl_max_protocol_version",
    "gssencmode",
    "krbsrvname",
    "gsslib",
    "gssdelegation",
    "replication",
    "target_session_attrs",
    "load_balance_hosts",
    "scram_client_key",
    "scram_server_key",
    "oauth_issuer",
    "oauth_client_id",
    "oauth_client_secret",
    "oauth_scope",
)
_KEYWORD_SET = frozenset(LIBPQ_KEYWORDS)

#: Keywords that say where to connect and as whom (a ``conninfo`` string sets them as a whole).
TARGET_KEYWORDS: tuple[str, ...] = (
    "host",
    "hostaddr",
    "port",
    "dbname",
    "user",
    "password",
    "options",
    "service",
)

#: Keywords whose value is a secret: masked by :func:`mask_conninfo`, never shown anywhere.
SECRET_KEYWORDS: frozenset[str] = SECRET_KEYS - {"passwd", "conninfo"}

_URI_PREFIXES = ("postgresql://", "postgres://")
# libpq splits keyword strings on C isspace() in the "C" locale: exactly these six characters.
_C_SPACE = frozenset(" \t\n\r\f\v")
# A keyword name safe to repeat in a message: a typo such as "sslmod" helps the reader; a
# fragment of a malformed string (which might be part of a password) is never repeated.
_NAMEABLE = re.compile(r"[a-z][a-z0-9_]{0,39}")


class ConninfoError(ValueError):
    """A connection string cannot be parsed or built; the message never repeats a value."""


ConninfoError.__module__ = "pgregistry.conninfo"


def _name(keyword: str) -> str:
    """``"sslmod"`` quoted when it looks like a keyword, a neutral phrase otherwise."""
    return f'"{keyword}"' if _NAMEABLE.fullmatch(keyword) else "(a name that is not a keyword)"


# -- quoting and building --------------------------------------------------------------------


def quote_value(value: str) -> str:
    """Return ``value`` written for a libpq keyword string.

    Values that need it (empty, containing white space, a single quote or a backslash) are put
    in single quotes with ``\\`` and ``'`` escaped by a backslash, as libpq reads them; other
    values are returned as they are. Raises :class:`ConninfoError` for a NUL character, which
    no libpq string can hold.
    """
    if "\x00" in value:
        raise ConninfoError("a connection value cannot contain a NUL character")
    if value and not any(ch.isspace() or ch in "'\\" for ch in value):
        return value
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _text(keyword: str, value: object) -> str:
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, int | float | str):
        return str(value)
    raise ConninfoError(f"{_name(keyword)}: a connection value must be a string or a number")


def build_conninfo(params: Mapping[str, object]) -> str:
    """Join ``params`` into one libpq keyword string, ``key=value`` separated by spaces.

    ``None`` values are left out; numbers become their decimal text and booleans ``1``/``0``.
    Every key must be a libpq keyword (:data:`LIBPQ_KEYWORDS`), so no value can smuggle in a
    keyword of its own: each is quoted by :func:`quote_value`.
    """
    parts = []
    for keyword, value in params.items():
        if keyword not in _KEYWORD_SET:
            raise ConninfoError(f"unknown libpq keyword {_name(keyword)}")
        if value is None:
            continue
        parts.append(f"{keyword}={quote_value(_text(keyword, value))}")
    return " ".join(parts)


# -- parsing ---------------------------------------------------------------------------------


def is_uri(text: str) -> bool:
    """Whether ``text`` starts like a libpq connection URI (``postgresql://``, ``postgres://``)."""
    return text.startswith(_URI_PREFIXES)


def is_conninfo(dbname: str) -> bool:
    """Whether libpq would read ``dbname`` as a whole connection string, not a database name.

    libpq expands a ``dbname`` that is a URI or contains ``=`` (``recognized_connection_string``
    in ``fe-connect.c``); such a value in a ``dbname`` field would silently replace every other
    connection setting.
    """
    return is_uri(dbname) or "=" in dbname


def parse_conninfo(text: str) -> dict[str, str]:
    """Parse a keyword string or a ``postgresql://`` URI into ``{keyword: value}``.

    Keywords keep the order of their first appearance; a repeated keyword keeps its last value,
    as in libpq. Raises :class:`ConninfoError` when libpq would refuse the string.
    """
    return parse_uri(text) if is_uri(text) else parse_keyword_conninfo(text)


def _store(out: dict[str, str], keyword: str, value: str, *, what: str) -> None:
    if keyword not in _KEYWORD_SET:
        raise ConninfoError(f"unknown libpq keyword {_name(keyword)} in {what}")
    if "\x00" in value:
        raise ConninfoError(f"{_name(keyword)}: a value cannot contain a NUL character")
    out[keyword] = value


def parse_keyword_conninfo(text: str) -> dict[str, str]:
    """Parse a libpq keyword string (``host=db port=5432 password='it\\'s'``).

    Follows libpq's ``conninfo_parse``: white space around ``=`` is allowed; an unquoted value
    runs to the next white space; a quoted one to the closing quote; a backslash escapes the
    next character in both.
    """
    out: dict[str, str] = {}
    pos, end = 0, len(text)
    while pos < end:
        if text[pos] in _C_SPACE:
            pos += 1
            continue
        start = pos
        while pos < end and text[pos] != "=" and text[pos] not in _C_SPACE:
            pos += 1
        keyword = text[start:pos]
        while pos < end and text[pos] in _C_SPACE:
            pos += 1
        if pos >= end or text[pos] != "=":
            raise ConninfoError(
                f'missing "=" after a keyword at character {start + 1} of the connection string'
            )
        pos += 1
        while pos < end and text[pos] in _C_SPACE:
            pos += 1
        value: list[str] = []
        if pos < end and text[pos] == "'":
            quote_at = pos
            pos += 1
            while True:
                if pos >= end:
                    raise ConninfoError(
                        f"unterminated quoted value starting at character {quote_at + 1} of the"
                        " connection string"
                    )
                ch = text[pos]
                if ch == "\\":
                    pos += 1
                    if pos < end:
                        value.append(text[pos])
                        pos += 1
                    continue
                pos += 1
                if ch == "'":
                    break
                value.append(ch)
        else:
            while pos < end and text[pos] not in _C_SPACE:
                ch = text[pos]
                pos += 1
                if ch == "\\":
                    if pos < end:
                        value.append(text[pos])
                        pos += 1
                else:
                    value.append(ch)
        _store(out, keyword, "".join(value), what="the connection string")
    return out


def _uri_decode(text: str) -> str:
    """Percent-decode like libpq's ``conninfo_uri_decode`` (``+`` stays ``+``; ``%00`` refused)."""
    if "%" not in text:
        return text
    raw = bytearray()
    pos, end = 0, len(text)
    while pos < end:
        ch = text[pos]
        if ch != "%":
            raw += ch.encode()
            pos += 1
            continue
        digits = text[pos + 1 : pos + 3]
        if len(digits) != 2 or not all(d in "0123456789abcdefABCDEF" for d in digits):
            raise ConninfoError("invalid percent-encoded token in the URI")
        if digits == "00":
            raise ConninfoError("forbidden value %00 in a percent-encoded URI value")
        raw.append(int(digits, 16))
        pos += 3
    return raw.decode("utf-8", errors="surrogateescape")


def parse_uri(text: str) -> dict[str, str]:
    """Parse a ``postgresql://[user[:password]@][host][:port][,...][/dbname][?key=value&...]`` URI.

    Follows libpq's ``conninfo_uri_parse``: several ``host:port`` pairs become comma-separated
    ``host`` and ``port`` values, ``[...]`` holds an IPv6 address, every part is
    percent-decoded, and ``ssl=true`` means ``sslmode=require``.
    """
    prefix = next((p for p in _URI_PREFIXES if text.startswith(p)), None)
    if prefix is None:
        raise ConninfoError("a connection URI must start with postgresql:// or postgres://")
    out: dict[str, str] = {}
    rest = text[len(prefix) :]

    # Credentials end at the first "@" that comes before any "/".
    at = len(rest)
    for i, ch in enumerate(rest):
        if ch in "@/":
            at = i
            break
    if at < len(rest) and rest[at] == "/" and "@" in re.split(r"[?#]", rest[at:], maxsplit=1)[0]:
        # libpq would end the authority at the "/" of a password such as "S3cr/et": the
        # password's head would be shown as host and port, its tail in the database name.
        raise ConninfoError(
            'the URI has an "@" after its first "/", so user, password and host cannot be told '
            'apart; percent-encode "/" in the password as %2F (and "@" in a database name as '
            "%40)"
        )
    if at < len(rest) and rest[at] == "@":
        userinfo, rest = rest[:at], rest[at + 1 :]
        authority = re.split(r"[/?]", rest, maxsplit=1)[0]
        if "@" in authority:
            # libpq would take "u:p@ss@host" as password "p" at host "ss@host": the password's
            # tail would then be shown as a host name in every message. Refuse, echoing nothing.
            raise ConninfoError(
                'the URI has more than one "@" before its path, so user, password and host '
                'cannot be told apart; percent-encode "@" in the password as %40'
            )
        user, colon, password = userinfo.partition(":")
        if user:
            _store(out, "user", _uri_decode(user), what="the URI")
        if colon and password:
            _store(out, "password", _uri_decode(password), what="the URI")

    hosts: list[str] = []
    ports: list[str] = []
    pos, end = 0, len(rest)
    terminator = ""
    while True:
        if pos < end and rest[pos] == "[":
            close = rest.find("]", pos + 1)
            if close < 0:
                raise ConninfoError('missing "]" after an IPv6 host address in the URI')
            if close == pos + 1:
                raise ConninfoError("an IPv6 host address in brackets cannot be empty in the URI")
            host = rest[pos + 1 : close]
            pos = close + 1
            if pos < end and rest[pos] not in ":/?,":
                raise ConninfoError(
                    f"unexpected character at character {len(prefix) + pos + 1} of the URI"
                    ' (expected ":", "/", "?" or ",")'
                )
        else:
            start = pos
            while pos < end and rest[pos] not in ":/?,":
                pos += 1
            host = rest[start:pos]
        hosts.append(host)
        terminator = rest[pos] if pos < end else ""
        port = ""
        if terminator == ":":
            pos += 1
            start = pos
            while pos < end and rest[pos] not in "/?,":
                pos += 1
            port = rest[start:pos]
            terminator = rest[pos] if pos < end else ""
        ports.append(port)
        if terminator != ",":
            break
        pos += 1
    host_value = ",".join(hosts)
    if host_value:
        _store(out, "host", _uri_decode(host_value), what="the URI")
    # As in libpq, "a,b" gives port "," (empty entries mean the default port).
    port_value = ",".join(ports)
    if port_value:
        _store(out, "port", _uri_decode(port_value), what="the URI")

    if terminator == "/":
        pos += 1
        start = pos
        while pos < end and rest[pos] != "?":
            pos += 1
        dbname = rest[start:pos]
        terminator = rest[pos] if pos < end else ""
        # libpq leaves an empty dbname unset: "" would force the default (the user name).
        if dbname:
            _store(out, "dbname", _uri_decode(dbname), what="the URI")

    if terminator == "?":
        query = rest[pos + 1 :]
        for pair in query.split("&") if query else ():
            key, eq, value = pair.partition("=")
            if not eq:
                raise ConninfoError('missing "=" in a URI query parameter')
            if "=" in value:
                raise ConninfoError('extra "=" in a URI query parameter')
            key, value = _uri_decode(key), _uri_decode(value)
            if key == "ssl" and value == "true":  # libpq's JDBC compatibility
                key, value = "sslmode", "require"
            if key not in _KEYWORD_SET:
                raise ConninfoError(f"invalid URI query parameter {_name(key)}")
            _store(out, key, value, what="the URI")
    return out


# -- masking ---------------------------------------------------------------------------------


def mask_conninfo(text: str) -> str:
    """Return ``text`` as a keyword string with every secret value replaced by :data:`MASK`.

    A URI comes back in keyword form. A string that cannot be parsed comes back as
    :data:`MASK` alone: what it holds cannot be known, so none of it is shown.
    """
    try:
        params = parse_conninfo(text)
    except ConninfoError:
        return MASK
    return build_conninfo({k: MASK if k in SECRET_KEYWORDS else v for k, v in params.items()})


# password=secret, password = 'it''s secret', password="x" (keyword strings and repr-ed dicts);
# an unquoted value may hold backslash escapes, as libpq reads it.
_KEYWORD_SECRET = re.compile(
    r"(?P<key>\b(?:"
    + "|".join(sorted(SECRET_KEYS - {"conninfo"}, key=len, reverse=True))
    + r""")['"]?\s*[=:]\s*)"""
    r"""(?P<value>'(?:[^'\\]|\\.|'')*'|"(?:[^"\\]|\\.)*"|(?:\\.|[^\s\\,;&)}\]])+)""",
    re.IGNORECASE,
)
# postgresql://user:secret@host and postgres://:secret@host
_URI_SECRET = re.compile(
    # Up to the last "@" of the authority: "u:p@ss@host" must not show "ss" as the host.
    r"(?P<head>\bpostgres(?:ql)?://[^\s:/@?#]*:)(?P<value>[^\s/?#]*)(?=@[^\s@/?#]*(?:$|[\s/?#]))",
    re.IGNORECASE,
)


def redact(text: object, secrets: Iterable[str | None] = ()) -> str:
    """Return ``str(text)`` with passwords masked.

    Masks ``password=...`` (and the other secret keywords) in libpq keyword strings (quoted or
    not), ``user:password@`` in ``postgresql://`` URIs, ``?password=`` URI parameters, and every
    literal value in ``secrets`` (for example a password passed to ``pg.DB`` that an error
    message repeats).
    """
    out = str(text)
    for secret in secrets:
        if secret and len(secret) >= 1:
            out = out.replace(secret, MASK)
    out = _URI_SECRET.sub(lambda m: m.group("head") + MASK, out)
    return _KEYWORD_SECRET.sub(lambda m: m.group("key") + MASK, out)
