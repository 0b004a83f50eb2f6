"""Every script in examples/ runs as a user would run it (a subprocess, tiny settings) and
prints what it claims: identical outputs after restore, freeze and packing; sites found in a
model that does not trace as a whole."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"


def run_example(name: str, *args: str, cwd: Path) -> str:
    """Run ``examples/<name>`` on one thread; fail with its output if it exits non-zero."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(EXAMPLES / name), *args],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, f"{name} failed:\n{proc.stdout}\n{proc.stderr}"
    return proc.stdout


def test_train_loop(tmp_path: Path) -> None:
    out = run_example("train_loop.py", "--epochs", "1", cwd=tmp_path)
    assert "epoch 0: loss" in out and "test accuracy" in out
    assert "frozen copy gives identical eval outputs: True" in out


def test_convert_timm_model(tmp_path: Path) -> None:
    files = tmp_path / "files"
    out = run_example(
        "convert_timm_model.py", "--steps", "2", "--batch", "2", "--out", str(files), cwd=tmp_path
    )
    assert "weight-sign sites of BinaryResNet (dry run)" in out  # IR-Net ResNet-20 by default
    assert "BinaryQuantize" in out  # IR-Net's custom autograd.Function binarizer
    assert "18 sites" in out and "after 2 updates" in out
    assert "state_dict round trip: state equal True, eval outputs equal True" in out
    assert "next update identical after restore: True" in out
    assert "uc.load rebuilt BinaryResNet, state equal True, eval outputs equal True" in out
    assert {p.name for p in files.iterdir()} == {"model.csign.pt", "model.uabnn.pt"}


def test_freeze_for_deployment(tmp_path: Path) -> None:
    out = run_example("freeze_for_deployment.py", "--epochs", "1", cwd=tmp_path)
    assert "frozen: 0 c-sign sites left" in out
    assert "eval outputs identical: True" in out
    assert "its outputs identical: True" in out
    assert "uc.load_packed outputs identical: True" in out
    assert not list(tmp_path.iterdir())  # without --out nothing is left behind


def test_inspect_untraceable(tmp_path: Path) -> None:
    out = run_example("inspect_untraceable.py", "--steps", "2", cwd=tmp_path)
    assert "torch.fx.symbolic_trace(model) fails: TraceError" in out
    for site in ("body.0.conv.weight_csign", "body.1.conv.weight_csign", "refine.conv"):
        assert site in out
    assert "3 sites" in out
    assert "patched 3 sites; outputs before training unchanged: True" in out
    assert "c-sign statistics of ThirdPartyBNN" in out
    assert "the model's own assert still runs" in out


def test_binarize_outside_forward(tmp_path: Path) -> None:
    out = run_example("binarize_outside_forward.py", "--epochs", "1", cwd=tmp_path)
    assert "sign  : flips per weight in each epoch" in out
    assert "c-sign: flips per weight in each epoch" in out
    assert "state_dict round trip resumes identically: True" in out
