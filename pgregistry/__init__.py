"""pgregistry: a declarative registry of hardened PostgreSQL connection pools for PyGreSQL.

Start from the registry: declare pools in ``pgpools.toml`` (or ``PGPOOLS__...`` variables),
then ask for a connection by pool name::

    import pgregistry

    with pgregistry.connection("billing") as db:      # a pooled, steady pg.DB
        db.query("SELECT 1")
    with pgregistry.transaction("billing") as db:     # begin, commit, or roll back on error
        db.insert("invoice", customer=42)

``pgregistry.get(name, tenant=None)`` is the pool itself (built on first use, once);
``pgregistry.default_registry`` is the process-wide :class:`Registry` behind these, which reads
``$PGPOOLS_CONFIG`` or ``./pgpools.toml`` lazily and closes at exit; build your own
``Registry(settings)`` or ``Registry.from_config(path)`` for more control.

Underneath, ``PooledPg`` and ``SteadyPgConnection`` keep the classic PooledPg/SteadyPg API
(``pg.DB`` methods, same constructor order) and fix its known faults. Errors derive from
``PgRegistryError`` (and keep PyGreSQL's ``pg.Error`` bases where they describe the server).
See README.md.
"""

from __future__ import annotations

import logging

from .errors import (
    AuthenticationError,
    ConfigError,
    ConnectionLostError,
    InvalidConnectionError,
    InvalidTenantError,
    PgRegistryError,
    PoolClosedError,
    PooledPgError,
    PoolerUnsupportedError,
    PoolTimeoutError,
    ServerFullError,
    ServerUnavailableError,
    TooManyConnectionsError,
    UnknownPoolError,
)
from .maintenance import Maintenance
from .policies import PingPolicy, ResetPolicy
from .pool import PooledPg, PooledPgConnection, PoolStats
from .registry import Registry, ReloadResult, connection, default_registry, get, transaction
from .steady import SteadyPgConnection

__version__ = "0.1.0"

__all__ = [
    "AuthenticationError",
    "ConfigError",
    "ConnectionLostError",
    "InvalidConnectionError",
    "InvalidTenantError",
    "Maintenance",
    "PgRegistryError",
    "PingPolicy",
    "PoolClosedError",
    "PoolStats",
    "PoolTimeoutError",
    "PooledPg",
    "PooledPgConnection",
    "PooledPgError",
    "PoolerUnsupportedError",
    "Registry",
    "ReloadResult",
    "ResetPolicy",
    "ServerFullError",
    "ServerUnavailableError",
    "SteadyPgConnection",
    "TooManyConnectionsError",
    "UnknownPoolError",
    "connection",
    "default_registry",
    "get",
    "registry",
    "transaction",
]

# ``pgregistry.registry`` is the module (its functions get/connection/transaction/stats/
# reload/close use the process-wide registry); the instance is ``pgregistry.default_registry``.
from . import registry

# Libraries log; applications decide where the records go.
logging.getLogger("pgregistry").addHandler(logging.NullHandler())
