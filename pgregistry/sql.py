"""SQL quoting and the ``{tenant}`` placeholder lexer: the rules that keep an untrusted
tenant key from injecting SQL or server options.

A leaf (standard library only): the configuration, the tenant pools, the test helpers and the
examples share these functions instead of keeping copies. ``pgregistry.conninfo`` re-exports
the quoting functions for older imports.
"""

from __future__ import annotations

import re

__all__ = [
    "NAMEDATALEN_MAX",
    "PLACEHOLDER",
    "TENANT",
    "TENANT_LITERAL",
    "escape_option",
    "identifier_bytes",
    "placeholders_stand_alone",
    "quote_ident",
    "quote_literal",
    "quoted_spans",
]

#: Longest identifier PostgreSQL keeps, in UTF-8 bytes (NAMEDATALEN - 1); longer names are
#: cut silently, so two long names can become one.
NAMEDATALEN_MAX = 63


def identifier_bytes(name: str) -> int:
    """Length of ``name`` as PostgreSQL measures an identifier: UTF-8 bytes, quotes removed."""
    return len(name.encode("utf-8", errors="surrogatepass"))


# -- quoting (tenant keys are untrusted input) ----------------------------------------------


def quote_ident(name: str) -> str:
    """``name`` as an SQL identifier: double quotes, embedded quotes doubled."""
    if "\x00" in name:
        raise ValueError("an SQL identifier cannot contain a NUL character")
    return '"' + name.replace('"', '""') + '"'


def quote_literal(value: str) -> str:
    """``value`` as an SQL string literal, safe whatever ``standard_conforming_strings`` is.

    Plain ``'...'`` with quotes doubled; with a backslash in it, the ``E'...'`` form with
    backslashes doubled too, which reads the same under either setting.
    """
    if "\x00" in value:
        raise ValueError("an SQL literal cannot contain a NUL character")
    quoted = value.replace("'", "''")
    if "\\" in value:
        return "E'" + quoted.replace("\\", "\\\\") + "'"
    return "'" + quoted + "'"


def escape_option(value: str) -> str:
    """``value`` for the ``options`` keyword, where the server splits words on white space.

    A backslash escapes the next character there, so white space and backslashes are escaped.
    """
    return re.sub(r"([\s\\])", r"\\\1", value)


# -- the {tenant} placeholder in SQL ---------------------------------------------------------

TENANT = "{tenant}"
TENANT_LITERAL = "{tenant_literal}"
PLACEHOLDER = re.compile(r"\{tenant(?:_literal)?\}")
# In SQL, {tenant} becomes a quoted identifier and must stand alone as one (next to another
# placeholder, two quoted tokens would run together).
_SQL_PLACEHOLDER_ALONE = re.compile(r"(?<![\w\"$'}])\{tenant(?:_literal)?\}(?![\w\"$'{])")
_DOLLAR_TAG = re.compile(r"\$(?:[^\W\d$][\w]*)?\$")


def quoted_spans(sql: str, backslash_escapes: bool) -> list[tuple[int, int]]:
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


def placeholders_stand_alone(statement: str) -> bool:
    """Every placeholder in ``statement`` is a token of its own, outside quotes and comments
    (read both with and without standard_conforming_strings)."""
    found = [m.start() for m in PLACEHOLDER.finditer(statement)]
    if not found:
        return True
    if len(found) != len(_SQL_PLACEHOLDER_ALONE.findall(statement)):
        return False
    for escapes in (False, True):
        spans = quoted_spans(statement, escapes)
        if any(a <= pos <= b for pos in found for a, b in spans):
            return False
    return True
