"""A frozen server: the TCP connection stays open, the kernel acknowledges, and no reply comes
(a stopped process, a stalled network path). Keepalives and ``tcp_user_timeout`` cannot see
it; every pool operation must still come back within ``connect_timeout`` (the bound a ping or
a reset on return waits for an answer), never hang.

Each operation runs in a thread of its own and is given 30 s: a thread still alive after
that is a hang (the test then cuts the proxy so that nothing is left behind).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from pgregistry import PooledPg
from pgregistry.testing import FaultProxy, TemporaryCluster

HANG = 30.0  # seconds after which an operation counts as hung


class Call(threading.Thread):
    """Run ``func`` in a daemon thread; keep its result or its exception."""

    def __init__(self, func: Callable[[], Any]) -> None:
        super().__init__(daemon=True)
        self.func = func
        self.result: Any = None
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            self.result = self.func()
        except BaseException as exc:
            self.error = exc

    def finished(self) -> bool:
        self.start()
        self.join(HANG)
        return not self.is_alive()


@pytest.fixture
def stalled_pool(
    fault_proxy: FaultProxy, healthy_cluster: TemporaryCluster
) -> Iterator[Callable[..., PooledPg]]:
    pools: list[PooledPg] = []

    def make(*args: Any, **kwargs: Any) -> PooledPg:
        target = fault_proxy.connect_kwargs(healthy_cluster.connect_kwargs())
        target["dbname"] = f"dbname={target['dbname']} connect_timeout=2"
        pool = PooledPg(*args, **{**kwargs, **target})
        pools.append(pool)
        return pool

    yield make
    fault_proxy.cut()  # ends whatever a failed test left waiting
    fault_proxy.resume()
    for pool in pools:
        pool.close()


def test_checkout_with_ping_always_comes_back(
    stalled_pool: Callable[..., PooledPg], fault_proxy: FaultProxy
) -> None:
    pool = stalled_pool(1, 1, 1, True, ping="always")
    fault_proxy.stall()
    call = Call(pool.connection)
    assert call.finished(), "a checkout with ping='always' hung on a frozen server"
    # The ping gave up; the replacement's connect gave up too (connect_timeout).
    assert call.error is not None, call.result
    assert pool.stats()["ping_failed"] == 1
    fault_proxy.resume()
    with pool.connection() as db:
        assert db.query("SELECT 1").getresult() == [(1,)]


def test_reset_on_return_comes_back_and_drops_the_connection(
    stalled_pool: Callable[..., PooledPg], fault_proxy: FaultProxy
) -> None:
    pool = stalled_pool(0, 1, 1, True, reset="rollback")
    db = pool.connection()
    db.query("SELECT 1")
    fault_proxy.stall()
    call = Call(db.close)
    assert call.finished(), "returning a connection hung on a frozen server"
    assert call.error is None
    stats = pool.stats()
    assert stats["reset_failures"] == 1 and stats["open"] == 0
    fault_proxy.resume()
    with pool.connection() as again:
        assert again.query("SELECT 2").getresult() == [(2,)]


def test_upkeep_ping_and_close_come_back(
    stalled_pool: Callable[..., PooledPg], fault_proxy: FaultProxy
) -> None:
    pool = stalled_pool(2, 2, 2, True, ping_after=0.01, max_lifetime=None, max_idle=None)
    pool._forget_upkeep()  # run the upkeep round here, not on the maintenance thread
    time.sleep(0.05)  # both idle longer than ping_after
    fault_proxy.stall()
    upkeep = Call(pool.maintain)
    assert upkeep.finished(), "an upkeep round hung on a frozen server"
    assert upkeep.error is None
    assert pool.stats()["ping_failed"] == 2
    closing = Call(pool.close)
    assert closing.finished(), "closing the pool hung on a frozen server"
    assert closing.error is None and pool.closed
