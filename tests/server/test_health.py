"""pgregistry.health: liveness and readiness answered by a real WSGI server over HTTP."""

from __future__ import annotations

import json
import socket
import threading
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, make_server

import pytest

from pgregistry import Registry
from pgregistry.health import health_app

MakeRegistry = Callable[[dict[str, Any]], Registry]
SECRET = "pgrt-health-s3cret"


class Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def serve() -> Iterator[Callable[[Registry], int]]:
    servers: list[Any] = []

    def start(registry: Registry) -> int:
        server = make_server("127.0.0.1", 0, health_app(registry, timeout=5.0), handler_class=Quiet)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        port: int = server.server_port
        return port

    try:
        yield start
    finally:
        for server in servers:
            server.shutdown()
            server.server_close()


def get(port: int, path: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=15) as answer:
            return answer.status, json.loads(answer.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def dead_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def test_ready_when_every_pool_reaches_its_server(
    make_registry: MakeRegistry,
    shared_kwargs: dict[str, Any],
    app_name: str,
    serve: Callable[[Registry], int],
) -> None:
    target = {k: shared_kwargs[k] for k in ("host", "port", "dbname", "user")}
    registry = make_registry({"pools": {"a": {**target, "application_name": app_name}}})
    port = serve(registry)
    assert get(port, "/livez") == (200, {"status": "ok"})
    status, body = get(port, "/readyz")
    assert status == 200 and body["status"] == "ok"
    pool = body["pools"]["a"]
    assert pool["status"] == "ok" and pool["role"] == "primary"
    assert pool["latency_ms"] >= 0 and pool["server_version"] >= 140000


def test_not_ready_when_a_pool_cannot_reach_its_server_and_no_password_shows(
    make_registry: MakeRegistry,
    shared_kwargs: dict[str, Any],
    app_name: str,
    serve: Callable[[Registry], int],
) -> None:
    target = {k: shared_kwargs[k] for k in ("host", "port", "dbname", "user")}
    down = {**target, "port": dead_port(), "password": SECRET, "connect_timeout": 2}
    registry = make_registry(
        {"pools": {"up": {**target, "application_name": app_name}, "down": down}}
    )
    port = serve(registry)
    status, body = get(port, "/readyz")
    assert status == 503 and body["status"] == "unavailable"
    assert body["pools"]["up"]["status"] == "ok"
    assert body["pools"]["down"]["status"] == "failed"
    assert "Connection refused" in body["pools"]["down"]["error"]
    assert get(port, "/readyz?pool=up")[0] == 200
    assert SECRET not in json.dumps(body)
    assert get(port, "/livez")[0] == 200  # liveness never depends on the database


def test_not_alive_once_the_registry_is_closed(
    make_registry: MakeRegistry,
    shared_kwargs: dict[str, Any],
    app_name: str,
    serve: Callable[[Registry], int],
) -> None:
    target = {k: shared_kwargs[k] for k in ("host", "port", "dbname", "user")}
    registry = make_registry({"pools": {"a": {**target, "application_name": app_name}}})
    port = serve(registry)
    registry.close()
    assert get(port, "/livez") == (503, {"status": "closed"})
    assert get(port, "/readyz")[0] == 503
    assert get(port, "/nothing")[0] == 404
