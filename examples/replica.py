"""Route writes to the primary and reads to a replica: two pools of ``examples/replica.toml``.

::

    PGPOOLS_CONFIG=examples/replica.toml python examples/replica.py

(``PGPOOLS_CONFIG`` defaults to ``replica.toml`` beside this script.) Writes go through the
``primary`` pool (``target_session_attrs = "read-write"``), reads through ``replica``
(``prefer-standby``, every transaction read-only). The script shows where each pool landed
and that the replica pool refuses a write, whichever server it reached.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pg

from pgregistry import ConfigError, Registry

CONFIG = Path(__file__).with_name("replica.toml")


def where(db: pg.DB) -> str:
    standby, read_only, server = db.query(
        "SELECT pg_is_in_recovery(), current_setting('transaction_read_only'),"
        " host(inet_server_addr()) || ':' || current_setting('port')"
    ).getresult()[0]
    role = "standby" if standby else "primary"
    return f"{role} {server or 'via unix socket'}, transaction_read_only={read_only}"


def main() -> int:
    os.environ.setdefault("PGPOOLS_CONFIG", str(CONFIG))
    try:
        registry = Registry.from_config()
    except ConfigError as exc:
        print(exc, file=sys.stderr)
        return 2
    with registry:
        with registry.connection("primary") as db:
            print(f"primary pool: {where(db)}")
            db.query("CREATE TEMP TABLE IF NOT EXISTS visit (at timestamptz DEFAULT now())")
            db.query("INSERT INTO visit DEFAULT VALUES")
            print("primary pool: write ok")
        with registry.connection("replica") as db:
            print(f"replica pool: {where(db)}")
            (tables,) = db.query("SELECT count(*) FROM pg_class").getresult()[0]
            print(f"replica pool: read ok ({tables} relations in pg_class)")
            try:
                db.query("CREATE TEMP TABLE visit (at timestamptz)")
            except pg.DatabaseError as exc:  # what a write that took the wrong pool gets
                print(f"replica pool: write refused: {str(exc).strip()}")
            else:
                print("replica pool: a write went through: the session is not read-only!")
                return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
