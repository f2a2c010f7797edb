"""The results: a markdown table per measure (``RESULTS.md``) and the raw numbers as JSON."""

from __future__ import annotations

import datetime
import json
import os
import platform
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from peers import versions
from stats import NOT_MEASURED, Cell, Column, Result, Stat, Target

__all__ = ["Run", "to_json", "to_markdown", "write"]

_DASH = "\u2013"  # en dash between min and max in the tables


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _loadavg() -> str:
    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "unknown"


@dataclass
class Run:
    """One run of the benchmarks: where, with what, and what each measure found."""

    date: str
    machine: dict[str, Any]
    versions: dict[str, str]
    server_version: str
    quick: bool
    repeats: int
    seconds: float
    results: list[Result] = field(default_factory=list)

    @classmethod
    def collect(
        cls,
        *,
        results: list[Result],
        server_version: str,
        quick: bool,
        repeats: int,
        seconds: float,
    ) -> Run:
        usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
        return cls(
            date=datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
            machine={
                "platform": platform.platform(),
                "cpu": _cpu_model(),
                "cores": os.cpu_count(),
                "usable_cores": usable,
                "load_average_at_end": _loadavg(),
                "python": platform.python_version(),
                "python_implementation": platform.python_implementation(),
            },
            versions=versions(),
            server_version=server_version,
            quick=quick,
            repeats=repeats,
            seconds=seconds,
            results=results,
        )


def _fmt_number(value: float | int, fmt: str) -> str:
    if fmt == "d":
        return str(round(value))
    return format(value, fmt)


def _cell(value: Cell, column: Column) -> str:
    if value is None:
        return "—"
    if isinstance(value, Stat):
        mid = _fmt_number(value.median, column.fmt)
        if len(value.samples) == 1:
            return mid
        lo, hi = _fmt_number(value.lo, column.fmt), _fmt_number(value.hi, column.fmt)
        return mid if lo == hi else f"{mid} ({lo}{_DASH}{hi})"
    if isinstance(value, int | float):
        return _fmt_number(value, column.fmt)
    return str(value)


def _mark(target: Target) -> str:
    if target.met is None:
        return "not measured" if target.value == NOT_MEASURED else "shown (no target yet)"
    return "met" if target.met else "**missed**"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(cell.replace("|", "\\|") for cell in row) + " |" for row in rows]
    return lines


def to_markdown(run: Run) -> str:
    m = run.machine
    kind = "quick smoke run (not for comparison)" if run.quick else "full run"
    lines = [
        "# pgregistry benchmarks",
        "",
        f"Latest {kind}, written by `make bench` (`python3 benchmarks/run.py`); see "
        "`docs/benchmarks.md` for what each measure means.",
        "",
        f"- Date: {run.date}; whole run {run.seconds:.0f} s",
        f"- Machine: {m['cpu']}, {m['cores']} cores ({m['usable_cores']} usable), "
        f"{m['platform']}; load average at the end {m['load_average_at_end']}",
        f"- Python {m['python']} ({m['python_implementation']}), PostgreSQL "
        f"{run.server_version} (throwaway cluster on 127.0.0.1, fsync off)",
        "- Versions: " + ", ".join(f"{k} {v}" for k, v in run.versions.items()),
        f"- Numbers are medians of {run.repeats} repeats (contention and restart: see their "
        f"sections) with min{_DASH}max in parentheses; ratios are taken within each repeat against "
        "a baseline measured in the same run.",
        "",
        "## Targets",
        "",
    ]
    target_rows = [[t.text, t.value, _mark(t)] for result in run.results for t in result.targets]
    lines += _table(["target", "value", "status"], target_rows) if target_rows else ["(none)"]
    for result in run.results:
        lines += ["", f"## {result.title}", ""]
        lines.append(f"{result.what} Baseline: {result.baseline}.")
        lines.append("")
        if result.skipped:
            lines.append(f"Skipped: {result.skipped}")
        elif result.rows:
            header = ["subject", *(c.header for c in result.columns)]
            body = [
                [row.subject, *(_cell(row.cells.get(c.key), c) for c in result.columns)]
                for row in result.rows
            ]
            lines += _table(header, body)
        if result.notes:
            lines.append("")
            lines += [f"- {note}" for note in result.notes]
    return "\n".join(lines) + "\n"


def _jsonable(value: Any) -> Any:
    if isinstance(value, Stat):
        return value.to_json()
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    return value


def to_json(run: Run) -> dict[str, Any]:
    return {
        "date": run.date,
        "machine": run.machine,
        "versions": run.versions,
        "server_version": run.server_version,
        "quick": run.quick,
        "repeats": run.repeats,
        "seconds": run.seconds,
        "argv": sys.argv[1:],
        "results": [
            {
                "name": r.name,
                "title": r.title,
                "baseline": r.baseline,
                "skipped": r.skipped,
                "seconds": r.seconds,
                "targets": [vars(t) for t in r.targets],
                "rows": [{"subject": row.subject, **_jsonable(row.cells)} for row in r.rows],
                "notes": r.notes,
                "raw": _jsonable(r.raw),
            }
            for r in run.results
        ],
    }


def write(run: Run, *, markdown_path: Path, json_path: Path) -> None:
    markdown_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    markdown_path.write_text(to_markdown(run))
    json_path.write_text(json.dumps(to_json(run), indent=1) + "\n")
