"""Free TCP ports and process checks shared by the throwaway servers of :mod:`pgregistry.testing`.

A port is reserved by an exclusive ``flock`` on a per-port file in a machine-wide directory, so
that parallel test runs (and the cluster, proxy and PgBouncer of one run) never pick the same one.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import pwd
import socket
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Final

#: Lock files (one per port) shared by every process on the machine, so that parallel test runs
#: that pick the same free port do not both try to use it.
_PORT_LOCK_DIR: Final = Path(tempfile.gettempdir()) / "pgregistry-ports"


class PortError(RuntimeError):
    """No free TCP port could be reserved."""


class PortReservation:
    """A free TCP port, held by an exclusive ``flock`` on a per-port file while its server lives.

    Another process using this module skips a locked port; anything else grabbing the port between
    our check and the server's bind is handled by the caller retrying on "address in use".
    """

    def __init__(self, host: str, avoid: Iterable[int] = ()) -> None:
        avoided = set(avoid)
        for _ in range(100):
            port = free_port(host)
            if port in avoided:
                continue
            fd = lock_port(port)
            if fd is None:
                continue
            if port_is_free(host, port):
                self.port = port
                self._fd: int | None = fd if fd >= 0 else None
                return
            unlock(fd)
        raise PortError(f"no free TCP port found on {host} after 100 attempts")

    def release(self) -> None:
        if self._fd is not None:
            unlock(self._fd)
            self._fd = None


def free_port(host: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
        return port


def port_is_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        # The server sets SO_REUSEADDR too: a port in TIME_WAIT is free for it.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def lock_port(port: int) -> int | None:
    """Lock the port's file: its fd, None if another process holds it, -1 if locks are unusable."""
    try:
        try:
            os.mkdir(_PORT_LOCK_DIR)
            # Shared by every user of the machine, like /tmp itself.
            os.chmod(_PORT_LOCK_DIR, 0o1777)
        except FileExistsError:
            pass
        path = _PORT_LOCK_DIR / f"{port}.lock"
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
            with contextlib.suppress(OSError):
                os.fchmod(fd, 0o666)  # despite the umask: other users lock it too
        except PermissionError:
            fd = os.open(path, os.O_RDONLY)  # another user's file: a shared fd locks as well
    except OSError:
        return -1  # no lock directory: rely on retry-on-conflict alone
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        os.close(fd)
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return None
        return -1
    return fd


def unlock(fd: int) -> None:
    if fd >= 0:
        with contextlib.suppress(OSError):
            os.close(fd)  # closing the only fd releases the flock


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    try:
        # A zombie answers kill(0) but is gone; containers without an init may keep them around.
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
        return stat.rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return True


def run_as_ids(name: str, what: str) -> tuple[int, int]:
    """(uid, gid) of OS user ``name``, which runs ``what`` because it refuses to run as root."""
    try:
        entry = pwd.getpwnam(name)
    except KeyError:
        raise RuntimeError(
            f"running as root: {what} refuse to run as root and there is no {name!r} system"
            " user to run them as; install the server (apt-get install postgresql creates the"
            " postgres user) or pass run_as="
        ) from None
    return entry.pw_uid, entry.pw_gid
