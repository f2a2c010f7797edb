"""``ServerSettings`` (a ``[servers.NAME]`` budget) and ``Settings``, the whole configuration."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

from pydantic import BeforeValidator, Field, model_validator

from ..options import KEY_ALIASES, default_pool_name
from .fields import _doc, _fail, _Frozen, _no_bool, _port, _Text
from .pool import PoolSettings
from .tenant import TenantSettings

__all__ = ["ServerSettings", "Settings", "server_of"]


class ServerSettings(_Frozen):
    """A ``[servers.NAME]`` budget: at most ``maxconnections`` for all its pools together.

    ``maxconnections`` is PooledPg's spelling, used in pool tables too; ``max_connections``
    (PostgreSQL's) is accepted as an alias and kept as a read-only attribute.
    """

    name: str
    host: _Text | None = _doc("Host of the server; pools with this host and port belong to it.")
    port: Annotated[int | None, BeforeValidator(_port)] = _doc("Port of the server.", None)
    maxconnections: Annotated[int, BeforeValidator(_no_bool), Field(ge=1)] = Field(
        description="Most connections all pools on this server may hold together "
        "(alias max_connections)."
    )
    processes: Annotated[int, BeforeValidator(_no_bool), Field(ge=1)] = Field(
        default=1,
        description="Processes sharing the budget, each with its own pools (gunicorn workers "
        "on every host): each process gets maxconnections // processes, at least 1. Unset: "
        "$PGPOOLS_PROCESSES, else 1.",
    )

    @model_validator(mode="before")
    @classmethod
    def _accept_alias(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and "max_connections" in data:
            data = dict(data)
            canonical = KEY_ALIASES["max_connections"]
            if canonical in data:
                raise _fail("alias", f"max_connections and {canonical} are both set; keep one")
            data[canonical] = data.pop("max_connections")
        return data

    @property
    def max_connections(self) -> int:
        """The budget under PostgreSQL's spelling (same as :attr:`maxconnections`)."""
        return self.maxconnections

    @property
    def per_process(self) -> int:
        """This process's share of the budget: ``maxconnections // processes``, at least 1.

        What the registry's :class:`~pgregistry.budget.ServerBudget` enforces. With more
        processes than connections, every process still gets one, so together they may exceed
        ``maxconnections`` (``pgregistry check`` says so).
        """
        return max(1, self.maxconnections // self.processes)

    def describe(self) -> dict[str, Any]:
        return {**self.model_dump(), "per_process": self.per_process}


class Settings(_Frozen):
    """The whole configuration: enabled pools and tenant templates with ``[defaults]`` merged
    in, and the server budgets.
    """

    pools: dict[str, PoolSettings] = Field(default_factory=dict)
    default: str | None = Field(
        default=None,
        description="The pool used when none is named: the 'default' key, else a pool named "
        "'default', else None.",
    )
    source: str = Field(default="", description="Where the settings came from, for messages.")
    disabled: tuple[str, ...] = Field(default=(), description="Pools switched off (enabled=false).")
    tenants: dict[str, TenantSettings] = Field(default_factory=dict)
    servers: dict[str, ServerSettings] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        for key, pool in self.pools.items():
            if key != pool.name:
                raise _fail("pool_key", f"pools.{key}: holds the settings of pool {pool.name!r}")
        if self.default is not None and self.default not in self.pools:
            raise _fail("default", f"default: pool {self.default!r} is not configured")
        return self

    def default_pool_name(self) -> str | None:
        """The pool used when no name is given (:func:`pgregistry.options.default_pool_name`):
        the ``default`` key, else a pool named ``default``, else None."""
        return default_pool_name(self.default, self.pools)

    def pool_names(self) -> list[str]:
        """Names of the enabled pools, in the order they were declared."""
        return list(self.pools)

    def describe(self) -> dict[str, Any]:
        """A JSON-able view of everything, secrets masked (for ``pgregistry check``)."""
        return {
            "source": self.source,
            "default": self.default,
            "disabled": list(self.disabled),
            "pools": {name: pool.describe() for name, pool in self.pools.items()},
            "tenants": {name: t.describe() for name, t in self.tenants.items()},
            "servers": {name: server.describe() for name, server in self.servers.items()},
        }

    def server_of(self, pool: PoolSettings) -> str | None:
        """The budget ``pool`` counts against: its ``server`` key, else the server whose host
        and port (default 5432) are the pool's."""
        return server_of(pool, self.servers)


def server_of(pool: PoolSettings, servers: Mapping[str, ServerSettings]) -> str | None:
    if pool.server is not None:
        return pool.server
    params = pool.libpq_params()
    host, port = params.get("host"), params.get("port") or "5432"
    for name, server in servers.items():
        if server.host is not None and server.host == host and str(server.port or 5432) == port:
            return name
    return None
