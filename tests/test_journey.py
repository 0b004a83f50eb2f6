"""The user's whole job, through the command line, on a model defined in the user's own file.

Train with plain sign -> save a state_dict -> ``uabnn-convert`` with non-default m/delta ->
``finetune --init`` -> SIGKILL -> ``--resume latest`` with no other flag -> ``inspect``,
``freeze``, ``freeze --packed``, ``summary`` on the last checkpoint -> ``uc.load_packed``.
Eval outputs agree at every hand-over, and the c-sign settings survive every file.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits

import uabnn_convert as uc
from uabnn_convert.files import read
from uabnn_convert.train import build_model, load_recipe
from uabnn_convert.train import checkpoint as ck

USER_MODEL = textwrap.dedent(
    """
    import torch
    import torch.nn.functional as F
    from torch import nn


    class SignSTE(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            ctx.save_for_backward(x)
            return torch.sign(x)

        @staticmethod
        def backward(ctx, grad):
            (x,) = ctx.saved_tensors
            return grad * (x.abs() <= 1).to(grad.dtype)


    class BinConv(nn.Conv2d):
        def forward(self, x):
            scale = self.weight.abs().mean(dim=(1, 2, 3), keepdim=True).detach()
            w = scale * SignSTE.apply(self.weight)
            return F.conv2d(SignSTE.apply(x), w, None, self.stride, self.padding)


    class MyBNN(nn.Module):
        def __init__(self, num_classes=10, width=16):
            super().__init__()
            self.num_classes = num_classes
            self.stem = nn.Conv2d(1, width, 3, padding=1, bias=False)
            self.bn0 = nn.BatchNorm2d(width)
            self.conv1 = BinConv(width, width, 3, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(width)
            self.conv2 = BinConv(width, width, 3, padding=1, bias=False)
            self.bn2 = nn.BatchNorm2d(width)
            self.fc = nn.Linear(width, num_classes)

        def forward(self, x):
            x = self.bn0(self.stem(x))
            x = x + self.bn1(self.conv1(x))
            x = x + self.bn2(self.conv2(x))
            return self.fc(x.mean((2, 3)))
    """
)
M, DELTA = 3, 0.2
EPOCHS = 2


def _cli(*args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(cwd)}
    proc = subprocess.run(
        [sys.executable, "-m", "uabnn_convert", *args],
        cwd=cwd,
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


def _digits() -> torch.Tensor:
    x, _ = load_digits(return_X_y=True)
    return torch.tensor(x[:128], dtype=torch.float32).view(-1, 1, 8, 8) / 16.0


def _eval(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return model.eval()(x)


def _user_model(tmp_path: Path) -> torch.nn.Module:
    """The user's MyBNN, trained a few steps with plain sign (their own loop)."""
    import mybnn  # written into tmp_path, which the test put on sys.path

    torch.manual_seed(0)
    x, y = load_digits(return_X_y=True)
    x = torch.tensor(x, dtype=torch.float32).view(-1, 1, 8, 8) / 16.0
    y = torch.tensor(y)
    model = mybnn.MyBNN()
    opt = torch.optim.Adam(model.parameters(), 1e-2)
    for _ in range(30):
        idx = torch.randint(0, len(x), (64,))
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model


def _settings(path: Path) -> tuple[int, float]:
    config = read(path).record["config"]
    return config.m, config.delta


def test_state_dict_to_deployed_file_through_the_command_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "mybnn.py").write_text(USER_MODEL)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    x = _digits()

    # 1. The user's model, trained with sign; its state_dict is all they have.
    original = _user_model(tmp_path)
    torch.save(original.state_dict(), tmp_path / "model.pt")
    expected = _eval(original, x)

    # 2. Convert with non-default settings: outputs unchanged at 0 updates, and the file is
    #    the input plus a few kB of record (no window is stored before it holds data).
    _cli("model.pt", "--arch", "mybnn:MyBNN", "--m", str(M), "--delta", str(DELTA), cwd=tmp_path)
    converted = tmp_path / "model.uabnn.pt"
    assert _settings(converted) == (M, DELTA)
    assert converted.stat().st_size <= (tmp_path / "model.pt").stat().st_size + 4096
    torch.testing.assert_close(
        _eval(uc.load(converted, trust_code=True), x), expected, rtol=0, atol=0
    )

    # 3. The harness starts from the converted file: same model, same settings (the recipe's
    #    own m=2/delta=0.1 do not override what the file was converted with).
    started, source = build_model(load_recipe("digits"), init=converted, trust_code=True)
    assert (source.config.m, source.config.delta) == (M, DELTA)
    torch.testing.assert_close(_eval(started, x), expected, rtol=0, atol=0)

    # 4. finetune --init, killed with SIGKILL after its first checkpoint.
    run_args = ["finetune", "digits", "--init", "model.uabnn.pt", "--trust-code", "-q"]
    run_args += ["--epochs", str(EPOCHS), "--set", "log.checkpoint_every_steps=4"]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(tmp_path)}
    proc = subprocess.Popen(
        [sys.executable, "-m", "uabnn_convert", *run_args], cwd=tmp_path, env=env
    )
    run_dir = tmp_path / "runs" / "digits"
    deadline = time.monotonic() + 300
    while not ck.step_checkpoints(run_dir) and proc.poll() is None:
        assert time.monotonic() < deadline, "no checkpoint within 300 s"
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = ck.step_checkpoints(run_dir)[-1][0]
    total = read(ck.step_checkpoints(run_dir)[-1][1]).record["training"]["steps_per_epoch"] * 2
    assert killed_at < total, "the run finished before it was killed"

    # 5. --resume latest, no other flag: the recorded recipe, --init and trust are reused.
    _cli("finetune", "digits", "--resume", "latest", "-q", cwd=tmp_path)
    last = ck.step_checkpoints(run_dir)[-1][1]
    assert ck.step_checkpoints(run_dir)[-1][0] == total
    assert _settings(last) == (M, DELTA)

    #    The killed-and-resumed run ends where an uninterrupted one does, bit for bit.
    _cli(*run_args, "--out", "straight", cwd=tmp_path)
    straight = read(ck.step_checkpoints(tmp_path / "straight")[-1][1]).state_dict
    resumed = read(last).state_dict
    assert straight.keys() == resumed.keys()
    for key in straight:
        assert torch.equal(straight[key], resumed[key]), key

    # 6. The last checkpoint is a converted file for every command.
    shown = json.loads(_cli("inspect", str(last), "--trust-code", "--json", cwd=tmp_path).stdout)
    assert {(row["m"], row["delta"]) for row in shown["rows"]} == {(M, DELTA)}
    assert {row["updates"] for row in shown["stats"]["rows"]} == {total}
    _cli("freeze", str(last), "-o", "frozen.pt", "--trust-code", cwd=tmp_path)
    _cli("freeze", str(last), "--packed", "-o", "packed.pt", "--trust-code", cwd=tmp_path)
    summary = json.loads(
        _cli(
            "summary", str(last), "--input-size", "1,8,8", "--trust-code", "--json", cwd=tmp_path
        ).stdout
    )
    assert summary["total"]["binary_mac_fraction"] > 0.9

    trained = _eval(uc.load(last, trust_code=True), x)
    frozen = _eval(uc.load(tmp_path / "frozen.pt", trust_code=True), x)
    packed = _eval(uc.load_packed(tmp_path / "packed.pt", trust_code=True), x)
    torch.testing.assert_close(frozen, trained, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(packed, frozen, rtol=0, atol=0)
    assert _settings(tmp_path / "frozen.pt") == (M, DELTA)
    assert (tmp_path / "frozen.pt").stat().st_size <= (tmp_path / "model.pt").stat().st_size + 4096
