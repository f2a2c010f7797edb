"""pause() and resume(): checkouts wait (within ``timeout``) for a planned switchover, instead
of failing; a paused pool stays paused when a reload builds it again."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

import pytest

from pgregistry import PoolClosedError, PooledPg, PoolTimeoutError, Registry
from pgregistry.config import settings_from_mapping

MakePool = Callable[..., PooledPg]


class Checkout(threading.Thread):
    """Check out from ``get()`` in a thread; keep what came back (a result or an error)."""

    def __init__(self, get: Callable[[], Any]) -> None:
        super().__init__(daemon=True)
        self.get = get
        self.outcome: Any = None
        self.done = threading.Event()

    def run(self) -> None:
        try:
            with self.get() as db:
                self.outcome = db.query("SELECT 7").getresult()
        except Exception as exc:
            self.outcome = exc
        self.done.set()


def test_a_paused_pool_holds_checkouts_until_resume(make_pool: MakePool) -> None:
    pool = make_pool(1, 1, 2, True, timeout=30)
    pool.pause()
    assert pool.paused
    call = Checkout(pool.connection)
    call.start()
    assert not call.done.wait(0.3), call.outcome  # an idle connection is there: still held
    pool.resume()
    assert call.done.wait(10) and call.outcome == [(7,)]
    assert not pool.paused


def test_connections_already_out_are_used_and_returned_while_paused(make_pool: MakePool) -> None:
    pool = make_pool(0, 1, 1, True, timeout=30)
    db = pool.connection()
    pool.pause()
    assert db.query("SELECT 1").getresult() == [(1,)]
    db.close()
    assert pool.stats()["idle"] == 1
    pool.resume()


def test_a_pause_longer_than_timeout_raises(make_pool: MakePool) -> None:
    pool = make_pool(0, 1, 1, True, timeout=0.3)
    pool.pause()
    with pytest.raises(PoolTimeoutError, match="is paused"):
        pool.connection()
    assert pool.stats()["timeouts"] == 1


def test_closing_a_paused_pool_wakes_its_callers(make_pool: MakePool) -> None:
    pool = make_pool(0, 1, 1, True, timeout=30)
    pool.pause()
    call = Checkout(pool.connection)
    call.start()
    time.sleep(0.1)
    pool.close()
    assert call.done.wait(10) and isinstance(call.outcome, PoolClosedError)


def test_a_registry_pool_stays_paused_across_a_reload(
    shared_kwargs: dict[str, Any], app_name: str
) -> None:
    def mapping(maxconnections: int) -> dict[str, Any]:
        pool = {**shared_kwargs, "application_name": app_name, "maxconnections": maxconnections}
        return {"pools": {"app": pool}}

    reg = Registry(settings_from_mapping(mapping(2)))
    try:
        reg.pause("app")
        call = Checkout(lambda: reg.connection("app"))
        call.start()
        assert not call.done.wait(0.2)
        reg.reload(settings_from_mapping(mapping(3)))  # a changed pool: built again
        assert reg.get("app").paused
        assert not call.done.wait(0.2)
        reg.resume("app")
        assert call.done.wait(10) and call.outcome == [(7,)]
    finally:
        reg.close()
