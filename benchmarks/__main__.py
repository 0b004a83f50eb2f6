"""``python -m benchmarks``: every figure as a ratio measured side by side in one process.

Prints a rich table and writes JSON (``--json``, default ``benchmarks/results.json``).
``--quick`` runs the cheap cases only (c-sign update vs clone, state bytes, patch time).
"""

from __future__ import annotations

import datetime
import json
import os
import platform
from pathlib import Path

import torch
import typer
from rich.console import Console
from rich.table import Table

from . import cases

app = typer.Typer(add_completion=False)


@app.command()
def main(
    quick: bool = typer.Option(False, help="Only the cheap cases (update, state bytes, patch)."),
    repeats: int = typer.Option(9, min=7, help="Interleaved repetitions per case (median)."),
    json_out: Path = typer.Option(Path("benchmarks/results.json"), "--json", help="JSON output."),
) -> None:
    console = Console()
    rows: list[tuple[str, str, str, str]] = []
    results: dict = {
        "date": datetime.date.today().isoformat(),
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "machine": platform.machine(),
        "torch": torch.__version__,
        "cases": {},
    }

    def record(key: str, label: str, value: float, target: str, data: dict) -> None:
        results["cases"][key] = data
        rows.append((label, f"{value:.3g}", target, "yes" if _meets(value, target) else "no"))
        console.log(f"{label}: {value:.3g}")

    for numel in (1_000_000, 11_000_000):
        data = cases.csign_update(numel, repeats=repeats)
        tag = f"{numel // 1_000_000}M"
        record(
            f"update_{tag}",
            f"c-sign update / clone ({tag} elements)",
            data["update_vs_clone"],
            "<= 8",
            data,
        )
    record(
        "state_bytes",
        "c-sign state bytes per latent element (m=2)",
        data["state_bytes_per_element"],
        "<= 13",
        data,
    )
    data = cases.patch_time(repeats=repeats)
    record(
        "patch_vs_trace",
        "patch / fx.symbolic_trace (bireal_resnet18)",
        data["patch_vs_symbolic_trace"],
        "",
        data,
    )
    record(
        "patch_vs_prepare",
        "patch / torch.ao prepare_fx (resnet18)",
        data["patch_vs_prepare_fx"],
        "< 0.33",
        data,
    )
    if not quick:
        wrn = {"arch": "wrn22_64", "batch": 128, "size": 32, "num_classes": 10}
        rn = {"arch": "bireal_resnet18", "batch": 32, "size": 224, "num_classes": 1000}
        for key, spec in (("step_wrn", wrn), ("step_resnet", rn)):
            data = cases.train_step(**spec, repeats=repeats)
            label = (
                f"train step c-sign / sign ({spec['arch']}, batch {spec['batch']}, {spec['size']}²)"
            )
            record(key, label, data["csign_vs_sign"], "<= 1.03", data)
        for key, spec in (("memory_wrn", wrn),):
            data = cases.peak_memory(**spec)
            label = f"peak memory of a train step c-sign / sign ({spec['arch']})"
            record(key, label, data["csign_vs_sign"], "<= 1.10", data)

    table = Table(title=f"uabnn_convert benchmarks — {results['date']}, {results['cores']} cores")
    for col in ("measure", "value", "target", "meets"):
        table.add_column(col)
    for row in rows:
        table.add_row(*row)
    console.print(table)
    json_out.parent.mkdir(parents=True, exist_ok=True)
    json_out.write_text(json.dumps(results, indent=2))
    console.print(f"wrote {json_out}")


def _meets(value: float, target: str) -> bool:
    if not target:
        return True
    op, bound = target.split()
    return value <= float(bound) if op == "<=" else value < float(bound)


if __name__ == "__main__":
    app()
