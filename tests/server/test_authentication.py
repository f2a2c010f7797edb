"""A refused login fails at once with AuthenticationError, however long reconnect_timeout is
(#11 item 11); a server that is merely down is still retried."""

from __future__ import annotations

from typing import Any

import pg
import pytest

from pgregistry import AuthenticationError, PooledPg, ServerUnavailableError


@pytest.mark.parametrize("what", ["role", "database"])
def test_a_refused_login_is_not_retried(
    shared_kwargs: dict[str, Any], connect_attempts: list[float], what: str
) -> None:
    target = dict(shared_kwargs)
    if what == "role":
        target["user"] = "pgrt_no_such_role"
    else:
        target["dbname"] = "pgrt_no_such_database"
    with pytest.raises(AuthenticationError, match="does not exist") as caught:
        PooledPg(1, reconnect_timeout=30.0, passwd="pgrt-auth-s3cret", **target)
    assert len(connect_attempts) == 1  # not retried for 30 s
    assert isinstance(caught.value, ServerUnavailableError)
    assert isinstance(caught.value, pg.OperationalError)
    assert "pgrt-auth-s3cret" not in str(caught.value) + repr(caught.value)
