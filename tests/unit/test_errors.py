"""Every public pgregistry exception has one root and keeps its PyGreSQL / builtin bases."""

from __future__ import annotations

import inspect

import pg
import pytest

import pgregistry
import pgregistry.errors

_PUBLIC = [
    obj
    for name in pgregistry.errors.__all__
    if inspect.isclass(obj := getattr(pgregistry.errors, name)) and issubclass(obj, BaseException)
]

# Bases that code written against PyGreSQL or the builtins relies on.
_KEPT_BASES: dict[str, tuple[type, ...]] = {
    "ConfigError": (ValueError,),
    "UnknownPoolError": (KeyError, pgregistry.PooledPgError),
    "InvalidTenantError": (ValueError, pgregistry.PooledPgError),
    "ServerUnavailableError": (pg.OperationalError, pg.InternalError),
    "ConnectionLostError": (pg.OperationalError,),
    "PoolTimeoutError": (pgregistry.PooledPgError,),
    "PoolClosedError": (pgregistry.PooledPgError,),
    "TooManyConnectionsError": (pgregistry.PooledPgError,),
    "InvalidConnectionError": (pgregistry.PooledPgError, pg.InternalError),
}


def test_there_are_public_exceptions() -> None:
    assert len(_PUBLIC) >= 10


@pytest.mark.parametrize("cls", _PUBLIC, ids=lambda c: c.__name__)
def test_every_exception_derives_from_the_root(cls: type) -> None:
    assert issubclass(cls, pgregistry.PgRegistryError)
    assert getattr(pgregistry, cls.__name__) is cls
    assert cls.__module__ == "pgregistry"


@pytest.mark.parametrize("name", sorted(_KEPT_BASES))
def test_exception_keeps_its_bases(name: str) -> None:
    cls = getattr(pgregistry, name)
    for base in _KEPT_BASES[name]:
        assert issubclass(cls, base), f"{name} lost its base {base.__name__}"
