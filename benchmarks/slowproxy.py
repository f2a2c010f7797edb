"""A TCP proxy on 127.0.0.1 that makes every new connection slow to open, for the storm measure.

    python benchmarks/slowproxy.py --upstream-port 5432 --delay 0.15

Each accepted connection waits ``--delay`` seconds before the proxy connects to the upstream
server, so a client's connect (libpq's startup packet is answered only once upstream is
reached) takes that much longer; after that bytes flow both ways untouched. It runs as a
process of its own so that pumping bytes never takes the benchmark's GIL.

On stdout it prints ``port N`` once listening, then one line per event with
``time.monotonic()`` (the same clock in every process on Linux), the connection number and
the event: ``accept`` (a client started connecting), ``open`` (upstream reached), ``close``.
It exits when its stdin closes, so it never outlives the benchmark, and after ``--max-accepts``
connections at most.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import selectors
import socket
import sys
import threading
import time

_print_lock = threading.Lock()


def _event(conn_id: int, what: str) -> None:
    with _print_lock:
        sys.stdout.write(f"{time.monotonic():.6f} {conn_id} {what}\n")
        sys.stdout.flush()


def _pump(client: socket.socket, upstream: socket.socket) -> None:
    """Copy bytes both ways until either side closes."""
    peer = {client: upstream, upstream: client}
    with selectors.DefaultSelector() as sel:
        sel.register(client, selectors.EVENT_READ)
        sel.register(upstream, selectors.EVENT_READ)
        while True:
            for key, _ in sel.select():
                src = key.fileobj
                assert isinstance(src, socket.socket)
                try:
                    data = src.recv(65536)
                except OSError:
                    data = b""
                if not data:
                    return
                try:
                    peer[src].sendall(data)
                except OSError:
                    return


def _serve(
    conn_id: int, client: socket.socket, upstream_addr: tuple[str, int], delay: float
) -> None:
    _event(conn_id, "accept")
    upstream = None
    try:
        time.sleep(delay)
        upstream = socket.create_connection(upstream_addr, timeout=10)
        upstream.settimeout(None)
        upstream.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        _event(conn_id, "open")
        _pump(client, upstream)
    except OSError:
        pass
    finally:
        for s in (client, upstream):
            if s is not None:
                with contextlib.suppress(OSError):
                    s.close()
        _event(conn_id, "close")


def _exit_when_stdin_closes() -> None:
    try:
        while sys.stdin.buffer.read(1024):
            pass
    finally:
        os._exit(0)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--upstream-host", default="127.0.0.1")
    parser.add_argument("--upstream-port", type=int, required=True)
    parser.add_argument("--delay", type=float, default=0.15, help="seconds per connect")
    parser.add_argument("--max-accepts", type=int, default=10_000)
    args = parser.parse_args(argv)
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", 0))
    listener.listen(256)
    threading.Thread(target=_exit_when_stdin_closes, daemon=True).start()
    with _print_lock:
        sys.stdout.write(f"port {listener.getsockname()[1]}\n")
        sys.stdout.flush()
    upstream = (args.upstream_host, args.upstream_port)
    for conn_id in range(1, args.max_accepts + 1):
        client, _ = listener.accept()
        threading.Thread(
            target=_serve, args=(conn_id, client, upstream, args.delay), daemon=True
        ).start()
    os._exit(0)


if __name__ == "__main__":
    main()
