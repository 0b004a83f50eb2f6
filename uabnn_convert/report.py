"""Reports computed as data (lists of dicts), rendered with rich only when shown."""

from __future__ import annotations

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
