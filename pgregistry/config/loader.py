"""Loading: read the sources, merge ``[defaults]`` into each pool, validate, report.

:func:`load_settings` returns a frozen :class:`~pgregistry.config.Settings` or raises one
:class:`~pgregistry.errors.ConfigError` that lists every problem with its path and source.
"""

from __future__ import annotations

import contextlib
import difflib
import os
from collections.abc import Callable, Collection, Iterator, Mapping
from typing import Any

from pydantic import SecretStr, ValidationError

from ..conninfo import ConninfoError, parse_conninfo, redact
from ..errors import ConfigError, InvalidTenantError
from ..options import KEY_ALIASES, default_pool_name
from .fields import _SECRET_FIELDS, check_pool_name
from .messages import dotted as _dotted
from .messages import got as _got
from .messages import message as _message
from .pool import PoolSettings
from .settings import ServerSettings, Settings, server_of
from .sources import TOP_LEVEL_KEYS, RawConfig, read_sources, replaced_by
from .tenant import TenantSettings

__all__ = ["load_settings", "settings_from_mapping"]


def load_settings(
    path: str | os.PathLike[str] | None = None,
    *,
    env: Mapping[str, str] | None = None,
    secrets_dir: str | os.PathLike[str] | None = None,
) -> Settings:
    """Read, merge and validate the configuration.

    ``path``: the TOML file; None means ``$PGPOOLS_CONFIG``, else ``./pgpools.toml``. A file
    named by either must exist; without one, the default file may be absent (then the
    environment alone configures). ``env``: the environment (default ``os.environ``).
    ``secrets_dir``: a directory of secret files (default ``$PGPOOLS_SECRETS_DIR``, else none).

    Raises :class:`~pgregistry.errors.ConfigError` listing every problem at once.
    """
    environ: Mapping[str, str] = os.environ if env is None else env
    return _build(read_sources(path, environ, secrets_dir))


def settings_from_mapping(data: Mapping[str, Any], *, source: str = "mapping") -> Settings:
    """Validate an already-parsed configuration (the TOML shape) with the same rules."""
    return _build(RawConfig.from_mapping(data, source))


_POOL_KEYS = tuple(k for k in PoolSettings.model_fields if k != "name")


def _normalize(layer: Mapping[Any, Any]) -> tuple[dict[str, Any], list[tuple[str, str]]]:
    """Apply the aliases (passwd, opt) and drop keys no pool may set, saying why."""
    out: dict[str, Any] = {}
    problems: list[tuple[str, str]] = []
    for key, value in layer.items():
        key = str(key)
        canonical = KEY_ALIASES.get(key, key)
        if key == "name":
            problems.append((key, "unknown key (a pool's name is the name of its table)"))
        elif canonical in out or (canonical != key and canonical in layer):
            problems.append((key, f"{key} and {canonical} are both set; keep one"))
        else:
            out[canonical] = value
    return out, problems


def _apply_defaults(
    defaults: Mapping[str, Any], layer: Mapping[str, Any]
) -> tuple[dict[str, Any], dict[str, str]]:
    """Merge ``[defaults]`` under one pool's keys; return the merge and each key's origin.

    The target is taken as a whole (:func:`~pgregistry.config_sources.replaced_by`): a pool
    with ``conninfo`` ignores the separate target keys of ``[defaults]`` and the libpq keywords
    its conninfo sets; a pool with separate target keys ignores a ``conninfo`` there.
    """
    skip = replaced_by(layer)
    merged: dict[str, Any] = {}
    origin: dict[str, str] = {}
    for key, value in defaults.items():
        if key not in skip:
            merged[key], origin[key] = value, "defaults"
    for key, value in layer.items():
        merged[key], origin[key] = value, "pool"
    return merged, origin


def _secret_values(data: Mapping[str, Any]) -> list[str]:
    """Every secret-looking value in the raw data, to mask anything that might echo one."""
    found: list[str] = []
    stack: list[Any] = [data]
    while stack:
        node = stack.pop()
        if not isinstance(node, Mapping):
            continue
        for key, value in node.items():
            if isinstance(value, Mapping):
                stack.append(value)
            elif str(key) in _SECRET_FIELDS:
                text = value.get_secret_value() if isinstance(value, SecretStr) else str(value)
                found.append(text)
                if str(key) == "conninfo":
                    try:
                        params = parse_conninfo(text)
                    except ConninfoError:
                        continue
                    found += [v for k, v in params.items() if k in _SECRET_FIELDS]
    # Very short secrets would mask ordinary words of the messages; they are never echoed by
    # construction anyway (this is a second line of defence).
    return [s for s in found if len(s) >= 4]


_Report = Callable[[tuple[Any, ...], str], None]
_ReportErrors = Callable[[ValidationError, tuple[str, ...], Mapping[str, str] | None], None]


def _validate_pool(
    name: str,
    merged: Mapping[str, Any],
    base: tuple[str, ...],
    origin: Mapping[str, str],
    report: _Report,
    report_errors: _ReportErrors,
    model: type[PoolSettings] = PoolSettings,
) -> PoolSettings | None:
    """Validate one pool (or template); report every problem; return it when it has none."""
    sink: list[tuple[str, str]] = []
    try:
        pool = model.model_validate({**merged, "name": name}, context={"problems": sink})
    except ValidationError as exc:
        report_errors(exc, base, origin)
        # The combination checks (conninfo vs. host, mincached vs. maxconnections) run only on
        # a valid model: check again without the keys already reported, so that one wrong
        # key does not hide a conflict between two others.
        bad = {str(error["loc"][0]) for error in exc.errors() if error["loc"]}
        rest = {key: value for key, value in merged.items() if key not in bad}
        with contextlib.suppress(ValidationError):
            model.model_validate({**rest, "name": name}, context={"problems": sink})
        pool = None
    for key, msg in sink:
        report((*base, key), msg)
    return None if sink else pool


def _build(raw: RawConfig) -> Settings:
    problems: list[str] = list(raw.problems)

    secrets = _secret_values(raw.data)

    def report(path: tuple[Any, ...], message: str) -> None:
        # The path is ours and holds no value; redact() would take "password: ..." for a
        # password, so only the message and the source go through it.
        where = raw.where(tuple(str(p) for p in path if not isinstance(p, int)))
        line = f"{_dotted(path)}: {redact(message, secrets)}"
        if where:
            line += f" [{redact(where, secrets)}]"
        if line not in problems:
            problems.append(line)

    def report_errors(
        exc: ValidationError, base: tuple[str, ...], origin: Mapping[str, str] | None = None
    ) -> None:
        for error in exc.errors(include_url=False):
            loc = tuple(error["loc"])
            path: tuple[Any, ...] = base
            if loc and origin is not None and origin.get(str(loc[0])) == "defaults":
                path = ("defaults",)
            report(path + loc, _message(error, _POOL_KEYS))

    data = raw.data
    for key in data:
        if key not in TOP_LEVEL_KEYS:
            close = difflib.get_close_matches(str(key), sorted(TOP_LEVEL_KEYS), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            report((str(key),), f"unknown key{hint}")

    defaults_raw = data.get("defaults", {})
    if not isinstance(defaults_raw, Mapping):
        report(("defaults",), "must be a table of pool settings")
        defaults_raw = {}
    defaults, alias_problems = _normalize(defaults_raw)
    for key, msg in alias_problems:
        report(("defaults", key), msg)
    sink: list[tuple[str, str]] = []
    try:
        PoolSettings.model_validate(
            {**defaults, "name": "defaults"}, context={"layer": "defaults", "problems": sink}
        )
    except ValidationError as exc:
        report_errors(exc, ("defaults",))
    for key, msg in sink:
        report(("defaults", key), msg)

    pools_raw = data.get("pools", {})
    pools_raw = pools_raw if isinstance(pools_raw, Mapping) else {}
    pools: dict[str, PoolSettings] = {}
    disabled: list[str] = []
    for name, base, layer_raw in _named_tables(data, "pools", "pool", report):
        layer, alias_problems = _normalize(layer_raw)
        for key, msg in alias_problems:
            report((*base, key), msg)
        merged, origin = _apply_defaults(defaults, layer)
        pool = _validate_pool(name, merged, base, origin, report, report_errors)
        if pool is None or alias_problems:
            continue
        if pool.enabled:
            pools[pool.name] = pool
        else:
            disabled.append(pool.name)

    tenants = _build_tenants(data, defaults, pools_raw, report, report_errors)
    servers = _build_servers(data, report, report_errors)
    declared = data.get("servers")
    declared = declared if isinstance(declared, Mapping) else {}
    invalid = {str(name) for name in declared if str(name) not in servers}
    _check_budgets(pools, tenants, servers, report, invalid)
    _check_read_pools(pools, pools_raw, report)

    default = data.get("default")
    if default is not None:
        if not isinstance(default, str):
            report(("default",), "must be a pool name" + _got(default))
        elif default in disabled:
            report(("default",), f"names pool {default!r}, which is disabled (enabled = false)")
        elif default not in pools and default not in pools_raw:
            known = ", ".join(pools) or "none"
            report(
                ("default",), f"names pool {default!r}, which is not configured (pools: {known})"
            )
    else:
        default = default_pool_name(None, pools)

    if problems:
        count = f"{len(problems)} problem" + ("s" if len(problems) != 1 else "")
        header = f"invalid configuration ({redact(raw.source, secrets)}): {count}"
        raise ConfigError(header + "\n  " + "\n  ".join(problems), problems)
    return Settings(
        pools=pools,
        default=default if isinstance(default, str) else None,
        source=raw.source,
        disabled=tuple(disabled),
        tenants=tenants,
        servers=servers,
    )


def _named_tables(
    data: Mapping[str, Any], section: str, what: str, report: _Report
) -> Iterator[tuple[str, tuple[str, str], Mapping[str, Any]]]:
    """The ``[SECTION.NAME]`` tables with a valid name, reporting the others."""
    tables = data.get(section, {})
    if not isinstance(tables, Mapping):
        report((section,), f"must be a table of {what}s")
        return
    for name, table in tables.items():
        base = (section, str(name))
        problem = check_pool_name(name)
        if problem:
            report(base, problem.replace("pool name", f"{what} name"))
        elif not isinstance(table, Mapping):
            report(base, f"must be a table of {what} settings" + _got(table))
        else:
            yield str(name), base, table


def _build_tenants(
    data: Mapping[str, Any],
    defaults: Mapping[str, Any],
    pools_raw: Mapping[str, Any],
    report: _Report,
    report_errors: _ReportErrors,
) -> dict[str, TenantSettings]:
    """Validate the ``[tenants.NAME]`` templates and their per-tenant overrides."""
    tenants: dict[str, TenantSettings] = {}
    for name, base, layer_raw in _named_tables(data, "tenants", "template", report):
        if name in pools_raw:
            report(base, f"a pool is also named {name!r}; pools and templates share names")
            continue
        layer, alias_problems = _normalize(layer_raw)
        for key, msg in alias_problems:
            report((*base, key), msg)
        overrides_raw = layer.pop("overrides", {})
        merged, origin = _apply_defaults(defaults, layer)
        template = _validate_pool(
            name, merged, base, origin, report, report_errors, model=TenantSettings
        )
        if not isinstance(template, TenantSettings) or alias_problems:
            continue
        overrides = _build_overrides(template, merged, overrides_raw, base, report, report_errors)
        if overrides is None:
            continue
        if template.enabled:
            tenants[name] = template.model_copy(update={"overrides": overrides})
    return tenants


_TEMPLATE_ONLY = frozenset(TenantSettings.model_fields) - frozenset(PoolSettings.model_fields)


def _build_overrides(
    template: TenantSettings,
    merged: Mapping[str, Any],
    overrides_raw: object,
    base: tuple[str, ...],
    report: _Report,
    report_errors: _ReportErrors,
) -> dict[str, dict[str, Any]] | None:
    """Check each ``[tenants.NAME.overrides.KEY]`` table against the template's pool keys."""
    if not isinstance(overrides_raw, Mapping):
        report((*base, "overrides"), "must be a table of tenant keys")
        return None
    out: dict[str, dict[str, Any]] = {}
    ok = True
    pool_layer = {k: v for k, v in merged.items() if k not in _TEMPLATE_ONLY}
    for key, table in overrides_raw.items():
        where = (*base, "overrides", str(key))
        try:
            template.check_tenant(key)
        except InvalidTenantError as exc:
            report(where, str(exc))
            ok = False
            continue
        if not isinstance(table, Mapping):
            report(where, "must be a table of pool settings" + _got(table))
            ok = False
            continue
        layer, alias_problems = _normalize(table)
        for k, msg in alias_problems:
            report((*where, k), msg)
        sink: list[tuple[str, str]] = []
        try:
            checked = PoolSettings.model_validate(
                {**pool_layer, **layer, "name": template.name}, context={"problems": sink}
            )
        except ValidationError as exc:
            report_errors(exc, where, None)
            ok = False
            continue
        if not sink:
            # The template's placeholder rules hold for the override's values too.
            with contextlib.suppress(ValidationError):  # its other checks passed above
                TenantSettings.model_validate(
                    {**merged, **layer, "name": template.name}, context={"problems": sink}
                )
        for k, msg in sink:
            report((*where, k), msg)
        if sink or alias_problems:
            ok = False
            continue
        out[str(key)] = {k: getattr(checked, k) for k in layer}
    return out if ok else None


def _build_servers(
    data: Mapping[str, Any], report: _Report, report_errors: _ReportErrors
) -> dict[str, ServerSettings]:
    servers: dict[str, ServerSettings] = {}
    for name, base, table in _named_tables(data, "servers", "server", report):
        try:
            servers[name] = ServerSettings.model_validate({**table, "name": name})
        except ValidationError as exc:
            report_errors(exc, base, None)
    return servers


def _check_read_pools(
    pools: Mapping[str, PoolSettings], declared: Collection[str], report: _Report
) -> None:
    """Every ``read_pool`` names a configured pool (the pool itself: its own reads, as with
    none, so that ``[defaults] read_pool`` works), which has no other read pool itself."""
    for name, pool in pools.items():
        target = pool.read_pool
        if target is None or target == name:
            continue
        path = ("pools", name, "read_pool")
        if target not in pools:
            if target not in declared:
                known = ", ".join(p for p in pools if p != name) or "none"
                report(path, f"names pool {target!r}, which is not configured (pools: {known})")
            else:
                report(path, f"names pool {target!r}, which is disabled or invalid")
        elif pools[target].read_pool not in (None, target):
            report(path, f"names pool {target!r}, which has a read_pool of its own: no chains")


def _check_budgets(
    pools: Mapping[str, PoolSettings],
    tenants: Mapping[str, TenantSettings],
    servers: Mapping[str, ServerSettings],
    report: _Report,
    invalid: Collection[str] = (),
) -> None:
    """Every ``server`` key names a server; no server's pools open more than its budget.

    ``invalid``: servers declared with a problem (already reported): naming them is fine.
    """
    at_start: dict[str, list[tuple[str, int]]] = {name: [] for name in servers}
    members: list[tuple[tuple[str, str], PoolSettings, int]] = [
        (("pools", name), pool, 1) for name, pool in pools.items()
    ] + [(("tenants", name), t, t.max_pools) for name, t in tenants.items()]
    for path, pool, copies in members:
        server = server_of(pool, servers)
        if server is None or server in invalid:
            continue
        if server not in servers:
            known = ", ".join(servers) or "none"
            report(
                (*path, "server"),
                f"names server {server!r}, which is not configured (servers: {known})",
            )
            continue
        if pool.mincached:
            at_start[server].append((path[1], pool.mincached * copies))
    for name, entries in at_start.items():
        total = sum(n for _, n in entries)
        budgeted = servers[name]
        # Each process opens its pools' mincached: they must fit in its share of the budget.
        budget = budgeted.per_process
        if total > budget:
            parts = ", ".join(f"{pool} {n}" for pool, n in entries)
            what = (
                f"{budget}"
                if budgeted.processes == 1
                else f"{budgeted.maxconnections} over {budgeted.processes} processes ({budget} per "
                "process)"
            )
            knobs = (
                "maxconnections" if budgeted.processes == 1 else "maxconnections, lower processes"
            )
            report(
                ("servers", name, "maxconnections"),
                f"{what} is below the {total} connections its pools open at start "
                f"(mincached: {parts}; a template counts mincached x max_pools); raise "
                f"{knobs} or lower mincached",
            )
