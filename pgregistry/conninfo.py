"""libpq connection targets: quoting, building and redaction.

Every message, repr, log record and CLI line that could contain a connection string passes
through :func:`redact` first, so a password never leaves the process in text.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

__all__ = ["MASK", "redact"]

MASK = "********"

# password=secret, password = 'it''s secret', password="x" (keyword strings and repr-ed dicts)
_KEYWORD_SECRET = re.compile(
    r"""(?P<key>\b(?:password|passwd|sslpassword)['"]?\s*[=:]\s*)"""
    r"""(?P<value>'(?:[^'\\]|\\.|'')*'|"(?:[^"\\]|\\.)*"|[^\s,;&)}\]]+)""",
    re.IGNORECASE,
)
# postgresql://user:secret@host and postgres://:secret@host
_URI_SECRET = re.compile(
    r"(?P<head>\bpostgres(?:ql)?://[^\s:/@?#]*:)(?P<value>[^\s@/?#]*)(?=@)",
    re.IGNORECASE,
)


def redact(text: object, secrets: Iterable[str | None] = ()) -> str:
    """Return ``str(text)`` with passwords masked.

    Masks ``password=...`` in libpq keyword strings (quoted or not), ``user:password@`` in
    ``postgresql://`` URIs, ``?password=`` URI parameters, and every literal value in
    ``secrets`` (for example a password passed to ``pg.DB`` that an error message repeats).
    """
    out = str(text)
    for secret in secrets:
        if secret and len(secret) >= 1:
            out = out.replace(secret, MASK)
    out = _URI_SECRET.sub(lambda m: m.group("head") + MASK, out)
    return _KEYWORD_SECRET.sub(lambda m: m.group("key") + MASK, out)
