"""Charts for docs/benchmarks.md, drawn with matplotlib from a results JSON (``latest.json``).

    .bench-venv/bin/python benchmarks/charts.py [results.json] [output folder]

matplotlib lives in the benchmark venv only; pgregistry never imports it. ``run.py`` calls
:func:`draw` after a full run (into ``docs/img/``) and after a quick or partial one (next to
its raw results).
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
DOCS_IMG = HERE.parent / "docs" / "img"
COLOURS = {
    "pgregistry": "#1f77b4",
    "DBUtils": "#d62728",
    "psycopg_pool": "#2ca02c",
    "SQLAlchemy": "#9467bd",
    "queue.Queue": "#7f7f7f",
    "raw": "#7f7f7f",
}


def _colour(label: str) -> str:
    for key, colour in COLOURS.items():
        if label.startswith(key):
            return colour
    return "#333333"


def _result(data: dict[str, Any], name: str) -> dict[str, Any] | None:
    for r in data["results"]:
        if r["name"] == name and not r.get("skipped"):
            return r
    return None


def _latency(plt: Any, data: dict[str, Any], out: Path) -> Path | None:
    r = _result(data, "contention")
    if r is None:
        return None
    raw = r["raw"]
    percentiles = raw.get("latency_percentiles")
    top = max(row["threads"] for row in r["rows"])
    if not percentiles:
        return None
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    nines = [-math.log10(max(1e-6, 1 - p / 100)) for p in percentiles[:-1]]
    for row in r["rows"]:
        if row["threads"] != top:
            continue
        runs = raw.get(f"{row['subject']} @ {top}") or []
        if not runs or not runs[0].get("quantiles_ms"):
            continue
        # The run with the median throughput stands for the pool.
        run = sorted(runs, key=lambda x: x["ops_s"])[len(runs) // 2]
        q = run["quantiles_ms"]
        label = f"{row['subject']} (max {q[-1]:.0f} ms)"
        ax.plot(nines, q[:-1], label=label, color=_colour(row["subject"]), linewidth=1.8)
    ax.set_yscale("log")
    ticks = [0, 1, 2, 3, 4]
    ax.set_xticks(ticks, ["0%", "90%", "99%", "99.9%", "99.99%"])
    ax.set_xlabel("percentile of ops")
    ax.set_ylabel("latency of one op, ms (log)")
    ax.set_title(f"Op latency, {top} threads on 8 connections (checkout + SELECT 1 + checkin)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = out / "bench-latency-64.png"
    fig.savefig(path)
    plt.close(fig)
    return path


def _cost(plt: Any, data: dict[str, Any], out: Path) -> Path | None:
    checkout = _result(data, "checkout")
    instr = _result(data, "instructions")
    if checkout is None and instr is None:
        return None
    panels = [x for x in (checkout, instr) if x is not None]
    fig, axes = plt.subplots(1, len(panels), figsize=(11, 4), dpi=100, squeeze=False)
    for ax, r in zip(axes[0], panels, strict=True):
        if r["name"] == "checkout":
            rows = r["rows"]
            labels = [row["subject"].replace(" (baseline)", "\n(baseline)") for row in rows]
            med = [row["cpu"]["median"] for row in rows]
            err = [
                [m - row["cpu"]["min"] for m, row in zip(med, rows, strict=True)],
                [row["cpu"]["max"] - m for m, row in zip(med, rows, strict=True)],
            ]
            ax.barh(labels, med, xerr=err, color=[_colour(row["subject"]) for row in rows])
            ax.set_xlabel("CPU ns per checkout + checkin (median, min-max)")
            ax.set_title("Checkout + checkin, timed")
        else:
            rows = [row for row in r["rows"] if row["body"] == "checkout + checkin"]
            qrows = [row for row in r["rows"] if row["body"] == "pooled SELECT 1"]
            labels = [f"{row['subject']}\ncheckout" for row in rows] + [
                f"{row['subject']}\nSELECT 1" for row in qrows
            ]
            vals = [row["ir"]["median"] / 1e3 for row in rows + qrows]
            ax.barh(labels, vals, color=[_colour(row["subject"]) for row in rows + qrows])
            for y, v in enumerate(vals):
                ax.text(v, y, f" {v:.1f}k", va="center", fontsize=7)
            ax.set_xlabel("thousand instructions per op (callgrind)")
            ax.set_title("Instructions per op (do not wobble)")
        ax.invert_yaxis()
        ax.tick_params(axis="y", labelsize=7)
        ax.grid(True, axis="x", alpha=0.3)
    fig.tight_layout()
    path = out / "bench-checkout-cost.png"
    fig.savefig(path)
    plt.close(fig)
    return path


def _storm(plt: Any, data: dict[str, Any], out: Path) -> Path | None:
    r = _result(data, "storm")
    if r is None:
        return None
    fig, ax = plt.subplots(figsize=(7, 4), dpi=100)
    for name, runs in r["raw"].items():
        if not runs:
            continue
        run = sorted(runs, key=lambda x: x["opened"])[len(runs) // 2]
        xs = [t for t, _ in run["timeline"]]
        ys = [n for _, n in run["timeline"]]
        label = f"{name}: peak {run['peak_open']}, p99 wait {run['p99_wait_ms']:.0f} ms"
        ax.step(xs, ys, where="post", label=label, color=_colour(name), linewidth=1.8)
    ax.set_xlabel("ms since 50 threads started")
    ax.set_ylabel("connections open or opening")
    ax.set_title("Connection storm: 50 threads, cold pool (max 20), 150 ms connects")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = out / "bench-storm.png"
    fig.savefig(path)
    plt.close(fig)
    return path


def draw(data: dict[str, Any], out: Path) -> list[Path]:
    """Draw every chart the results allow into ``out``; the paths written."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    made = [f(plt, data, out) for f in (_latency, _cost, _storm)]
    return [p for p in made if p is not None]


def main(argv: list[str]) -> int:
    source = Path(argv[0]) if argv else HERE / "results" / "latest.json"
    out = Path(argv[1]) if len(argv) > 1 else DOCS_IMG
    for path in draw(json.loads(source.read_text()), out):
        print(f"charts: wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
