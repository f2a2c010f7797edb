"""One small adapter per pool library, all with the same interface, so every measure runs the
same loop over each of them.

``open(n)`` opens ``n`` connections (a pool of exactly ``n``: minimum = maximum, blocking when
all are in use); ``checkout()``/``checkin(c)`` borrow and return one; ``query(c, sql)`` runs a
statement and fetches its rows; ``close()`` closes everything. Every library runs with
autocommit semantics (PyGreSQL's classic ``pg.DB`` has no implicit transaction, so psycopg and
psycopg2 get ``autocommit`` too): otherwise psycopg's pools would pay a ``ROLLBACK`` round trip
on every return and the comparison would measure that instead of the pool.

Baselines use the same interface: ``QueueBaseline`` (a bare ``queue.Queue`` of open
connections), ``RawRoundRobin`` (no pool at all, connections taken in turn) and
``ConnectPerRequest`` (a new connection for every checkout).
"""

from __future__ import annotations

import functools
import itertools
import logging
import operator
import queue
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:  # imported lazily: the callgrind children start faster without it
    from pgregistry.testing import TemporaryCluster as Cluster

__all__ = [
    "DRIVERS",
    "POOL_PEERS",
    "ConnectPerRequest",
    "DBUtilsPeer",
    "Peer",
    "PgRegistryPeer",
    "PsycopgPoolPeer",
    "QueueBaseline",
    "RawRoundRobin",
    "SQLAlchemyPeer",
    "pgregistry_available",
    "versions",
]

POOL_TIMEOUT = 30.0

# Every adapter binds the library's own callables as checkout/checkin where it can, and uses
# this C-level caller for "return by closing", so no adapter pays an extra Python frame that
# another does not.
_close = operator.methodcaller("close")


def _nothing(c: Any) -> None:
    pass


# --- drivers: connect and run one statement ------------------------------------------------


def _pg_connect(server: Cluster) -> Any:
    import pg

    return pg.DB(**server.connect_kwargs())


def _pg_query(c: Any, sql: str) -> Any:
    return c.query(sql).getresult()


def _psycopg_connect(server: Cluster) -> Any:
    import psycopg

    return psycopg.connect(server.conninfo, autocommit=True)


def _psycopg_query(c: Any, sql: str) -> Any:
    return c.execute(sql).fetchall()


def _psycopg2_connect(server: Cluster) -> Any:
    import psycopg2

    conn = psycopg2.connect(server.conninfo)
    conn.autocommit = True
    return conn


def _psycopg2_query(c: Any, sql: str) -> Any:
    cur = c.cursor()
    try:
        cur.execute(sql)
        return cur.fetchall()
    finally:
        cur.close()


DRIVERS: dict[str, tuple[Callable[[Cluster], Any], Callable[[Any, str], Any]]] = {
    "pg": (_pg_connect, _pg_query),
    "psycopg": (_psycopg_connect, _psycopg_query),
    "psycopg2": (_psycopg2_connect, _psycopg2_query),
}


# --- the common interface -------------------------------------------------------------------


def _not_open(*args: Any) -> Any:
    raise RuntimeError("open() the peer first")


class Peer:
    """Base of every adapter; ``label`` is what the results table shows.

    ``checkout`` and ``checkin`` are attributes that ``open()`` binds to the library's own
    callables where it can, so the measured loop calls the library directly.
    """

    name: ClassVar[str] = "peer"
    default_driver: ClassVar[str] = "pg"

    def __init__(
        self, server: Cluster, *, label: str | None = None, driver: str | None = None
    ) -> None:
        self.server = server
        self.label = label or self.name
        self.driver = driver or self.default_driver
        self.query: Callable[[Any, str], Any] = DRIVERS[self.driver][1]
        self.checkout: Callable[[], Any] = _not_open
        self.checkin: Callable[[Any], Any] = _not_open

    def open(self, n_connections: int) -> None:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def _connect(self) -> Any:
        return DRIVERS[self.driver][0](self.server)

    def _prefill(self, n_connections: int) -> None:
        """Borrow ``n`` at once and give them back, so a lazy pool has them all open."""
        held = [self.checkout() for _ in range(n_connections)]
        for c in held:
            self.checkin(c)


# --- baselines -------------------------------------------------------------------------------


class _OpenConnections(Peer):
    """A baseline holding ``n`` connections opened up front, all closed by ``close()``."""

    def __init__(self, server: Cluster, *, driver: str = "pg", label: str | None = None) -> None:
        super().__init__(server, label=label, driver=driver)
        self._all: list[Any] = []

    def open(self, n_connections: int) -> None:
        self._all = [self._connect() for _ in range(n_connections)]

    def close(self) -> None:
        for c in self._all:
            c.close()
        self._all = []


class QueueBaseline(_OpenConnections):
    """A bare ``queue.Queue`` of already open connections: the least a thread-safe pool does."""

    name = "queue.Queue (baseline)"

    def __init__(self, server: Cluster, *, driver: str = "pg", label: str | None = None) -> None:
        super().__init__(server, label=label, driver=driver)
        self._queue: queue.Queue[Any] = queue.Queue()

    def open(self, n_connections: int) -> None:
        super().open(n_connections)
        for c in self._all:
            self._queue.put(c)
        self.checkout = self._queue.get
        self.checkin = self._queue.put


class RawRoundRobin(_OpenConnections):
    """No pool: open connections taken in turn, nothing to return. Not thread-safe."""

    name = "raw connections"

    def __init__(self, server: Cluster, *, driver: str = "pg", label: str | None = None) -> None:
        label = label or f"raw {driver} connections (baseline)"
        super().__init__(server, label=label, driver=driver)

    def open(self, n_connections: int) -> None:
        super().open(n_connections)
        self.checkout = itertools.cycle(self._all).__next__
        self.checkin = _nothing


class ConnectPerRequest(Peer):
    """A new connection for every checkout, closed at checkin: what a pool saves."""

    name = "connect per request"

    def __init__(self, server: Cluster, *, driver: str = "pg", label: str | None = None) -> None:
        label = label or f"connect per request ({driver})"
        super().__init__(server, label=label, driver=driver)
        self.checkin = _close

    def open(self, n_connections: int) -> None:
        self.checkout = functools.partial(DRIVERS[self.driver][0], self.server)

    def close(self) -> None:
        pass


# --- pools -----------------------------------------------------------------------------------


def pgregistry_available() -> str | None:
    """None when ``from pgregistry import PooledPg`` works, else why not."""
    try:
        from pgregistry import PooledPg  # noqa: F401
    except Exception as exc:  # not written yet, or broken: the measures say so
        return f"{type(exc).__name__}: {exc}"
    return None


class _PooledPgPeer(Peer):
    """A pool with DBUtils' ``PooledPg`` interface: ``connection()`` checks out, the
    connection's ``close()`` gives it back. ``options`` go to the pool's constructor."""

    def __init__(self, server: Cluster, *, label: str | None = None, **options: Any) -> None:
        super().__init__(server, label=label)
        self.options = options
        self.pool: Any = None

    def _pool_class(self) -> Any:
        raise NotImplementedError

    def open(self, n_connections: int) -> None:
        self.pool = self._pool_class()(
            n_connections,
            n_connections,
            n_connections,
            True,
            **self.options,
            **self.server.connect_kwargs(),
        )
        self.checkout = self.pool.connection
        self.checkin = _close

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close()
            self.pool = None


class PgRegistryPeer(_PooledPgPeer):
    """``pgregistry.PooledPg`` with its defaults (``ping="idle"``, ``reset`` rollback-if-needed)."""

    name = "pgregistry PooledPg"

    def __init__(self, server: Cluster, *, label: str | None = None, **options: Any) -> None:
        super().__init__(server, label=label, timeout=POOL_TIMEOUT, **options)

    def _pool_class(self) -> Any:
        from pgregistry import PooledPg

        return PooledPg


class _NoOpObserver:
    """A PoolObserver that does nothing: what observing costs the pool itself."""

    def on_connect(self, seconds: float) -> None:
        pass

    def on_checkout(self, waited: float) -> None:
        pass

    def on_checkin(self, used: float) -> None:
        pass

    def on_timeout(self) -> None:
        pass


class PgRegistryVariant(PgRegistryPeer):
    """pgregistry with one thing changed from its defaults: any PooledPg option, ``maxcached``
    below the connection count, an observer attached, or DEBUG logging of its logger on (to a
    NullHandler, so what is measured is the pool's logging, not a handler's I/O)."""

    def __init__(
        self,
        server: Cluster,
        *,
        label: str,
        maxcached_below: bool = False,
        observe: bool = False,
        debug_log: bool = False,
        **options: Any,
    ) -> None:
        super().__init__(server, label=label, **options)
        self.maxcached_below = maxcached_below
        self.observe = observe
        self.debug_log = debug_log
        self._logger: logging.Logger | None = None

    def open(self, n_connections: int) -> None:
        from pgregistry import PooledPg

        options = dict(self.options)
        if self.debug_log:
            options["name"] = "bench_debug_log"
            self._logger = logging.getLogger("pgregistry.pool.bench_debug_log")
            self._logger.setLevel(logging.DEBUG)
            self._logger.addHandler(logging.NullHandler())
            self._logger.propagate = False
        # maxcached below the connection count (and mincached with it: a mincached above
        # maxcached would raise maxcached to it).
        cached = max(1, n_connections - 1) if self.maxcached_below else n_connections
        self.pool = PooledPg(
            cached,
            cached,
            n_connections,
            True,
            **options,
            **self.server.connect_kwargs(),
        )
        if self.observe:
            self.pool.observe(_NoOpObserver())
        self.checkout = self.pool.connection
        self.checkin = _close

    def close(self) -> None:
        super().close()
        if self._logger is not None:
            self._logger.setLevel(logging.NOTSET)
            self._logger.handlers.clear()
            self._logger.propagate = True
            self._logger = None


class DBUtilsPeer(_PooledPgPeer):
    """DBUtils' ``PooledPg``, the original this project grew from."""

    name = "DBUtils PooledPg"

    def _pool_class(self) -> Any:
        from dbutils.pooled_pg import PooledPg

        return PooledPg


class PsycopgPoolPeer(Peer):
    """psycopg 3's ``psycopg_pool.ConnectionPool`` (``getconn``/``putconn``)."""

    name = "psycopg_pool"
    default_driver = "psycopg"

    def __init__(self, server: Cluster, *, label: str | None = None, check: bool = False) -> None:
        super().__init__(server, label=label)
        self.check = check
        self.pool: Any = None

    def open(self, n_connections: int) -> None:
        from psycopg_pool import ConnectionPool

        self.pool = ConnectionPool(
            self.server.conninfo,
            min_size=n_connections,
            max_size=n_connections,
            kwargs={"autocommit": True},
            timeout=POOL_TIMEOUT,
            check=ConnectionPool.check_connection if self.check else None,
            open=True,
        )
        self.pool.wait(timeout=30.0)
        self.checkout = self.pool.getconn
        self.checkin = self.pool.putconn

    def close(self) -> None:
        if self.pool is not None:
            self.pool.close(timeout=5.0)
            self.pool = None


class SQLAlchemyPeer(Peer):
    """SQLAlchemy's ``QueuePool`` through ``engine.raw_connection()`` (psycopg2 driver)."""

    name = "SQLAlchemy QueuePool"
    default_driver = "psycopg2"

    def __init__(
        self, server: Cluster, *, label: str | None = None, pre_ping: bool = False
    ) -> None:
        super().__init__(server, label=label)
        self.pre_ping = pre_ping
        self.engine: Any = None

    def open(self, n_connections: int) -> None:
        import sqlalchemy

        self.engine = sqlalchemy.create_engine(
            self.server.dsn.replace("postgresql://", "postgresql+psycopg2://", 1),
            pool_size=n_connections,
            max_overflow=0,
            pool_timeout=POOL_TIMEOUT,
            pool_pre_ping=self.pre_ping,
            isolation_level="AUTOCOMMIT",
        )
        self.checkout = self.engine.raw_connection
        self.checkin = _close
        self._prefill(n_connections)

    def close(self) -> None:
        if self.engine is not None:
            self.engine.dispose()
            self.engine = None


#: The pools compared in every measure, pgregistry first.
POOL_PEERS: list[type[Peer]] = [PgRegistryPeer, DBUtilsPeer, PsycopgPoolPeer, SQLAlchemyPeer]


def versions() -> dict[str, str]:
    """Installed versions of every library measured."""
    from importlib import metadata

    out: dict[str, str] = {}
    for dist in (
        "pgregistry",
        "PyGreSQL",
        "DBUtils",
        "psycopg",
        "psycopg-binary",
        "psycopg_pool",
        "SQLAlchemy",
        "psycopg2-binary",
    ):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out
