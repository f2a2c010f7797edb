"""A health endpoint for the pools of a registry: a small WSGI application, stdlib only.

``health_app(registry=None)`` answers two routes, in JSON:

``/livez`` (liveness)
    200 while the registry is open, 503 once it is closed. No I/O: a liveness probe must not
    fail because the database is slow, or the orchestrator restarts a healthy process.
``/readyz`` (readiness)
    Every configured pool checks out a connection and runs ``SELECT 1`` within ``timeout``
    seconds (checks run side by side). 200 when all answer, 503 otherwise. Per pool: ``ok``,
    latency in milliseconds, the server version, and the server's role (``primary`` or
    ``standby``, from the ``in_hot_standby`` parameter PostgreSQL 14+ reports); or the error,
    with any password masked. ``?pool=NAME`` checks one pool.

Mount it beside an application (``examples/wsgi_app.py`` does) or serve it on its own port.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any
from urllib.parse import parse_qs

import pg

from .conninfo import redact
from .errors import PgRegistryError
from .registry import Registry

__all__ = ["health_app", "readiness"]

StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]

_OK = "200 OK"
_UNAVAILABLE = "503 Service Unavailable"


def _default_registry() -> Registry:
    from . import default_registry

    return default_registry


def _check(registry: Registry, name: str) -> dict[str, Any]:
    """Check out from pool ``name`` and run ``SELECT 1``; what a readiness probe reports."""
    started = time.perf_counter()
    try:
        with registry.connection(name) as db:
            db.query("SELECT 1")
            standby = db.parameter("in_hot_standby")
            version = db.server_version
    except (pg.Error, PgRegistryError) as exc:
        return {"status": "failed", "error": redact(" ".join(str(exc).split()))}
    return {
        "status": "ok",
        "latency_ms": round((time.perf_counter() - started) * 1000, 2),
        "server_version": version,
        "role": {"on": "standby", "off": "primary"}.get(standby or "", "unknown"),
    }


def readiness(
    registry: Registry | None = None, names: Iterable[str] | None = None, timeout: float = 2.0
) -> tuple[bool, dict[str, dict[str, Any]]]:
    """Check every pool (or ``names``) side by side; (all ready, report per pool).

    A pool that has not answered after ``timeout`` seconds is reported ``timeout``; its check
    goes on in a daemon thread and gives its connection back when it ends.
    """
    reg = registry if registry is not None else _default_registry()
    wanted = list(names) if names is not None else reg.names()
    results: dict[str, dict[str, Any]] = {}
    threads: list[tuple[str, threading.Thread]] = []
    for name in wanted:

        def run(name: str = name) -> None:
            results[name] = _check(reg, name)

        thread = threading.Thread(target=run, name=f"pgregistry-readyz-{name}", daemon=True)
        thread.start()
        threads.append((name, thread))
    deadline = time.monotonic() + timeout
    report: dict[str, dict[str, Any]] = {}
    for name, thread in threads:
        thread.join(max(deadline - time.monotonic(), 0.0))
        report[name] = results.get(name) or {
            "status": "timeout",
            "error": f"no answer within {timeout:g} s",
        }
    return all(entry["status"] == "ok" for entry in report.values()), report


def health_app(registry: Registry | None = None, *, timeout: float = 2.0) -> WSGIApp:
    """The WSGI callable for ``/livez`` and ``/readyz`` (see the module docstring)."""

    def application(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        reg = registry if registry is not None else _default_registry()
        path = environ.get("PATH_INFO") or "/"
        body: dict[str, Any]
        if environ.get("REQUEST_METHOD", "GET") not in ("GET", "HEAD"):
            status, body = "405 Method Not Allowed", {"error": "GET only"}
        elif path.endswith("/livez"):
            alive = not reg.closed
            status = _OK if alive else _UNAVAILABLE
            body = {"status": "ok" if alive else "closed"}
        elif path.endswith("/readyz"):
            query = parse_qs(environ.get("QUERY_STRING", ""))
            names = query.get("pool")
            try:
                ready, pools = readiness(reg, names, timeout)
            except (pg.Error, PgRegistryError) as exc:  # no configuration, closed registry
                ready, pools = False, {"*": {"status": "failed", "error": redact(str(exc))}}
            status = _OK if ready else _UNAVAILABLE
            body = {"status": "ok" if ready else "unavailable", "pools": pools}
        else:
            status, body = (
                "404 Not Found",
                {"error": "no such route", "routes": ["/livez", "/readyz"]},
            )
        data = json.dumps(body, indent=2, default=str).encode() + b"\n"
        start_response(
            status,
            [
                ("Content-Type", "application/json"),
                ("Content-Length", str(len(data))),
                ("Cache-Control", "no-store"),
            ],
        )
        return [data]

    return application
