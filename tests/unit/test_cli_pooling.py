"""``pgregistry check`` for issue 15: how statement_timeout is applied per pool, the
per-process share of each server budget, and the refusals of transaction pooling. ``check``
connects to nothing, so no server is needed."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from pgregistry import cli
from pgregistry.config import PROCESSES_ENV

pytestmark = pytest.mark.usefixtures("clean_env")  # tests/conftest.py

SECRET = "pw-Secret-42x"

CONFIG = f"""
[defaults]
host = "127.0.0.1"
user = "app"
password = "{SECRET}"
dbname = "app"

[pools.direct]
statement_timeout = 5

[pools.bounced]
port = 6432
server = "bouncer"
server_pooling = "transaction"
statement_timeout = 2.5

[pools.sessioned]
port = 6432
server = "bouncer"
server_pooling = "session"
statement_timeout = 0.25

[pools.plain]
maxconnections = 4

[servers.main]
host = "127.0.0.1"
maxconnections = 90

[servers.bouncer]
maxconnections = 40
processes = 2
"""


def check(tmp_path: Path, text: str, *extra: str) -> tuple[int, str, str]:
    path = tmp_path / "pgpools.toml"
    path.write_text(text, encoding="utf-8")
    out, err = io.StringIO(), io.StringIO()
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("sys.stderr", err)
        code = cli.main(["check", "--config", str(path), *extra], out=out)
    return code, out.getvalue(), err.getvalue()


def rows(output: str, title: str) -> dict[str, str]:
    """The rows of the table under ``title``, by their first cell."""
    section = output.split(f"\n{title}\n", 1)[1].split("\n\n", 1)[0]
    lines = section.splitlines()[2:]  # header and rule
    return {line.split()[0]: line for line in lines if not line.startswith("note:")}


def test_check_says_how_each_pools_statement_timeout_is_applied(tmp_path: Path) -> None:
    code, out, _ = check(tmp_path, CONFIG)
    assert code == 0
    table = rows(out, "server-side pooling and statement_timeout")
    assert set(table) == {"direct", "bounced", "sessioned"}  # plain sets neither
    assert "none" in table["direct"] and "5 s" in table["direct"]
    assert "startup option at connect (options=-c statement_timeout=5000ms)" in table["direct"]
    assert (
        "SET LOCAL statement_timeout = 2500 in transactions begun with begin()"
        in (table["bounced"])
    )
    assert "ALTER ROLE ... SET statement_timeout" in table["bounced"]
    assert "SET statement_timeout = 250 after every (re)open" in table["sessioned"]
    assert SECRET not in out


def test_check_lists_templates_too(tmp_path: Path) -> None:
    text = '[tenants.shop]\ndbname = "shop_{tenant}"\nserver_pooling = "transaction"\n'
    code, out, _ = check(tmp_path, text)
    assert code == 0
    assert "template" in rows(out, "server-side pooling and statement_timeout")


def test_check_shows_no_pooling_table_when_no_pool_uses_it(tmp_path: Path) -> None:
    code, out, _ = check(tmp_path, '[pools.a]\nhost = "h"\n')
    assert code == 0 and "server-side pooling" not in out


def test_check_shows_the_per_process_share(tmp_path: Path) -> None:
    code, out, _ = check(tmp_path, CONFIG)
    assert code == 0
    header = out.split("\nserver budgets\n", 1)[1].splitlines()[0].split("  ")
    assert [h.strip() for h in header if h.strip()] == [
        "server",
        "host",
        "port",
        "maxconnections",
        "processes",
        "per process",
        "pools",
    ]
    budgets = rows(out, "server budgets")
    assert budgets["main"].split()[3:6] == ["90", "1", "90"]
    assert budgets["bouncer"].split()[3:6] == ["40", "2", "20"]


def test_check_shows_the_share_from_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(PROCESSES_ENV, "8")
    code, out, _ = check(tmp_path, CONFIG)
    assert code == 0
    budgets = rows(out, "server budgets")
    assert budgets["main"].split()[3:6] == ["90", "8", "11"]
    assert budgets["bouncer"].split()[3:6] == ["40", "2", "20"]  # its own key wins
    assert "configuration: " in out and "+ environment" in out.splitlines()[0]


def test_check_json_carries_the_share_and_the_pool_keys(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(PROCESSES_ENV, "8")
    code, out, _ = check(tmp_path, CONFIG, "--json")
    described = json.loads(out)
    assert code == 0
    assert described["servers"]["main"]["processes"] == 8
    assert described["servers"]["main"]["per_process"] == 11
    bounced = described["pools"]["bounced"]
    assert (bounced["server_pooling"], bounced["statement_timeout"]) == ("transaction", 2.5)
    assert SECRET not in out


def test_check_notes_more_processes_than_connections(tmp_path: Path) -> None:
    text = '[pools.a]\nhost = "h"\nmaxconnections = 1\n[servers.s]\nhost = "h"\n'
    code, out, _ = check(tmp_path, text + "maxconnections = 4\nprocesses = 6\n")
    assert code == 0
    assert rows(out, "server budgets")["s"].split()[3:6] == ["4", "6", "1"]
    assert (
        "note: servers.s: 6 processes get at least 1 connection each, 6 together, above "
        "maxconnections 4" in out
    )


def test_check_notes_pools_that_share_a_budget(tmp_path: Path) -> None:
    text = (
        '[defaults]\nhost = "h"\nmaxconnections = 10\n[pools.a]\n[pools.b]\n'
        '[servers.s]\nhost = "h"\nmaxconnections = 60\nprocesses = 4\n'
    )
    code, out, _ = check(tmp_path, text)
    assert code == 0
    assert (
        "note: servers.s: its pools' maxconnections add up to 20, above the 15 per process" in out
    )


def test_check_notes_a_processes_variable_without_budgets(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(PROCESSES_ENV, "8")
    code, out, _ = check(tmp_path, '[pools.a]\nhost = "h"\n')
    assert code == 0
    assert f"note: ${PROCESSES_ENV} divides no budget: no [servers.NAME] table" in out


def test_check_refuses_what_transaction_pooling_breaks(tmp_path: Path) -> None:
    text = CONFIG.replace(
        'server_pooling = "transaction"',
        'server_pooling = "transaction"\nsetsession = ["SET search_path = app"]\nreset = "discard"',
    )
    code, out, err = check(tmp_path, text)
    assert code == 2 and out == ""
    assert "pools.bounced.setsession: 'SET search_path = app' sets session state" in err
    assert "ALTER ROLE ... SET search_path" in err
    assert "pools.bounced.reset: 'discard' runs DISCARD ALL" in err
    assert SECRET not in err


def test_check_refuses_at_start_connections_above_the_share(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(PROCESSES_ENV, "30")
    text = '[pools.a]\nhost = "h"\nmincached = 4\n[servers.s]\nhost = "h"\nmaxconnections = 90\n'
    code, _, err = check(tmp_path, text)
    assert code == 2
    assert "servers.s.maxconnections: 90 over 30 processes (3 per process) is below the 4" in err
