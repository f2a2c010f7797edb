"""Read pools on a real primary and streaming standby: readonly=True goes to the read pool,
falls back to the primary pool when the standby is down or lags past max_replica_lag (checked
by the upkeep workers), and comes back once it has caught up; read_fallback=false raises."""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from pgregistry import Registry, ServerUnavailableError, cli
from pgregistry.config import settings_from_mapping
from pgregistry.testing import TemporaryCluster, TemporaryStandby

pytestmark = pytest.mark.slow


def target(cluster: TemporaryCluster) -> dict[str, Any]:
    return {
        "host": cluster.host,
        "port": cluster.port,
        "dbname": cluster.dbname,
        "user": cluster.user,
        "connect_timeout": 2,
        "timeout": 2,
    }


@pytest.fixture
def make(
    primary_and_standby: tuple[TemporaryCluster, TemporaryStandby],
) -> Iterator[Callable[..., Registry]]:
    primary, standby = primary_and_standby
    built: list[Registry] = []

    def build(**app: Any) -> Registry:
        ro = {**target(standby), **app.pop("ro", {})}
        pools = {"app": {**target(primary), "read_pool": "ro", **app}, "ro": ro}
        reg = Registry(settings_from_mapping({"pools": pools}))
        built.append(reg)
        return reg

    yield build
    for reg in built:
        reg.close()


def wait_for(predicate: Callable[[], bool], timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return False


def test_reads_go_to_the_standby_and_fall_back_when_it_is_down(
    primary_and_standby: tuple[TemporaryCluster, TemporaryStandby], make: Callable[..., Registry]
) -> None:
    primary, standby = primary_and_standby
    reg = make()
    with reg.connection("app", readonly=True) as db:
        assert db.port == standby.port
        assert db.query("SELECT pg_is_in_recovery()").getresult() == [(True,)]
    with reg.connection("app") as db:
        assert db.port == primary.port
    assert reg.get("app", readonly=True) is reg.get("ro")
    assert reg.stats()["roles"]["ro"] == "standby"
    standby.stop("fast")
    with reg.connection("app", readonly=True) as db:  # falls back to the primary pool
        assert db.port == primary.port


def test_without_fallback_the_read_pools_error_is_raised(
    primary_and_standby: tuple[TemporaryCluster, TemporaryStandby], make: Callable[..., Registry]
) -> None:
    _primary, standby = primary_and_standby
    reg = make(read_fallback=False)
    standby.stop("fast")
    with pytest.raises(ServerUnavailableError):
        reg.connection("app", readonly=True)


def test_a_lagging_standby_is_left_until_it_catches_up(
    primary_and_standby: tuple[TemporaryCluster, TemporaryStandby], make: Callable[..., Registry]
) -> None:
    primary, standby = primary_and_standby
    primary.execute("CREATE TABLE IF NOT EXISTS ticks (n int)")
    standby.wait_caught_up()
    reg = make(ro={"max_replica_lag": 0.5})
    with reg.connection("app", readonly=True) as db:
        assert db.port == standby.port  # builds the read pool: its lag is watched from now
    standby.execute("SELECT pg_wal_replay_pause()", user="postgres")
    try:
        assert wait_for(  # the pause is asynchronous
            lambda: (
                standby.execute("SELECT pg_get_wal_replay_pause_state()", user="postgres")
                == [("paused",)]
            )
        )

        def lagging() -> bool:
            primary.execute("INSERT INTO ticks VALUES (1)")
            return bool(reg.stats()["replica_lag"]["ro"]["lagging"])

        assert wait_for(lagging), reg.stats()["replica_lag"]
        primary.execute("INSERT INTO ticks VALUES (2)")
        with reg.connection("app", readonly=True) as db:
            assert db.port == primary.port  # the lagging standby is not used
    finally:
        standby.execute("SELECT pg_wal_replay_resume()", user="postgres")
    assert wait_for(lambda: not reg.stats()["replica_lag"]["ro"]["lagging"])
    with reg.connection("app", readonly=True) as db:
        assert db.port == standby.port


def test_ping_shows_each_pools_role_and_a_read_pools_lag(
    primary_and_standby: tuple[TemporaryCluster, TemporaryStandby], tmp_path: Path
) -> None:
    primary, standby = primary_and_standby
    lines = ["[pools.app]", 'read_pool = "ro"']
    lines += [
        f"{k} = {v!r}" if isinstance(v, str) else f"{k} = {v}" for k, v in target(primary).items()
    ]
    lines += ["[pools.ro]", "max_replica_lag = 5"]
    lines += [
        f"{k} = {v!r}" if isinstance(v, str) else f"{k} = {v}" for k, v in target(standby).items()
    ]
    config = tmp_path / "pools.toml"
    config.write_text("\n".join(lines).replace("'", '"') + "\n")
    out = io.StringIO()
    assert cli.main(["ping", "--config", str(config)], out=out) == 0
    rows = {line.split()[0]: line for line in out.getvalue().splitlines()[2:]}
    assert "primary" in rows["app"] and "standby" in rows["ro"]
    assert "s behind)" in rows["ro"] and "behind" not in rows["app"]
