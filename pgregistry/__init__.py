"""pgregistry: a declarative registry of hardened PostgreSQL connection pools for PyGreSQL.

``PooledPg`` and ``SteadyPgConnection`` keep the classic PooledPg/SteadyPg API (``pg.DB``
methods, same constructor order) and fix its known faults; see README.md.
"""

from __future__ import annotations

import logging

from .errors import (
    ConfigError,
    ConnectionLostError,
    InvalidConnectionError,
    InvalidTenantError,
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
from .registry import Registry, ReloadResult
from .registry import default_registry as registry
from .steady import SteadyPgConnection

__version__ = "0.1.0"

__all__ = [
    "ConfigError",
    "ConnectionLostError",
    "InvalidConnectionError",
    "InvalidTenantError",
    "Maintenance",
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
    "get",
    "registry",
]


def get(name: str | None = None) -> PooledPg:
    """The pool ``name`` of the process-wide registry (configured from ``PGPOOLS_CONFIG`` or
    ``./pgpools.toml`` and the environment on first use)."""
    return registry.get(name)


def connection(name: str | None = None) -> PooledPgConnection:
    """A connection from the pool ``name`` of the process-wide registry."""
    return registry.connection(name)


# Libraries log; applications decide where the records go.
logging.getLogger("pgregistry").addHandler(logging.NullHandler())
