"""Type checkers see a pooled (and a steady) connection as pg.DB's API and pgregistry's own, and
nothing else: a misspelt method fails ``mypy --strict``.

mypy itself checks a small program here (no server is needed: nothing runs).
"""

from __future__ import annotations

from pathlib import Path

import pg
import pytest

from pgregistry.callpath import DB_ATTRIBUTES

mypy_api = pytest.importorskip("mypy.api", reason="mypy is one of the test extras")

PROGRAM = """
from pgregistry import PooledPg, SteadyPgConnection

def use(pool: PooledPg, steady: SteadyPgConnection) -> int:
    with pool.connection() as db:
        rows = db.query("SELECT 1").getresult()
        db.insert("t", None, id=1)
        db.begin(); db.commit()
        db.debug = True
        assert db.ping() and not db.is_lost() and not db.in_transaction
        pid: int = db.backend_pid + steady.backend_pid
        name: str = db.dbname
        db.steady.reopen()
        {misspelt}
    return pid + len(rows) + len(name)
"""


def check(program: str, cache: Path) -> tuple[str, int]:
    out, err, status = mypy_api.run(
        ["--strict", "--no-error-summary", "--cache-dir", str(cache), "-c", program]
    )
    return out + err, status


def test_the_whole_pg_db_api_type_checks_and_a_misspelt_method_does_not(tmp_path: Path) -> None:
    clean, status = check(PROGRAM.format(misspelt="pass"), tmp_path)
    assert status == 0, clean

    report, status = check(
        PROGRAM.format(misspelt='db.qeury("SELECT 1"); steady.get_tabels()'), tmp_path
    )
    assert status == 1
    assert 'has no attribute "qeury"' in report, report
    assert 'has no attribute "get_tabels"' in report, report
    assert report.count("error:") == 2, report


def test_every_attribute_pg_db_reaches_is_declared_and_offered() -> None:
    # What pg.DB reaches through its __getattr__ (the pg.Connection's attributes) must be
    # declared for type checkers (pg.DB's class annotations) and offered at run time
    # (DB_ATTRIBUTES): a new PyGreSQL attribute shows up here.
    from pgregistry.proxy import PooledPgConnection
    from pgregistry.steady import SteadyPgConnection

    declared = {name for name in pg.DB.__annotations__ if not name.startswith("_")}
    assert declared <= set(DB_ATTRIBUTES)
    for cls in (SteadyPgConnection, PooledPgConnection):
        missing = [name for name in DB_ATTRIBUTES if not hasattr(cls, name)]
        assert missing == [], (cls.__name__, missing)
