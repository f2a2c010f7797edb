"""The ``pgregistry`` command (``check``, ``ping``), in-process through ``cli.main`` and as a
subprocess (``python -m pgregistry`` and the installed console script).

Exit status: 0 fine, 1 a pool could not be reached, 2 invalid configuration or unknown names.
Passwords given in the TOML file, in the environment and inside a conninfo must never appear
in anything the command prints.
"""

from __future__ import annotations

import io
import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from pgregistry import cli
from pgregistry.config import load_settings
from pgregistry.registry import Registry

Monitor = Any  # tests/server/conftest.py: Monitor
REPO = Path(__file__).resolve().parents[2]
SCRIPT = Path(sys.executable).with_name("pgregistry")
SECRETS = ("tomlsecret-7Qx", "envsecret-9Kz", "urisecret-3Jw", "kwsecret-5Pv")


pytestmark = pytest.mark.usefixtures("clean_env")  # tests/conftest.py


def dead_port() -> int:
    """A TCP port of 127.0.0.1 with nothing listening (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def run_main(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """``cli.main(args)``: exit status, stdout and stderr."""
    out = io.StringIO()
    code = cli.main(args, out=out)
    captured = capsys.readouterr()
    return code, out.getvalue() + captured.out, captured.err


def run_command(
    args: list[str], env: dict[str, str] | None = None, *, script: bool = False, cwd: Path
) -> subprocess.CompletedProcess[str]:
    """The command in a subprocess: ``python -m pgregistry`` or the console script."""
    argv = [str(SCRIPT)] if script else [sys.executable, "-m", "pgregistry"]
    environ = {k: v for k, v in os.environ.items() if not k.upper().startswith("PGPOOLS")}
    environ.update(env or {})
    return subprocess.run(
        argv + args, env=environ, cwd=cwd, capture_output=True, text=True, timeout=60
    )


@pytest.fixture
def config(tmp_path: Path, shared_defaults: str) -> Path:
    """Two pools on the shared server, carrying this test's application_name."""
    path = tmp_path / "pools.toml"
    path.write_text(
        f"""
default = "app"
{shared_defaults}
connect_timeout = 5
[pools.app]
mincached = 2
maxconnections = 8
[pools.reports]
reset = "discard"
setsession = ["SET default_transaction_read_only = on"]
"""
    )
    return path


@pytest.fixture
def secret_config(
    tmp_path: Path, shared_kwargs: dict[str, Any], app_name: str
) -> Iterator[tuple[Path, dict[str, str]]]:
    """Pools whose passwords come from TOML, the environment, a URI and a keyword conninfo.

    The shared server trusts its clients, so a ping succeeds whatever the password.
    """
    host, port, user, db = (shared_kwargs[k] for k in ("host", "port", "user", "dbname"))
    path = tmp_path / "secret.toml"
    path.write_text(
        f"""
[defaults]
application_name = "{app_name}"
connect_timeout = 5
[pools.toml_pw]
host = "{host}"
port = {port}
user = "{user}"
dbname = "{db}"
password = "{SECRETS[0]}"
[pools.env_pw]
host = "{host}"
port = {port}
user = "{user}"
dbname = "{db}"
[pools.uri]
conninfo = "postgresql://{user}:{SECRETS[2]}@{host}:{port}/{db}"
[pools.keywords]
conninfo = "host={host} port={port} user={user} dbname={db} password='{SECRETS[3]}'"
[pools.down]
conninfo = "postgresql://{user}:{SECRETS[2]}@127.0.0.1:{dead_port()}/{db}"
"""
    )
    yield path, {"PGPOOLS__POOLS__ENV_PW__PASSWORD": SECRETS[1]}


def assert_no_secret(*texts: str) -> None:
    for text in texts:
        for secret in SECRETS:
            assert secret not in text


# -- check -------------------------------------------------------------------------------------


def test_check_prints_the_repository_configuration_as_a_table(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, err = run_main(["check", "--config", str(REPO / "pgpools.toml")], capsys)

    assert code == 0, err
    lines = out.splitlines()
    assert lines[0] == f"configuration: {(REPO / 'pgpools.toml').resolve()}"
    assert lines[1].split() == [
        "pool", "target", "mincached", "maxcached", "maxconnections", "blocking", "reset",
        "timeout",
    ]  # fmt: skip
    assert set(lines[2]) == {"-", " "}
    rows = {line.split()[0]: line for line in lines[3:]}
    assert sorted(rows) == ["app", "audit", "reports"]
    assert "app (default)" in rows["app"]
    assert "dbname=pgregistry_reports" in rows["reports"]
    assert rows["reports"].split()[-3:] == ["True", "discard", "10"]


def test_check_prints_tenant_templates_and_server_budgets(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, err = run_main(["check", "--config", str(REPO / "examples/tenants.toml")], capsys)

    assert code == 0, err
    templates = out.split("\ntenant templates\n", 1)[1].split("\n\n", 1)[0].splitlines()
    assert templates[0].split() == [
        "template", "target", "max_pools", "idle_pool_timeout", "maxconnections",
        "tenant_pattern", "server",
    ]  # fmt: skip
    shop = templates[2].split()
    assert shop[0] == "shop" and shop[-1] == "main"
    assert "{tenant}" in templates[2]  # the template's target, placeholders as written
    budgets = out.split("\nserver budgets\n", 1)[1].splitlines()
    assert budgets[0].split() == [
        "server", "host", "port", "maxconnections", "processes", "per", "process", "pools",
    ]  # fmt: skip
    settings = load_settings(REPO / "examples/tenants.toml")
    budget = str(settings.servers["main"].max_connections)
    assert budgets[2].split()[:4] == ["main", "127.0.0.1", "5432", budget]
    assert budgets[2].endswith("admin, template shop")


def test_check_piped_into_a_closed_reader_exits_without_a_traceback() -> None:
    command = [sys.executable, "-m", "pgregistry", "check", "--config", str(REPO / "pgpools.toml")]
    with subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        proc.stdout.close()  # like `| head -0`: the reader is gone before the first line
        err = proc.stderr.read().decode()
        proc.wait(timeout=30)
    assert "Traceback" not in err


def test_check_json_gives_every_setting_of_every_pool(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, _ = run_main(["check", "--config", str(config), "--json"], capsys)

    assert code == 0
    data = json.loads(out)
    assert data["default"] == "app"
    assert sorted(data["pools"]) == ["app", "reports"]
    assert data["pools"]["app"]["mincached"] == 2
    assert data["pools"]["reports"]["reset"] == "discard"
    assert data["pools"]["reports"]["setsession"] == ["SET default_transaction_read_only = on"]


def test_check_reads_pgpools_config_without_config_option(
    config: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PGPOOLS_CONFIG", str(config))

    code, out, _ = run_main(["check"], capsys)

    assert code == 0
    assert out.splitlines()[0] == f"configuration: {config.resolve()}"


def test_invalid_configuration_exits_2_listing_every_problem(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.toml"
    path.write_text(
        "[pools.app]\nmaxcached = -1\nmaxcahced = 3\n[pools.Bad]\n"
        '[pools.other]\nreset = "sometimes"\npassword = 5\n'
    )
    expected = str(_config_error(path))

    for command in (["check"], ["check", "--json"], ["ping"], ["ping", "app"]):
        code, out, err = run_main([*command, "--config", str(path)], capsys)
        assert code == 2
        assert out == ""
        assert err == f"pgregistry: {expected}\n"
        for where in ("pools.app.maxcached", "pools.app.maxcahced", "pools.other.reset"):
            assert where in err
        assert "Bad" in err
        assert "problems" in err

    proc = run_command(["check", "--config", str(path)], cwd=tmp_path)
    assert proc.returncode == 2
    assert proc.stderr == f"pgregistry: {expected}\n"


def _config_error(path: Path) -> Exception:
    try:
        load_settings(path)
    except Exception as exc:
        return exc
    raise AssertionError("the configuration was accepted")


def test_a_named_file_that_does_not_exist_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run_main(["check", "--config", str(tmp_path / "nope.toml")], capsys)

    assert code == 2
    assert "nope.toml" in err and "does not exist" in err


def test_no_command_is_a_usage_error_with_status_2(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main([])
    assert info.value.code == 2
    assert "usage: pgregistry" in capsys.readouterr().err


# -- ping --------------------------------------------------------------------------------------


def test_ping_reports_server_version_and_latency_of_every_pool(
    config: Path,
    capsys: pytest.CaptureFixture[str],
    monitor: Monitor,
    app_name: str,
) -> None:
    version = monitor.db.query("SHOW server_version").getresult()[0][0].split()[0]

    code, out, err = run_main(["ping", "--config", str(config)], capsys)

    assert code == 0, err
    lines = out.splitlines()
    assert lines[0].split() == ["pool", "status", "server", "role", "latency", "/", "error"]
    rows = [line.split() for line in lines[2:]]
    assert [row[0] for row in rows] == ["app", "reports"]
    for row in rows:
        assert row[1:4] == ["ok", version, "primary"]
        assert re.fullmatch(r"\d+\.\d\d", row[4]) and row[5] == "ms"
    # ping opens one connection per pool, not the pool's mincached, and closes it.
    assert monitor.wait_count(app_name, 0) == 0


def test_ping_json_and_named_pools_only(config: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run_main(["ping", "reports", "--json", "--config", str(config)], capsys)

    assert code == 0
    (result,) = json.loads(out)
    assert result["pool"] == "reports"
    assert result["ok"] is True
    assert result["latency_ms"] >= 0
    assert re.fullmatch(r"\d+\.\d+", result["server_version"])


def test_ping_of_unknown_names_exits_2_with_the_library_message(
    config: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    registry = Registry.from_config(config)
    try:
        registry.get("billing")
    except KeyError as exc:
        library = str(exc)
    registry.close()

    code, out, err = run_main(["ping", "app", "billing", "--config", str(config)], capsys)

    assert code == 2
    assert out == ""
    assert err == f"pgregistry: {library}\n"
    assert library == "unknown pool 'billing'; configured pools: app, reports"


def test_ping_of_a_port_with_nothing_listening_exits_1_quickly_with_the_libpq_message(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], config: Path
) -> None:
    port = dead_port()
    path = tmp_path / "down.toml"
    path.write_text(
        config.read_text()
        + f'[pools.down]\nport = {port}\npassword = "{SECRETS[0]}"\nconnect_timeout = 2\n'
    )

    started = time.monotonic()
    code, out, err = run_main(["ping", "--config", str(path)], capsys)
    elapsed = time.monotonic() - started

    assert code == 1
    assert elapsed < 20
    rows = {line.split()[0]: line for line in out.splitlines()[2:]}
    assert rows["app"].split()[1] == "ok" and rows["reports"].split()[1] == "ok"
    assert rows["down"].split()[1] == "FAILED"
    assert f'connection to server at "127.0.0.1", port {port} failed' in rows["down"]
    assert "Connection refused" in rows["down"]
    assert_no_secret(out, err)

    code, out, _ = run_main(["ping", "down", "--json", "--config", str(path)], capsys)
    assert code == 1
    (result,) = json.loads(out)
    assert result["ok"] is False and "Connection refused" in result["error"]


# -- secrets -----------------------------------------------------------------------------------


def test_passwords_from_toml_env_and_conninfo_never_appear_in_output(
    secret_config: tuple[Path, dict[str, str]],
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    path, env = secret_config
    commands = [["check"], ["check", "--json"], ["ping"], ["ping", "--json"], ["ping", "down"]]
    expected = {"check": 0, "ping": 1}

    for name, value in env.items():
        monkeypatch.setenv(name, value)
    for command in commands:
        code, out, err = run_main([*command, "--config", str(path)], capsys)
        assert code == expected[command[0]], (command, out, err)
        assert_no_secret(out, err)
        if command == ["check", "--json"]:
            pools = json.loads(out)["pools"]
            assert pools["toml_pw"]["password"] == "********"
            assert pools["env_pw"]["password"] == "********"
            assert "********" in pools["uri"]["conninfo"]
            assert "********" in pools["keywords"]["conninfo"]
        if command == ["ping"]:
            rows = {line.split()[0]: line.split()[1] for line in out.splitlines()[2:]}
            assert rows == {
                "down": "FAILED", "env_pw": "ok", "keywords": "ok", "toml_pw": "ok", "uri": "ok"
            }  # fmt: skip

    for script in (False, True):
        for command in commands:
            proc = run_command([*command, "--config", str(path)], env, script=script, cwd=tmp_path)
            assert proc.returncode == expected[command[0]], proc.stderr
            assert_no_secret(proc.stdout, proc.stderr)


def test_console_script_and_python_m_print_the_same(config: Path, tmp_path: Path) -> None:
    assert SCRIPT.exists(), "the pgregistry console script is not installed in the venv"
    by_module = run_command(["check", "--config", str(config)], cwd=tmp_path)
    by_script = run_command(["check", "--config", str(config)], script=True, cwd=tmp_path)

    assert by_module.returncode == by_script.returncode == 0
    assert by_module.stdout == by_script.stdout
    assert "app (default)" in by_module.stdout


# -- what a newcomer trips on (#16) --------------------------------------------------------------


def test_version_is_printed(capsys: pytest.CaptureFixture[str]) -> None:
    import pgregistry

    with pytest.raises(SystemExit) as leaving:
        cli.main(["--version"])
    assert leaving.value.code == 0
    assert capsys.readouterr().out.strip() == f"pgregistry {pgregistry.__version__}"


@pytest.mark.parametrize("command", ["check", "ping"])
def test_no_configuration_at_all_exits_2_saying_where_it_looked(
    command: str, clean_env: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run_main([command], capsys)
    assert code == 2
    assert str(clean_env / "pgpools.toml") in err
    assert "PGPOOLS_CONFIG is not set" in err and "PGPOOLS__" in err


def test_disabled_pools_are_listed_by_check(
    config: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PGPOOLS__POOLS__REPORTS__ENABLED", "false")
    code, out, _ = run_main(["check", "--config", str(config)], capsys)
    assert code == 0
    line = next(row for row in out.splitlines() if row.startswith("reports"))
    assert "disabled" in line


def test_ping_tenant_reaches_a_tenant_pool(
    tmp_path: Path, shared_kwargs: dict[str, Any], app_name: str, capsys: pytest.CaptureFixture[str]
) -> None:
    host, port, user, db = (shared_kwargs[k] for k in ("host", "port", "user", "dbname"))
    path = tmp_path / "tenants.toml"
    path.write_text(
        f"""
[tenants.shop]
host = "{host}"
port = {port}
user = "{user}"
dbname = "{db}"
application_name = "{app_name}_{{tenant}}"
"""
    )
    code, out, err = run_main(["ping", "--config", str(path), "--tenant", "acme"], capsys)
    assert code == 0, err
    assert "shop.acme" in out and " ok " in out
    code, _, err = run_main(["ping", "--config", str(path), "--tenant", "Bad Key!"], capsys)
    assert code == 2 and "tenant" in err, err
    code, _, err = run_main(
        ["ping", "shop", "nope", "--config", str(path), "--tenant", "a"], capsys
    )
    assert code == 2 and "unknown tenant template 'nope'" in err


def test_invalid_utf8_in_the_configuration_exits_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "bad.toml"
    path.write_bytes(b'[pools.app]\ndbname = "caf\xe9"\n')
    code, _, err = run_main(["check", "--config", str(path)], capsys)
    assert code == 2
    assert "Traceback" not in err
