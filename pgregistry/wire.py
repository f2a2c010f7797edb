"""A libpq connection's socket, looked at directly: has the server ended an idle connection
(no round trip), has it let a closed one go, a statement with a deadline for its answer, and
cutting a forked child off from its parent's sockets.
"""

from __future__ import annotations

import contextlib
import os
import select
import socket
import time
from typing import Any

__all__ = ["WATCH", "ask", "cut_off", "ended_on_server", "wait_for_eof"]


#: What a poller watches on an idle connection: data, and the peer closing its end.
WATCH = select.POLLIN | select.POLLRDHUP
_CLOSED_BY_PEER = select.POLLRDHUP | select.POLLHUP | select.POLLERR


def ended_on_server(cnx: Any, events: int = 0) -> bool:
    """An idle libpq connection ``cnx`` has something to read (``events``, from a poller
    watching :data:`WATCH`): is it the end?

    An idle connection receives nothing but notices, notifications and parameter
    changes, unless the server is ending it. A peer that closed its end (a crash, an
    immediate shutdown: a WARNING notice, then end-of-file) is the end whatever is pending.
    Else a peek (nothing is consumed) at the first byte tells: a FATAL ErrorResponse ('E')
    or end-of-file is the end; anything else is a live connection. No round trip.
    """
    if events & _CLOSED_BY_PEER:
        _let_libpq_read_the_end(cnx)
        return True
    try:
        peer = socket.socket(fileno=cnx.socket)
    except (OSError, TypeError, ValueError):
        return cnx is None or not cnx.status
    try:
        first = peer.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT)
    except BlockingIOError:
        return False
    except OSError:
        return True
    finally:
        peer.detach()  # the descriptor stays libpq's
    if first not in (b"", b"E"):
        return False  # a notice, notification or parameter change: the connection lives
    _let_libpq_read_the_end(cnx)
    return True


def _let_libpq_read_the_end(cnx: Any) -> None:
    # libpq reads the end itself, so it marks the connection bad: later calls and is_lost()
    # see the loss, and it is counted once. (What else was pending dies with the connection.)
    with contextlib.suppress(Exception):
        cnx.getnotify()


def wait_for_eof(fd: int, timeout: float) -> None:
    """Read and drop what ``fd`` still receives until end-of-file or ``timeout``; close it."""
    deadline = time.monotonic() + timeout
    poller = select.poll()  # not select.select: that fails for descriptors above 1023
    poller.register(fd, select.POLLIN)
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return
            if not poller.poll(remaining * 1000) or not os.read(fd, 65536):
                return
    except OSError:
        return
    finally:
        os.close(fd)


def ask(cnx: Any, poller: Any, sql: str, timeout: float) -> list[Any] | None:
    """Run ``sql`` on ``cnx``, waiting at most ``timeout`` seconds for the answer to begin.

    Sent without waiting (``send_query``), the answer is awaited on the socket (``poller``,
    registered for reading). Returns what each statement of ``sql`` gave (rows, or PyGreSQL's
    status text), or None when no answer came in time: the connection must then be taken for
    lost. An SQL error is raised once the whole answer has been read.
    """
    query = cnx.send_query(sql)
    if not poller.poll(timeout * 1000):
        return None
    results: list[Any] = []
    error: Exception | None = None
    while True:
        try:
            result = query.getresult()
        except Exception as exc:  # keep reading to the end of the answer, then raise
            if error is not None or not cnx.status:
                raise
            error = exc
            continue
        if result is None:
            break
        results.append(result)
    if error is not None:
        raise error
    return results


def cut_off(connections: list[Any]) -> None:
    """Point each libpq connection's socket at one whose peer is closed (after ``fork()``).

    The child must never write to a socket it shares with the parent: even closing it would
    send the server a Terminate message and end the parent's session. With the descriptor
    pointed at a dead socket, whatever the child does with the old connection stays in the
    child: writes fail, reads see end-of-file, and libpq marks the connection bad, as after a
    killed backend. (/dev/null would not do: a read from it fails without libpq marking the
    connection bad.)
    """
    if not connections:
        return
    try:
        dead, peer = socket.socketpair()
    except OSError:
        return
    peer.close()
    try:
        for cnx in connections:
            try:
                fd = cnx.socket
                if isinstance(fd, int) and fd >= 0:
                    os.dup2(dead.fileno(), fd)
            except Exception:
                pass
    finally:
        dead.close()
