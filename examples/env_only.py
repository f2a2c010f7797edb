"""Twelve-factor configuration: every pool from ``PGPOOLS__...`` variables, no TOML file.

The same keys as in ``pgpools.toml``, as variables: ``PGPOOLS__DEFAULT=web`` names the default
pool, ``PGPOOLS__DEFAULTS__HOST`` applies to every pool, ``PGPOOLS__POOLS__WEB__MAXCONNECTIONS``
sets one key of pool ``web`` (and declares the pool), lists are JSON. ``examples/env_only.env``
holds a complete set::

    set -a; . examples/env_only.env; set +a
    cd /tmp && python /path/to/examples/env_only.py

Run it from a directory without a ``pgpools.toml`` (the loader would read that file too) and
without ``PGPOOLS_CONFIG``: the script refuses otherwise, so that a stray file cannot
configure a service that is meant to be configured by its environment alone.
"""

from __future__ import annotations

import sys

import pgregistry
from pgregistry import ConfigError


def main() -> int:
    try:
        # The process-wide registry loads its configuration on first use.
        settings = pgregistry.default_registry.settings
    except ConfigError as exc:  # lists every problem, by variable name
        print(exc, file=sys.stderr)
        return 2
    if settings.source != "environment":
        print(
            f"expected the environment alone, but the configuration came from: {settings.source}"
            "\nrun from a directory without pgpools.toml, with PGPOOLS_CONFIG unset",
            file=sys.stderr,
        )
        return 2
    if not settings.pools:
        print("no pools: set PGPOOLS__POOLS__<NAME>__... variables", file=sys.stderr)
        return 2
    print(f"pools from the environment: {', '.join(settings.pool_names())}")
    print(f"default pool: {settings.default}")
    for name in settings.pool_names():
        with pgregistry.connection(name) as db:  # pgregistry.get(name).connection()
            user, dbname, timeout = db.query(
                "SELECT current_user, current_database(), current_setting('statement_timeout')"
            ).getresult()[0]
        stats = pgregistry.get(name).stats()
        print(
            f"{name}: {user}@{dbname}, statement_timeout {timeout},"
            f" maxconnections {stats['maxconnections'] or 'unlimited'}"
        )
    return 0  # the pools close at interpreter exit


if __name__ == "__main__":
    sys.exit(main())
