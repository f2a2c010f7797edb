"""pgregistry: a declarative registry of hardened PostgreSQL connection pools for PyGreSQL.

``PooledPg`` and ``SteadyPgConnection`` keep the classic PooledPg/SteadyPg API (``pg.DB``
methods, same constructor order) and fix its known faults; see README.md.
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
    PoolTimeoutError,
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
    "Registry",
    "ReloadResult",
    "ResetPolicy",
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
