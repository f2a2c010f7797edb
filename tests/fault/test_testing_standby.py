"""The streaming standby helper (``pgregistry.testing.TemporaryStandby``) on real servers."""

from __future__ import annotations

import pg
import pytest

from pgregistry.testing import multihost_conninfo, primary_and_standby

pytestmark = pytest.mark.slow


def test_standby_follows_the_primary_and_takes_writes_once_promoted() -> None:
    with primary_and_standby() as (primary, standby):
        assert standby.is_in_recovery() and not primary.is_in_recovery()
        primary.execute("CREATE TABLE replicated (n int)")
        primary.execute("INSERT INTO replicated VALUES (1)")
        standby.wait_caught_up()
        assert standby.execute("SELECT n FROM replicated") == [(1,)]
        with pytest.raises(pg.Error, match="read-only"):
            standby.execute("INSERT INTO replicated VALUES (2)")
        primary.fence()
        with pytest.raises(pg.Error, match="read-only") as fenced:
            primary.execute("INSERT INTO replicated VALUES (2)")
        assert getattr(fenced.value, "sqlstate", None) == "25006"
        assert primary.execute("SELECT 1") == [(1,)]  # a fenced primary still answers pings
        standby.promote()
        assert not standby.is_in_recovery()
        standby.execute("INSERT INTO replicated VALUES (3)")
        assert standby.execute("SELECT n FROM replicated ORDER BY n") == [(1,), (3,)]
        db = pg.DB(multihost_conninfo([primary, standby], target_session_attrs="read-write"))
        try:
            assert db.port == standby.port  # libpq skips the fenced old primary
        finally:
            db.close()
        primary.unfence()
        primary.execute("INSERT INTO replicated VALUES (4)")
        dirs = [primary.base_dir, standby.base_dir]
    assert not any(d.exists() for d in dirs)
    assert not primary.is_running() and not standby.is_running()
