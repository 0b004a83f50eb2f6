"""Rows of the benchmark report: a label, a number computed by a case, a target, and whether
the number meets it. Rendered as one rich table and kept in the JSON file next to the cases'
raw data, so the table can be rebuilt from the file alone.

Units: ``x`` a ratio of two timings, ``%`` a share (stored as a fraction, shown in percent),
``B`` bytes, ``n`` a count. A row whose case failed carries ``value=None`` and shows the
error instead of a number.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass, field
from typing import Any

from rich.table import Table

_OPS = {"<=": operator.le, "<": operator.lt, "==": operator.eq}


@dataclass(frozen=True)
class Target:
    op: str
    bound: float

    def met(self, value: float) -> bool:
        return _OPS[self.op](value, self.bound)


@dataclass
class Row:
    label: str
    value: float | None
    unit: str = "x"
    target: Target | None = None
    note: str = field(default="")

    @property
    def meets(self) -> bool | None:
        if self.target is None or self.value is None or not math.isfinite(self.value):
            return None
        return self.target.met(self.value)

    def cells(self) -> tuple[str, str, str, str]:
        target = "" if self.target is None else f"{self.target.op} {fmt(self.target.bound, self)}"
        meets = {True: "yes", False: "no", None: ""}[self.meets]
        value = fmt(self.value, self) if self.value is not None else (self.note or "n/a")
        return self.label, value, target, meets

    def to_json(self) -> dict[str, Any]:
        return {
            "measure": self.label,
            "value": self.value,
            "unit": self.unit,
            "target": None if self.target is None else f"{self.target.op} {self.target.bound}",
            "meets": self.meets,
            **({"note": self.note} if self.note else {}),
        }


def fmt(value: float, row: Row) -> str:
    if row.unit == "%":
        return f"{100 * value:.3g} %"
    if row.unit == "n":
        return f"{value:g}"
    if row.unit == "B":
        return f"{value:.6g} B"
    return f"{value:.3g}"


def at_most(bound: float) -> Target:
    return Target("<=", bound)


def render(rows: list[Row], title: str) -> Table:
    table = Table(title=title)
    for column in ("measure", "value", "target", "meets"):
        table.add_column(column)
    for row in rows:
        table.add_row(*row.cells())
    return table
