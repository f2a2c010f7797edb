"""A TCP proxy that breaks the network between clients and a server, on demand.

:class:`FaultProxy` listens on a free port of 127.0.0.1 and forwards every connection to a target
server (a :class:`~pgregistry.testing.TemporaryCluster`, usually). Faults are switched at run time
from any thread, and each takes effect before the call returns::

    with FaultProxy(cluster.host, cluster.port) as proxy:
        db = pg.DB(**proxy.connect_kwargs(cluster.connect_kwargs()))
        proxy.stall()           # a frozen server: sockets open, no byte flows either way
        proxy.resume()
        proxy.drop_replies(cut_after=0.2)  # the server runs the statement, the reply is lost,
                                           # then the connection drops
        proxy.heal()            # back to plain forwarding
        proxy.cut()             # every connection closed now, both sides

What a client sees, fault by fault:

* :meth:`cut`: its next read finds the connection closed (libpq: "server closed the connection
  unexpectedly"); the server's backend sees its client gone. New connections are forwarded.
* :meth:`stall`: reads and writes hang; TCP keepalives and ``tcp_user_timeout`` do not help,
  as the proxy's kernel still acknowledges every byte. Only the client's own timer ends it.
* :meth:`drop_replies`: requests reach the server and run; nothing comes back. Without
  ``cut_after`` the client hangs as on a stall; with it the connection is closed that many
  seconds after the first request sent while replies were dropped.
* :meth:`slow_connects`: a new connection is accepted at once but nothing is forwarded (not
  even its startup packet) before the delay: a connect takes that much longer.
* :meth:`refuse`: a new connection is accepted and closed at once, before any byte (libpq:
  "server closed the connection unexpectedly" at connect). Established ones keep working.

One thread runs a :mod:`selectors` loop for the listening socket and every connection; buffers
are bounded (a full buffer stops reading from its source), the number of connections is bounded
(``max_connections``; more are refused), and :meth:`close` (or ``with``, or an :mod:`atexit`
handler) stops the thread and closes every socket within a bounded time.
"""

from __future__ import annotations

import atexit
import collections
import contextlib
import logging
import os
import selectors
import socket
import threading
import time
from collections.abc import Callable, Mapping
from types import TracebackType
from typing import Any, Final, TypedDict, cast

__all__ = ["FaultProxy", "ProxyStats"]

_log = logging.getLogger("pgregistry.testing.proxy")

#: Bytes read per recv() call.
_CHUNK: Final = 65536

#: A direction stops reading from its source while this many bytes wait to be sent on.
_BUFFER_LIMIT: Final = 1 << 20

#: Longest sleep of the loop, so a stop request is noticed even without a wake-up byte.
_MAX_IDLE: Final = 0.5


class ProxyStats(TypedDict):
    """Counters of a :class:`FaultProxy`, since it started or since its ``reset_counters()``."""

    accepted: int
    """Connections accepted from clients (refused ones included)."""
    refused: int
    """Connections closed at once: by :meth:`FaultProxy.refuse`, the target refusing, or
    ``max_connections`` reached."""
    open: int
    """Connections open now (client side)."""
    peak_open: int
    """Most connections open at once."""
    cut: int
    """Connections closed by :meth:`FaultProxy.cut` or a ``drop_replies`` cut."""
    bytes_dropped: int
    """Server-to-client bytes discarded by :meth:`FaultProxy.drop_replies`."""


class _Link:
    """One client connection and its upstream connection, with a pending buffer per direction."""

    __slots__ = ("client", "cut_at", "ready_at", "server", "to_client", "to_server")

    def __init__(self, client: socket.socket, ready_at: float) -> None:
        self.client = client
        self.server: socket.socket | None = None  # connected once ready_at has passed
        self.ready_at = ready_at
        self.cut_at: float | None = None  # set by drop_replies(cut_after=...)
        self.to_server = bytearray()
        self.to_client = bytearray()


class FaultProxy:
    """A TCP proxy on ``listen_host``:free-port forwarding to ``target_host``:``target_port``.

    Starts at construction unless ``start=False`` (then call :meth:`start`, or use ``with``).

    Parameters:
        target_host, target_port: the server to forward to.
        listen_host: where to listen (default 127.0.0.1); the port is free and reserved.
        max_connections: connections forwarded at once; more are refused (default 1000).
        connect_timeout: seconds an upstream connect may take before the client is dropped
            (default 5).
        start: start listening now (default True).
    """

    def __init__(
        self,
        target_host: str,
        target_port: int,
        *,
        listen_host: str = "127.0.0.1",
        max_connections: int = 1000,
        connect_timeout: float = 5.0,
        start: bool = True,
    ) -> None:
        if max_connections < 1:
            raise ValueError(f"max_connections must be >= 1 (got {max_connections})")
        self.target = (target_host, int(target_port))
        self.listen_host = listen_host
        self.max_connections = max_connections
        self.connect_timeout = connect_timeout
        self._listener: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._wake_r, self._wake_w = socket.socketpair()
        self._wake_r.setblocking(False)
        self._wake_w.setblocking(False)
        self._commands: collections.deque[tuple[Callable[[], None], threading.Event]] = (
            collections.deque()
        )
        self._links: list[_Link] = []
        # Fault state: written and read by the loop thread only (commands run there).
        self._stalled = False
        self._dropping = False
        self._cut_after: float | None = None
        self._refusing = False
        self._connect_delay = 0.0
        # Counters: written by the loop thread, read by anyone under the lock.
        self._counts_lock = threading.Lock()
        self._counts: ProxyStats = _zero_stats()
        if start:
            self.start()

    # -- addresses ---------------------------------------------------------------------------

    @property
    def host(self) -> str:
        """The address clients connect to."""
        return self.listen_host

    @property
    def port(self) -> int:
        """The port clients connect to."""
        if self._listener is None:
            raise RuntimeError("the proxy has not been started")
        port: int = self._listener.getsockname()[1]
        return port

    def connect_kwargs(self, base: Mapping[str, Any] | None = None) -> dict[str, Any]:
        """``base`` (``pg.DB`` keywords such as ``cluster.connect_kwargs()``) aimed at the proxy."""
        kwargs = dict(base or {})
        kwargs.update(host=self.host, port=self.port)
        return kwargs

    def __repr__(self) -> str:
        where = f"port {self._listener.getsockname()[1]}" if self._listener else "not started"
        return f"<FaultProxy {where} -> {self.target[0]}:{self.target[1]}>"

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        """Listen on a free port and start forwarding (idempotent)."""
        if self._thread is not None:
            return
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind((self.listen_host, 0))  # the kernel's free port: nobody else can bind it
        listener.listen(128)
        listener.setblocking(False)
        self._listener = listener
        self._thread = threading.Thread(
            target=self._run, name=f"fault-proxy-{self.port}", daemon=True
        )
        with _live_lock:
            _live[id(self)] = self
        self._thread.start()

    def close(self, timeout: float = 5.0) -> None:
        """Close every connection and the listener, and stop the thread (idempotent, bounded)."""
        thread = self._thread
        self._stopping = True
        self._wake()
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
            if thread.is_alive():
                _log.warning(
                    "fault proxy %r: thread still running %.1f s after close", self, timeout
                )
        with _live_lock:
            _live.pop(id(self), None)

    def __enter__(self) -> FaultProxy:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- faults ------------------------------------------------------------------------------

    def cut(self) -> None:
        """Close every open connection now, on both sides; later connections are forwarded."""
        self._command(self._cut_all)

    def stall(self) -> None:
        """Stop forwarding in both directions, keeping every socket open (a frozen server).

        New connections are accepted but stall too. :meth:`resume` ends it.
        """
        self._command(lambda: setattr(self, "_stalled", True))

    def resume(self) -> None:
        """Forward again after :meth:`stall`; bytes held meanwhile flow on."""
        self._command(lambda: setattr(self, "_stalled", False))

    def drop_replies(self, cut_after: float | None = None) -> None:
        """Forward client-to-server bytes but discard every server-to-client byte.

        ``cut_after`` (seconds): also close each connection that long after the first request
        it sends while replies are dropped, as a network that fails after the server ran the
        statement. Ended by :meth:`heal` (connections already marked are still cut).
        """
        if cut_after is not None and cut_after < 0:
            raise ValueError(f"cut_after must be >= 0 seconds (got {cut_after})")

        def apply() -> None:
            self._dropping = True
            self._cut_after = cut_after

        self._command(apply)

    def slow_connects(self, seconds: float) -> None:
        """Hold each new connection ``seconds`` before forwarding anything (0 ends it)."""
        if seconds < 0:
            raise ValueError(f"seconds must be >= 0 (got {seconds})")
        self._command(lambda: setattr(self, "_connect_delay", float(seconds)))

    def refuse(self) -> None:
        """Accept each new connection and close it at once; established ones are untouched."""
        self._command(lambda: setattr(self, "_refusing", True))

    def heal(self) -> None:
        """End every fault: forward plainly, accept connections at once."""

        def apply() -> None:
            self._stalled = self._dropping = self._refusing = False
            self._cut_after = None
            self._connect_delay = 0.0

        self._command(apply)

    # -- counters ----------------------------------------------------------------------------

    def stats(self) -> ProxyStats:
        """A snapshot of the counters (see :class:`ProxyStats`)."""
        with self._counts_lock:
            return ProxyStats(**self._counts)

    @property
    def accepted(self) -> int:
        """Connections accepted so far."""
        return self.stats()["accepted"]

    @property
    def open_connections(self) -> int:
        """Connections open now."""
        return self.stats()["open"]

    @property
    def peak_open(self) -> int:
        """Most connections open at once."""
        return self.stats()["peak_open"]

    def reset_counters(self) -> None:
        """Zero the counters; ``open`` stays, and ``peak_open`` restarts from it."""
        with self._counts_lock:
            still_open = self._counts["open"]
            self._counts = _zero_stats()
            self._counts["open"] = self._counts["peak_open"] = still_open

    # -- the loop ----------------------------------------------------------------------------

    def _command(self, action: Callable[[], None], timeout: float = 5.0) -> None:
        """Run ``action`` on the loop thread and wait until it ran, so a fault is in force."""
        if self._thread is None or not self._thread.is_alive():
            action()  # not running: nothing to race with
            return
        done = threading.Event()
        self._commands.append((action, done))
        self._wake()
        if not done.wait(timeout):
            raise RuntimeError(f"fault proxy {self!r}: command not run within {timeout:.1f} s")

    def _wake(self) -> None:
        with contextlib.suppress(OSError):
            self._wake_w.send(b"\0")

    def _count(self, key: str, by: int = 1) -> None:
        with self._counts_lock:
            counts = cast(dict[str, int], self._counts)
            counts[key] += by
            if key == "open" and counts["open"] > counts["peak_open"]:
                counts["peak_open"] = counts["open"]

    def _run(self) -> None:
        selector = selectors.DefaultSelector()
        assert self._listener is not None
        try:
            while not self._stopping:
                self._run_commands()
                self._fire_timers()
                self._select(selector)
        except Exception:
            _log.exception("fault proxy %r: loop failed; closing every connection", self)
        finally:
            self._run_commands()
            self._cut_all(count=False)
            selector.close()
            self._listener.close()
            self._wake_r.close()
            self._wake_w.close()

    def _run_commands(self) -> None:
        while self._commands:
            action, done = self._commands.popleft()
            try:
                action()
            finally:
                done.set()

    def _fire_timers(self) -> None:
        now = time.monotonic()
        for link in list(self._links):
            if link.cut_at is not None and now >= link.cut_at:
                self._close_link(link, cut=True)
            elif link.server is None and now >= link.ready_at and not self._stalled:
                self._connect_upstream(link)

    def _next_timer(self) -> float:
        now = time.monotonic()
        timeout = _MAX_IDLE
        for link in self._links:
            if link.cut_at is not None:
                timeout = min(timeout, link.cut_at - now)
            if link.server is None and not self._stalled:
                timeout = min(timeout, link.ready_at - now)
        return max(timeout, 0.0)

    def _select(self, selector: selectors.BaseSelector) -> None:
        # Interest is rebuilt every round: simple, and cheap for the few sockets a test opens.
        for key in list(selector.get_map().values()):
            selector.unregister(key.fileobj)
        assert self._listener is not None
        selector.register(self._listener, selectors.EVENT_READ, "accept")
        selector.register(self._wake_r, selectors.EVENT_READ, "wake")
        if not self._stalled:
            for link in self._links:
                self._register(selector, link)
        for key, events in selector.select(self._next_timer()):
            if key.data == "accept":
                self._accept()
            elif key.data == "wake":
                with contextlib.suppress(OSError):
                    self._wake_r.recv(4096)
            else:
                link, side = key.data
                if link in self._links:
                    self._service(link, side, events)

    def _register(self, selector: selectors.BaseSelector, link: _Link) -> None:
        if link.server is None:
            return  # held by slow_connects: forward nothing yet
        client_events = 0
        server_events = 0
        if len(link.to_server) < _BUFFER_LIMIT:
            client_events |= selectors.EVENT_READ
        if link.to_client:
            client_events |= selectors.EVENT_WRITE
        if len(link.to_client) < _BUFFER_LIMIT:
            server_events |= selectors.EVENT_READ
        if link.to_server:
            server_events |= selectors.EVENT_WRITE
        if client_events:
            selector.register(link.client, client_events, (link, "client"))
        if server_events:
            selector.register(link.server, server_events, (link, "server"))

    def _accept(self) -> None:
        assert self._listener is not None
        for _ in range(64):  # bounded per round, so faults switched meanwhile are seen soon
            try:
                client, _address = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:
                _log.warning("fault proxy %r: accept failed: %s", self, exc)
                return
            self._count("accepted")
            if self._refusing or len(self._links) >= self.max_connections:
                self._count("refused")
                client.close()
                continue
            client.setblocking(False)
            client.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            link = _Link(client, time.monotonic() + self._connect_delay)
            self._links.append(link)
            self._count("open")
            if self._connect_delay <= 0 and not self._stalled:
                self._connect_upstream(link)

    def _connect_upstream(self, link: _Link) -> None:
        try:
            server = socket.create_connection(self.target, timeout=self.connect_timeout)
        except OSError as exc:
            _log.info("fault proxy %r: target refused a connection: %s", self, exc)
            self._count("refused")
            self._close_link(link)
            return
        server.setblocking(False)
        server.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        link.server = server

    def _service(self, link: _Link, side: str, events: int) -> None:
        source = link.client if side == "client" else link.server
        assert source is not None
        try:
            if events & selectors.EVENT_WRITE:
                pending = link.to_client if side == "client" else link.to_server
                sent = source.send(pending)
                del pending[:sent]
            if events & selectors.EVENT_READ:
                data = source.recv(_CHUNK)
                if not data:
                    self._close_link(link)  # one side hung up: so does the other
                    return
                if side == "client":
                    link.to_server += data
                    if self._dropping and self._cut_after is not None and link.cut_at is None:
                        link.cut_at = time.monotonic() + self._cut_after
                elif self._dropping:
                    self._count("bytes_dropped", len(data))
                else:
                    link.to_client += data
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._close_link(link)

    def _close_link(self, link: _Link, *, cut: bool = False) -> None:
        with contextlib.suppress(ValueError):
            self._links.remove(link)
            self._count("open", -1)
            if cut:
                self._count("cut")
        for sock in (link.client, link.server):
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)  # the peer sees EOF now, not at GC
                sock.close()

    def _cut_all(self, count: bool = True) -> None:
        for link in list(self._links):
            self._close_link(link, cut=count)


def _zero_stats() -> ProxyStats:
    return ProxyStats(accepted=0, refused=0, open=0, peak_open=0, cut=0, bytes_dropped=0)


# Proxies left open at exit (or in a forked child, which must not touch its parent's).
_live_lock = threading.Lock()
_live: dict[int, FaultProxy] = {}


def _close_live_proxies() -> None:
    with _live_lock:
        proxies = list(_live.values())
    for proxy in proxies:
        with contextlib.suppress(Exception):
            proxy.close(timeout=2.0)


def _forget_parents_proxies() -> None:
    _live.clear()


atexit.register(_close_live_proxies)
os.register_at_fork(after_in_child=_forget_parents_proxies)
