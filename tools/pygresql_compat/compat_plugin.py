"""pytest plugin: run PyGreSQL's own classic tests with every ``pg.DB(...)`` from a pool.

Loaded by ``tools/pygresql_compat/run.py`` (``make test-pygresql``) only, never by our own
suite. ``PGREGISTRY_COMPAT_RESET`` picks the mode:

- ``plain``: nothing is patched, the tests use ``pg.DB`` itself (the baseline);
- ``default``: ``pg.DB(...)`` returns ``pool.connection()`` of one ``PooledPg`` per test module
  with the default reset policy;
- ``discard``: the same with ``reset="discard"``.

The patch replaces the name ``pg`` in each test module by a module whose ``DB`` is a factory
(everything else is the real ``pg``), and a module-level ``DB`` imported ``from pg`` by the
factory itself. ``pg.DB(existing_connection)`` and ``pg.DB(db=...)`` open nothing: they reach
the real ``pg.DB``. The pools of a module are closed after its last test.

The outcome of every test is written as JSON to ``PGREGISTRY_COMPAT_REPORT`` for run.py.
"""

from __future__ import annotations

import json
import os
import types
from collections.abc import Generator
from pathlib import Path
from typing import Any

import pg
import pytest

from pgregistry import PooledPg

MODES = {"plain": None, "default": 0, "discard": "discard"}
SKIP_FILE = Path(__file__).with_name("skip.txt")

_REAL_DB = pg.DB


def read_skip_list(path: Path = SKIP_FILE) -> dict[str, str]:
    """Node id suffix -> reason, from ``path`` (``# comments`` and blank lines ignored)."""
    skips: dict[str, str] = {}
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        test, _, reason = line.partition(" -- ")
        skips[test.strip()] = reason.strip() or "no reason given"
    return skips


class _ModulePools:
    """The pools of one test module, one per distinct set of ``pg.DB`` arguments."""

    def __init__(self, module: str, reset: int | str) -> None:
        self.module = module
        self.reset = reset
        self.pools: dict[str, PooledPg] = {}

    def factory(self, *args: Any, **kwargs: Any) -> Any:
        """Stands in for ``pg.DB``: a pooled connection, or a real pg.DB around a given one."""
        if "db" in kwargs or (args and not isinstance(args[0], (str, type(None)))):
            return _REAL_DB(*args, **kwargs)
        key = repr((args, sorted(kwargs.items())))
        pool = self.pools.get(key)
        if pool is None:
            name = f"compat-{self.module.rpartition('.')[2]}-{len(self.pools)}"
            pool = PooledPg(0, 0, 0, False, None, None, self.reset, *args, name=name, **kwargs)
            self.pools[key] = pool
        return pool.connection()

    def close(self) -> None:
        for pool in self.pools.values():
            pool.close()
        self.pools.clear()


class _PgShim(types.ModuleType):
    """The ``pg`` module as a test module sees it: ``DB`` is the factory, the rest is pg."""

    def __init__(self, factory: Any) -> None:
        super().__init__("pg", pg.__doc__)
        self.DB = factory

    def __getattr__(self, name: str) -> Any:
        return getattr(pg, name)


_mode = os.environ.get("PGREGISTRY_COMPAT_RESET", "plain")
if _mode not in MODES:
    raise pytest.UsageError(
        f"PGREGISTRY_COMPAT_RESET={_mode!r}: expected one of {', '.join(MODES)}"
    )
_by_module: dict[str, _ModulePools] = {}
_outcomes: dict[str, dict[str, str]] = {}


def _module_of(item: pytest.Item) -> types.ModuleType | None:
    node = item.getparent(pytest.Module)
    return None if node is None else node.obj


def pytest_collection_modifyitems(
    session: pytest.Session, config: pytest.Config, items: list[pytest.Item]
) -> None:
    skips = read_skip_list()
    for item in items:
        for test, reason in skips.items():
            if item.nodeid.endswith(test):
                item.add_marker(pytest.mark.skip(reason=f"pgregistry skip list: {reason}"))
    reset = MODES[_mode]
    if reset is None:
        return
    for item in items:
        module = _module_of(item)
        if module is None or module.__name__ in _by_module:
            continue
        pools = _by_module[module.__name__] = _ModulePools(module.__name__, reset)
        namespace = vars(module)
        if namespace.get("pg") is pg:
            namespace["pg"] = _PgShim(pools.factory)
        if namespace.get("DB") is _REAL_DB:
            namespace["DB"] = pools.factory


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_teardown(item: pytest.Item, nextitem: pytest.Item | None) -> Generator[None]:
    yield
    module = _module_of(item)
    if module is None:
        return
    if nextitem is None or _module_of(nextitem) is not module:
        pools = _by_module.get(module.__name__)
        if pools is not None:
            pools.close()


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    entry = _outcomes.setdefault(report.nodeid, {"outcome": "passed", "message": ""})
    if report.failed:
        if entry["outcome"] != "failed":
            entry["outcome"] = "failed"
            crash = getattr(report.longrepr, "reprcrash", None)
            message = getattr(crash, "message", None) or str(report.longrepr)
            entry["message"] = f"{report.when}: {message.strip().splitlines()[0][:300]}"
    elif report.skipped and entry["outcome"] != "failed":
        entry["outcome"] = "skipped"
        longrepr = report.longrepr
        entry["message"] = str(longrepr[2]) if isinstance(longrepr, tuple) else ""


def pytest_runtest_logstart(nodeid: str, location: object) -> None:
    _write_report(running=nodeid)


def pytest_runtest_logfinish(nodeid: str, location: object) -> None:
    _write_report()


def _write_report(running: str = "") -> None:
    """Written after every test, so that run.py still knows the outcomes if a test hangs.

    A test stuck in libpq (poll() restarted after EINTR) cannot be interrupted by
    pytest-timeout's signal; run.py kills the run then and reports ``running`` as hung.
    """
    target = os.environ.get("PGREGISTRY_COMPAT_REPORT")
    if target:
        data = {"mode": _mode, "running": running, "tests": _outcomes}
        Path(target).write_text(json.dumps(data, indent=1))
