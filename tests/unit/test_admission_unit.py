"""The connect gate of a pool (pgregistry.connector.Admission), thread by thread, no server."""

from __future__ import annotations

import threading
import time

from pgregistry.connector import Admission


def in_thread(gate: Admission, deadline: float) -> bool:
    out: list[bool] = []
    thread = threading.Thread(target=lambda: out.append(gate.enter(deadline)))
    thread.start()
    thread.join(10)
    return out[0]


def test_an_up_server_lets_every_connect_through() -> None:
    gate = Admission()
    assert gate.enter(time.monotonic()) and in_thread(gate, time.monotonic())
    gate.succeeded()
    assert not gate.down


def test_while_one_caller_probes_the_others_wait_for_its_outcome() -> None:
    gate = Admission()
    assert gate.enter(time.monotonic())
    gate.failed()  # this thread probes now
    assert gate.down
    assert not in_thread(gate, time.monotonic())  # no time to wait: refused, nothing tried
    assert gate.enter(time.monotonic())  # the prober itself goes on
    waiting: list[bool] = []
    other = threading.Thread(target=lambda: waiting.append(gate.enter(time.monotonic() + 10)))
    other.start()
    time.sleep(0.1)
    assert not waiting  # waits for the probe
    gate.succeeded()  # back: the waiting caller goes, alone
    other.join(10)
    assert waiting == [True] and not gate.down


def test_a_prober_that_gives_up_hands_the_probe_on() -> None:
    gate = Admission()
    gate.enter(time.monotonic())
    gate.failed()
    gate.leave()
    assert in_thread(gate, time.monotonic())  # the next caller probes
