"""The registry: named pools from the configuration, built lazily and closed together.

``Registry.get(name)`` builds a pool on its first use, exactly once even when many threads ask
at the same moment, and afterwards costs one dictionary lookup. ``reload()`` applies a new
configuration without dropping clients: unchanged pools keep their connections, a changed
pool is replaced for new checkouts while the old one drains, a removed pool drains and closes.
One maintenance thread serves every pool of a registry.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import threading
import weakref
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .budget import ServerBudget
from .conninfo import redact
from .errors import PoolClosedError, PoolTimeoutError, ServerUnavailableError, UnknownPoolError
from .maintenance import Maintenance, Task
from .pool import PooledPg, PooledPgConnection
from .replicas import LagWatch
from .stats import PoolObserver, RegistryStats
from .tenants import TenantPools

if TYPE_CHECKING:
    # Imported when first needed (see _load_settings): pydantic takes longer to import than
    # the rest of the package, and a program that uses PooledPg alone never needs it.
    from .config import PoolSettings, Settings, TenantSettings

__all__ = [
    "Registry",
    "RegistryStats",
    "ReloadResult",
    "close",
    "connection",
    "default_registry",
    "get",
    "pause",
    "reload",
    "resume",
    "stats",
    "transaction",
]

_log = logging.getLogger("pgregistry.registry")


#: Makes the observer of one pool (see :meth:`Registry.observe`); None leaves it unobserved.
ObserverFactory = Callable[[PooledPg], PoolObserver | None]


class _FanOut:
    """One pool observer passing every event to several (see :meth:`Registry.observe`)."""

    __slots__ = ("_observers",)

    def __init__(self, observers: list[PoolObserver]) -> None:
        self._observers = tuple(observers)

    def __bool__(self) -> bool:
        return bool(self._observers)

    def on_connect(self, seconds: float) -> None:
        for observer in self._observers:
            observer.on_connect(seconds)

    def on_checkout(self, waited: float) -> None:
        for observer in self._observers:
            observer.on_checkout(waited)

    def on_checkin(self, used: float) -> None:
        for observer in self._observers:
            observer.on_checkin(used)

    def on_timeout(self) -> None:
        for observer in self._observers:
            observer.on_timeout()


@dataclass(frozen=True)
class ReloadResult:
    """What :meth:`Registry.reload` changed, by pool name."""

    added: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()
    unchanged: tuple[str, ...] = field(default=())


class Registry:
    """Named :class:`~pgregistry.PooledPg` pools declared by a :class:`~pgregistry.config.Settings`.

    ``Registry(settings)`` uses the given settings; ``Registry(loader=...)`` calls the loader on
    first use and on every :meth:`reload`. :meth:`from_config` does the usual: the TOML file
    (``PGPOOLS_CONFIG`` or ``./pgpools.toml``) plus the environment.
    """

    def __init__(
        self,
        settings: Settings | None = None,
        *,
        loader: Callable[[], Settings] | None = None,
    ) -> None:
        if settings is None and loader is None:
            loader = _load_settings
        self._loader = loader
        self._settings = settings
        # name -> pool; None maps to the default pool once it is built. Replaced, never
        # mutated, so get() reads it without a lock.
        self._pools: dict[str | None, PooledPg] = {}
        self._lock = threading.Lock()  # guards _pools swaps, _build_locks, _settings
        self._build_locks: dict[str, threading.Lock] = {}
        #: Pools paused by name: a pool built again (a reload) starts paused too.
        self._paused: set[str] = set()
        #: Read pools' lag, by pool name (see pgregistry.replicas).
        self._lag_watches: dict[str, LagWatch] = {}
        # Tenant templates in use, by name; replaced, never mutated, like _pools.
        self._tenants: dict[str, TenantPools] = {}
        # Server budgets by server name; kept across reloads (they count open connections).
        self._budgets: dict[str, ServerBudget] = {}
        self._maintenance = Maintenance("pgregistry-maintenance")
        self._closed = False
        # Applied to every pool built from now on (see observe()).
        self._observer_factories: tuple[ObserverFactory, ...] = ()
        _REGISTRIES.add(self)

    def _after_fork_in_child(self) -> None:
        # Only the forking thread survives: a lock another thread held (a builder inside a
        # pool build) would stay held for good, and get() would block forever.
        self._lock = threading.Lock()
        self._build_locks = {}

    @classmethod
    def from_config(
        cls, path: str | os.PathLike[str] | None = None, *, env: Mapping[str, str] | None = None
    ) -> Registry:
        """Load ``path`` (or ``PGPOOLS_CONFIG`` / ``./pgpools.toml``) and the environment now.

        The same file and environment are read again by :meth:`reload`.
        """

        def loader() -> Settings:
            return _load_settings(path, env=env)

        return cls(loader(), loader=loader)

    # -- lookup -------------------------------------------------------------------------------

    @property
    def settings(self) -> Settings:
        """The configuration in force (loaded now if this registry loads lazily)."""
        settings = self._settings
        if settings is None:
            with self._lock:
                if self._settings is None:
                    assert self._loader is not None
                    self._settings = self._loader()
                settings = self._settings
        return settings

    def names(self) -> list[str]:
        """The configured pool names, sorted."""
        return sorted(self.settings.pools)

    def get(
        self, name: str | None = None, tenant: str | None = None, *, readonly: bool = False
    ) -> PooledPg:
        """The pool called ``name`` (the default pool if None), built on first use.

        With ``tenant``, ``name`` is a tenant template and the pool is that tenant's (see
        :class:`~pgregistry.tenants.TenantPools`). With ``readonly``, the pool's
        ``read_pool`` when it has one that is not lagging (else the pool itself; tenant pools
        have no read pools). Raises :class:`~pgregistry.UnknownPoolError` listing the
        configured names, :class:`~pgregistry.InvalidTenantError` for a bad tenant key, and
        :class:`~pgregistry.PoolClosedError` after :meth:`close`.
        """
        if readonly and tenant is None:
            read = self._read_pool_name(name)
            if read is not None and not self._lagging(read):
                return self.get(read)
        if tenant is None:
            try:
                return self._pools[name]
            except KeyError:
                return self._build(name)
        try:
            group = self._tenants[name]  # type: ignore[index]
        except KeyError:
            group = self._tenant_group(name)
        return group.get(tenant)

    def connection(
        self, name: str | None = None, tenant: str | None = None, *, readonly: bool = False
    ) -> PooledPgConnection:
        """Check out a connection from the pool called ``name`` (see :meth:`get`).

        With ``readonly``, from the pool's ``read_pool``; when that cannot serve (its server
        is down, it timed out, or it lags past its ``max_replica_lag``), from the pool itself,
        unless ``read_fallback`` is false: then the read pool's error is raised.
        """
        if readonly and tenant is None:
            read = self._read_pool_name(name)
            if read is not None:
                fallback = self.settings.pools[self._resolve(name, self.settings)].read_fallback
                if self._lagging(read):
                    if not fallback:
                        raise ServerUnavailableError(
                            f"read pool {read!r} lags past its max_replica_lag "
                            "(read_fallback is off)"
                        )
                else:
                    try:
                        return self._read_connection(read)
                    except (ServerUnavailableError, PoolTimeoutError) as exc:
                        if not fallback:
                            raise
                        _log.info(
                            "read pool %r cannot serve (%s); reading from the primary pool",
                            read,
                            type(exc).__name__,
                        )
        attempts = 5  # a retry is needed only when a reload or eviction came in between
        while True:
            try:
                return self.get(name, tenant).connection()
            except PoolClosedError:
                # The pool was closed between lookup and checkout: a reload replaced or removed
                # it, or (a tenant pool) it was evicted. Try again, from its successor.
                attempts -= 1
                if self._closed or not attempts:
                    raise

    @contextlib.contextmanager
    def transaction(
        self, name: str | None = None, tenant: str | None = None, *, readonly: bool = False
    ) -> Iterator[PooledPgConnection]:
        """Check out a connection, ``begin()``, and commit on success or roll back on an
        exception; the connection is given back either way (see :meth:`get` for the arguments).

        ``with registry.transaction("billing") as db: db.insert(...)``
        """
        conn = self.connection(name, tenant, readonly=readonly)
        try:
            conn.begin()
            try:
                yield conn
            except BaseException:
                conn.rollback()
                raise
            conn.commit()
        finally:
            conn.close()

    def _read_connection(self, read: str) -> PooledPgConnection:
        """A connection of the read pool whose server is known to be there: one that sat idle
        while the standby went away is reopened now (no round trip when it is fine), so that a
        standby that is down makes the read fall back, not the first query fail."""
        conn = self.connection(read)
        if conn._live().looks_dead():  # not conn.steady, which marks it used raw
            try:
                conn.reopen()
            except BaseException:
                conn.close()
                raise
        return conn

    def _read_pool_name(self, name: str | None) -> str | None:
        settings = self.settings
        real = self._resolve(name, settings)
        read = settings.pools[real].read_pool
        return None if read == real else read

    def _lagging(self, read: str) -> bool:
        watch = self._lag_watches.get(read)
        return watch is not None and watch.lagging

    def _resolve(self, name: str | None, settings: Settings) -> str:
        if name is None:
            default = settings.default_pool_name()
            if default is None:
                raise UnknownPoolError(
                    'no default pool: name one with default = "..." or declare [pools.default]'
                    f"; configured pools: {_listing(settings.pools)}"
                )
            name = default
        if name not in settings.pools:
            if name in settings.tenants:
                raise UnknownPoolError(
                    f"{name!r} is a tenant template: pass the tenant key, get({name!r}, tenant=...)"
                )
            raise UnknownPoolError(
                f"unknown pool {name!r}; configured pools: {_listing(settings.pools)}"
                + _templates(settings)
            )
        return name

    def _tenant_group(self, name: str | None) -> TenantPools:
        settings = self.settings
        if name not in settings.tenants:
            if name in settings.pools:
                raise UnknownPoolError(f"pool {name!r} is not a tenant template; drop tenant=")
            raise UnknownPoolError(
                f"unknown tenant template {name!r}; configured templates: "
                f"{_listing(settings.tenants)}"
            )
        with self._lock:
            if self._closed:
                raise PoolClosedError("the registry is closed")
            group = self._tenants.get(name)
            if group is None:
                template = settings.tenants[name]
                group = TenantPools(template, self._tenant_factory(settings, template))
                self._tenants = {**self._tenants, name: group}
                interval = template.idle_pool_timeout
                if interval is not None:
                    self._maintenance.add(
                        Task(
                            group,
                            TenantPools.evict_idle,
                            min(max(interval / 2, 0.01), 1.0),
                            f"idle eviction of tenant template {name!r}",
                        )
                    )
        return group

    def _tenant_factory(
        self, settings: Settings, template: TenantSettings
    ) -> Callable[[PoolSettings, str], PooledPg]:
        def make_pool(pool_settings: PoolSettings, key: str) -> PooledPg:
            pool = self._new_pool(settings, pool_settings, name=f"{template.name}.{key}")
            pool.log_fields.update(tenant=key, template=template.name)
            return pool

        return make_pool

    def _new_pool(
        self, settings: Settings, pool_settings: PoolSettings, name: str | None = None
    ) -> PooledPg:
        kwargs: dict[str, Any] = pool_settings.pool_kwargs()
        if name is not None:
            kwargs["name"] = name
        pool = PooledPg(
            maintenance=self._maintenance,
            budget=self._budget(settings, pool_settings),
            **kwargs,
        )
        if self._observer_factories:
            self._attach(pool)
        return pool

    def observe(self, factory: ObserverFactory | None) -> None:
        """Add ``factory``: ``factory(pool)``'s observer watches every built pool and every pool
        built later, tenant pools included (it may return None to leave a pool out).

        Several factories may be added (OpenTelemetry and Prometheus side by side); each pool
        then gets one observer that passes every event to all of theirs. ``observe(None)``
        removes every factory; :meth:`unobserve` removes one.
        """
        with self._lock:
            self._observer_factories = (
                () if factory is None else (*self._observer_factories, factory)
            )
        self._reattach()

    def unobserve(self, factory: ObserverFactory) -> None:
        """Remove a factory added by :meth:`observe` (no error if it is not there)."""
        with self._lock:
            self._observer_factories = tuple(f for f in self._observer_factories if f != factory)
        self._reattach()

    def _reattach(self) -> None:
        with self._lock:
            pools = {id(p): p for p in self._pools.values()}
            groups = list(self._tenants.values())
        for group in groups:
            for pool in group.pools():
                pools[id(pool)] = pool
        for pool in pools.values():
            self._attach(pool)

    def _attach(self, pool: PooledPg) -> None:
        observers = [o for f in self._observer_factories if (o := f(pool)) is not None]
        pool.observe(observers[0] if len(observers) == 1 else _FanOut(observers) or None)

    def _budget(self, settings: Settings, pool_settings: PoolSettings) -> ServerBudget | None:
        server = settings.server_of(pool_settings)
        if server is None:
            return None
        # This process's share: maxconnections // processes (issue 15), at least 1.
        limit = settings.servers[server].per_process
        with self._lock:
            budget = self._budgets.get(server)
            if budget is None:
                budget = self._budgets[server] = ServerBudget(server, limit)
            budget.max_connections = limit
        return budget

    def _build(self, name: str | None) -> PooledPg:
        settings = self.settings
        real = self._resolve(name, settings)
        with self._lock:
            if self._closed:
                raise PoolClosedError("the registry is closed")
            lock = self._build_locks.setdefault(real, threading.Lock())
        stale = False
        with lock:  # one builder per pool; the others wait here, then find it built
            pool = self._pools.get(real)
            if pool is None:
                try:
                    pool = self._new_pool(settings, settings.pools[real])
                    if real in self._paused:
                        pool.pause()
                    self._watch_lag(pool, settings.pools[real].max_replica_lag)
                except Exception as exc:
                    _log.warning(
                        "pool %r: build failed: %s: %s",
                        real,
                        type(exc).__name__,
                        redact(str(exc)),
                    )
                    raise
                with self._lock:
                    # Closed or reloaded while building: never publish a stale pool.
                    published = not self._closed and self._settings is settings
                    if published:
                        self._pools = {**self._pools, real: pool}
                if not published:
                    pool.close()
                    stale = True
            if name is None and not stale:
                with self._lock:
                    if self._pools.get(real) is pool:
                        self._pools = {**self._pools, None: pool}
        if stale:
            # Look again outside the build lock, which is not reentrant.
            return self.get(name)
        return pool

    def _watch_lag(self, pool: PooledPg, max_lag: float | None) -> None:
        """A read pool with ``max_replica_lag``: measure its lag on the upkeep workers."""
        if max_lag is None:
            return
        watch = LagWatch(pool, max_lag)
        with self._lock:
            self._lag_watches = {**self._lag_watches, pool.name: watch}
        self._maintenance.add(
            Task(watch, LagWatch.check, watch.interval, f"lag of read pool {pool.name!r}"),
            delay=0.0,
        )

    # -- pause and resume ---------------------------------------------------------------------

    def pause(self, name: str | None = None, tenant: str | None = None) -> None:
        """Hold new checkouts of a pool (see :meth:`PooledPg.pause`), for a planned switchover.

        A named pool stays paused when a reload builds it again, until :meth:`resume`.
        """
        pool = self.get(name, tenant)
        if tenant is None:
            with self._lock:
                self._paused.add(self._resolve(name, self.settings))
        pool.pause()

    def resume(self, name: str | None = None, tenant: str | None = None) -> None:
        """Let a paused pool's checkouts through again (see :meth:`PooledPg.resume`)."""
        if tenant is None:
            with self._lock:
                self._paused.discard(self._resolve(name, self.settings))
        self.get(name, tenant).resume()

    # -- lifecycle ----------------------------------------------------------------------------

    def reload(self, settings: Settings | None = None) -> ReloadResult:
        """Apply a new configuration (from the loader, or ``settings``) without dropping clients.

        Unchanged pools keep their connections. A changed pool is rebuilt on its next use; the
        old one drains: idle connections close now, checked-out ones when they are returned.
        Removed pools drain the same way. An invalid configuration raises
        :class:`~pgregistry.ConfigError` and changes nothing.
        """
        if settings is None:
            if self._loader is None:
                raise ValueError("this registry has no loader; pass the new settings")
            settings = self._loader()
        with self._lock:
            if self._closed:
                raise PoolClosedError("the registry is closed")
            old_settings = self._settings
            old_pools = self._pools
            old_conf = old_settings.pools if old_settings is not None else {}
            added = tuple(sorted(set(settings.pools) - set(old_conf)))
            removed = tuple(sorted(set(old_conf) - set(settings.pools)))
            changed = tuple(
                sorted(
                    n
                    for n in set(settings.pools) & set(old_conf)
                    if settings.pools[n] != old_conf[n]
                )
            )
            unchanged = tuple(sorted(set(settings.pools) & set(old_conf) - set(changed)))
            keep: dict[str | None, PooledPg] = {
                n: p for n, p in old_pools.items() if n is not None and n in unchanged
            }
            new_default = settings.default_pool_name()
            if new_default in keep:
                keep[None] = keep[new_default]
            retired = [p for n, p in old_pools.items() if n is not None and n not in keep]
            old_templates = old_settings.tenants if old_settings is not None else {}
            kept_groups = {
                n: g
                for n, g in self._tenants.items()
                if n in settings.tenants and settings.tenants[n] == old_templates.get(n)
            }
            retired_groups = [g for n, g in self._tenants.items() if n not in kept_groups]
            for server, budget in self._budgets.items():
                if server in settings.servers:
                    budget.max_connections = settings.servers[server].per_process
            self._settings = settings
            self._pools = keep
            self._tenants = kept_groups
        for pool in retired:
            pool.close()
        for group in retired_groups:
            group.close()
        result = ReloadResult(added, changed, removed, unchanged)
        _log.info(
            "configuration reloaded: added %s, changed %s, removed %s",
            list(added),
            list(changed),
            list(removed),
        )
        return result

    def close(self) -> None:
        """Close every pool (checked-out connections close when returned). Idempotent."""
        with self._lock:
            self._closed = True
            pools = {id(p): p for p in self._pools.values()}
            self._pools = {}
            groups, self._tenants = list(self._tenants.values()), {}
        for pool in pools.values():
            pool.close()
        for group in groups:
            group.close()
        self._maintenance.stop()

    @property
    def closed(self) -> bool:
        """True after :meth:`close`."""
        return self._closed

    def stats(self) -> RegistryStats:
        """Stats of every built pool, of every tenant pool by template, and of every budget."""
        return {
            "pools": {
                n: p.stats() for n, p in sorted(self._pools.items(), key=_key) if n is not None
            },
            "tenants": {n: g.stats() for n, g in sorted(self._tenants.items())},
            "servers": {n: b.stats() for n, b in sorted(self._budgets.items())},
            "tenants_evicted": {n: g.evicted for n, g in sorted(self._tenants.items())},
            "roles": {
                n: p.server_role()
                for n, p in sorted(self._pools.items(), key=_key)
                if n is not None
            },
            "replica_lag": {
                n: {"lag": w.lag, "lagging": w.lagging, "max_replica_lag": w.max_lag}
                for n, w in sorted(self._lag_watches.items())
            },
        }

    def __enter__(self) -> Registry:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        built = sorted(n for n in self._pools if n is not None)
        return f"<Registry built={built} {'closed' if self._closed else 'open'}>"


def _load_settings(
    path: str | os.PathLike[str] | None = None, *, env: Mapping[str, str] | None = None
) -> Settings:
    """:func:`pgregistry.config.load_settings`, imported on first use."""
    from .config import load_settings

    return load_settings(path, env=env)


def _key(item: tuple[str | None, PooledPg]) -> str:
    return item[0] or ""


def _listing(names: Mapping[str, object]) -> str:
    return ", ".join(sorted(names)) or "(none)"


def _templates(settings: Settings) -> str:
    if not settings.tenants:
        return ""
    return f"; tenant templates (use tenant=): {_listing(settings.tenants)}"


#: The process-wide registry behind ``pgregistry.default_registry`` and the module functions
#: below (``pgregistry.get()``, ``connection()``, ``transaction()``): it reads
#: ``PGPOOLS_CONFIG`` (or ``./pgpools.toml``) and the environment on first use, and closes at
#: interpreter exit.
_REGISTRIES: weakref.WeakSet[Registry] = weakref.WeakSet()


def _after_fork_in_child() -> None:
    for registry in list(_REGISTRIES):
        registry._after_fork_in_child()


os.register_at_fork(after_in_child=_after_fork_in_child)

default_registry: Registry = Registry(loader=_load_settings)
atexit.register(default_registry.close)


# The module functions take exactly the arguments of the Registry methods they delegate to
# (tests/unit/test_registry_unit.py compares the signatures).


def get(name: str | None = None, tenant: str | None = None, *, readonly: bool = False) -> PooledPg:
    """:meth:`Registry.get` on the process-wide :data:`default_registry`."""
    return default_registry.get(name, tenant, readonly=readonly)


def connection(
    name: str | None = None, tenant: str | None = None, *, readonly: bool = False
) -> PooledPgConnection:
    """:meth:`Registry.connection` on the process-wide :data:`default_registry`."""
    return default_registry.connection(name, tenant, readonly=readonly)


@contextlib.contextmanager
def transaction(
    name: str | None = None, tenant: str | None = None, *, readonly: bool = False
) -> Iterator[PooledPgConnection]:
    """:meth:`Registry.transaction` on the process-wide :data:`default_registry`."""
    with default_registry.transaction(name, tenant, readonly=readonly) as conn:
        yield conn


def stats() -> RegistryStats:
    """:meth:`Registry.stats` on the process-wide :data:`default_registry`."""
    return default_registry.stats()


def reload(settings: Settings | None = None) -> ReloadResult:
    """:meth:`Registry.reload` on the process-wide :data:`default_registry`."""
    return default_registry.reload(settings)


def close() -> None:
    """:meth:`Registry.close` on the process-wide :data:`default_registry`."""
    default_registry.close()


def pause(name: str | None = None, tenant: str | None = None) -> None:
    """:meth:`Registry.pause` on the process-wide :data:`default_registry`."""
    default_registry.pause(name, tenant)


def resume(name: str | None = None, tenant: str | None = None) -> None:
    """:meth:`Registry.resume` on the process-wide :data:`default_registry`."""
    default_registry.resume(name, tenant)


def __getattr__(attr: str) -> Any:
    # Migration: pgregistry.registry used to be the instance; its other public attributes
    # (settings, names, closed, ...) still answer, with a DeprecationWarning.
    if not attr.startswith("_") and hasattr(Registry, attr):
        import warnings

        warnings.warn(
            f"pgregistry.registry.{attr}: pgregistry.registry is the module now; "
            f"use pgregistry.default_registry.{attr}",
            DeprecationWarning,
            stacklevel=2,
        )
        return getattr(default_registry, attr)
    raise AttributeError(f"module {__name__!r} has no attribute {attr!r}")
