"""A streaming standby of a throwaway primary, for failover tests.

:class:`TemporaryStandby` is a :class:`~pgregistry.testing.TemporaryCluster` whose data directory
is a base backup of a running primary (``pg_basebackup -R -c fast -X stream``, as the server's OS
user), so it starts as a hot standby streaming from it, on a free port of its own::

    from pgregistry.testing import primary_and_standby

    with primary_and_standby() as (primary, standby):
        primary.execute("CREATE TABLE t (n int)")
        standby.wait_caught_up()        # replayed what the primary had written
        primary.fence()                 # the old primary turns read-only (SQLSTATE 25006)
        standby.promote()               # the standby becomes a writable primary
        target = multihost_conninfo([primary, standby], target_session_attrs="read-write")

The primary needs nothing special: every :class:`TemporaryCluster` has ``wal_level = replica``,
``max_wal_senders = 10`` and trusts replication connections from 127.0.0.1. Every wait is bounded.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from .cluster import ClusterError, TemporaryCluster

__all__ = ["TemporaryStandby", "multihost_conninfo", "primary_and_standby"]


class TemporaryStandby(TemporaryCluster):
    """A hot standby streaming from ``primary``, on its own free port and directory.

    The primary must be running at the first :meth:`start` (which takes the base backup). The
    standby has the primary's ``max_connections``, database and user (roles and databases come
    with the backup). :meth:`start` waits until WAL streams from the primary.

    Parameters:
        primary: the running primary to copy and follow.
        settings: more ``postgresql.conf`` settings for the standby.
        stream_timeout: seconds :meth:`start` waits for streaming (default 30).
        other keywords: as for :class:`TemporaryCluster` (timeouts, ``parent_dir``, ``run_as``).
    """

    def __init__(
        self,
        primary: TemporaryCluster,
        *,
        settings: Mapping[str, str | int | float | bool] | None = None,
        stream_timeout: float = 30.0,
        **options: Any,
    ) -> None:
        super().__init__(
            max_connections=primary.max_connections,
            dbname=primary.dbname,
            user=primary.user,
            settings=settings,
            bindir=primary._bindir,
            **options,
        )
        self.primary = primary
        self.stream_timeout = stream_timeout

    def __repr__(self) -> str:
        where = f"port {self._port.port}" if self._port is not None else "not started"
        return f"<TemporaryStandby {where} of {self.primary!r}>"

    def start(self) -> None:
        """Start the standby (taking the base backup first if needed) and wait for streaming.

        A promoted standby starts as a primary: then there is nothing to wait for.
        """
        super().start()
        if self.is_in_recovery():
            self.wait_streaming(self.stream_timeout)

    def wait_streaming(self, timeout: float = 30.0) -> None:
        """Wait at most ``timeout`` seconds until the WAL receiver streams from the primary."""
        deadline = time.monotonic() + timeout
        status: object = None
        while True:
            rows = self.execute(
                "SELECT status FROM pg_stat_wal_receiver", dbname="postgres", user="postgres"
            )
            status = rows[0][0] if rows else None
            if status == "streaming":
                return
            if time.monotonic() >= deadline:
                raise ClusterError(
                    f"standby on port {self.port} not streaming from port {self.primary.port}"
                    f" after {timeout:.1f} s (WAL receiver: {status});"
                    f" log {self.log_file}:\n{self._log_tail()}"
                )
            time.sleep(0.05)

    def wait_caught_up(self, timeout: float = 30.0) -> None:
        """Wait at most ``timeout`` seconds until the standby replayed all the primary wrote.

        "All" is the primary's ``pg_current_wal_insert_lsn()`` when this is called (its
        commits are asynchronous: WAL reaches the disk and the standby within
        ``wal_writer_delay``): a write committed on the primary before the call is visible on the
        standby after it.
        """
        target = self.primary.execute(
            "SELECT pg_current_wal_insert_lsn()::text", dbname="postgres", user="postgres"
        )[0][0]
        deadline = time.monotonic() + timeout
        while True:
            replayed = self.execute(
                "SELECT pg_last_wal_replay_lsn()::text,"
                " coalesce(pg_last_wal_replay_lsn() >= $1::pg_lsn, false)",
                (target,),
                dbname="postgres",
                user="postgres",
            )[0]
            if replayed[1]:
                return
            if time.monotonic() >= deadline:
                raise ClusterError(
                    f"standby on port {self.port} replayed up to {replayed[0]}, not the"
                    f" primary's {target}, after {timeout:.1f} s"
                )
            time.sleep(0.02)

    def lag_bytes(self) -> int:
        """How many bytes of WAL the standby has yet to replay (0 when caught up)."""
        target = self.primary.execute(
            "SELECT pg_current_wal_insert_lsn()::text", dbname="postgres", user="postgres"
        )[0][0]
        rows = self.execute(
            "SELECT greatest(coalesce(pg_wal_lsn_diff($1::pg_lsn, pg_last_wal_replay_lsn()),"
            " 0), 0)::bigint",
            (target,),
            dbname="postgres",
            user="postgres",
        )
        return int(rows[0][0])

    def promote(self, timeout: float = 30.0) -> None:
        """Promote the standby to a primary (``pg_ctl promote``) and wait until it takes writes.

        Raises :class:`ClusterError` when it is still in recovery after ``timeout`` seconds.
        """
        with self._lock:
            result = self._pg_ctl("promote", "-w", "-t", str(int(timeout)), timeout=timeout + 10)
            deadline = time.monotonic() + timeout
            while self.is_in_recovery():
                if time.monotonic() >= deadline:
                    raise ClusterError(self._failure("still in recovery after promote", result))
                time.sleep(0.02)

    def _init_data_dir(self, bindir: Path) -> None:
        """Take a base backup of the primary that starts as a standby (``-R``)."""
        result = self._run(
            [
                str(bindir / "pg_basebackup"), "-h", self.primary.host,
                "-p", str(self.primary.port), "-U", "postgres", "-D", str(self.data_dir),
                "-R", "-c", "fast", "-X", "stream", "--no-sync",
            ],
            timeout=120,
        )  # fmt: skip
        if result is None or result.returncode != 0:
            raise ClusterError(self._failure("pg_basebackup failed", result))
        # The backup brings the primary's roles and databases: nothing to create.
        self._bootstrapped = True


def multihost_conninfo(clusters: Sequence[TemporaryCluster], **extra: str | int) -> str:
    """A libpq conninfo naming every cluster, in order: ``host=h1,h2 port=p1,p2 ...``.

    ``extra`` keywords are appended (``target_session_attrs="read-write"``,
    ``connect_timeout=2``).
    """
    if not clusters:
        raise ValueError("multihost_conninfo needs at least one cluster")
    first = clusters[0]
    parts = [
        "host=" + ",".join(c.host for c in clusters),
        "port=" + ",".join(str(c.port) for c in clusters),
        f"dbname={first.dbname}",
        f"user={first.user}",
    ]
    parts.extend(f"{key}={value}" for key, value in extra.items())
    return " ".join(parts)


@contextlib.contextmanager
def primary_and_standby(
    *,
    standby_settings: Mapping[str, str | int | float | bool] | None = None,
    **primary_options: Any,
) -> Iterator[tuple[TemporaryCluster, TemporaryStandby]]:
    """A started primary (``TemporaryCluster(**primary_options)``) and its streaming standby.

    Both are stopped and removed on leaving the block, the standby first.
    """
    with TemporaryCluster(**primary_options) as primary:
        standby = TemporaryStandby(
            primary,
            settings=standby_settings,
            start_timeout=primary.start_timeout,
            stop_timeout=primary.stop_timeout,
            parent_dir=primary._parent_dir,
            run_as=primary._run_as_name,
        )
        with standby:
            yield primary, standby
