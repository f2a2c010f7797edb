"""Resolving a result's types while its connection is surely the caller's and alive.

PyGreSQL fetches a type's description (and, for composites, their fields' types, for arrays
their element type, recursively) from the server the first time a connection meets it, and it
does so while the result is being read. A read that needs the server can then hit a connection
lent to someone else, or one killed meanwhile (``TypeError: Invalid type``). Resolving the
typecasts right after the query leaves reading nothing to ask the server. Types seen before
cost two set lookups.
"""

from __future__ import annotations

from typing import Any

import pg

__all__ = ["NATIVE_TYPES", "prime_types"]

# Column types that PyGreSQL converts without asking the server (see prime_types): bool,
# bytea, char, name, int8, int2, int4, text, oid, json, float4, float8, money, bpchar, varchar,
# numeric, jsonb, and arrays of these.
NATIVE_TYPES = frozenset(
    {16, 17, 18, 19, 20, 21, 23, 25, 26, 114, 700, 701, 790, 1042, 1043, 1700, 3802}
    | {199, 1000, 1001, 1002, 1003, 1005, 1007, 1009, 1014, 1015, 1016, 1021, 1022, 1028}
    | {1231, 3807}
)


def prime_types(db: pg.DB, result: pg.Query, primed: set[int]) -> None:
    """Resolve the typecast of every column type of ``result`` not in ``primed`` (the oids
    this ``db`` resolved before), adding them to it. Raises what a lookup raised."""
    fields: Any = result.fieldinfo()  # type: ignore[call-arg]  # column is optional
    for field in fields:
        oid = field[1]
        if oid in primed:
            continue
        if oid not in NATIVE_TYPES:
            dbtypes = db.dbtypes
            typ = dbtypes.get(oid)
            if typ is not None:
                dbtypes.get_typecast(typ.pgtype)  # resolves arrays, records, nested
        primed.add(oid)
