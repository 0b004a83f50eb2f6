"""The benchmark package on tiny sizes: keys, finite numbers, shares in range, the CUDA skip.

No timing is asserted anywhere (performance is measured by ``python -m benchmarks``, never
tested); these tests check that every case runs and returns the data the table is built from.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from benchmarks import __main__ as bench_main
from benchmarks import cases, gpu, instrument
from benchmarks.table import Row, Target, at_most

ROOT = Path(__file__).resolve().parents[2]


def positive(data: dict, *keys: str) -> None:
    for key in keys:
        assert math.isfinite(data[key]) and data[key] > 0, (key, data[key])


# --------------------------------------------------------------------------- CUDA skip


def test_cuda_skip_prints_one_line_and_exits_0(monkeypatch, tmp_path):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "cuda.json"
    result = CliRunner().invoke(bench_main.app, ["--device", "cuda", "--json", str(out)])
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [gpu.SKIP_NO_CUDA]
    assert not out.exists()


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_cuda_skip_as_a_command():
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--device", "cuda"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [gpu.SKIP_NO_CUDA]


# --------------------------------------------------------------------------- CPU cases


@pytest.mark.parametrize("numel", [4096, 4099])
def test_update_case(numel):
    data = cases.csign_update(numel, repeats=1, breakdown_calls=2)
    positive(data, "auto_vs_copy", "dense_vs_copy", "auto_s", "dense_s", "copy_s")
    assert data["auto_path_is_sparse"] == 1.0
    # every timed call was one update (the latent changed each time)
    assert data["auto_updates_per_call"] == data["dense_updates_per_call"] == 1.0
    assert cases.finite_numbers(data)
    for path in ("auto", "dense"):
        phases = data["breakdown"][path]["phases"]
        assert sum(phases.values()) == pytest.approx(1.0)
        assert all(-1e-9 <= share <= 1 + 1e-9 for share in phases.values()), phases
        assert "outside torch ops" in data["breakdown"][path]["ops"]
    assert "_within_threshold" in data["breakdown"]["auto"]["phases"]
    assert "order_statistic" in data["breakdown"]["dense"]["phases"]


def test_update_breakdown_leaves_the_package_as_it_was():
    from uabnn_convert.core import csign, rule, sparse

    before = (csign._same_values, csign._all_finite, sparse.sign_changes, rule.order_statistic)
    cases.csign_update(512, repeats=1, breakdown_calls=1)
    after = (csign._same_values, csign._all_finite, sparse.sign_changes, rule.order_statistic)
    assert before == after


@pytest.mark.parametrize(("m", "expected"), [(0, 5.0), (2, 13.0)])
def test_state_bytes(m, expected):
    data = cases.state_bytes(1000, m=m)
    assert data["bytes_per_element"] == expected  # window (m + 1) x 4 B + held state 1 B
    assert data["fixed_bytes_per_site"] > 0


def test_patch_case():
    data = cases.patch_time(arch="bireal_digits", repeats=1, num_classes=10)
    positive(data, "patch_vs_prepare_fx", "patch_vs_symbolic_trace", "patch_s", "prepare_fx_s")


def test_share_of_a_step_is_a_share():
    data = cases.csign_share_step(
        "bireal_digits", batch=4, size=8, num_classes=10, repeats=2, overhead_calls=100
    )
    assert 0.0 <= data["share_min"] <= data["share"] <= data["share_max"] <= 1.0
    assert data["sites"] == 3 and data["site_calls_per_step"] == 3
    assert data["updates_per_site_per_step"] == 1.0
    assert math.isfinite(data["hook_overhead_share"])
    assert cases.finite_numbers(data)


def test_stats_case():
    data = cases.stats_cost("bireal_digits", batch=4, size=8, num_classes=10, repeats=1)
    positive(data, "stats_share", "stats_uncertainty_share", "step_s")


def test_cli_startup_case():
    data = cases.cli_startup(repeats=1, warmup=0)
    positive(data, "help_vs_import_torch", "help_s", "import_torch_s")
    assert data["help_imports_torch"] == 0.0


# --------------------------------------------------------------------------- instruments


def test_site_clock_counts_calls_and_is_removed():
    module = torch.nn.Identity()
    clock = instrument.HostSiteClock([module, module])
    module(torch.zeros(1))
    assert clock.calls == 2 and clock.seconds >= 0
    clock.remove()
    clock.reset()
    module(torch.zeros(1))
    assert clock.calls == 0


def test_phase_clock_restores_owners():
    from uabnn_convert.core import sparse

    site = cases.new_site(64, 2, 0.1)
    original = sparse.sign_changes
    clock = instrument.PhaseClock({"a": (site, "_changed"), "b": (sparse, "sign_changes")})
    assert sparse.sign_changes is not original and "_changed" in vars(site)
    clock.remove()
    assert sparse.sign_changes is original and "_changed" not in vars(site)


def test_hook_overhead_is_a_number():
    assert math.isfinite(instrument.hook_overhead_per_call(calls=20, repeats=1))


# --------------------------------------------------------------------------- report


def test_quick_run_writes_table_and_json(monkeypatch, tmp_path):
    """The whole ``--quick`` command, each case shrunk to a tiny size."""
    update, patch = cases.csign_update, cases.patch_time
    monkeypatch.setattr(
        cases,
        "csign_update",
        lambda numel, repeats: update(numel // 1000, repeats=1, breakdown_calls=1),
    )
    monkeypatch.setattr(
        cases, "patch_time", lambda repeats: patch("bireal_digits", repeats=1, num_classes=10)
    )
    monkeypatch.setattr(
        cases,
        "cli_startup",
        lambda repeats: {"help_vs_import_torch": 0.1, "help_imports_torch": 0.0},
    )
    out = tmp_path / "r.json"
    result = CliRunner().invoke(bench_main.app, ["--quick", "--json", str(out)])
    assert result.exit_code == 0, result.output
    payload = json.loads(out.read_text())
    assert set(payload["cases"]) == {
        "update_1M",
        "update_11M",
        "state_bytes",
        "patch_vs_prepare_fx",
        "cli_startup",
    }
    assert payload["cases"]["update_1M"]["elements"] == 1000
    assert all(row["value"] is not None for row in payload["rows"])
    assert "c-sign update / copy_" in result.output


def test_rows_and_targets():
    assert Row("r", 3.9, "x", at_most(4)).meets is True
    assert Row("r", 4.1, "x", at_most(4)).meets is False
    assert Row("r", 0.0, "n", Target("==", 0)).meets is True
    assert Row("r", 0.5, "%").meets is None
    assert Row("r", 0.005, "%", at_most(0.01)).cells() == ("r", "0.5 %", "<= 1 %", "yes")
    assert Row("r", None, "x", at_most(1), note="error: x").cells()[1:] == ("error: x", "<= 1", "")


def test_cuda_rows_show_errors_and_values():
    data = {
        "update_11M": {"update_vs_copy": 3.0, "syncs_per_update": 0.0},
        "order_statistic_11M": {"error": "RuntimeError: boom"},
        "train_bireal_resnet18": {
            "eager": {"share": 0.02, "ratio_share": 0.03, "syncs_per_step": 0.0},
            "compiled": {"error": "BackendCompilerFailed: nope"},
        },
    }
    rows = {row.label: row for row in bench_main.cuda_rows(data)}
    eager = next(
        r for label, r in rows.items() if label.startswith("c-sign share") and "eager" in label
    )
    assert eager.value == 0.02 and eager.meets is False
    compiled = next(r for label, r in rows.items() if "torch.compile" in label)
    assert compiled.value is None and "BackendCompilerFailed" in compiled.cells()[1]
    assert any(r.value is None and "boom" in r.note for r in rows.values())


class _HostEvent:
    """Stands in for ``torch.cuda.Event`` on the CPU: the time at ``record``."""

    def __init__(self) -> None:
        self.at = 0.0

    def record(self) -> None:
        self.at = time.perf_counter()

    def synchronize(self) -> None:
        pass

    def elapsed_time(self, end: _HostEvent) -> float:
        return (end.at - self.at) * 1e3  # milliseconds, as CUDA events report


def test_cuda_cases_run_on_the_cpu_with_host_events(monkeypatch):
    """The CUDA cases' control flow (hooks, event pairs, sync counting, rows), on tiny sizes
    with host clocks in place of CUDA events; torch.compile is left to the real device."""
    monkeypatch.setattr(gpu, "_event", _HostEvent)
    monkeypatch.setattr(torch.cuda, "synchronize", lambda *a: None)
    monkeypatch.setattr(torch.cuda, "set_sync_debug_mode", lambda *a: None)
    tiny = {"arch": "bireal_digits", "batch": 4, "size": 8, "num_classes": 10}
    data = gpu.run_all(repeats=1, steps=2, compile=False, numel=4096, train=tiny, device="cpu")
    assert cases.finite_numbers({k: v for k, v in data.items() if k != "train_bireal_resnet18"})
    for case in data.values():
        assert "error" not in case, case.get("traceback")
    eager = data["train_bireal_resnet18"]["eager"]
    assert "error" not in eager, eager.get("traceback")
    assert 0.0 <= eager["share_min"] <= eager["share"] <= eager["share_max"] <= 1.0
    assert eager["site_calls_per_step"] == 3 and eager["updates_per_site_per_step"] == 1.0
    assert data["order_statistic_11M"]["agree"] == 1.0
    rows = bench_main.cuda_rows(data)
    assert all(row.value is not None for row in rows if "compile" not in row.label)
