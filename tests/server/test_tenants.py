"""Tenant pools against the shared server: isolation, one build under a herd, max_pools and LRU
eviction, idle eviction, overrides, hostile keys, stats, and the example.

The module creates its tenants up front (a role and a database per tenant, a schema in each),
all named ``pgrt_<run>_<key>``, and drops them at the end. Hostile keys get real databases,
roles and schemas of exactly their (quoted) name: a key that escaped its quoting would land
somewhere else, or run SQL, and the test would see it.
"""

from __future__ import annotations

import contextlib
import logging
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pg
import pytest

from pgregistry import (
    InvalidTenantError,
    PoolClosedError,
    PooledPg,
    PoolTimeoutError,
    Registry,
)
from pgregistry.conninfo import build_conninfo, quote_ident

Monitor = Any  # tests/server/conftest.py: Monitor

REPO = Path(__file__).resolve().parents[2]

NORMAL = ("acme", "globex")
# Keys only a permissive tenant_pattern lets through; each gets a database, role and schema
# of exactly its name (at most 63 bytes with the prefix).
HOSTILE = (
    "x' password='y",
    "x dbname=postgres",
    'a"; DROP TABLE victim; --',
    "b\\' host=127.0.0.2 x=",
    "{tenant}'; DROP TABLE victim; --",
    "é ü=1 -c x=y",
)


class World:
    """The tenants this module created, and how to reach the server."""

    def __init__(self, kwargs: dict[str, Any], prefix: str) -> None:
        self.kwargs = kwargs
        self.prefix = prefix  # pgrt_<run>_

    def name(self, key: str) -> str:
        return self.prefix + key

    def target(self) -> dict[str, Any]:
        """host, port, user and dbname of the shared server, as config keys."""
        return {k: self.kwargs[k] for k in ("host", "port", "user", "dbname")}


def _admin(kwargs: dict[str, Any], dbname: str | None = None) -> pg.DB:
    # As a quoted conninfo string: pg.DB(dbname=...) would read a name holding '=' as one.
    db = pg.DB(dbname=build_conninfo({**kwargs, **({"dbname": dbname} if dbname else {})}))
    db.query("SET client_min_messages TO warning")
    return db


def _create_tenant(kwargs: dict[str, Any], name: str, schema: str, tenant: str) -> None:
    role = quote_ident(name)
    db = _admin(kwargs)
    try:
        db.query(f"CREATE ROLE {role} LOGIN")
        db.query(f"CREATE DATABASE {role} TEMPLATE template0")
    finally:
        db.close()
    db = _admin(kwargs, name)
    try:
        db.query(f"CREATE SCHEMA {quote_ident(schema)} AUTHORIZATION {role}")
        db.query(f"CREATE TABLE {quote_ident(schema)}.orders (tenant text)")
        db.query(f"INSERT INTO {quote_ident(schema)}.orders VALUES ($1)", (tenant,))
        db.query(f"ALTER TABLE {quote_ident(schema)}.orders OWNER TO {role}")
        # Owned by the tenant's role: an injected DROP TABLE would succeed, and show.
        db.query("CREATE TABLE public.victim (x int)")
        db.query(f"ALTER TABLE public.victim OWNER TO {role}")
    finally:
        db.close()


def _drop_tenant(kwargs: dict[str, Any], name: str) -> None:
    db = _admin(kwargs)
    try:
        db.query(f"DROP DATABASE IF EXISTS {quote_ident(name)} WITH (FORCE)")
        db.query(f"DROP ROLE IF EXISTS {quote_ident(name)}")
    finally:
        db.close()


@pytest.fixture(scope="module")
def world(shared_kwargs: dict[str, Any]) -> Iterator[World]:
    result = World(shared_kwargs, f"pgrt_{uuid.uuid4().hex[:8]}_")
    jobs = [(result.name(k), f"shop_{k}", k) for k in NORMAL]
    jobs += [(result.name(k), result.name(k), k) for k in HOSTILE]
    try:
        with ThreadPoolExecutor(len(jobs)) as executor:
            for future in [executor.submit(_create_tenant, shared_kwargs, *job) for job in jobs]:
                future.result(timeout=60)
        yield result
    finally:
        with ThreadPoolExecutor(len(jobs)) as executor:
            futures = [executor.submit(_drop_tenant, shared_kwargs, job[0]) for job in jobs]
            for future in futures:
                with contextlib.suppress(pg.Error):
                    future.result(timeout=60)


def count_like(monitor: Monitor, prefix: str) -> int:
    """Client backends whose application_name starts with ``prefix``."""
    rows = monitor.db.query(
        "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend'"
        " AND left(application_name, length($1)) = $1",
        (prefix,),
    ).getresult()
    return int(rows[0][0])


def shop(world: World, app_name: str, **extra: Any) -> dict[str, Any]:
    """The template of the normal tenants: their database, role and schema, by key."""
    return {
        "host": world.kwargs["host"],
        "port": world.kwargs["port"],
        "dbname": world.prefix + "{tenant}",
        "user": world.prefix + "{tenant}",
        "application_name": app_name + "_{tenant}",
        "search_path": ["shop_{tenant}", "public"],
        "setsession": ["SET app.tenant = {tenant_literal}"],
        "maxconnections": 3,
        "idle_pool_timeout": "none",
        **extra,
    }


def plain(world: World, app_name: str, **extra: Any) -> dict[str, Any]:
    """A template where every key is a tenant: all in the test database, told apart only by
    application_name."""
    return {
        **world.target(),
        "application_name": app_name + "_{tenant}",
        "idle_pool_timeout": "none",
        **extra,
    }


WHO = (
    "SELECT current_database(), current_user, current_setting('search_path'),"
    " current_setting('application_name'), current_setting('app.tenant'),"
    " (SELECT string_agg(tenant, ',') FROM orders)"
)


# -- isolation ------------------------------------------------------------------------------------


def test_each_tenant_is_on_its_database_role_and_search_path(
    world: World, app_name: str, make_registry: Callable[..., Registry]
) -> None:
    reg = make_registry({"tenants": {"shop": shop(world, app_name)}})
    for key in NORMAL:
        with reg.connection("shop", tenant=key) as db:
            row = db.query(WHO).getresult()[0]
        assert row == (
            world.name(key),
            world.name(key),
            f"shop_{key}, public",
            f"{app_name}_{key}",
            key,
            key,  # the orders table it sees is its own
        )


def test_tenant_pool_is_built_once_and_found_again(
    world: World, app_name: str, make_registry: Callable[..., Registry]
) -> None:
    reg = make_registry({"tenants": {"shop": shop(world, app_name)}})
    pool = reg.get("shop", tenant="acme")
    assert reg.get("shop", tenant="acme") is pool
    assert reg.get("shop", tenant="globex") is not pool
    assert pool.name == "shop.acme"


def test_a_herd_on_a_new_key_builds_one_pool(
    world: World, app_name: str, make_registry: Callable[..., Registry], monitor: Monitor
) -> None:
    # mincached 1: building opens a connection, which makes the build slow enough to race.
    reg = make_registry({"tenants": {"any": plain(world, app_name, mincached=1, max_pools=3)}})
    barrier = threading.Barrier(20, timeout=10)
    pools: list[PooledPg] = []
    errors: list[BaseException] = []

    def call() -> None:
        try:
            barrier.wait()
            pools.append(reg.get("any", tenant="herd"))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=call) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(15)
    assert not errors and len(pools) == 20
    assert len({id(p) for p in pools}) == 1
    stats = reg.stats()["tenants"]["any"]
    assert list(stats) == ["herd"] and stats["herd"]["opened"] == 1
    assert monitor.count(f"{app_name}_herd") == 1


# -- max_pools and eviction -----------------------------------------------------------------------


def _use(reg: Registry, template: str, key: str) -> None:
    with reg.connection(template, tenant=key) as db:
        db.query("SELECT 1")


def test_the_least_recently_used_idle_pool_makes_room(
    world: World, app_name: str, make_registry: Callable[..., Registry], monitor: Monitor
) -> None:
    reg = make_registry({"tenants": {"t": plain(world, app_name, max_pools=2)}})
    _use(reg, "t", "a")
    _use(reg, "t", "b")
    pool_b = reg.get("t", tenant="b")
    _use(reg, "t", "a")  # a is now more recent than b
    _use(reg, "t", "c")
    assert list(reg.stats()["tenants"]["t"]) == ["a", "c"]
    assert pool_b.closed
    assert monitor.wait_count(f"{app_name}_b", 0) == 0
    assert monitor.count(f"{app_name}_a") == 1


def test_a_busy_pool_is_never_evicted_and_the_newcomer_times_out(
    world: World, app_name: str, make_registry: Callable[..., Registry]
) -> None:
    reg = make_registry({"tenants": {"t": plain(world, app_name, max_pools=2, timeout=0.3)}})
    held = [reg.connection("t", tenant=key) for key in ("a", "b")]
    try:
        with pytest.raises(PoolTimeoutError) as exc:
            reg.get("t", tenant="c")
        message = str(exc.value)
        assert "tenant template 't'" in message and "max_pools 2" in message
        assert list(reg.stats()["tenants"]["t"]) == ["a", "b"]
        for db in held:
            assert db.query("SELECT 1").getresult() == [(1,)]
    finally:
        for db in held:
            db.close()


def test_a_waiting_newcomer_gets_the_place_of_a_pool_that_went_idle(
    world: World, app_name: str, make_registry: Callable[..., Registry]
) -> None:
    reg = make_registry({"tenants": {"t": plain(world, app_name, max_pools=2, timeout=5)}})
    held_a = reg.connection("t", tenant="a")
    held_b = reg.connection("t", tenant="b")
    pool_a = reg.get("t", tenant="a")
    timer = threading.Timer(0.2, held_a.close)
    timer.start()
    try:
        with reg.connection("t", tenant="c") as db:  # waits until a is idle, then evicts it
            assert db.query("SELECT 1").getresult() == [(1,)]
        assert pool_a.closed
        assert list(reg.stats()["tenants"]["t"]) == ["b", "c"]
    finally:
        timer.join(5)
        held_b.close()


def test_an_idle_tenant_pool_is_closed_and_rebuilt_on_demand(
    world: World,
    app_name: str,
    make_registry: Callable[..., Registry],
    monitor: Monitor,
    wait_until: Callable[..., bool],
) -> None:
    reg = make_registry({"tenants": {"t": plain(world, app_name, idle_pool_timeout=0.2)}})
    _use(reg, "t", "a")
    old = reg.get("t", tenant="a")
    assert monitor.count(f"{app_name}_a") == 1
    assert wait_until(lambda: "a" not in reg.stats()["tenants"]["t"], timeout=5)
    assert old.closed
    assert monitor.wait_count(f"{app_name}_a", 0) == 0
    with reg.connection("t", tenant="a") as db:
        assert db.query("SELECT 1").getresult() == [(1,)]
    new = reg.get("t", tenant="a")
    assert new is not old and not new.closed


def test_a_connection_keeps_its_tenant_pool_from_idle_eviction(
    world: World, app_name: str, make_registry: Callable[..., Registry]
) -> None:
    reg = make_registry({"tenants": {"t": plain(world, app_name, idle_pool_timeout=0.05)}})
    with reg.connection("t", tenant="a") as db:
        pool = reg.get("t", tenant="a")
        time.sleep(0.3)  # several maintenance rounds past idle_pool_timeout
        assert db.query("SELECT 1").getresult() == [(1,)]
        assert not pool.closed


# -- overrides ------------------------------------------------------------------------------------


def test_overrides_apply_to_one_tenant_only(
    world: World, app_name: str, make_registry: Callable[..., Registry]
) -> None:
    template = shop(
        world,
        app_name,
        overrides={
            "acme": {
                "maxconnections": 7,
                "setsession": ["SET app.tenant = {tenant_literal}", "SET app.flag = 'vip'"],
            }
        },
    )
    reg = make_registry({"tenants": {"shop": template}})
    flag = "SELECT current_setting('app.flag', true), current_setting('search_path')"
    with reg.connection("shop", tenant="acme") as db:
        assert db.query(flag).getresult() == [("vip", "shop_acme, public")]
    with reg.connection("shop", tenant="globex") as db:
        assert db.query(flag).getresult()[0] in [(None, "shop_globex, public")]
    stats = reg.stats()["tenants"]["shop"]
    assert stats["acme"]["maxconnections"] == 7
    assert stats["globex"]["maxconnections"] == 3


# -- hostile keys ---------------------------------------------------------------------------------


HOSTILE_REJECTED = [
    *HOSTILE,
    "acme; DROP TABLE victim",
    "acme dbname=postgres",
    "ACME",
    "acme\x00",
    "a" * 10_000,
]


def test_hostile_keys_never_reach_the_server(
    world: World, app_name: str, make_registry: Callable[..., Registry], monitor: Monitor
) -> None:
    reg = make_registry({"tenants": {"t": plain(world, app_name, mincached=1, max_pools=3)}})
    for key in HOSTILE_REJECTED:
        with pytest.raises(InvalidTenantError):
            reg.get("t", tenant=key)
        with pytest.raises(InvalidTenantError):
            reg.connection("t", tenant=key)
    assert count_like(monitor, app_name) == 0
    assert reg.stats()["tenants"]["t"] == {}
    reg.get("t", tenant="fine")  # the template itself does connect
    assert count_like(monitor, app_name) == 1


def _ascii_application_name(text: str) -> str:
    # The server replaces every byte outside printable ASCII with '?'.
    return "".join(c if 32 <= ord(c) < 127 else "?" * len(c.encode()) for c in text)


@pytest.mark.parametrize("key", HOSTILE)
def test_a_permissive_pattern_still_quotes_hostile_keys(
    key: str, world: World, app_name: str, make_registry: Callable[..., Registry]
) -> None:
    loose = {
        "host": world.kwargs["host"],
        "port": world.kwargs["port"],
        "dbname": world.prefix + "{tenant}",
        "user": world.prefix + "{tenant}",
        "application_name": app_name + ":{tenant}",
        "options": "-c app.opt={tenant}",
        "search_path": [world.prefix + "{tenant}", "public"],
        "setsession": ["SET app.ident = {tenant}", "SET app.lit = {tenant_literal}"],
        "tenant_pattern": ".+",
        "idle_pool_timeout": "none",
    }
    reg = make_registry({"tenants": {"loose": loose}})
    with reg.connection("loose", tenant=key) as db:
        row = db.query(
            "SELECT current_database(), current_user, current_schema(),"
            " current_setting('application_name'), current_setting('app.opt'),"
            " current_setting('app.ident'), current_setting('app.lit'),"
            " current_setting('x', true), to_regclass('public.victim') IS NOT NULL,"
            " (SELECT string_agg(tenant, ',') FROM orders)"
        ).getresult()[0]
    name = world.name(key)
    assert row == (
        name,  # the database of exactly that name: no keyword escaped its value
        name,
        name,  # the search_path entry is one identifier
        _ascii_application_name(f"{app_name}:{key}"),
        key,  # options: one -c setting, nothing split off
        key,
        key,
        None,  # "-c x=y" inside the key set nothing
        True,  # nobody dropped the victim table
        key,
    )


# -- stats ----------------------------------------------------------------------------------------


def test_stats_group_tenant_pools_by_template(
    world: World, app_name: str, make_registry: Callable[..., Registry]
) -> None:
    reg = make_registry(
        {
            "pools": {"app": {**world.target(), "application_name": app_name}},
            "tenants": {
                "t": plain(world, app_name),
                "u": plain(world, app_name + "u"),
            },
        }
    )
    _use(reg, "t", "a")
    _use(reg, "t", "b")
    _use(reg, "u", "a")
    with reg.connection("app") as db:
        db.query("SELECT 1")
    stats = reg.stats()
    assert set(stats) == {"pools", "tenants", "servers", "tenants_evicted", "roles", "replica_lag"}
    assert list(stats["pools"]) == ["app"]
    assert {t: list(pools) for t, pools in stats["tenants"].items()} == {
        "t": ["a", "b"],
        "u": ["a"],
    }
    assert stats["tenants"]["t"]["a"]["name"] == "t.a"
    assert stats["tenants"]["t"]["b"]["checkouts"] == 1
    assert stats["servers"] == {}


def test_closing_the_registry_closes_tenant_pools(
    world: World, app_name: str, make_registry: Callable[..., Registry], monitor: Monitor
) -> None:
    reg = make_registry({"tenants": {"t": plain(world, app_name)}})
    _use(reg, "t", "a")
    pool = reg.get("t", tenant="a")
    reg.close()
    assert pool.closed
    assert monitor.wait_count(f"{app_name}_a", 0) == 0
    with pytest.raises(PoolClosedError):
        reg.get("t", tenant="a")


# -- the example ----------------------------------------------------------------------------------


def test_the_tenants_example_runs_and_cleans_up(
    world: World, app_name: str, monitor: Monitor
) -> None:
    kwargs = world.kwargs
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("PGPOOLS")}
    env.update(
        {
            "PGPOOLS__DEFAULTS__HOST": str(kwargs["host"]),
            "PGPOOLS__DEFAULTS__PORT": str(kwargs["port"]),
            "PGPOOLS__DEFAULTS__USER": str(kwargs["user"]),
            "PGPOOLS__DEFAULTS__DBNAME": str(kwargs["dbname"]),
            # Schemas and backends of this run only, so that it can be checked afterwards.
            "PGPOOLS__TENANTS__SHOP__SEARCH_PATH": f'["{world.prefix}{{tenant}}", "public"]',
            "PGPOOLS__TENANTS__SHOP__APPLICATION_NAME": app_name + "_{tenant}",
        }
    )
    done = subprocess.run(
        [sys.executable, str(REPO / "examples" / "tenants.py")],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert f"acme      schema {world.prefix}acme" in done.stdout
    assert "refused: tenant template 'shop': invalid tenant key" in done.stdout
    assert "server budget 'main'" in done.stdout
    assert not done.stderr
    left = monitor.db.query(
        "SELECT count(*) FROM pg_namespace WHERE left(nspname, length($1)) = $1",
        (world.prefix,),
    ).getresult()[0][0]
    assert left == 0
    assert count_like(monitor, app_name) == 0


# -- observers (Registry.observe) -----------------------------------------------------------------


def test_tenant_pool_built_after_observe_gets_an_observer(
    world: World,
    app_name: str,
    make_registry: Callable[..., Registry],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    class Counting:
        def __init__(self) -> None:
            self.checkouts = 0

        def on_connect(self, seconds: float) -> None:
            pass

        def on_checkout(self, waited: float) -> None:
            self.checkouts += 1

        def on_checkin(self, used: float) -> None:
            pass

        def on_timeout(self) -> None:
            pass

    reg = make_registry({"tenants": {"shop": shop(world, app_name)}})
    before = reg.get("shop", tenant="acme")
    observers: dict[str, Counting] = {}

    def factory(pool: PooledPg) -> Counting:
        observers[pool.name] = Counting()
        return observers[pool.name]

    reg.observe(factory)
    assert list(observers) == [before.name]
    with reg.connection("shop", tenant="globex") as db:
        assert db.query("SELECT 1").getresult() == [(1,)]
    assert observers["shop.globex"].checkouts == 1
    before.connection().close()
    assert observers[before.name].checkouts == 1
    reg.observe(None)
    before.connection().close()
    assert observers[before.name].checkouts == 1


def test_evicted_tenant_pools_show_in_registry_stats(
    world: World, app_name: str, make_registry: Callable[..., Registry]
) -> None:
    reg = make_registry({"tenants": {"any": plain(world, app_name, max_pools=1)}})
    reg.get("any", tenant="first")
    reg.get("any", tenant="second")  # max_pools 1: the idle pool of "first" makes room
    assert reg.stats()["tenants_evicted"] == {"any": 1}


def test_tenant_pool_log_records_carry_the_tenant_key(
    world: World,
    app_name: str,
    make_registry: Callable[..., Registry],
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="pgregistry")
    reg = make_registry({"tenants": {"any": plain(world, app_name)}})
    with reg.connection("any", tenant="acme") as db:
        db.query("SELECT 1")
    records = [r for r in caplog.records if r.name == "pgregistry.pool.any.acme"]
    checkout = [r for r in records if "checkout" in r.getMessage()]
    assert checkout, [r.getMessage() for r in records]
    assert all(getattr(r, "tenant", None) == "acme" for r in checkout)
    assert all(getattr(r, "pool", None) == "any.acme" for r in checkout)
