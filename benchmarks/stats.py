"""Result types shared by the measures and the report: repeated samples, rows, targets."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field
from typing import Any

__all__ = ["NOT_MEASURED", "Column", "Result", "Row", "Stat", "Target"]

NOT_MEASURED = "not measured"


@dataclass
class Stat:
    """Samples of one quantity, one per repeat; shown as median (min-max)."""

    samples: list[float]

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def lo(self) -> float:
        return min(self.samples)

    @property
    def hi(self) -> float:
        return max(self.samples)

    @property
    def iqr(self) -> tuple[float, float]:
        if len(self.samples) < 4:
            return self.lo, self.hi
        q1, _, q3 = statistics.quantiles(self.samples, n=4, method="inclusive")
        return q1, q3

    def to_json(self) -> dict[str, Any]:
        q1, q3 = self.iqr
        return {
            "median": self.median,
            "min": self.lo,
            "max": self.hi,
            "q1": q1,
            "q3": q3,
            "samples": self.samples,
        }


Cell = Stat | float | int | str | None


@dataclass(frozen=True)
class Column:
    """A table column: ``key`` in each row's cells, its header, and a format for numbers."""

    key: str
    header: str
    fmt: str = ".2f"


@dataclass
class Row:
    subject: str
    cells: dict[str, Cell]


@dataclass
class Target:
    """A goal from the issue; ``met`` is None when it could not be judged in this run."""

    text: str
    met: bool | None
    value: str


@dataclass
class Result:
    """What one measure found; ``skipped`` says why it did not run."""

    name: str
    title: str
    what: str
    baseline: str
    columns: list[Column] = field(default_factory=list)
    rows: list[Row] = field(default_factory=list)
    targets: list[Target] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    skipped: str | None = None
    seconds: float = 0.0
    raw: dict[str, Any] = field(default_factory=dict)
