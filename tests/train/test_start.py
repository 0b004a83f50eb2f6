"""Where a run starts (``init=`` / ``--init``, ``arch=``) and how a resume continues it.

Priority (:mod:`uabnn_convert.train.build`): a converted file or checkpoint brings its c-sign
state and settings; keys the run sets itself (``--set csign.delta=...``) win where the state
allows (``delta``, ``threshold``), and a state-incompatible one (``m``, ``sigma``) is refused
naming the key. A resume reuses the recorded recipe; ``--epochs`` may extend a run.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import timm
import torch
from typer.testing import CliRunner

import uabnn_convert as uc
import uabnn_convert.zoo  # registers bireal_digits with timm
from uabnn_convert.cli import app as cli_app
from uabnn_convert.train import ResumeError, build_model, finetune, load_recipe
from uabnn_convert.train.errors import RecipeError

QUICK = {"data.batch_size": 128, "log.every_steps": 5, "log.plot": False, "train.epochs": 2}
STEPS_PER_EPOCH = 10  # 1347 digits training images, whole batches of 128


def _run(out: Path, **kw):
    overrides = {**QUICK, **kw.pop("overrides", {})}
    return finetune("digits", out=out, overrides=overrides, progress=False, **kw)


def test_a_state_dict_init_gives_the_weights_and_the_recipe_settings(tmp_path: Path) -> None:
    torch.manual_seed(5)
    plain = timm.create_model("bireal_digits", num_classes=10)
    torch.save(plain.state_dict(), tmp_path / "model.pt")
    model, source = build_model(load_recipe("digits"), init=tmp_path / "model.pt")
    assert (source.config.m, source.config.delta) == (2, 0.1)  # the recipe's
    assert all(int(s.num_updates) == 0 for _, s in uc.sites(model))
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in plain.state_dict().items())


def test_a_converted_file_brings_its_settings_and_explicit_keys_win(tmp_path: Path) -> None:
    torch.manual_seed(5)
    plain = timm.create_model("bireal_digits", num_classes=10)
    uc.patch(plain, m=3, delta=0.3)
    uc.save(plain, tmp_path / "m3.uabnn.pt", arch="bireal_digits", arch_kwargs={"num_classes": 10})
    recipe = load_recipe("digits")
    _, source = build_model(recipe, init=tmp_path / "m3.uabnn.pt")
    assert (source.config.m, source.config.delta) == (3, 0.3)
    changed = load_recipe("digits", {"csign.delta": 0.05})
    _, source = build_model(changed, init=tmp_path / "m3.uabnn.pt", explicit={"csign.delta": 0.05})
    assert (source.config.m, source.config.delta) == (3, 0.05)
    with pytest.raises(RecipeError, match=r"csign\.m=2 differs from the 3"):
        build_model(recipe, init=tmp_path / "m3.uabnn.pt", explicit={"csign.m": 2})


def test_a_checkpoint_of_another_run_continues_its_csign_state(tmp_path: Path) -> None:
    first = _run(tmp_path / "a", max_steps=4)
    second = _run(tmp_path / "b", init=first.checkpoint, max_steps=2)
    assert {int(s.num_updates) for _, s in uc.sites(second.model)} == {6}
    assert second.recipe.model.init == str(first.checkpoint)


def test_files_that_cannot_start_a_run_are_refused(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = timm.create_model("bireal_digits", num_classes=10)
    torch.save(model, tmp_path / "whole.pt")
    with pytest.raises(RecipeError, match="pickled model"):
        _run(tmp_path / "run", init=tmp_path / "whole.pt")
    first = _run(tmp_path / "a", max_steps=2)
    frozen = tmp_path / "frozen.pt"
    result = CliRunner().invoke(cli_app, ["freeze", str(first.checkpoint), "-o", str(frozen)])
    assert result.exit_code == 0, result.output
    with pytest.raises(RecipeError, match="frozen"):
        _run(tmp_path / "run", init=frozen)
    with pytest.raises(RecipeError, match="does not exist"):
        _run(tmp_path / "run", init=tmp_path / "missing.pt")


def test_a_factory_named_by_a_recipe_needs_trust(tmp_path: Path) -> None:
    overrides = {"model.arch": "cli_factories:digits_bnn", "model.kwargs": {}}
    with pytest.raises(uc.UabnnError, match="--trust-code"):
        _run(tmp_path / "run", overrides=overrides, max_steps=1)
    result = _run(tmp_path / "run", overrides=overrides, max_steps=1, trust_code=True)
    assert result.recipe.model.arch == "cli_factories:digits_bnn"
    # The resume trusts what the run was started with.
    resumed = _run(tmp_path / "run", resume="latest", max_steps=2)
    assert resumed.step == 2


def test_resume_reuses_the_recorded_run_and_epochs_extend_it(tmp_path: Path) -> None:
    out = tmp_path / "run"
    _run(out, max_steps=5, overrides={"csign.delta": 0.2})
    # No flag repeated: the recorded recipe (delta 0.2, 2 epochs) runs to its end.
    resumed = finetune(out=out, resume="latest", progress=False)
    assert resumed.step == 2 * STEPS_PER_EPOCH
    assert {s.delta for _, s in uc.sites(resumed.model)} == {0.2}
    with pytest.raises(ResumeError, match="already at step 20 of 20"):
        finetune(out=out, resume="latest", progress=False)
    extended = finetune(out=out, resume="latest", epochs=3, progress=False)
    assert extended.step == 3 * STEPS_PER_EPOCH
    with pytest.raises(ResumeError, match=r"train\.epochs 2: the run was laid out over 3"):
        finetune(out=out, resume="latest", epochs=2, max_steps=40, progress=False)
    with pytest.raises(ResumeError, match=r"optim\.lr: 0\.001 -> 0\.5"):
        finetune(out=out, resume="latest", epochs=4, overrides={"optim.lr": 0.5}, progress=False)
