"""How failed connection attempts are logged: each once, with the backoff state, rate-limited
per pool. Uses real libpq against a local port where nothing listens (no server needed)."""

from __future__ import annotations

import logging
import socket

import pytest

from pgregistry import PooledPg, ServerUnavailableError


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def connect_records(caplog: pytest.LogCaptureFixture, level: int) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == level
        and "connect" in r.getMessage()
        and "could not refill" not in r.getMessage()
    ]


def test_a_failing_checkout_says_its_first_attempt_and_giving_up_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="pgregistry")
    port = closed_port()
    pool = PooledPg(0, host="127.0.0.1", port=port, name=f"down{port}", reconnect_timeout=0.3)
    try:
        with pytest.raises(ServerUnavailableError):
            pool.connection()
        warnings = connect_records(caplog, logging.WARNING)
        assert len(warnings) == 2, warnings
        assert "retrying for up to 0.3 s, pauses 0.02 s growing to 0.25 s" in warnings[0]
        assert "gave up connecting after" in warnings[1] and "(reconnect_timeout)" in warnings[1]
        assert all("Connection refused" in w for w in warnings)
        retries = connect_records(caplog, logging.DEBUG)
        assert retries and all(r.startswith("connect attempt") for r in retries)
        # A caller failing again within 10 s adds no warning (rate-limited per pool) ...
        caplog.clear()
        with pytest.raises(ServerUnavailableError):
            pool.connection()
        assert connect_records(caplog, logging.WARNING) == []
    finally:
        pool.close()


def test_the_count_of_unsaid_failures_is_reported_when_said_again(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    from pgregistry import connector

    monkeypatch.setattr(connector, "LOG_INTERVAL", 0.0)  # say every failure
    caplog.set_level(logging.WARNING, logger="pgregistry")
    port = closed_port()
    pool = PooledPg(0, host="127.0.0.1", port=port, name=f"down{port}")
    try:
        for _ in range(2):
            with pytest.raises(ServerUnavailableError):
                pool.connection()
        warnings = connect_records(caplog, logging.WARNING)
        assert len(warnings) == 2
        assert all(
            "(1 failure(s) since last said), not retried (reconnect_timeout is 0)" in w
            for w in warnings
        )
    finally:
        pool.close()
