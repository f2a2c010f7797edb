"""A plain script: one registry, a few pools, closed at the end.

Reads ``$PGPOOLS_CONFIG``, else ``./pgpools.toml``, plus ``PGPOOLS__...`` variables; with the
repository's ``pgpools.toml`` run ``make demo`` once first (it creates the databases)::

    python examples/plain.py            # every configured pool
    python examples/plain.py app audit  # only these

For each pool it checks out a connection, asks the server who and where it is, uses a
transaction on a temporary table (the classic ``pg.DB`` API: ``begin``, ``insert``, ``get``,
``commit``), and finally prints the pools' stats. Exit status 1 when a pool fails.
"""

from __future__ import annotations

import sys

import pg

from pgregistry import Registry


def visit(registry: Registry, name: str) -> None:
    with registry.connection(name) as db:
        user, dbname, version, pid = db.query(
            "SELECT current_user, current_database(), current_setting('server_version'),"
            " pg_backend_pid()"
        ).getresult()[0]
        print(f"{name}: {user}@{dbname}, PostgreSQL {version}, backend {pid}")
        if db.query("SHOW transaction_read_only").getresult()[0][0] == "on":
            print(f"{name}: read-only session, skipping the write")
            return
        db.query("CREATE TEMP TABLE IF NOT EXISTS note (id serial PRIMARY KEY, text text)")
        db.begin()
        row = db.insert("note", text=f"hello from {name}")
        db.commit()
        print(f"{name}: inserted and read back {db.get('note', row['id'])['text']!r}")
        db.query("DROP TABLE note")  # a pooled session outlives this script's use of it


def main(argv: list[str]) -> int:
    failed = 0
    with Registry.from_config() as registry:  # closes every pool on the way out
        for name in argv or registry.names():
            try:
                visit(registry, name)
            except (pg.Error, KeyError) as exc:  # UnknownPoolError is a KeyError
                print(f"{name}: FAILED: {exc}", file=sys.stderr)
                failed += 1
        for name, stats in registry.stats()["pools"].items():
            print(f"{name}: {stats['checkouts']} checkout(s), {stats['open']} open")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
