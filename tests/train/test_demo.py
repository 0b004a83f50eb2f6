"""The demo end to end with tiny settings (one epoch per stage): what it writes, the CLI's site
table, the sign vs c-sign table, and the claim that the resumed c-sign run ends identical."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import pytest
import torch
import typer
from rich.console import Console
from typer.testing import CliRunner

from uabnn_convert import files as uio
from uabnn_convert.cli import app as cli_app
from uabnn_convert.train.analysis import epoch_curve, run_summary, state_hash
from uabnn_convert.train.demo import DemoResult, run_demo

STEPS_PER_EPOCH = 21  # 1347 training digits at the recipe's batch of 64


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> tuple[DemoResult, str, str]:
    """One demo run; its result, what its console printed, and what went to stdout."""
    threads = torch.get_num_threads()
    root = tmp_path_factory.mktemp("demo")
    console = Console(record=True, width=200, file=io.StringIO())
    stdout = io.StringIO()
    with contextlib.redirect_stdout(stdout):
        result = run_demo(root / "run", seed=0, epochs=1, console=console)
    assert torch.get_num_threads() == threads  # the demo gives the thread count back
    return result, console.export_text(), stdout.getvalue()


def test_everything_goes_to_the_run_directory(demo: tuple[DemoResult, str, str]) -> None:
    result, printed, _ = demo
    run = result.run_dir
    assert sorted(p.name for p in run.parent.iterdir()) == ["run"]
    names = {p.name for p in run.iterdir()}
    assert names == {
        "model.pt",
        "model.uabnn.pt",
        "sign",
        "csign",
        "csign_resumed",
        "flip_rate_accuracy.png",
        "summary.json",
    }
    for sub in ("sign", "csign", "csign_resumed"):
        assert (run / sub / "metrics.jsonl").is_file()
        assert (run / sub / "recipe.yaml").is_file()
    assert result.plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert str(run) in printed.splitlines()[-1]  # the run directory is named at the end
    summary = json.loads(result.summary_path.read_text())
    assert summary["resume_identical"] is True
    assert summary["csign"]["state_hash"] == summary["resumed"]["state_hash"]


def test_model_pt_is_a_plain_sign_state_dict_and_convert_file_converted_it(
    demo: tuple[DemoResult, str, str],
) -> None:
    result, printed, stdout = demo
    sd = torch.load(result.model_path, weights_only=True)
    assert not any("csign" in k for k in sd)
    converted = uio.read(result.converted_path)
    assert converted.kind == "converted"
    assert converted.record["arch"] == "bireal_digits"
    assert converted.record["config"].m == 2
    assert converted.record["config"].delta == 0.1
    assert "c-sign sites of BiRealDigits" in printed  # the table the CLI prints too
    assert "layer1.2.binary_conv.weight_csign" in printed
    assert f"wrote {result.converted_path}" in printed
    assert stdout == ""  # everything goes through the demo's console


def test_both_fine_tunes_start_from_model_pt_with_the_same_seed(
    demo: tuple[DemoResult, str, str],
) -> None:
    import yaml

    result, _, _ = demo
    recipes = {
        r.label: yaml.safe_load((r.run_dir / "recipe.yaml").read_text())
        for r in (result.sign, result.csign)
    }
    assert recipes["sign"]["model"]["init"] == str(result.model_path.resolve())
    assert recipes["c-sign"]["model"]["init"] == recipes["sign"]["model"]["init"]
    assert recipes["sign"]["seed"] == recipes["c-sign"]["seed"] == 0
    assert recipes["sign"]["csign"]["enabled"] is False
    assert recipes["c-sign"]["csign"] | {"enabled": None} == recipes["sign"]["csign"] | {
        "enabled": None
    }
    assert result.sign.summary["vetoed"] == 0  # sign is delta = 1: nothing is ever held back
    assert result.csign.summary["vetoed"] > 0
    assert result.sign.summary["updates"] == result.csign.summary["updates"] == STEPS_PER_EPOCH


def test_resumed_run_ends_bit_for_bit_identical(demo: tuple[DemoResult, str, str]) -> None:
    result, printed, _ = demo
    assert result.resume_identical and result.history_identical
    step = int(result.resumed_from.stem.split("-")[1])
    assert 0 < step < STEPS_PER_EPOCH  # a mid-epoch checkpoint, the harder case
    # Independently of the in-memory models: the final checkpoints' state_dicts.
    finals = [
        torch.load(r.run_dir / f"ckpt-{STEPS_PER_EPOCH:08d}.pt", weights_only=True)["state_dict"]
        for r in (result.csign, result.resumed)
    ]
    assert state_hash(finals[0]) == state_hash(finals[1]) == result.csign.state_hash
    assert result.csign.state_hash in printed
    assert "identical" in printed and "DIFFERENT" not in printed


def test_the_table_shows_the_numbers(demo: tuple[DemoResult, str, str]) -> None:
    result, printed, _ = demo
    for col in ("test acc (%)", "mean flip rate", "vetoed flips", "Σ f̂ (end)"):
        assert col in printed
    for row in result.table:
        line = next(ln for ln in printed.splitlines() if ln.startswith(f"│ {row['run']} "))
        for text in (
            f"{row['test_top1']:.2f}",
            f"{row['mean_flip_rate']:.3e}",
            f"{row['vetoed']:,}",
            f"{row['uncertainty']:.1f}",
        ):
            assert text in line


def test_summary_and_curve_agree_with_the_log(demo: tuple[DemoResult, str, str]) -> None:
    from uabnn_convert.train.plot import read_history

    result, _, _ = demo
    history = read_history(result.csign.run_dir)
    assert run_summary(history) == result.csign.summary
    assert epoch_curve(history) == result.csign.curve
    train = [r for r in history if r["kind"] == "train"]
    assert result.csign.summary["flips"] == sum(r["flips"] for r in train)
    # The first update only initialises the state, so STEPS - 1 updates carry flips.
    elements = 3 * 32 * 32 * 9
    expected = sum(r["flips"] for r in train) / (elements * (STEPS_PER_EPOCH - 1))
    assert result.csign.summary["mean_flip_rate"] == pytest.approx(expected, rel=1e-12)


def _demo_app() -> typer.Typer:
    return cli_app


def test_command_refuses_a_non_empty_out(tmp_path: Path) -> None:
    (tmp_path / "old.txt").write_text("keep me")
    result = CliRunner().invoke(_demo_app(), ["demo", "--out", str(tmp_path), "--epochs", "1"])
    assert result.exit_code == 2
    assert "error:" in result.output and "not an empty directory" in result.output
    assert [p.name for p in tmp_path.iterdir()] == ["old.txt"]


def test_command_rejects_zero_epochs(tmp_path: Path) -> None:
    result = CliRunner().invoke(
        _demo_app(), ["demo", "--out", str(tmp_path / "x"), "--epochs", "0"]
    )
    assert result.exit_code == 2
    assert not (tmp_path / "x").exists()
    with pytest.raises(ValueError, match="epochs"):
        run_demo(tmp_path / "y", epochs=0)
