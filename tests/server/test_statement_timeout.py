"""``statement_timeout`` against the shared server (issue 15).

On a direct connection (``server_pooling = "none"``) it is a startup option, merged with the
target's own ``options``: ``pg_settings.source`` says ``client`` (a SET would say
``session``). A longer statement is cancelled by the server with SQLSTATE 57014. Under session
pooling it is a SET after every open; under transaction pooling nothing is sent at connect
and ``pgregistry.pooling.begin_statement`` gives the SET LOCAL for a ``begin()`` transaction.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pg
import pytest

from pgregistry import PooledPg, cli, pooling
from pgregistry.registry import Registry
from pgregistry.testing import BackendKiller

MakePool = Callable[..., PooledPg]

pytestmark = pytest.mark.usefixtures("clean_env")  # tests/conftest.py


def timeout_setting(db: Any) -> tuple[str, str]:
    """``statement_timeout`` as the server has it: (setting in ms, where it came from)."""
    row = db.query(
        "SELECT setting, source FROM pg_settings WHERE name = 'statement_timeout'"
    ).getresult()[0]
    return str(row[0]), str(row[1])


def show(db: Any, name: str) -> str:
    value: str = db.query(f"SHOW {name}").getresult()[0][0]
    return value


def assert_cancelled(db: Any) -> None:
    with pytest.raises(pg.DatabaseError) as caught:
        db.query("SELECT pg_sleep(30)")
    assert caught.value.sqlstate == "57014", caught.value  # query_canceled
    assert "statement timeout" in str(caught.value)


def test_a_longer_statement_is_cancelled_with_57014(make_pool: MakePool) -> None:
    pool = make_pool(1, statement_timeout=0.2)
    with pool.connection() as db:
        assert_cancelled(db)
        assert db.query("SELECT 1").getresult() == [(1,)]  # the connection stays usable


def test_it_is_a_startup_option_not_a_set(make_pool: MakePool) -> None:
    with make_pool(statement_timeout=1.5).connection() as db:
        assert timeout_setting(db) == ("1500", "client")


def test_zero_is_sent_explicitly_and_means_no_timeout(make_pool: MakePool) -> None:
    with make_pool(statement_timeout=0).connection() as db:
        assert timeout_setting(db) == ("0", "client")


def test_without_it_nothing_is_sent(make_pool: MakePool) -> None:
    with make_pool().connection() as db:
        assert timeout_setting(db)[1] != "client"


def test_it_is_merged_with_options_in_a_conninfo(make_pool: MakePool, dsn: str) -> None:
    pool = make_pool(statement_timeout=0.3, dbname=dsn + " options='-c work_mem=5MB'")
    with pool.connection() as db:
        assert show(db, "work_mem") == "5MB"
        assert timeout_setting(db) == ("300", "client")


def test_it_is_merged_with_options_in_a_uri(
    make_pool: MakePool, shared_kwargs: dict[str, Any], app_name: str
) -> None:
    uri = (
        "postgresql://{user}@{host}:{port}/{dbname}?application_name={app}"
        "&options=-c%20work_mem%3D6MB"
    ).format(app=app_name, **shared_kwargs)
    with make_pool(statement_timeout=0.3, dbname=uri).connection() as db:
        assert show(db, "work_mem") == "6MB"
        assert timeout_setting(db) == ("300", "client")


def test_it_is_merged_with_opt(
    shared_kwargs: dict[str, Any],
    app_name: str,
    monitor: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PGAPPNAME", app_name)  # a plain dbname: no conninfo to carry it
    pool = PooledPg(statement_timeout=0.3, opt="-c work_mem=7MB", **shared_kwargs)
    try:
        with pool.connection() as db:
            assert show(db, "work_mem") == "7MB"
            assert timeout_setting(db) == ("300", "client")
    finally:
        pool.close()
        monitor.terminate_app(app_name)


def test_a_configured_pool_sends_it_with_its_options(
    make_registry: Callable[[dict[str, Any]], Registry],
    shared_kwargs: dict[str, Any],
    app_name: str,
) -> None:
    registry = make_registry(
        {
            "pools": {
                "app": {
                    **shared_kwargs,
                    "application_name": app_name,
                    "options": "-c work_mem=8MB",
                    "statement_timeout": 0.2,
                }
            }
        }
    )
    with registry.connection("app") as db:
        assert show(db, "work_mem") == "8MB"
        assert timeout_setting(db) == ("200", "client")
        assert_cancelled(db)


def test_it_survives_discard_and_a_transparent_reopen(
    make_pool: MakePool, killer: BackendKiller
) -> None:
    pool = make_pool(1, 1, 1, True, reset="discard", statement_timeout=0.25)
    with pool.connection() as db:
        db.query("SET statement_timeout = 0")
        db.query("RESET statement_timeout")
        assert timeout_setting(db) == ("250", "client")  # RESET goes back to the option
        db.query("SET statement_timeout = 0")  # session state: DISCARD ALL resets it
        pid = db.query("SELECT pg_backend_pid()").getresult()[0][0]
    with pool.connection() as db:
        assert db.query("SELECT pg_backend_pid()").getresult()[0][0] == pid
        assert timeout_setting(db) == ("250", "client")
        assert killer(pid)
        assert timeout_setting(db) == ("250", "client")  # reopened with the same option
        assert_cancelled(db)


def test_session_pooling_sets_it_after_every_open(
    make_pool: MakePool, killer: BackendKiller
) -> None:
    # No pooler in the way here: what the pool sends is the same as behind one.
    pool = make_pool(1, 1, 1, True, server_pooling="session", statement_timeout=0.2)
    with pool.connection() as db:
        assert timeout_setting(db) == ("200", "session")
        assert killer(db.query("SELECT pg_backend_pid()").getresult()[0][0])
        assert timeout_setting(db) == ("200", "session")  # replayed after the reopen
        assert_cancelled(db)


def test_transaction_pooling_sends_nothing_at_connect_and_set_local_applies(
    make_pool: MakePool,
) -> None:
    pool = make_pool(1, server_pooling="transaction", statement_timeout=0.2)
    with pool.connection() as db:
        assert timeout_setting(db)[1] not in ("client", "session")
        statement = pooling.begin_statement(pool.server_pooling, pool.statement_timeout)
        assert statement == "SET LOCAL statement_timeout = 200"
        db.begin()
        db.query(statement)
        assert_cancelled(db)
        db.rollback()
        assert timeout_setting(db)[1] not in ("client", "session")  # ended with the transaction


def test_ping_opens_with_the_option(
    shared_kwargs: dict[str, Any], app_name: str, tmp_path: Path, monitor: Any
) -> None:
    config = tmp_path / "pools.toml"
    lines = [
        f'{k} = "{v}"' if isinstance(v, str) else f"{k} = {v}" for k, v in shared_kwargs.items()
    ]
    config.write_text(
        "[pools.direct]\n" + "\n".join(lines) + f'\napplication_name = "{app_name}"\n'
        "statement_timeout = 0.5\n"
        "[pools.sessioned]\n" + "\n".join(lines) + f'\napplication_name = "{app_name}"\n'
        'statement_timeout = 0.5\nserver_pooling = "session"\n'
    )
    out = io.StringIO()
    assert cli.main(["ping", "--config", str(config)], out=out) == 0, out.getvalue()
    monitor.terminate_app(app_name)
