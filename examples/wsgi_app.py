"""A WSGI application that takes a pooled connection per request (stdlib only: ``wsgiref``).

``make_app()`` returns the WSGI callable; any WSGI server can run it (gunicorn, uwsgi,
mod_wsgi: ``application = make_app()``). Every request looks its pool up with
``pgregistry.get(name)`` (a dictionary lookup once the pool is built) and returns the
connection when the response is ready. The pools come from the process-wide registry:
``$PGPOOLS_CONFIG`` or ``./pgpools.toml`` plus ``PGPOOLS__...`` variables, loaded on the first
request and closed at interpreter exit.

Routes (JSON answers):

- ``GET /``: the server's time and version and the backend that answered, from the default
  pool (``?pool=NAME`` for another one);
- ``GET /livez`` and ``GET /readyz``: liveness and readiness from :mod:`pgregistry.health`
  (readiness: every configured pool checks out and reaches its server; 503 when one fails);
- ``GET /stats``: every built pool's stats.

Serve it with the standard library's threaded server::

    python examples/wsgi_app.py --port 8000
    curl -s localhost:8000/ ; curl -s localhost:8000/stats
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable, Iterable
from socketserver import ThreadingMixIn
from typing import Any
from urllib.parse import parse_qs
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import pg

import pgregistry
from pgregistry import PooledPg, PooledPgError, Registry
from pgregistry.health import health_app

StartResponse = Callable[..., Any]
WSGIApp = Callable[[dict[str, Any], StartResponse], Iterable[bytes]]


def make_app(registry: Registry | None = None) -> WSGIApp:
    """The WSGI callable. ``registry``: where pools come from (default: ``pgregistry.get``)."""
    get: Callable[[str | None], PooledPg] = registry.get if registry else pgregistry.get
    reg = registry if registry is not None else pgregistry.default_registry
    probes = health_app(registry)

    def index(query: dict[str, list[str]]) -> tuple[str, Any]:
        name = query.get("pool", [None])[0]
        with get(name).connection() as db:  # returned to the pool at the end of the block
            now, version, pid = db.query(
                "SELECT now()::text, current_setting('server_version'), pg_backend_pid()"
            ).getresult()[0]
        return "200 OK", {"pool": name or reg.settings.default, "now": now, "server": version,
                          "backend_pid": pid}  # fmt: skip

    def stats(query: dict[str, list[str]]) -> tuple[str, Any]:
        return "200 OK", reg.stats()["pools"]

    routes = {"/": index, "/stats": stats}

    def application(environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        if environ.get("PATH_INFO") in ("/livez", "/readyz"):
            return probes(environ, start_response)
        route = routes.get(environ.get("PATH_INFO") or "/")
        if route is None:
            status, body = "404 Not Found", {"error": "no such route", "routes": sorted(routes)}
        elif environ.get("REQUEST_METHOD", "GET") not in ("GET", "HEAD"):
            status, body = "405 Method Not Allowed", {"error": "GET only"}
        else:
            try:
                status, body = route(parse_qs(environ.get("QUERY_STRING", "")))
            except KeyError as exc:  # UnknownPoolError: say which pools exist
                status, body = "404 Not Found", {"error": str(exc)}
            except (pg.Error, PooledPgError) as exc:  # messages never hold a password
                status, body = "503 Service Unavailable", {"error": " ".join(str(exc).split())}
        data = json.dumps(body, indent=2, default=str).encode() + b"\n"
        start_response(
            status, [("Content-Type", "application/json"), ("Content-Length", str(len(data)))]
        )
        return [data]

    return application


class ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    """``wsgiref``'s server, one thread per request, so requests share the pools.

    Closing the server waits for requests still being answered (``block_on_close``).
    """


class LogHandler(WSGIRequestHandler):
    """One short line per request on stderr."""

    def log_message(self, format: str, *args: Any) -> None:
        print(f"{self.address_string()} {format % args}", file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Serve the example WSGI app with wsgiref.")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8000, help="0: any free port")
    parser.add_argument("--requests", type=int, default=0, help="stop after N requests (0: never)")
    args = parser.parse_args(argv)
    with make_server(
        args.host, args.port, make_app(), server_class=ThreadingWSGIServer,
        handler_class=LogHandler,
    ) as server:  # fmt: skip
        print(f"serving on http://{args.host}:{server.server_port}/", flush=True)
        try:
            if args.requests:
                for _ in range(args.requests):
                    server.handle_request()
            else:
                server.serve_forever()
        except KeyboardInterrupt:
            pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
