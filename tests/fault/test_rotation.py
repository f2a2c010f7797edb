"""Credential rotation on a throwaway cluster that asks for a password (SCRAM) for one role.

The password comes from a file (``password_file`` / ``PasswordFile``) or a callable, read
afresh for every new connection: after the role's password and the file change, connections
opened with the old one keep working, new ones use the new one, no reload is needed, and no
operation fails. The password never shows in an error.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pgregistry import AuthenticationError, PooledPg, Registry
from pgregistry.config import settings_from_mapping
from pgregistry.connect_args import PasswordFile
from pgregistry.testing import TemporaryCluster

pytestmark = pytest.mark.slow


@pytest.fixture
def rotor(healthy_cluster: TemporaryCluster, tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """Role ``rotor`` with password 'first-pw-1' (SCRAM over TCP); its DSN and password file."""
    cluster = healthy_cluster
    cluster.execute(
        "DO $$ BEGIN IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'rotor') THEN "
        "CREATE ROLE rotor LOGIN; END IF; END $$",
        dbname="postgres",
        user="postgres",
    )
    cluster.execute("ALTER ROLE rotor PASSWORD 'first-pw-1'", dbname="postgres", user="postgres")
    hba = cluster.data_dir / "pg_hba.conf"
    original = hba.read_text(encoding="utf-8")
    hba.write_text(f"host all rotor {cluster.host}/32 scram-sha-256\n" + original, "utf-8")
    cluster.reload()
    secret = tmp_path / "rotor_password"
    secret.write_text("first-pw-1\n", encoding="utf-8")
    dsn = f"host={cluster.host} port={cluster.port} dbname=postgres user=rotor"
    try:
        yield dsn, secret
    finally:
        hba.write_text(original, encoding="utf-8")
        cluster.reload()


def rotate(cluster: TemporaryCluster, secret: Path, password: str) -> None:
    cluster.execute(f"ALTER ROLE rotor PASSWORD '{password}'", dbname="postgres", user="postgres")
    tmp = secret.with_suffix(".new")
    tmp.write_text(password + "\n", encoding="utf-8")
    tmp.replace(secret)  # as a secrets manager does: the new file appears at once


def test_rotation_under_load_fails_no_operation(
    healthy_cluster: TemporaryCluster, rotor: tuple[str, Path]
) -> None:
    # Connections live 0.5 s: those opened with an old password keep working until then, and
    # their replacements read the file again. The old password stops working at each rotation.
    dsn, secret = rotor
    pool = PooledPg(
        2, 4, 4, True, dbname=dsn, passwd=PasswordFile(secret), timeout=30, max_lifetime=0.5
    )
    errors: list[BaseException] = []
    done = [0]
    stop = threading.Event()

    def work() -> None:
        deadline = time.monotonic() + 30
        while not stop.is_set() and time.monotonic() < deadline and done[0] < 50000:
            try:
                with pool.connection() as db:
                    db.query("SELECT 1")
                done[0] += 1
            except BaseException as exc:
                errors.append(exc)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    opened: list[int] = []
    try:
        for password in ("second-pw-2", "third-pw-3"):
            time.sleep(0.3)
            rotate(healthy_cluster, secret, password)
            opened.append(pool.stats()["opened"])
            time.sleep(1.2)  # every connection reached its lifetime and was replaced
    finally:
        stop.set()
        for thread in threads:
            thread.join(30)
    stats = pool.stats()
    pool.close()
    assert errors == [], errors[:3]
    # Connections were opened after each rotation, each with the password of the moment.
    assert stats["opened"] > opened[1] > opened[0] and stats["expired"] > 0, (opened, stats)
    assert done[0] > 0


def test_a_wrong_password_in_the_file_is_refused_without_showing_it(
    rotor: tuple[str, Path],
) -> None:
    dsn, secret = rotor
    secret.write_text("wrong-pw-77\n", encoding="utf-8")
    with pytest.raises(AuthenticationError, match="password authentication failed") as caught:
        PooledPg(1, dbname=dsn, passwd=PasswordFile(secret))
    assert "wrong-pw-77" not in str(caught.value) + repr(caught.value)


def test_a_callable_password_and_the_password_file_key(
    healthy_cluster: TemporaryCluster, rotor: tuple[str, Path]
) -> None:
    dsn, secret = rotor
    calls: list[int] = []

    def password() -> str:
        calls.append(1)
        return secret.read_text(encoding="utf-8").strip()

    with PooledPg(0, 2, 2, True, dbname=dsn, passwd=password) as pool:
        with pool.connection() as db:
            db.query("SELECT 1")
        assert len(calls) == 1  # read once per new connection, not per checkout
    host, port = healthy_cluster.host, healthy_cluster.port
    app = {"host": host, "port": port, "dbname": "postgres", "user": "rotor"}
    reg = Registry(settings_from_mapping({"pools": {"app": {**app, "password_file": str(secret)}}}))
    try:
        with reg.connection("app") as db:
            assert db.query("SELECT current_user").getresult() == [("rotor",)]
        rotate(healthy_cluster, secret, "fourth-pw-4")
        healthy_cluster.kill_backends()
        with reg.connection("app") as db:  # reopened with the new password: no reload
            assert db.query("SELECT 2").getresult() == [(2,)]
        assert "fourth-pw-4" not in repr(reg.settings) + str(reg.settings.pools["app"].describe())
    finally:
        reg.close()
