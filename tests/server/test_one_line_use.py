"""``pool.connection().query(...).getresult()``: the line the original PooledPg warned against.

The proxy is collected before the result is read; these tests hold the pool to its promise
that the line gives correct, typed values for every type PyGreSQL reads lazily, under any reset
policy and whatever closes the connection, and that a result never reads from a connection
lent to someone else (#11 items 1, 2, 8).
"""

from __future__ import annotations

import datetime
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pg
import pytest

from pgregistry import PooledPg
from pgregistry.testing import BackendKiller

MakePool = Callable[..., PooledPg]
Monitor = Any


@pytest.fixture
def types(monitor: Monitor) -> Iterator[str]:
    """A composite ``pair``, a composite holding a composite, an enum, a domain and a range."""
    suffix = uuid.uuid4().hex[:10]
    names = {
        "pair": f"pgrt_pair_{suffix}",
        "nest": f"pgrt_nest_{suffix}",
        "mood": f"pgrt_mood_{suffix}",
        "pos": f"pgrt_pos_{suffix}",
    }
    monitor.db.query(
        f"CREATE TYPE {names['pair']} AS (a int, b text);"
        f"CREATE TYPE {names['nest']} AS (p {names['pair']}, d date, tags text[]);"
        f"CREATE TYPE {names['mood']} AS ENUM ('sad', 'happy');"
        f"CREATE DOMAIN {names['pos']} AS int CHECK (VALUE > 0);"
    )
    try:
        yield suffix
    finally:
        monitor.db.query(
            f"DROP TYPE IF EXISTS {names['nest']}, {names['pair']}, {names['mood']} CASCADE;"
            f"DROP DOMAIN IF EXISTS {names['pos']} CASCADE"
        )


def lazy_sql(suffix: str, n: int) -> str:
    """One row of values whose types PyGreSQL looks up while reading them."""
    return (
        f"SELECT ARRAY[ROW({n}, 'x')::pgrt_pair_{suffix}, ROW({n + 1}, 'y')::pgrt_pair_{suffix}],"
        f" ROW(ROW({n}, 'in')::pgrt_pair_{suffix}, DATE '2020-01-02', ARRAY['a','b'])"
        f"::pgrt_nest_{suffix},"
        f" 'happy'::pgrt_mood_{suffix}, {n + 1}::pgrt_pos_{suffix}, int4range({n}, {n + 5}),"
        f" TIMESTAMPTZ '2021-03-04 05:06:07+00',"
        f" '00000000-0000-0000-0000-00000000000{n % 10}'::uuid"
    )


def check_row(row: tuple[Any, ...], n: int) -> None:
    pairs, nest, mood, pos, rng, stamp, ident = row
    assert [(p.a, p.b) for p in pairs] == [(n, "x"), (n + 1, "y")]
    assert (nest.p.a, nest.p.b, nest.d, nest.tags) == (
        n,
        "in",
        datetime.date(2020, 1, 2),
        ["a", "b"],
    )
    assert mood == "happy"
    assert pos == n + 1
    assert rng == f"[{n},{n + 5})"  # PyGreSQL has no range cast: the text form
    assert stamp == datetime.datetime(2021, 3, 4, 5, 6, 7, tzinfo=datetime.UTC)
    assert ident == uuid.UUID(f"00000000-0000-0000-0000-00000000000{n % 10}")


@pytest.mark.parametrize("reset", ["rollback_if_needed", "rollback", "reconnect", "discard"])
def test_one_line_use_from_many_threads_gives_typed_values(
    make_pool: MakePool, types: str, reset: str
) -> None:
    pool = make_pool(0, 0, 2, True, reset=reset, timeout=30)
    errors: list[BaseException] = []
    done = [0]

    def worker(seed: int) -> None:
        try:
            for i in range(15):
                n = seed * 100 + i
                check_row(pool.connection().query(lazy_sql(types, n)).getresult()[0], n)
                done[0] += 1
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(seed,)) for seed in range(8)]
    for thread in threads:
        thread.start()
    deadline = time.monotonic() + 60
    for thread in threads:
        thread.join(max(deadline - time.monotonic(), 0.0))
    assert not any(thread.is_alive() for thread in threads), "a thread hung"
    assert not errors, errors[:3]
    assert done[0] == 8 * 15
    assert pool.stats()["in_use"] == 0  # every held connection came back


@pytest.mark.parametrize(
    "closer",
    ["reconnect", "maxcached_full", "lifetime", "pool_closed"],
)
def test_values_stay_typed_whatever_closes_the_connection(
    make_pool: MakePool, types: str, closer: str
) -> None:
    options: dict[str, Any] = {"reset": "reconnect"} if closer == "reconnect" else {}
    if closer == "lifetime":
        options["max_lifetime"] = 0.05
    pool = make_pool(0, 1 if closer == "maxcached_full" else 0, 0, **options)
    other = pool.connection() if closer == "maxcached_full" else None
    result = pool.connection().query(lazy_sql(types, 7))  # the proxy is gone already
    if other is not None:
        other.close()  # fills maxcached: a connection returned now would be closed
    if closer == "lifetime":
        time.sleep(0.1)
    if closer == "pool_closed":
        pool.close()
    check_row(result.getresult()[0], 7)
    check_row(result.getresult()[0], 7)  # and again: nothing was closed under it


def test_a_held_result_keeps_its_connection_from_the_next_borrower(
    make_pool: MakePool, types: str
) -> None:
    pool = make_pool(0, 0, 0)
    result = pool.connection().query(lazy_sql(types, 3))
    with pool.connection() as second:
        assert pool.stats()["open"] == 2  # the second borrower got a connection of its own
        assert second.query("SELECT 1").getresult() == [(1,)]
    check_row(result.getresult()[0], 3)
    del result
    with pool.connection() as again:  # released: the held connection is pooled again
        again.query("SELECT 1")
    assert pool.stats()["open"] == 2 and pool.stats()["in_use"] == 0


def test_backend_killed_between_query_and_getresult_gives_the_right_result(
    make_pool: MakePool, types: str, killer: BackendKiller
) -> None:
    pool = make_pool(0, 0, 0)
    with pool.connection() as db:
        pid = db.backend_pid
        result = db.query(lazy_sql(types, 5))
        assert killer(pid)
        try:
            row = result.getresult()[0]
        except pg.Error:
            pass  # a pg.Error is an acceptable answer; a TypeError is not
        else:
            check_row(row, 5)
