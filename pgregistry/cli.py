"""The ``pgregistry`` command: ``check`` a configuration, ``ping`` its pools.

Exit status: 0 when everything is fine, 1 when a pool could not be reached, 2 when the
configuration is invalid, missing, or the command line is wrong. Secrets are masked in all
output.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from collections.abc import Sequence
from typing import Any, TextIO

from . import __version__, pooling
from .config import PROCESSES_ENV, PoolSettings, Settings, load_settings
from .conninfo import redact
from .errors import ConfigError, InvalidTenantError, UnknownPoolError
from .registry import Registry
from .replicas import LAG_SQL
from .steady import SteadyPgConnection

__all__ = ["main"]

_PING_ROUNDS = 3
_SIZE_KEYS = ("mincached", "maxcached", "maxconnections", "blocking", "reset", "timeout")
_TEMPLATE_KEYS = ("max_pools", "idle_pool_timeout", "maxconnections", "tenant_pattern")


def main(argv: Sequence[str] | None = None, *, out: TextIO | None = None) -> int:
    """Run the command line; returns the exit status."""
    out = out or sys.stdout
    parser = _parser()
    args = parser.parse_args(argv)
    try:
        settings = load_settings(args.config)
    except ConfigError as exc:
        print(f"pgregistry: {exc}", file=sys.stderr)
        return 2
    except (UnicodeError, OSError) as exc:  # the configuration layer should say ConfigError
        print(f"pgregistry: invalid configuration: {type(exc).__name__}", file=sys.stderr)
        return 2
    if not settings.pools and not settings.tenants and not settings.disabled:
        print(f"pgregistry: no configuration: {_where_looked(args.config)}", file=sys.stderr)
        return 2
    try:
        if args.command == "check":
            return _check(settings, as_json=args.json, out=out)
        if args.tenant is not None:
            return _ping_tenants(settings, args.names, args.tenant, as_json=args.json, out=out)
        return _ping(settings, args.names, as_json=args.json, out=out)
    except BrokenPipeError:
        # The reader went away (pgregistry check | head): no traceback, no flush error.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pgregistry", description="Check and ping the pools of a pgpools.toml configuration."
    )
    parser.add_argument("--version", action="version", version=f"pgregistry {__version__}")
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--config",
        metavar="FILE",
        help="configuration file (default: $PGPOOLS_CONFIG, else ./pgpools.toml)",
    )
    common.add_argument("--json", action="store_true", help="print JSON for machines")
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser(
        "check",
        parents=[common],
        help="validate the configuration and print the resolved pools, secrets masked",
    )
    ping = commands.add_parser(
        "ping",
        parents=[common],
        help="connect to each pool's server; print its version and round-trip latency",
    )
    ping.add_argument(
        "names", nargs="*", metavar="NAME", help="pools (or, with --tenant, templates) to ping"
    )
    ping.add_argument(
        "--tenant",
        metavar="KEY",
        help="ping that tenant's pool of each named tenant template (default: every template)",
    )
    return parser


def _check(settings: Settings, *, as_json: bool, out: TextIO) -> int:
    if as_json:
        json.dump(settings.describe(), out, indent=2, default=str)
        out.write("\n")
        return 0
    out.write(f"configuration: {settings.source}\n")
    if not settings.pools and not settings.tenants:
        out.write("no pools configured\n")
    if settings.pools or settings.disabled:
        rows = [["pool", "target", *_SIZE_KEYS]]
        for name in sorted(settings.pools):
            pool = settings.pools[name]
            described = pool.describe()
            marker = " (default)" if name == _default_name(settings) else ""
            rows.append(
                [name + marker, _target(pool)] + [_cell(described.get(k)) for k in _SIZE_KEYS]
            )
        for name in sorted(settings.disabled):
            rows.append([name, "disabled (enabled = false)"] + ["-" for _ in _SIZE_KEYS])
        _table(rows, out)
    if settings.tenants:
        out.write("\ntenant templates\n")
        rows = [["template", "target", *_TEMPLATE_KEYS, "server"]]
        for name in sorted(settings.tenants):
            template = settings.tenants[name]
            described = template.describe()
            rows.append(
                [name, _target(template)]
                + [_cell(described.get(k)) for k in _TEMPLATE_KEYS]
                + [_cell(settings.server_of(template))]
            )
        _table(rows, out)
    _check_server_pooling(settings, out)
    if settings.servers:
        _check_budgets(settings, out)
    elif os.environ.get(PROCESSES_ENV, "").strip():
        out.write(f"\nnote: ${PROCESSES_ENV} divides no budget: no [servers.NAME] table\n")
    return 0


def _check_server_pooling(settings: Settings, out: TextIO) -> None:
    """Which pools have a pooler in the way or a statement_timeout, and how it is applied."""
    tables: list[tuple[str, PoolSettings]] = [
        (n, settings.pools[n]) for n in sorted(settings.pools)
    ]
    tables += [(f"template {n}", settings.tenants[n]) for n in sorted(settings.tenants)]
    rows = [["pool", "server_pooling", "statement_timeout", "applied as"]]
    for name, pool in tables:
        if pool.server_pooling == "none" and pool.statement_timeout is None:
            continue
        timeout = pool.statement_timeout
        rows.append(
            [
                name,
                pool.server_pooling,
                "-" if timeout is None else f"{_cell(timeout)} s",
                pooling.statement_timeout_via(pool.server_pooling, timeout),
            ]
        )
    if len(rows) > 1:
        out.write("\nserver-side pooling and statement_timeout\n")
        _table(rows, out)


def _check_budgets(settings: Settings, out: TextIO) -> None:
    """The server budgets: the whole figure, the processes sharing it and this process's share."""
    out.write("\nserver budgets\n")
    members: dict[str, list[PoolSettings]] = {name: [] for name in settings.servers}
    labels: dict[str, list[str]] = {name: [] for name in settings.servers}
    for kind, tables in (("", settings.pools), ("template ", settings.tenants)):
        for name in sorted(tables):
            owner = settings.server_of(tables[name])
            if owner in members:
                members[owner].append(tables[name])
                labels[owner].append(kind + name)
    rows = [["server", "host", "port", "maxconnections", "processes", "per process", "pools"]]
    notes: list[str] = []
    for name in sorted(settings.servers):
        server = settings.servers[name]
        rows.append(
            [
                name,
                _cell(server.host),
                _cell(server.port),
                str(server.max_connections),
                str(server.processes),
                str(server.per_process),
                ", ".join(labels[name]) or "-",
            ]
        )
        if server.processes > server.max_connections:
            notes.append(
                f"servers.{name}: {server.processes} processes get at least 1 connection each, "
                f"{server.processes} together, above maxconnections {server.max_connections}; "
                "raise maxconnections or put a pooler in front (see README, Deploying with "
                "many processes)"
            )
        # A template's pools: maxconnections each, max_pools of them.
        wanted = [p.maxconnections * getattr(p, "max_pools", 1) for p in members[name]]
        if wanted and 0 not in wanted and sum(wanted) > server.per_process:
            notes.append(
                f"servers.{name}: its pools' maxconnections add up to {sum(wanted)}, above the "
                f"{server.per_process} per process: they share it (a pool that needs one closes "
                "another pool's idle connection, else waits up to its timeout)"
            )
    _table(rows, out)
    for note in notes:
        out.write(f"note: {note}\n")


def _ping(settings: Settings, names: list[str], *, as_json: bool, out: TextIO) -> int:
    unknown = [n for n in names if n not in settings.pools]
    if unknown:
        # The library's own message (UnknownPoolError), one line per name; builds no pool.
        registry = Registry(settings)
        for name in unknown:
            try:
                registry.get(name)
            except UnknownPoolError as exc:
                print(f"pgregistry: {exc}", file=sys.stderr)
        registry.close()
        return 2
    results = [_ping_one(settings.pools[n]) for n in (names or sorted(settings.pools))]
    return _report(results, as_json=as_json, out=out)


def _report(results: list[dict[str, Any]], *, as_json: bool, out: TextIO) -> int:
    if as_json:
        json.dump(results, out, indent=2)
        out.write("\n")
    else:
        rows = [["pool", "status", "server", "role", "latency / error"]]
        for r in results:
            if r["ok"]:
                latency = f"{r['latency_ms']:.2f} ms"
                if r.get("lag_s") is not None:
                    latency += f" (replay {r['lag_s']:.1f} s behind)"
                if r["pooler"]:
                    latency += " (through a connection pooler such as PgBouncer)"
                role = r.get("role") or "-"
                rows.append([r["pool"], "ok", r["server_version"], role, latency])
            else:
                rows.append([r["pool"], "FAILED", "-", "-", r["error"]])
        _table(rows, out)
    return 0 if all(r["ok"] for r in results) else 1


def _ping_tenants(
    settings: Settings, names: list[str], key: str, *, as_json: bool, out: TextIO
) -> int:
    """Ping tenant ``key``'s pool of each template in ``names`` (default: every template)."""
    templates = names or sorted(settings.tenants)
    unknown = [n for n in templates if n not in settings.tenants]
    if unknown:
        known = ", ".join(sorted(settings.tenants)) or "(none)"
        for name in unknown:
            print(
                f"pgregistry: unknown tenant template {name!r}; configured templates: {known}",
                file=sys.stderr,
            )
        return 2
    pools: list[PoolSettings] = []
    for name in templates:
        try:
            pools.append(settings.tenants[name].for_tenant(key))
        except InvalidTenantError as exc:
            print(f"pgregistry: {exc}", file=sys.stderr)
            return 2
    results = [
        _ping_one(pool, label=f"{name}.{key}") for name, pool in zip(templates, pools, strict=True)
    ]
    return _report(results, as_json=as_json, out=out)


def _where_looked(config: str | None) -> str:
    """Where the configuration was looked for, for the message when there is none."""
    if config:
        return f"{config} has no pools"
    named = os.environ.get("PGPOOLS_CONFIG")
    file = os.path.abspath(named or "pgpools.toml")
    how = "named by $PGPOOLS_CONFIG" if named else "$PGPOOLS_CONFIG is not set"
    return (
        f"no file at {file} ({how}) and no PGPOOLS__... environment variables; "
        "see README.md, Configuration"
    )


def _ping_one(pool: PoolSettings, label: str | None = None) -> dict[str, Any]:
    """Open one connection the way the pool would, run SELECT 1 a few times, close it."""
    kwargs = pool.pool_kwargs()
    result: dict[str, Any] = {"pool": label or pool.name, "ok": False}
    try:
        # The startup option or session SET of statement_timeout, as the pool sends them.
        pooled = pooling.configure(
            pool.server_pooling,
            pool.statement_timeout,
            tuple(pool.setsession),
            pool.reset,
            (),
            {"dbname": kwargs["dbname"]},
        )
        connect = dict(pooled.kwargs)
        if "passwd" in kwargs:  # a password_file, read now as the pool would
            connect["passwd"] = kwargs["passwd"]
        conn = SteadyPgConnection(None, pooled.setsession or None, True, **connect)
        try:
            rounds = []
            for _ in range(_PING_ROUNDS):
                started = time.perf_counter()
                conn.query("SELECT 1")
                rounds.append((time.perf_counter() - started) * 1000)
            version = int(conn.server_version)
            server_pid = conn.query("SELECT pg_backend_pid()").getresult()[0][0]
            pooler = server_pid != conn.backend_pid
            role = conn.server_role()
            lag = (
                float(conn.query(LAG_SQL).getresult()[0][0] or 0)
                if pool.max_replica_lag is not None
                else None
            )
        finally:
            conn.close()
    except Exception as exc:
        result["error"] = redact(" ".join(str(exc).split()))
        return result
    result.update(
        ok=True,
        server_version=_version(version),
        latency_ms=round(statistics.median(rounds), 3),
        pooler=pooler,
        role=role,
        lag_s=None if lag is None else round(lag, 3),
    )
    return result


def _version(number: int) -> str:
    major = number // 10000
    return f"{major}.{number % 10000}" if major >= 10 else f"{major}.{number // 100 % 100}"


def _default_name(settings: Settings) -> str | None:
    return settings.default_pool_name()


def _target(pool: PoolSettings) -> str:
    described = pool.describe()
    target = described.get("target") or described.get("conninfo")
    if isinstance(target, str):
        return redact(target)
    parts = [
        f"{key}={described[key]}"
        for key in ("service", "host", "port", "dbname", "user")
        if described.get(key) not in (None, "")
    ]
    return redact(" ".join(parts)) or "(libpq defaults)"


def _cell(value: object) -> str:
    if value is None:
        return "-"
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return str(value)


def _table(rows: list[list[str]], out: TextIO) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for index, row in enumerate(rows):
        cells = (cell.ljust(width) for cell, width in zip(row, widths, strict=True))
        out.write("  ".join(cells).rstrip() + "\n")
        if index == 0:
            out.write("  ".join("-" * width for width in widths) + "\n")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
