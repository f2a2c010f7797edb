"""ServerBudget without a server: the budget does no I/O, so plain member objects stand in for
pools (they only report their longest-idle connection and close one when asked)."""

from __future__ import annotations

import threading
import time

import pytest

from pgregistry import PoolTimeoutError
from pgregistry.budget import ServerBudget


class Member:
    """A pool as the budget sees it: a name and some idle connections it can give up."""

    def __init__(self, budget: ServerBudget, name: str, idle_since: list[float] | None = None):
        self.name = name
        self.idle = sorted(idle_since or [])
        self.budget = budget
        self.closed = 0
        budget.join(self)

    def oldest_idle_since(self) -> float | None:
        return self.idle[0] if self.idle else None

    def close_one_idle(self) -> bool:
        if not self.idle:
            return False
        self.idle.pop(0)
        self.closed += 1
        self.budget.release(1)
        return True


def test_units_are_taken_up_to_the_limit_and_given_back() -> None:
    budget = ServerBudget("db1", 2)
    pool = Member(budget, "a")
    budget.acquire(pool, 0.0)
    budget.acquire(pool, 0.0)
    with pytest.raises(PoolTimeoutError, match=r"server budget 'db1' is full \(2/2"):
        budget.acquire(pool, 0.0)
    budget.release(1)
    budget.acquire(pool, 0.0)
    stats = budget.stats()
    assert (stats["used"], stats["peak"], stats["timeouts"], stats["max_connections"]) == (
        2,
        2,
        1,
        2,
    )


def test_a_full_budget_closes_the_longest_idle_connection_of_another_pool_first() -> None:
    budget = ServerBudget("db1", 2)
    young = Member(budget, "young", [200.0])
    old = Member(budget, "old", [100.0])
    needy = Member(budget, "needy")
    budget.acquire(young, 0.0)
    budget.acquire(old, 0.0)
    budget.acquire(needy, 0.0)  # full: "old" has the longest-idle connection
    assert (old.closed, young.closed) == (1, 0)
    assert budget.stats()["steals"] == 1


def test_steal_false_never_closes_another_pools_connection() -> None:
    budget = ServerBudget("db1", 1)
    other = Member(budget, "other", [1.0])
    budget.acquire(other, 0.0)
    with pytest.raises(PoolTimeoutError):
        budget.acquire(Member(budget, "refill"), 0.0, steal=False)
    assert other.closed == 0


def test_a_waiter_gets_the_unit_a_release_frees() -> None:
    budget = ServerBudget("db1", 1)
    pool = Member(budget, "a")
    budget.acquire(pool, 0.0)
    got = threading.Event()

    def wait_for_unit() -> None:
        budget.acquire(pool, 10.0)
        got.set()

    thread = threading.Thread(target=wait_for_unit)
    thread.start()
    deadline = time.monotonic() + 5
    while budget.stats()["waits"] == 0 and time.monotonic() < deadline:
        time.sleep(0.005)
    assert not got.is_set()
    budget.release(1)
    thread.join(10)
    assert got.is_set() and budget.stats()["used"] == 1


def test_release_never_goes_below_zero_and_bad_limits_are_refused() -> None:
    budget = ServerBudget("db1", 1)
    budget.release(5)
    assert budget.stats()["used"] == 0
    for bad in (0, -1, "3"):
        with pytest.raises(ValueError, match="max_connections must be an integer >= 1"):
            ServerBudget("db1", bad)  # type: ignore[arg-type]


def test_members_leave_and_are_not_asked_again() -> None:
    budget = ServerBudget("db1", 1)
    gone = Member(budget, "gone", [1.0])
    budget.acquire(gone, 0.0)
    budget.leave(gone)
    other = Member(budget, "b")
    with pytest.raises(PoolTimeoutError):
        budget.acquire(other, 0.0)
    assert gone.closed == 0
    assert budget.stats()["pools"] == 1
