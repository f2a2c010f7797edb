"""Helpers shared by the unit tests: libpq itself through ctypes, and generated conninfo text.

``PQconninfoParse`` and ``PQconndefaults`` need no server, so the unit tests can check our
parser against the machine's libpq wherever ctypes can load it (``LIBPQ`` is None elsewhere).
"""

from __future__ import annotations

import ctypes
import ctypes.util
from typing import Any

import pytest
from hypothesis import strategies as st

#: What a conninfo value can hold: any character but NUL and lone surrogates.
CONNINFO_CHARS = st.characters(blacklist_categories=["Cs"], blacklist_characters="\x00")


class _Option(ctypes.Structure):
    """libpq's ``PQconninfoOption``."""

    _fields_ = [
        ("keyword", ctypes.c_char_p),
        ("envvar", ctypes.c_char_p),
        ("compiled", ctypes.c_char_p),
        ("val", ctypes.c_char_p),
        ("label", ctypes.c_char_p),
        ("dispchar", ctypes.c_char_p),
        ("dispsize", ctypes.c_int),
    ]


def _load_libpq() -> Any:
    name = ctypes.util.find_library("pq")
    if not name:
        return None
    try:
        lib = ctypes.CDLL(name)
    except OSError:
        return None
    lib.PQconninfoParse.restype = ctypes.POINTER(_Option)
    lib.PQconninfoParse.argtypes = [ctypes.c_char_p, ctypes.POINTER(ctypes.c_char_p)]
    lib.PQconndefaults.restype = ctypes.POINTER(_Option)
    lib.PQconninfoFree.argtypes = [ctypes.POINTER(_Option)]
    lib.PQfreemem.argtypes = [ctypes.c_void_p]
    return lib


LIBPQ = _load_libpq()
needs_libpq = pytest.mark.skipif(LIBPQ is None, reason="libpq cannot be loaded with ctypes")


def _options(ptr: Any) -> dict[str, str | None]:
    """Every keyword of a ``PQconninfoOption`` array with its value (None: not set); frees it."""
    out: dict[str, str | None] = {}
    i = 0
    while ptr[i].keyword:
        val = ptr[i].val
        out[ptr[i].keyword.decode()] = None if val is None else val.decode("utf-8", "replace")
        i += 1
    LIBPQ.PQconninfoFree(ptr)
    return out


def libpq_parse(text: str) -> dict[str, str] | None:
    """libpq's reading of ``text`` (set values only), or None when libpq refuses it."""
    err = ctypes.c_char_p()
    ptr = LIBPQ.PQconninfoParse(text.encode(), ctypes.byref(err))
    if not ptr:
        return None
    return {k: v for k, v in _options(ptr).items() if v is not None}


def libpq_keywords() -> set[str]:
    """Every keyword the installed libpq knows."""
    return set(_options(LIBPQ.PQconndefaults()))
