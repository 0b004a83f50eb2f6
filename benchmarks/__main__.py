"""``python -m benchmarks``: every figure a ratio measured side by side in one process, or a
share of a step measured by instrumentation — never a bare absolute time as the headline.

    python -m benchmarks [--quick] [--repeats N] [--device cpu|cuda] [--json PATH]

Each case returns a dict of plain numbers (:mod:`benchmarks.cases`, :mod:`benchmarks.gpu`);
this module turns them into rows (label, value, target, meets), prints one rich table and
writes the JSON file: ``meta`` (date, machine, threads, load average), ``cases`` (each case's
raw data) and ``rows`` (the table as data). The default file is ``benchmarks/results.json``
for the CPU and ``benchmarks/results_cuda.json`` for CUDA, so the two never overwrite each
other.

``--quick`` keeps the cases that take seconds (update cost, state bytes, patch time, CLI
start-up) and drops the training steps and the peak-memory processes, which take minutes on
two cores. ``--device cuda`` runs :mod:`benchmarks.gpu` instead; without a CUDA device it
prints one line saying so and exits 0 (``--quick`` then has no effect).

Targets come from the issue that asked for each figure; a row without a target is context
(a breakdown, a cross-check, a baseline).
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import time
from collections.abc import Callable
from enum import StrEnum
from pathlib import Path
from typing import Any

import torch
import typer
from rich.console import Console

from . import gpu
from .table import Row, Target, at_most, render

app = typer.Typer(add_completion=False)

BREAKDOWN_ROWS = 3  # top phases / ops of each update shown in the table (all in the JSON)
CPU_SHARE_SPECS = {
    "share_wrn22_64": {"arch": "wrn22_64", "batch": 128, "size": 32, "num_classes": 10},
    "share_bireal_resnet18": {
        "arch": "bireal_resnet18",
        "batch": 32,
        "size": 224,
        "num_classes": 1000,
    },
}


class Device(StrEnum):
    cpu = "cpu"
    cuda = "cuda"


@app.command()
def main(
    quick: bool = typer.Option(
        False, help="Only the cheap cases (update, state bytes, patch, CLI start-up)."
    ),
    repeats: int = typer.Option(9, min=7, help="Interleaved repetitions per case (median)."),
    device: Device = typer.Option(
        Device.cpu, case_sensitive=False, help="cpu, or cuda for the GPU cases."
    ),
    json_out: Path | None = typer.Option(
        None, "--json", help="JSON output (default benchmarks/results[_cuda].json)."
    ),
) -> None:
    if device is Device.cuda:
        reason = gpu.skip_reason()
        if reason:
            typer.echo(reason)
            raise typer.Exit(0)
    console = Console()
    if not console.is_terminal:  # a log file: wide enough that labels do not wrap
        console = Console(width=120)
    started = time.perf_counter()
    if device is Device.cuda:
        data = gpu.run_all(repeats=max(repeats, 25), steps=max(repeats, 10))
        rows = cuda_rows(data)
    else:
        data, rows = run_cpu(console, quick=quick, repeats=repeats)
    meta = _meta(device.value, repeats, time.perf_counter() - started)
    title = f"uabnn_convert benchmarks ({device.value}) — {meta['date']}, {meta['machine']}"
    console.print(render(rows, title))
    json_out = json_out or Path(
        "benchmarks/results.json" if device is Device.cpu else "benchmarks/results_cuda.json"
    )
    json_out.parent.mkdir(parents=True, exist_ok=True)
    payload = {"meta": meta, "cases": data, "rows": [row.to_json() for row in rows]}
    json_out.write_text(json.dumps(payload, indent=2) + "\n")
    console.print(f"wrote {json_out}")


def _meta(device: str, repeats: int, seconds: float) -> dict[str, Any]:
    meta: dict[str, Any] = {
        "date": datetime.date.today().isoformat(),
        "device": device,
        "repeats": repeats,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "load_average_1min_at_end": os.getloadavg()[0],
        "python": platform.python_version(),
        "torch": torch.__version__,
        "run_seconds": seconds,
    }
    if device == "cuda":
        meta["machine"] = torch.cuda.get_device_name(0)
    else:
        meta["machine"] = f"{os.cpu_count()} cores, {platform.machine()}"
    return meta


# --------------------------------------------------------------------------------- CPU


def run_cpu(console: Console, *, quick: bool, repeats: int) -> tuple[dict, list[Row]]:
    from . import cases

    plan: list[tuple[str, Callable[[], dict], Callable[[dict], list[Row]]]] = [
        (
            "update_1M",
            lambda: cases.csign_update(1_000_000, repeats=repeats),
            lambda d: update_rows(d, "1M", at_most(4)),
        ),
        (
            "update_11M",
            lambda: cases.csign_update(11_000_000, repeats=repeats),
            lambda d: update_rows(d, "11M", None),
        ),
        ("state_bytes", lambda: cases.state_bytes(1_000_000, m=2), state_rows),
        ("patch_vs_prepare_fx", lambda: cases.patch_time(repeats=repeats), patch_rows),
        ("cli_startup", lambda: cases.cli_startup(repeats=repeats), cli_rows),
    ]
    if not quick:
        for key, spec in CPU_SHARE_SPECS.items():
            plan.append(
                (
                    key,
                    lambda spec=spec: cases.csign_share_step(**spec, repeats=repeats),
                    share_rows,
                )
            )
        plan.append(("stats_cost", lambda: cases.stats_cost(repeats=repeats), stats_rows))
        plan.append(
            (
                "memory_wrn22_64",
                lambda: cases.peak_memory("wrn22_64", batch=128, size=32, num_classes=10),
                memory_rows,
            )
        )
    data: dict[str, dict] = {}
    rows: list[Row] = []
    for key, run, to_rows in plan:
        start = time.perf_counter()
        data[key] = run()
        case_rows = to_rows(data[key])
        rows += case_rows
        console.log(f"{key} ({time.perf_counter() - start:.0f} s): {case_rows[0].cells()[1]}")
    return data, rows


def update_rows(d: dict, tag: str, target: Target | None) -> list[Row]:
    rows = [
        Row(
            f"c-sign update / copy_ ({tag} float32), auto path (eager CPU: sparse)",
            d["auto_vs_copy"],
            "x",
            target,
        ),
        Row(f"c-sign update / copy_ ({tag} float32), dense path", d["dense_vs_copy"], "x", target),
    ]
    breakdown = d.get("breakdown", {})
    for path, what in (("auto", "phases"), ("auto", "ops"), ("dense", "phases"), ("dense", "ops")):
        shares = breakdown.get(path, {}).get(what, {})
        named = [(k, v) for k, v in shares.items() if k != "other torch ops"]
        top = sorted(named, key=lambda kv: kv[1], reverse=True)[:BREAKDOWN_ROWS]
        kind = "phase (self time)" if what == "phases" else "op (self CPU)"
        rows += [Row(f"  {tag} {path} update, {kind}: {k}", v, "%") for k, v in top]
    return rows


def state_rows(d: dict) -> list[Row]:
    return [
        Row(
            f"c-sign state bytes per latent element (m={d['m']}, per-element buffers)",
            d["bytes_per_element"],
            "B",
            at_most(13),
        )
    ]


def patch_rows(d: dict) -> list[Row]:
    return [
        Row(
            f"patch / torch.ao prepare_fx ({d['model']} vs torchvision {d['reference']})",
            d["patch_vs_prepare_fx"],
            "x",
            at_most(0.33),
        ),
        Row(f"patch / fx.symbolic_trace ({d['model']})", d["patch_vs_symbolic_trace"], "x"),
    ]


def cli_rows(d: dict) -> list[Row]:
    return [
        Row(
            "CLI start-up: uabnn-convert --help / python -c 'import torch'",
            d["help_vs_import_torch"],
            "x",
            Target("<", 1),
        ),
        Row("  --help imports torch (1 = yes)", d["help_imports_torch"], "n", Target("==", 0)),
    ]


def share_rows(d: dict) -> list[Row]:
    where = f"{d['model']}, batch {d['batch']}, {d['input']}, CPU"
    return [
        Row(
            f"c-sign share of a training step ({where}; hooks)",
            d["share"],
            "%",
            at_most(0.01),
        ),
        Row("  hooks' own overhead, share of the step", d["hook_overhead_share"], "%"),
    ]


def stats_rows(d: dict) -> list[Row]:
    where = f"{d['model']}, batch {d['batch']}, {d['input']}"
    return [
        Row(f"uc.stats(model) / training step ({where})", d["stats_share"], "%", at_most(0.01)),
        Row(
            "uc.stats(model, uncertainty=True) / training step",
            d["stats_uncertainty_share"],
            "%",
        ),
    ]


def memory_rows(d: dict) -> list[Row]:
    return [
        Row(
            f"peak memory of 2 train steps c-sign / sign ({d['model']}, batch {d['batch']})",
            d["csign_vs_sign"],
            "x",
            at_most(1.10),
        )
    ]


# --------------------------------------------------------------------------------- CUDA


def _value(d: dict, *keys: str) -> tuple[float | None, str]:
    """A nested value, or None and the error that replaced it."""
    for key in keys[:-1]:
        if "error" in d:
            return None, "error: " + d["error"][:60]
        d = d.get(key, {})
    if "error" in d:
        return None, "error: " + d["error"][:60]
    return d.get(keys[-1]), ""


def cuda_rows(data: dict) -> list[Row]:
    def row(label: str, keys: tuple[str, ...], unit: str, target: Target | None = None) -> Row:
        value, note = _value(data, *keys)
        return Row(label, value, unit, target, note)

    train = "train_bireal_resnet18"
    where = "bireal_resnet18, batch 256, 224², bf16"
    return [
        row(
            f"c-sign share of a training step, eager ({where}; CUDA events in hooks)",
            (train, "eager", "share"),
            "%",
            at_most(0.01),
        ),
        row(
            "  same, ratio method: 1 - sign step / c-sign step",
            (train, "eager", "ratio_share"),
            "%",
        ),
        row(
            "c-sign share of a training step, torch.compile (ratio method: 1 - sign / c-sign)",
            (train, "compiled", "ratio_share"),
            "%",
            at_most(0.01),
        ),
        row(
            "host syncs per step, eager c-sign",
            (train, "eager", "syncs_per_step"),
            "n",
            Target("==", 0),
        ),
        row("  baseline: eager sign", (train, "eager", "sign_syncs_per_step"), "n"),
        row(
            "host syncs per step, compiled c-sign",
            (train, "compiled", "syncs_per_step"),
            "n",
            Target("==", 0),
        ),
        row("  baseline: compiled sign", (train, "compiled", "sign_syncs_per_step"), "n"),
        row(
            "c-sign updates per site per step, eager (1 = every step updated)",
            (train, "eager", "updates_per_site_per_step"),
            "n",
            Target("==", 1),
        ),
        row(
            "c-sign updates per site per step, compiled",
            (train, "compiled", "updates_per_site_per_step"),
            "n",
            Target("==", 1),
        ),
        row(
            "c-sign update / copy_ (11M float32, CUDA, dense)",
            ("update_11M", "update_vs_copy"),
            "x",
        ),
        row("  host syncs per update", ("update_11M", "syncs_per_update"), "n", Target("==", 0)),
        row(
            "order statistic at 11M float64: topk / sort",
            ("order_statistic_11M", "topk_vs_sort"),
            "x",
        ),
        row("  kthvalue / sort", ("order_statistic_11M", "kthvalue_vs_sort"), "x"),
        row("  sort / copy_ (11M float32)", ("order_statistic_11M", "sort_vs_copy"), "x"),
        row("  the three agree (1 = yes)", ("order_statistic_11M", "agree"), "n", Target("==", 1)),
    ]


if __name__ == "__main__":
    app()
