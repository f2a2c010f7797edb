"""libpq network defaults: TCP keepalives and ``tcp_user_timeout`` on every pooled connection,
unless the target sets its own. Read back from the connection's socket itself, so what is
checked is what the kernel applies, not what was asked for.
"""

from __future__ import annotations

import socket
from typing import Any

import pytest

from pgregistry import PooledPg
from pgregistry.connect_args import with_network_defaults


def socket_options(db: Any) -> dict[str, int]:
    """Keepalive options of the socket under ``db`` (a pooled or plain connection)."""
    sock = socket.socket(fileno=db.db.socket)
    try:
        return {
            "keepalive": sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE),
            "idle": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE),
            "interval": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL),
            "count": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT),
            "user_timeout_ms": sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT),
        }
    finally:
        sock.detach()  # the descriptor stays libpq's


@pytest.fixture
def tcp_target(shared_kwargs: dict[str, Any], app_name: str) -> dict[str, Any]:
    if str(shared_kwargs["host"]).startswith("/"):
        pytest.skip("the shared server is reached over a unix socket: no TCP options apply")
    return {
        **shared_kwargs,
        "dbname": f"dbname={shared_kwargs['dbname']} application_name={app_name}",
    }


def test_pooled_connections_get_keepalives_and_a_user_timeout(tcp_target: dict[str, Any]) -> None:
    pool = PooledPg(1, **tcp_target)
    try:
        with pool.connection() as db:
            options = socket_options(db)
    finally:
        pool.close()
    assert options == {
        "keepalive": 1, "idle": 30, "interval": 10, "count": 3, "user_timeout_ms": 30000
    }  # fmt: skip


def test_the_targets_own_settings_win(tcp_target: dict[str, Any]) -> None:
    target = dict(tcp_target)
    target["dbname"] += " keepalives_idle=7 tcp_user_timeout=4000 connect_timeout=3"
    pool = PooledPg(1, **target)
    try:
        with pool.connection() as db:
            options = socket_options(db)
            steady = db._con
            assert steady is not None and steady.probe_timeout == 3.0  # ping/reset bound
    finally:
        pool.close()
    assert (options["idle"], options["user_timeout_ms"], options["interval"]) == (7, 4000, 10)


def test_keepalives_off_is_respected(tcp_target: dict[str, Any]) -> None:
    target = dict(tcp_target)
    target["dbname"] += " keepalives=0"
    pool = PooledPg(1, **target)
    try:
        with pool.connection() as db:
            assert socket_options(db)["keepalive"] == 0
    finally:
        pool.close()


def test_a_service_or_pgconnect_timeout_is_left_to_libpq(monkeypatch: pytest.MonkeyPatch) -> None:
    # A service file may set these itself; PGCONNECT_TIMEOUT is libpq's own default.
    assert with_network_defaults(("service=app",), {}) == (("service=app",), {}, 10.0)
    monkeypatch.setenv("PGCONNECT_TIMEOUT", "4")
    (dbname,), _, timeout = with_network_defaults(("app",), {})
    assert "connect_timeout" not in dbname and "keepalives=1" in dbname and timeout == 4.0
