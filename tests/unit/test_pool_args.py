"""PooledPg and SteadyPgConnection argument checks and unreachable servers: no server needed.

Every pool here targets a local port where nothing listens, so a check that forgot to run
before connecting would show up as a connection error instead of the expected message, and
nothing can hang (each test has a hard timeout as well).
"""

from __future__ import annotations

import socket
import threading
import traceback
from collections.abc import Iterator
from typing import Any

import pg
import pytest

from pgregistry import PooledPg, ServerUnavailableError, SteadyPgConnection

pytestmark = pytest.mark.timeout(20)

SECRET = "s3cret-XYZ"


@pytest.fixture
def free_port() -> int:
    """A local TCP port with nothing listening on it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


@pytest.fixture
def target(free_port: int) -> dict[str, Any]:
    return {"dbname": "test", "host": "127.0.0.1", "port": free_port, "user": "root"}


@pytest.fixture
def pools() -> Iterator[list[PooledPg]]:
    made: list[PooledPg] = []
    yield made
    for pool in made:
        pool.close()


def maintenance_threads(name: str) -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == f"pgregistry-maintenance-{name}"]


# -- sizes ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("position", [0, 1, 2])
@pytest.mark.parametrize("value", [-1, 1.5, "3", True])
def test_bad_sizes_are_rejected_naming_the_parameter(
    target: dict[str, Any], position: int, value: Any
) -> None:
    names = ["mincached", "maxcached", "maxconnections"]
    args: list[Any] = [0, 0, 0]
    args[position] = value
    with pytest.raises(ValueError, match=rf"^{names[position]}: must be an integer >= 0"):
        PooledPg(*args, **target)


def test_mincached_above_maxconnections_is_rejected(target: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"^mincached: 5 .* maxconnections is 3"):
        PooledPg(5, 0, 3, **target)


def test_maxconnections_below_maxcached_is_raised_to_maxcached(
    target: dict[str, Any], pools: list[PooledPg]
) -> None:
    pool = PooledPg(0, 5, 2, **target)
    pools.append(pool)
    stats = pool.stats()
    assert (stats["maxcached"], stats["maxconnections"]) == (5, 5)


@pytest.mark.parametrize("value", [-1, "2", 2.5])
def test_bad_maxusage_is_rejected_naming_the_parameter(target: dict[str, Any], value: Any) -> None:
    with pytest.raises(ValueError, match=r"^maxusage:"):
        PooledPg(0, 0, 0, False, value, **target)


def test_bad_maxusage_of_a_steady_connection_is_rejected(target: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"^maxusage:"):
        SteadyPgConnection(-3, None, True, **target)


# -- policies and setsession ---------------------------------------------------------------------


@pytest.mark.parametrize("value", ["rollback_always", 3, "", 1.0])
def test_unknown_reset_is_rejected_naming_the_parameter(target: dict[str, Any], value: Any) -> None:
    with pytest.raises(ValueError, match=r"^reset: unknown reset policy"):
        PooledPg(0, 0, 0, False, None, None, value, **target)


def test_unknown_ping_is_rejected_naming_the_parameter(target: dict[str, Any]) -> None:
    with pytest.raises(ValueError, match=r"^ping: unknown ping policy"):
        PooledPg(ping="sometimes", **target)


@pytest.mark.parametrize(
    ("setsession", "where"),
    [
        (["SET datestyle TO iso", 5], r"setsession\[1\]"),
        ([None], r"setsession\[0\]"),
        ((b"SET x TO 1",), r"setsession\[0\]"),
        (5, r"setsession:"),
        (b"SET x TO 1", r"setsession:"),
        ({"datestyle": "iso"}, r"setsession:"),
    ],
)
def test_invalid_setsession_is_rejected_naming_the_parameter(
    target: dict[str, Any], setsession: Any, where: str
) -> None:
    with pytest.raises(TypeError, match=rf"^{where}"):
        PooledPg(0, 0, 0, False, None, setsession, **target)
    with pytest.raises(TypeError, match=rf"^{where}"):
        SteadyPgConnection(None, setsession, True, **target)


# -- seconds and names ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("option", "value"),
    [
        ("timeout", -1),
        ("timeout", "30"),
        ("max_lifetime", -0.5),
        ("max_idle", -1),
        ("ping_after", None),
        ("ping_after", -1),
        ("leak_threshold", -2),
        ("reconnect_timeout", -1),
        ("reconnect_timeout", None),
    ],
)
def test_bad_seconds_are_rejected_naming_the_option(
    target: dict[str, Any], option: str, value: Any
) -> None:
    kwargs: dict[str, Any] = {option: value, **target}
    with pytest.raises(ValueError, match=rf"^{option}: must be a number of seconds >= 0"):
        PooledPg(**kwargs)


@pytest.mark.parametrize("name", ["", 5])
def test_bad_pool_name_is_rejected(target: dict[str, Any], name: Any) -> None:
    with pytest.raises(ValueError, match=r"^name:"):
        PooledPg(name=name, **target)


# -- unreachable server --------------------------------------------------------------------------


def _texts(exc: BaseException) -> list[str]:
    return [str(exc), repr(exc), "".join(traceback.format_exception(exc))]


def test_unreachable_server_at_construction_raises_operational_error_without_password(
    target: dict[str, Any],
) -> None:
    with pytest.raises(pg.OperationalError) as caught:
        PooledPg(2, name="pgrt_unreachable", passwd=SECRET, **target)

    exc = caught.value
    assert isinstance(exc, ServerUnavailableError)
    assert isinstance(exc, pg.InternalError)  # what PyGreSQL itself raises on a failed connect
    assert "Connection refused" in str(exc)
    assert f"port {target['port']}" in str(exc)
    assert not [t for t in _texts(exc) if SECRET in t]
    assert maintenance_threads("pgrt_unreachable") == []  # the failed pool closed itself


def test_unreachable_server_with_positional_password_never_shows_it(free_port: int) -> None:
    with pytest.raises(ServerUnavailableError) as caught:
        PooledPg(
            1, 0, 0, False, None, None, None, "test", "127.0.0.1", free_port, None, "root", SECRET
        )
    assert not [t for t in _texts(caught.value) if SECRET in t]


@pytest.mark.parametrize(
    "dbname",
    [
        "host=127.0.0.1 port={port} dbname=test user=root password={secret}",
        "host=127.0.0.1 port={port} dbname=test user=root password='{secret}'",
        "postgresql://root:{secret}@127.0.0.1:{port}/test",
        "postgresql://root@127.0.0.1:{port}/test?password={secret}",
        # libpq quotes a malformed token verbatim: 'invalid percent-encoded token: "..."'
        "postgresql://root:{secret}%zz@127.0.0.1:{port}/test",
        "postgresql://root@127.0.0.1:{port}/test?password={secret}%zz",
    ],
)
def test_password_inside_a_conninfo_never_shows_in_the_error(free_port: int, dbname: str) -> None:
    target = dbname.format(port=free_port, secret=SECRET)
    with pytest.raises(ServerUnavailableError) as caught:
        PooledPg(1, dbname=target)
    assert str(caught.value).strip()
    assert not [t for t in _texts(caught.value) if SECRET in t]


def test_unreachable_server_at_checkout_raises_and_frees_the_place(
    target: dict[str, Any], pools: list[PooledPg]
) -> None:
    pool = PooledPg(0, 0, 1, passwd=SECRET, **target)
    pools.append(pool)
    for _ in range(2):  # the failed open gave its place back: the second try fails the same way
        with pytest.raises(ServerUnavailableError) as caught:
            pool.connection()
        assert not [t for t in _texts(caught.value) if SECRET in t]
    stats = pool.stats()
    assert (stats["open"], stats["in_use"], stats["idle"]) == (0, 0, 0)


def test_unreachable_server_with_reconnect_timeout_retries_then_raises(
    target: dict[str, Any], connect_attempts: list[float]
) -> None:
    attempts = connect_attempts
    with pytest.raises(ServerUnavailableError, match="Connection refused"):
        PooledPg(1, reconnect_timeout=0.3, **target)
    # The backoff starts at 20 ms and grows by half up to 250 ms: several tries in 0.3 s, and
    # the last one no earlier than the window allows.
    assert len(attempts) >= 3, attempts
    assert attempts[-1] - attempts[0] >= 0.2


def test_unreachable_server_without_reconnect_timeout_tries_once(
    target: dict[str, Any], connect_attempts: list[float]
) -> None:
    with pytest.raises(ServerUnavailableError):
        PooledPg(1, **target)
    assert len(connect_attempts) == 1


@pytest.mark.parametrize("keyword", ["application_name", "sslmode", "dbnmae", "password"])
def test_unknown_connection_keyword_is_refused_at_construction(
    target: dict[str, Any], keyword: str
) -> None:
    unknown: dict[str, Any] = {keyword: "x", **target}
    with pytest.raises(TypeError, match=rf"^{keyword}: not a connection argument") as caught:
        PooledPg(0, **unknown)
    assert "conninfo" in str(caught.value)
    with pytest.raises(TypeError, match=rf"^{keyword}:"):
        SteadyPgConnection(None, None, True, **unknown)


def test_too_many_positional_connection_arguments_are_refused(target: dict[str, Any]) -> None:
    with pytest.raises(TypeError, match="at most 7"):
        PooledPg(0, 0, 0, False, None, None, None, "a", "b", 1, None, "u", "p", False, "extra")


def test_connection_argument_given_twice_is_refused() -> None:
    with pytest.raises(TypeError, match=r"^dbname: given both"):
        PooledPg(0, 0, 0, False, None, None, None, "test", dbname="test")


def test_unreachable_server_for_a_steady_connection_raises_operational_error(
    target: dict[str, Any],
) -> None:
    with pytest.raises(pg.OperationalError) as caught:
        SteadyPgConnection(None, None, True, passwd=SECRET, **target)
    assert isinstance(caught.value, ServerUnavailableError)
    assert not [t for t in _texts(caught.value) if SECRET in t]


def test_a_uri_password_with_an_unescaped_at_never_shows_in_the_error(free_port: int) -> None:
    target = f"postgresql://root:pg{SECRET}@tail{SECRET}@127.0.0.1:{free_port}/test"
    with pytest.raises(ServerUnavailableError) as caught:
        PooledPg(1, dbname=target)
    assert not [t for t in _texts(caught.value) if SECRET in t]
