"""Reports computed as data (lists of dicts), rendered with rich only when shown.

Every table the package prints (sites, statistics, summaries, packed tensors) is a
:class:`Report`: the numbers are plain data first (``to_dicts`` for scripts and JSON), and rich
renders them only when a person looks, as Larq's ``models.summary`` computes then prints.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from rich.table import Table


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (tuple, list)):
        return "×".join(str(v) for v in value)
    return str(value)


@dataclass
class Report:
    """Rows of one table plus a totals row and notes; ``to_dicts`` for scripts and JSON."""

    title: str
    columns: list[str]
    rows: list[dict[str, Any]]
    total: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @classmethod
    def totalled(
        cls,
        title: str,
        columns: list[str],
        rows: list[dict[str, Any]],
        *,
        label: tuple[str, str],
        sums: Sequence[str],
        extra: Mapping[str, Any] | None = None,
        notes: Sequence[str] = (),
    ) -> Report:
        """A report whose totals row sums the ``sums`` columns over ``rows``.

        ``label`` is ``(column, text)`` for the totals row; ``extra`` adds derived totals
        (rates, ratios) computed by the caller from the sums.
        """
        total: dict[str, Any] = {label[0]: label[1]}
        total.update({key: sum(r[key] for r in rows) for key in sums})
        total.update(extra or {})
        return cls(title, columns, rows, total, list(notes))

    def to_dicts(self) -> list[dict[str, Any]]:
        return [dict(r) for r in self.rows]

    def to_dict(self) -> dict[str, Any]:
        return {"rows": self.to_dicts(), "total": dict(self.total), "notes": list(self.notes)}

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self):
        return iter(self.to_dicts())

    def __rich__(self) -> Table:
        table = Table(title=self.title, show_footer=bool(self.total))
        for col in self.columns:
            justify = (
                "right" if self.rows and isinstance(self.rows[0].get(col), (int, float)) else "left"
            )
            table.add_column(col, footer=_fmt(self.total.get(col, "")), justify=justify)
        for row in self.rows:
            table.add_row(*(_fmt(row.get(c, "")) for c in self.columns))
        if self.notes:
            table.caption = "\n".join(self.notes)
        return table

    def __str__(self) -> str:
        from rich.console import Console

        console = Console(width=140, record=True, file=_Null())
        console.print(self)
        return console.export_text()


class _Null:
    def write(self, _: str) -> int:
        return 0

    def flush(self) -> None:
        pass


def format_bytes(n: float) -> str:
    """``1234567`` -> ``1.2 MB`` (decimal units, as file managers and ``ls -h --si`` show)."""
    if n < 1000:
        return f"{n:.0f} B"
    for unit in ("kB", "MB"):
        n /= 1000
        if n < 1000:
            return f"{n:.1f} {unit}"
    return f"{n / 1000:.1f} GB"
