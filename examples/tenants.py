"""Serve a few tenants from threads: a pool per tenant, a schema per tenant, one server budget.

Creates a schema per tenant (``tenant_acme``, ...) in the database of ``tenants.toml`` with an
``orders`` table, places orders for each tenant from 8 threads, prints what each tenant sees
and the registry's stats, and drops the schemas again. Run from the repository root::

    python examples/tenants.py

The usual ``PGPOOLS__...`` variables override the file (host, port, the search_path, ...).
"""

from __future__ import annotations

import json
import threading
from pathlib import Path

from pgregistry import InvalidTenantError, Registry
from pgregistry.conninfo import quote_ident

CONFIG = Path(__file__).with_name("tenants.toml")
TENANTS = ["acme", "globex", "initech", "umbrella", "hooli"]  # five tenants, max_pools 4
THREADS = 8
ORDERS_PER_THREAD = 15


def schema_of(reg: Registry, tenant: str) -> str:
    """The tenant's schema: the first search_path entry of the template, filled in."""
    return reg.settings.tenants["shop"].search_path[0].replace("{tenant}", tenant)


def create_schemas(reg: Registry) -> None:
    with reg.connection("admin") as db:
        for tenant in TENANTS:
            schema = quote_ident(schema_of(reg, tenant))
            db.query(f"DROP SCHEMA IF EXISTS {schema} CASCADE")
            db.query(f"CREATE SCHEMA {schema}")
            db.query(f"CREATE TABLE {schema}.orders (id serial PRIMARY KEY, item text NOT NULL)")


def drop_schemas(reg: Registry) -> None:
    with reg.connection("admin") as db:
        for tenant in TENANTS:
            db.query(f"DROP SCHEMA IF EXISTS {quote_ident(schema_of(reg, tenant))} CASCADE")


def worker(reg: Registry, number: int, errors: list[BaseException]) -> None:
    try:
        for i in range(ORDERS_PER_THREAD):
            tenant = TENANTS[(number + i) % len(TENANTS)]
            # The unqualified table name resolves to the tenant's schema (search_path).
            with reg.connection("shop", tenant=tenant) as db:
                db.query("INSERT INTO orders (item) VALUES ($1)", (f"thread {number} order {i}",))
    except BaseException as exc:  # reported by main()
        errors.append(exc)


def main() -> None:
    with Registry.from_config(CONFIG) as reg:
        create_schemas(reg)
        try:
            errors: list[BaseException] = []
            threads = [
                threading.Thread(target=worker, args=(reg, n, errors)) for n in range(THREADS)
            ]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join(60)
            if errors:
                raise errors[0]

            for tenant in TENANTS:
                with reg.connection("shop", tenant=tenant) as db:
                    row = db.query(
                        "SELECT current_schema(), current_setting('app.tenant'), count(*)"
                        " FROM orders"
                    ).getresult()[0]
                print(f"{tenant:9} schema {row[0]:18} app.tenant={row[1]:9} orders {row[2]}")

            try:
                reg.get("shop", tenant="x'; DROP SCHEMA public; --")
            except InvalidTenantError as exc:
                print(f"refused: {exc}")

            stats = reg.stats()
            budget = stats["servers"]["main"]
            print(
                f"server budget 'main': used {budget['used']}/{budget['max_connections']}, "
                f"peak {budget['peak']}, steals {budget['steals']}, waits {budget['waits']}"
            )
            summary = {
                key: {k: pool[k] for k in ("open", "idle", "checkouts", "stolen")}
                for key, pool in stats["tenants"]["shop"].items()
            }
            print("tenant pools now:", json.dumps(summary, sort_keys=True))
        finally:
            drop_schemas(reg)


if __name__ == "__main__":
    main()
