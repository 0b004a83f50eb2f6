"""Multi-process training: ``torchrun`` with 2 CPU ranks (gloo) on the digits recipe. Both ranks
end with identical weights and c-sign state, only rank 0 writes, and the checkpoint resumes on
one process."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import torch

import uabnn_convert as uc
from uabnn_convert.train import build_model, finetune, load_recipe
from uabnn_convert.train import checkpoint as ck

SETTINGS = {
    "data.batch_size": 64,  # 32 per rank
    "log.every_steps": 2,
    "log.plot": False,
    "train.threads": 1,
}
STEPS = 4

DRIVER = textwrap.dedent(
    """
    import hashlib, json, sys
    import torch
    from uabnn_convert.train import finetune

    out, steps, settings = sys.argv[1], int(sys.argv[2]), json.loads(sys.argv[3])
    result = finetune("digits", out=out, max_steps=steps, overrides=settings, progress=False)

    def digest(items):
        h = hashlib.sha256()
        for key, value in items:
            h.update(key.encode())
            h.update(value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        return h.hexdigest()

    state = result.model.state_dict()
    csign = [(k, v) for k, v in state.items() if "_csign." in k]
    report = {
        "rank": result.rank,
        "world": result.world_size,
        "all": digest(sorted(state.items())),
        "csign": digest(sorted(csign)),
        "csign_keys": len(csign),
        "step": result.step,
    }
    with open(f"{out}.rank{result.rank}.json", "w") as f:
        json.dump(report, f)
    """
)


def _digest(state: dict[str, torch.Tensor]) -> str:
    h = hashlib.sha256()
    for key, value in sorted(state.items()):
        h.update(key.encode())
        h.update(value.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def test_torchrun_two_ranks_agree_and_the_checkpoint_resumes_on_one(tmp_path: Path) -> None:
    torchrun = shutil.which("torchrun", path=str(Path(sys.executable).parent))
    assert torchrun is not None, "torchrun is installed with torch"
    script = tmp_path / "driver.py"
    script.write_text(DRIVER)
    out = tmp_path / "run"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    proc = subprocess.run(
        [
            torchrun,
            "--standalone",
            "--nproc_per_node",
            "2",
            str(script),
            str(out),
            str(STEPS),
            json.dumps(SETTINGS),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        env=env,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    reports = [json.loads(Path(f"{out}.rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world"] for r in reports] == [2, 2]
    assert reports[0]["csign_keys"] > 0 and reports[0]["step"] == STEPS
    assert reports[0]["csign"] == reports[1]["csign"]
    assert reports[0]["all"] == reports[1]["all"]

    # Only rank 0 wrote: one log line per record, one set of checkpoints.
    log = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [(r["kind"], r["step"]) for r in log] == [("train", 2), ("train", 4), ("eval", 4)]
    record = torch.load(ck.step_checkpoints(out)[-1][1], weights_only=True)
    state = {**record["training"], "model": record["state_dict"]}
    assert state["world_size"] == 2 and state["step"] == STEPS
    assert _digest(state["model"]) == reports[0]["all"]
    model, _ = build_model(load_recipe("digits", SETTINGS))
    model.load_state_dict(state["model"])
    assert {int(s.num_updates) for _, s in uc.sites(model)} == {STEPS}

    # The two-rank checkpoint resumes on one process and keeps training.
    resumed = finetune(
        "digits", out=out, resume="latest", max_steps=STEPS + 2, overrides=SETTINGS, progress=False
    )
    assert resumed.step == STEPS + 2 and resumed.world_size == 1
    assert {int(s.num_updates) for _, s in uc.sites(resumed.model)} == {STEPS + 2}
