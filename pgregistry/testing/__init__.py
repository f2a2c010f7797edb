"""Throwaway servers and network faults for tests, the demo and the benchmarks.

Everything here starts real processes on 127.0.0.1 free ports and never outlives its Python
process (context managers, fixture teardown and an :mod:`atexit` handler stop them):

* :class:`TemporaryCluster` (:mod:`.cluster`): a private PostgreSQL server (``initdb``/``pg_ctl``)
  that tests may stop, restart, kill and fence; :class:`BackendKiller`, :func:`server_answers`,
  :func:`find_pg_bindir`.
* :class:`TemporaryStandby`, :func:`primary_and_standby` (:mod:`.standby`): a streaming standby
  of a temporary primary (``pg_basebackup -R``), promotable.
* :class:`FaultProxy` (:mod:`.proxy`): a TCP proxy in front of a server that cuts, stalls,
  drops replies, slows connects or refuses, switchable at run time.
* :class:`TemporaryPgBouncer` (:mod:`.pgbouncer`): Debian's PgBouncer in front of a cluster, in
  session or transaction pool mode.
"""

from __future__ import annotations

from .cluster import (
    BINDIR_ENV,
    BackendKiller,
    ClusterError,
    StopMode,
    TemporaryCluster,
    find_pg_bindir,
    server_answers,
)
from .pgbouncer import PgBouncerError, TemporaryPgBouncer, find_pgbouncer
from .proxy import FaultProxy, ProxyStats
from .standby import TemporaryStandby, multihost_conninfo, primary_and_standby

__all__ = [
    "BINDIR_ENV",
    "BackendKiller",
    "ClusterError",
    "FaultProxy",
    "PgBouncerError",
    "ProxyStats",
    "StopMode",
    "TemporaryCluster",
    "TemporaryPgBouncer",
    "TemporaryStandby",
    "find_pg_bindir",
    "find_pgbouncer",
    "multihost_conninfo",
    "primary_and_standby",
    "server_answers",
]
