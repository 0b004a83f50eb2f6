"""Checkpoints and exact resume: a run killed with SIGKILL and resumed ends bit-identical to an
uninterrupted one (weights, c-sign state, optimizer state, logged losses), also mid-epoch."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from uabnn_convert.train import ResumeError, finetune
from uabnn_convert.train import checkpoint as ck

# Digits at batch 128: 10 steps per epoch. Checkpoints every 3 steps and at each epoch end;
# logs every 2 steps and at every checkpoint.
SETTINGS = {
    "data.batch_size": 128,
    "log.every_steps": 2,  # and at every checkpoint: steps 2, 3, 4, 6, 8, 9, 10, 12, 14
    "log.checkpoint_every_steps": 3,
    "log.keep_last": 2,
    "log.plot": False,
    "train.threads": 1,
}
TARGET = 14


KILLER = textwrap.dedent(
    """
    import json, os, signal, sys
    from uabnn_convert.train import finetune

    out, kill_at, target = sys.argv[1], int(sys.argv[2]), int(sys.argv[4])
    settings = json.loads(sys.argv[3])

    def kill(state):
        if state.step == kill_at:
            os.kill(os.getpid(), signal.SIGKILL)

    finetune("digits", out=out, max_steps=target, overrides=settings, progress=False,
             callbacks=[kill])
    """
)


def _killed_run(tmp_path: Path, out: Path, kill_at: int) -> None:
    script = tmp_path / "killer.py"
    script.write_text(KILLER)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, str(script), str(out), str(kill_at), json.dumps(SETTINGS), str(TARGET)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr


def _assert_same_state(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        if isinstance(a[key], torch.Tensor):
            assert a[key].dtype == b[key].dtype and torch.equal(a[key], b[key]), key
        elif isinstance(a[key], dict):
            _assert_same_state(a[key], b[key])
        elif isinstance(a[key], list):
            assert len(a[key]) == len(b[key]), key
            for x, y in zip(a[key], b[key], strict=True):
                if isinstance(x, dict):
                    _assert_same_state(x, y)
                else:
                    assert x == y, key
        else:
            assert a[key] == b[key], key


@pytest.fixture(scope="module")
def straight(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """The uninterrupted run to TARGET steps: its final checkpoint."""
    out = tmp_path_factory.mktemp("straight")
    result = finetune("digits", out=out, max_steps=TARGET, overrides=SETTINGS, progress=False)
    return _flat(result.checkpoint)


def _flat(path: Path) -> dict:
    """A checkpoint's training state with its model state_dict under ``"model"``."""
    record = torch.load(path, weights_only=True)
    assert record["kind"] == "checkpoint"
    return {**record["training"], "model": record["state_dict"]}


def _logged_values(history: list[dict]) -> list[tuple]:
    keep = ("kind", "step", "loss", "top1", "top5", "lr", "flips", "vetoed", "uncertainty")
    keep_eval = ("kind", "step", "val_loss", "val_top1", "val_top5")
    return [tuple(r[k] for k in (keep if r["kind"] == "train" else keep_eval)) for r in history]


def _assert_same_run(a: dict, b: dict, run_dir: Path) -> None:
    assert a["step"] == b["step"] == TARGET
    # Weights, BN statistics and every c-sign buffer (window, held, num_updates, ...).
    _assert_same_state(a["model"], b["model"])
    assert any(k.endswith("held") for k in a["model"])
    assert any(k.endswith("num_updates") for k in a["model"])
    _assert_same_state(a["optimizer"], b["optimizer"])
    _assert_same_state(a["scheduler"], b["scheduler"])
    assert a["rng"]["python"] == b["rng"]["python"]
    assert torch.equal(a["rng"]["torch"], b["rng"]["torch"])
    assert _logged_values(a["history"]) == _logged_values(b["history"])
    train_steps = [r["step"] for r in a["history"] if r["kind"] == "train"]
    assert train_steps == [2, 3, 4, 6, 8, 9, 10, 12, 14]
    assert a["best"] == b["best"]
    # The run directory's log was rewritten from the checkpoint: no lines of a killed process.
    log = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert _logged_values(log) == _logged_values(a["history"])


def test_sigkill_mid_epoch_then_resume_is_bit_identical(tmp_path: Path, straight: dict) -> None:
    out = tmp_path / "killed"
    # Killed at step 8: the newest checkpoint is step 6, in the middle of epoch 0 (10 steps).
    _killed_run(tmp_path, out, kill_at=8)
    logged = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert max(r["step"] for r in logged) == 8
    assert ck.step_checkpoints(out)[-1][0] == 6
    resumed = finetune(
        "digits", out=out, resume="latest", max_steps=TARGET, overrides=SETTINGS, progress=False
    )
    _assert_same_run(straight, _flat(resumed.checkpoint), out)


def test_resume_at_an_epoch_boundary_is_bit_identical(tmp_path: Path, straight: dict) -> None:
    out = tmp_path / "run"
    first = finetune("digits", out=out, max_steps=10, overrides=SETTINGS, progress=False)
    assert first.step == 10 and first.history[-1]["kind"] == "eval"
    resumed = finetune(
        "digits",
        out=out,
        resume=first.checkpoint,
        max_steps=TARGET,
        overrides=SETTINGS,
        progress=False,
    )
    _assert_same_run(straight, _flat(resumed.checkpoint), out)


def _short_run(out: Path, **kw) -> object:
    return finetune(
        "digits",
        out=out,
        max_steps=kw.pop("max_steps", 4),
        overrides=SETTINGS,
        progress=False,
        **kw,
    )


def test_checkpoint_contents_load_weights_only(tmp_path: Path) -> None:
    result = _short_run(tmp_path / "run")
    state = _flat(result.checkpoint)
    for key in ("model", "optimizer", "scheduler", "epoch", "step", "rng", "recipe", "history"):
        assert key in state, key
    assert state["step"] == 4 and state["epoch"] == 0 and state["scaler"] is None
    assert set(state["rng"]) >= {"python", "numpy", "torch"}
    assert state["recipe"]["name"] == "digits" and state["recipe"]["csign"]["delta"] == 0.1
    assert [k for k in state["model"] if k.endswith("weight_csign.window")]
    # keep_last=2 of the step checkpoints (3 and 4); best.pt points at the best evaluation.
    assert [s for s, _ in ck.step_checkpoints(result.run_dir)] == [3, 4]
    best = _flat(result.run_dir / ck.BEST_NAME)
    assert best["best"]["step"] == best["step"] == 4


def test_resume_rejects_a_different_recipe_or_model(tmp_path: Path) -> None:
    _short_run(tmp_path / "run", max_steps=2)
    with pytest.raises(ResumeError, match=r"csign\.delta: 0\.1 -> 0\.2"):
        finetune(
            "digits",
            out=tmp_path / "run",
            resume="latest",
            overrides={**SETTINGS, "csign.delta": 0.2},
            progress=False,
        )
    with pytest.raises(ResumeError, match=r"model\.kwargs"):
        finetune(
            "digits",
            out=tmp_path / "run",
            resume="latest",
            overrides={**SETTINGS, "model.kwargs": {"num_classes": 10, "width": 16}},
            progress=False,
        )
    with pytest.raises(ResumeError, match=r"csign\.enabled"):
        finetune(
            "digits",
            out=tmp_path / "run",
            resume="latest",
            sign_baseline=True,
            overrides=SETTINGS,
            progress=False,
        )
    with pytest.raises(ResumeError, match="no checkpoint"):
        finetune("digits", out=tmp_path / "empty", resume="latest", progress=False)
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"\x00garbage")
    with pytest.raises(ResumeError, match=r"cannot resume: .*junk\.pt is not a PyTorch checkpoint"):
        finetune("digits", out=tmp_path / "other", resume=junk, progress=False)


def test_atomic_save_leaves_no_partial_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    target = tmp_path / "ckpt-00000001.pt"

    def broken_save(obj, f):
        f.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(ck.torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        ck.atomic_save({"a": 1}, target)
    assert list(tmp_path.iterdir()) == []
    # Leftover temp files of a killed writer never count as checkpoints.
    (tmp_path / ".ckpt-00000009.pt.abc.tmp").write_bytes(b"partial")
    assert ck.step_checkpoints(tmp_path) == []


def test_data_order_is_restorable_and_independent_of_workers_and_ranks(tmp_path: Path) -> None:
    from test_train import write_cifar

    from uabnn_convert.train.data import build_data, train_loader
    from uabnn_convert.train.recipe import load_recipe

    spec = load_recipe("cifar10_wrn22_16", {"data.batch_size": 8}).data
    bundle = build_data(spec, write_cifar(tmp_path / "data"), seed=3)

    def batches(*, workers: int = 0, skip: int = 0, micro: int = 8, rank: int = 0, world: int = 1):
        spec.num_workers = workers
        loader = train_loader(
            bundle.train,
            spec,
            epoch=1,
            seed=3,
            micro_batch=micro,
            num_batches=80 // (micro * world),
            skip=skip,
            rank=rank,
            world=world,
        )
        return list(loader)

    full = batches()
    assert len(full) == 10
    # Augmentation is seeded per sample: worker processes draw the same crops and flips.
    for (xa, ya), (xb, yb) in zip(full, batches(workers=2), strict=True):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    # Resuming mid-epoch skips the consumed batches and sees exactly the rest.
    for (xa, _), (xb, _) in zip(full[4:], batches(skip=4), strict=True):
        assert torch.equal(xa, xb)
    # Two ranks with half batches cover, step by step, the samples one process would.
    halves = [batches(micro=4, rank=r, world=2) for r in (0, 1)]
    for step, (x, _) in enumerate(full):
        pair = torch.cat([halves[0][step][0], halves[1][step][0]])
        assert sorted(map(_key, x)) == sorted(map(_key, pair))


def _key(image: torch.Tensor) -> bytes:
    return image.numpy().tobytes()
