"""The throwaway cluster helper (``pgregistry.testing``) that the fault tests stand on."""

from __future__ import annotations

import getpass
import os
import socket
from pathlib import Path

import pg
import pytest

from pgregistry import testing
from pgregistry.testing import TemporaryCluster, _ports, find_pg_bindir, server_answers
from pgregistry.testing import cluster as cluster_module


def _connect(cluster: TemporaryCluster) -> pg.DB:
    return pg.DB(**cluster.connect_kwargs())


@pytest.mark.slow
def test_cluster_accepts_postgres_over_tcp_with_trust(cluster: TemporaryCluster) -> None:
    db = _connect(cluster)
    try:
        assert db.query("SELECT current_user").getresult() == [("postgres",)]
        assert db.query("SHOW max_connections").getresult() == [("100",)]
        assert db.query("SHOW fsync").getresult() == [("off",)]
    finally:
        db.close()
    assert server_answers("127.0.0.1", cluster.port)
    assert server_answers(str(cluster.socket_dir), cluster.port)


@pytest.mark.slow
def test_cluster_has_a_superuser_role_for_the_os_user(cluster: TemporaryCluster) -> None:
    # So that libpq's default user (the OS user, root in CI) can log in too.
    rows = cluster.execute("SELECT rolsuper FROM pg_roles WHERE rolname = $1", (getpass.getuser(),))
    assert rows == [(True,)]


@pytest.mark.slow
def test_conninfo_and_dsn_reach_the_cluster(cluster: TemporaryCluster) -> None:
    for target in (cluster.conninfo, cluster.dsn):
        db = pg.DB(target)
        try:
            assert db.query("SELECT 1").getresult() == [(1,)]
        finally:
            db.close()


@pytest.mark.slow
def test_kill_backends_cuts_every_client_connection(cluster: TemporaryCluster) -> None:
    victims = [_connect(cluster) for _ in range(3)]
    try:
        assert cluster.kill_backends() >= 3
        for db in victims:
            with pytest.raises(pg.Error):
                db.query("SELECT 1")
    finally:
        for db in victims:
            db.close()
    assert cluster.execute("SELECT 1") == [(1,)]


@pytest.mark.slow
def test_kill_backends_by_pid_spares_the_others(cluster: TemporaryCluster) -> None:
    victim, bystander = _connect(cluster), _connect(cluster)
    try:
        assert cluster.kill_backends([victim.backend_pid]) == 1
        with pytest.raises(pg.Error):
            victim.query("SELECT 1")
        assert bystander.query("SELECT 1").getresult() == [(1,)]
    finally:
        victim.close()
        bystander.close()


@pytest.mark.slow
def test_restart_keeps_port_and_data(cluster: TemporaryCluster) -> None:
    port = cluster.port
    cluster.execute("CREATE TABLE IF NOT EXISTS kept (n int)")
    cluster.execute("INSERT INTO kept VALUES (1)")
    db = _connect(cluster)
    try:
        cluster.restart()
        assert cluster.is_running()
        assert cluster.port == port
        assert cluster.execute("SELECT count(*) > 0 FROM kept") == [(True,)]
        with pytest.raises(pg.Error):
            db.query("SELECT 1")  # the old connection did not survive the restart
    finally:
        db.close()
        cluster.execute("DROP TABLE kept")


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["fast", "immediate"])
def test_stop_then_start(cluster: TemporaryCluster, mode: testing.StopMode) -> None:
    cluster.stop(mode)
    assert not cluster.is_running()
    assert not server_answers("127.0.0.1", cluster.port, timeout=0.5)
    cluster.stop(mode)  # stopping a stopped server does nothing
    cluster.start()
    assert cluster.execute("SELECT 1") == [(1,)]


@pytest.mark.slow
def test_stop_rejects_unknown_mode(cluster: TemporaryCluster) -> None:
    with pytest.raises(ValueError, match="mode must be one of"):
        cluster.stop("abrupt")  # type: ignore[arg-type]


@pytest.mark.slow
def test_cluster_fixture_starts_the_session_cluster_when_a_test_left_it_down(
    session_cluster: TemporaryCluster, request: pytest.FixtureRequest
) -> None:
    # What an earlier test may leave behind: the session's cluster stopped.
    session_cluster.stop()
    assert not session_cluster.is_running()
    running = request.getfixturevalue("cluster")  # the fixture as the next test gets it
    assert running is session_cluster
    assert running.is_running()
    assert running.execute("SELECT 1") == [(1,)]


@pytest.mark.slow
def test_parallel_clusters_get_their_own_ports_and_cleanup_leaves_nothing() -> None:
    first = TemporaryCluster(max_connections=10, dbname="app", user="app_owner")
    second = TemporaryCluster(max_connections=10)
    with first, second:
        assert first.port != second.port
        assert first.execute("SHOW max_connections") == [("10",)]
        assert first.execute("SELECT current_user, current_database()") == [("app_owner", "app")]
        pids = [c._postmaster_pid() for c in (first, second)]
        dirs = [first.base_dir, second.base_dir]
        ports = [first.port, second.port]
        held = _connect(first)  # a client still connected must not block the cleanup
    held.close()
    for pid in pids:
        assert pid is not None
        assert not _ports.process_alive(pid)
    for directory in dirs:
        assert not directory.exists()
    for port in ports:
        assert not server_answers("127.0.0.1", port, timeout=0.5)
    assert not first.is_running()
    first.cleanup()  # idempotent


@pytest.mark.slow
def test_context_manager_cleans_up_when_the_body_raises() -> None:
    with pytest.raises(RuntimeError, match="boom"), TemporaryCluster() as temporary:
        directory, pid = temporary.base_dir, temporary._postmaster_pid()
        raise RuntimeError("boom")
    assert pid is not None
    assert not _ports.process_alive(pid)
    assert not directory.exists()


@pytest.mark.slow
def test_atexit_handler_stops_clusters_left_running() -> None:
    temporary = TemporaryCluster()
    temporary.start()
    pid, directory = temporary._postmaster_pid(), temporary.base_dir
    cluster_module._cleanup_live_clusters()
    assert pid is not None
    assert not _ports.process_alive(pid)
    assert not directory.exists()


@pytest.mark.slow
def test_failed_start_quotes_the_server_log() -> None:
    temporary = TemporaryCluster(settings={"shared_buffers": "1kB"})
    with pytest.raises(testing.ClusterError, match="shared_buffers"):
        temporary.start()
    assert not temporary.is_running()
    temporary.cleanup()


def test_port_reservation_skips_ports_locked_by_another_run() -> None:
    first = _ports.PortReservation("127.0.0.1")
    try:
        # A second reservation of the same port (another test run) finds it locked.
        assert _ports.lock_port(first.port) is None
    finally:
        first.release()
    fd = _ports.lock_port(first.port)
    assert fd is not None
    _ports.unlock(fd)


def test_server_answers_false_when_nothing_listens() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # bound, not listening: connections are refused
        assert not server_answers("127.0.0.1", port, timeout=1.0)
    assert not server_answers("/nonexistent-socket-dir", 5432, timeout=1.0)


def test_missing_binaries_error_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.delenv(testing.BINDIR_ENV, raising=False)
    monkeypatch.setenv("PATH", str(tmp_path))
    monkeypatch.setattr(cluster_module, "_PG_LIB_GLOB", str(tmp_path / "nothing" / "*" / "bin"))
    with pytest.raises(RuntimeError, match="apt-get install postgresql"):
        find_pg_bindir()


def test_bindir_from_environment_must_hold_the_binaries(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(testing.BINDIR_ENV, str(tmp_path))
    with pytest.raises(RuntimeError, match="initdb and pg_ctl"):
        find_pg_bindir()


def test_newest_version_under_usr_lib_postgresql_wins(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    for version in ("9.6", "13", "16"):
        bindir = tmp_path / version / "bin"
        bindir.mkdir(parents=True)
        for name in ("initdb", "pg_ctl"):
            (bindir / name).write_text("#!/bin/sh\n")
            os.chmod(bindir / name, 0o755)
    monkeypatch.delenv(testing.BINDIR_ENV, raising=False)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    monkeypatch.setattr(cluster_module, "_PG_LIB_GLOB", str(tmp_path / "*" / "bin"))
    assert find_pg_bindir() == tmp_path / "16" / "bin"
