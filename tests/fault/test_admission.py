"""Admission after an outage: while a pool's server is down, one caller probes it (capped,
jittered backoff) and the others wait for the probe, instead of each retrying on its own; once
it is back, connections are reopened one at a time.

Measured through a fault proxy that refuses new connections and cuts the open ones: the
connection attempts it accepts during the outage, with the gate and (in the same test, as the
baseline) with every caller retrying on its own. A ratio, not a timing.
"""

from __future__ import annotations

import threading
import time

import pytest

from pgregistry import PooledPg
from pgregistry.connector import Admission
from pgregistry.testing import FaultProxy, TemporaryCluster

pytestmark = pytest.mark.slow

THREADS, CONNECTIONS, OUTAGE = 32, 8, 2.0


def attempts_during_an_outage(cluster: TemporaryCluster) -> tuple[int, int]:
    """(connection attempts accepted during the outage, queries served after it)."""
    with FaultProxy(cluster.host, cluster.port) as proxy:
        kw = proxy.connect_kwargs(cluster.connect_kwargs())
        kw["dbname"] = f"dbname={kw['dbname']} connect_timeout=2"
        pool = PooledPg(0, CONNECTIONS, CONNECTIONS, True, timeout=30, reconnect_timeout=10, **kw)
        stop = threading.Event()
        served = [0]

        def work() -> None:
            deadline = time.monotonic() + 30
            while not stop.is_set() and time.monotonic() < deadline:
                try:
                    with pool.connection() as db:
                        db.query("SELECT 1")
                    served[0] += 1
                except Exception:
                    time.sleep(0.01)

        threads = [threading.Thread(target=work, daemon=True) for _ in range(THREADS)]
        for thread in threads:
            thread.start()
        try:
            time.sleep(0.5)
            before = proxy.stats()["accepted"]
            proxy.refuse()
            proxy.cut()
            time.sleep(OUTAGE)
            during = proxy.stats()["accepted"] - before
            proxy.heal()
            back = served[0]
            deadline = time.monotonic() + 15
            while served[0] < back + 50 and time.monotonic() < deadline:
                time.sleep(0.01)
            after = served[0] - back
        finally:
            stop.set()
            for thread in threads:
                thread.join(30)
            pool.close()
    return during, after


def test_one_caller_probes_a_server_that_is_down(
    healthy_cluster: TemporaryCluster,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    gated, gated_after = attempts_during_an_outage(healthy_cluster)
    with monkeypatch.context() as patch:
        patch.setattr(Admission, "enter", lambda self, deadline: True)
        alone, alone_after = attempts_during_an_outage(healthy_cluster)
    with capsys.disabled():
        print(
            f"\n{THREADS} threads, {CONNECTIONS} connections, {OUTAGE:.0f} s outage: "
            f"{gated} connection attempts with the gate, {alone} with every caller on its own"
        )
    assert gated_after >= 50 and alone_after >= 50  # both recovered
    assert gated * 2 < alone, (gated, alone)
