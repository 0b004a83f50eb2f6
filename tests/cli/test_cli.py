"""The command line (issue #5) and the file side of the API (``uabnn_convert.files``).

Bad input must give one ``error: …`` line on stderr, the documented exit code (2: the command
line must change, 1: a file could not be read/converted/written) and leave the directory
exactly as it was. A representative set runs through the real console script in subprocesses
(started together, since each pays ~3 s of torch import); the rest uses typer's CliRunner.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import runpy
import shutil
import subprocess
import sys
from pathlib import Path

import cli_factories  # tests/ is on sys.path under pytest; --arch cli_factories:… imports it
import pytest
import timm
import torch
import typer
from typer.testing import CliRunner

import uabnn_convert as uc
import uabnn_convert.zoo  # registers bireal_digits with timm
from uabnn_convert import files as uio
from uabnn_convert.cli import app
from uabnn_convert.errors import CheckpointError
from uabnn_convert.files import load
from uabnn_convert.files import save as save_converted

TESTS = Path(__file__).resolve().parents[1]
SCRIPT = Path(sys.executable).parent / "uabnn-convert"
ARCH = ["--arch", "bireal_digits"]
runner = CliRunner()


# ------------------------------------------------------------------------------------ fixtures


def _digits(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return timm.create_model("bireal_digits")


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Every kind of input file, written once; tests copy what they need into their own dir."""
    d = tmp_path_factory.mktemp("inputs")
    model = _digits()
    sd = model.state_dict()
    torch.save(sd, d / "sd.pt")
    torch.save(
        {
            "epoch": 7,
            "optimizer": {"state": {}, "param_groups": []},
            "model_state_dict": {f"module.{k}": v for k, v in sd.items()},
        },
        d / "ckpt.pt",
    )
    torch.save(model, d / "mod.pt")
    torch.save(cli_factories.tiny_bnn(width=6).state_dict(), d / "tiny.pt")
    torch.save(cli_factories.plain_mlp().state_dict(), d / "plain.pt")
    (d / "empty.pt").write_bytes(b"")
    (d / "random.pt").write_bytes(random.Random(0).randbytes(4096))
    (d / "text.pt").write_text("epoch,loss\n1,0.5\n")
    data = (d / "sd.pt").read_bytes()
    (d / "truncated.pt").write_bytes(data[: len(data) // 2])
    return {p.stem: p for p in d.iterdir()}


def put(tmp_path: Path, files: dict[str, Path], *names: str) -> list[Path]:
    """Copy input files into the test's own directory."""
    return [Path(shutil.copy(files[n], tmp_path / files[n].name)) for n in names]


def snapshot(directory: Path) -> dict[str, tuple[int, int, str]]:
    """Name -> (size, mtime, digest) of every file below ``directory``, hidden ones included."""
    return {
        str(p.relative_to(directory)): (
            p.stat().st_size,
            p.stat().st_mtime_ns,
            hashlib.sha1(p.read_bytes()).hexdigest(),
        )
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def cli(*args: object) -> object:
    return runner.invoke(app, [str(a) for a in args], catch_exceptions=False)


def assert_error(result: object, code: int, *fragments: str) -> str:
    """Exit code, exactly one ``error:`` line on stderr containing ``fragments``, no stdout."""
    lines = result.stderr.splitlines()
    assert result.exit_code == code, (result.exit_code, result.stderr, result.stdout)
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.stderr
    for fragment in fragments:
        assert fragment in lines[0], (fragment, lines[0])
    assert result.stdout == ""
    return lines[0]


# ------------------------------------------------------------ the real console script (subprocess)

# name -> (input files, arguments, expected exit code, fragments of the one stderr line or None)
CONSOLE_CASES = {
    "bare_convert": (["sd"], ["sd.pt", "--m", "2", "--delta", "0.1", *ARCH], 0, None),
    "missing": ([], ["nope.pt", *ARCH], 2, ["nope.pt", "does not exist"]),
    "random": (["random"], ["random.pt", *ARCH], 1, ["not a PyTorch checkpoint"]),
    "mismatch": (
        ["sd"],
        ["sd.pt", "--arch", "cli_factories:tiny_bnn"],
        1,
        ["does not fit cli_factories:tiny_bnn", "missing key(s)", "unexpected key(s)"],
    ),
    "pickle": (["mod"], ["mod.pt"], 2, ["--trust-pickle", "runs code", "off by default"]),
}


@pytest.fixture(scope="module")
def console_runs(
    files: dict[str, Path], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, tuple[subprocess.CompletedProcess, dict, dict, Path]]:
    """Run every console case at once (2 cores: about half the wall time of running in turn)."""
    env = {**os.environ, "PYTHONPATH": str(TESTS), "COLUMNS": "200", "OMP_NUM_THREADS": "1"}
    procs = {}
    for name, (inputs, args, _, _) in CONSOLE_CASES.items():
        d = tmp_path_factory.mktemp(name)
        put(d, files, *dict.fromkeys(inputs))
        before = snapshot(d)
        p = subprocess.Popen(
            [str(SCRIPT), *args], cwd=d, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        procs[name] = (p, args, before, d)
    out = {}
    for name, (p, args, before, d) in procs.items():
        stdout, stderr = p.communicate(timeout=300)
        done = subprocess.CompletedProcess(args, p.returncode, stdout.decode(), stderr.decode())
        out[name] = (done, before, snapshot(d), d)
    return out


@pytest.mark.parametrize("name", [n for n, c in CONSOLE_CASES.items() if c[2] != 0])
def test_console_script_errors(console_runs: dict, name: str) -> None:
    done, before, after, _ = console_runs[name]
    _, _, code, fragments = CONSOLE_CASES[name]
    lines = done.stderr.splitlines()
    assert done.returncode == code, done.stderr
    assert len(lines) == 1 and lines[0].startswith("error: "), done.stderr
    assert all(f in lines[0] for f in fragments), lines[0]
    assert done.stdout == ""
    assert after == before


def test_console_script_bare_convert(console_runs: dict, files: dict[str, Path]) -> None:
    done, _, _, d = console_runs["bare_convert"]
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert "layer1.0.binary_conv.weight_csign" in done.stdout and "bireal" in done.stdout
    assert "wrote sd.uabnn.pt" in done.stdout and "3 c-sign sites" in done.stdout
    assert sorted(p.name for p in d.iterdir()) == ["sd.pt", "sd.uabnn.pt"]
    model = load(d / "sd.uabnn.pt")
    assert [(s.m, s.delta, s.sigma) for _, s in uc.sites(model)] == [(2, 0.1, "std")] * 3
    original = torch.load(files["sd"], weights_only=True)
    sd = model.state_dict()
    assert all(torch.equal(sd[k], v) for k, v in original.items())


def test_python_dash_m_runs_the_cli(monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    monkeypatch.setattr(sys, "argv", ["uabnn_convert", "--version"])
    with pytest.raises(SystemExit) as exit_info:
        runpy.run_module("uabnn_convert", run_name="__main__")
    assert exit_info.value.code == 0
    assert capsys.readouterr().out.startswith(f"uabnn-convert {uc.__version__}")


def test_factory_arch(tmp_path: Path, files: dict[str, Path]) -> None:
    (src,) = put(tmp_path, files, "tiny")
    result = cli(src, "--arch", "cli_factories:tiny_bnn", "--arch-kwarg", "width=6")
    assert result.exit_code == 0, result.stderr
    record = torch.load(tmp_path / "tiny.uabnn.pt", weights_only=True)
    assert record["arch"] == "cli_factories:tiny_bnn" and record["arch_kwargs"] == {"width": 6}


# --------------------------------------------------------------------------- bad input (runner)

BAD_SETTINGS = [
    (["--m", "-1"], "--m -1"),
    (["--m", "abc"], "--m abc"),
    (["--m", "1.5"], "--m 1.5"),
    (["--delta", "0"], "--delta 0"),
    (["--delta", "1.5"], "--delta 1.5"),
    (["--delta", "nan"], "--delta nan"),
    (["--delta", "x"], "--delta x"),
    (["--sigma", "foo"], "--sigma foo"),
    (["--sigma", "-1"], "--sigma -1"),
    (["--sigma", "0"], "--sigma 0"),
    (["--sigma", "inf"], "--sigma inf"),
]


@pytest.mark.parametrize(("args", "fragment"), BAD_SETTINGS)
def test_bad_settings_are_usage_errors(
    tmp_path: Path, files: dict[str, Path], args: list[str], fragment: str
) -> None:
    """Checked before anything is loaded: even a garbage input gives the settings error."""
    (src,) = put(tmp_path, files, "random")
    before = snapshot(tmp_path)
    assert_error(cli(src, *ARCH, *args), 2, fragment)
    assert snapshot(tmp_path) == before


# name -> (inputs, args relative to the test dir, exit code, fragments)
BAD_INPUT = {
    "missing": ([], ["nope.pt", *ARCH], 2, ["does not exist"]),
    "directory": ([], [".", *ARCH], 2, ["is a directory"]),
    "empty": (["empty"], ["empty.pt", *ARCH], 1, ["is empty"]),
    "random": (["random"], ["random.pt", *ARCH], 1, ["not a PyTorch checkpoint"]),
    "text": (["text"], ["text.pt", *ARCH], 1, ["is a text file"]),
    "truncated": (["truncated"], ["truncated.pt", *ARCH], 1, ["truncated or corrupted"]),
    "shape_mismatch": (
        ["sd"],
        ["sd.pt", *ARCH, "--arch-kwarg", "width=16"],
        1,
        ["does not fit bireal_digits(width=16)", "conv1.weight: 32×1×3×3 in the file"],
    ),
    "key_mismatch": (
        ["sd"],
        ["sd.pt", "--arch", "cli_factories:tiny_bnn"],
        1,
        ["missing key(s) (0.weight", "unexpected key(s) (conv1.weight"],
    ),
    "unknown_arch": (["sd"], ["sd.pt", "--arch", "bireal_digitz"], 2, ["unknown architecture"]),
    "no_arch": (["sd"], ["sd.pt"], 2, ["is a state_dict", "--arch"]),
    "factory_raises": (
        ["sd"],
        ["sd.pt", "--arch", "cli_factories:broken"],
        1,
        ["cli_factories:broken raised RuntimeError: factory exploded"],
    ),
    "factory_not_module": (
        ["sd"],
        ["sd.pt", "--arch", "cli_factories:not_a_model"],
        1,
        ["not a torch.nn.Module"],
    ),
    "factory_missing_module": (
        ["sd"],
        ["sd.pt", "--arch", "no_such_pkg.models:build"],
        2,
        ["cannot import 'no_such_pkg.models'"],
    ),
    "factory_missing_attr": (
        ["sd"],
        ["sd.pt", "--arch", "cli_factories:nope"],
        2,
        ["has no attribute 'nope'"],
    ),
    "no_site": (
        ["plain"],
        ["plain.pt", "--arch", "cli_factories:plain_mlp"],
        1,
        ["no weight-sign site found in Sequential"],
    ),
    "include_matches_nothing": (
        ["sd"],
        ["sd.pt", *ARCH, "--include", "head.*"],
        1,
        ["['head.*'] match no weight-sign site"],
    ),
    "pickle_without_flag": (["mod"], ["mod.pt"], 2, ["--trust-pickle", "BiRealDigits"]),
    "output_exists": (["sd"], ["sd.pt", *ARCH, "-o", "sd.pt"], 2, ["is the input file"]),
    "output_dir_missing": (["sd"], ["sd.pt", *ARCH, "-o", "no/dir/x.pt"], 2, ["does not exist"]),
    "bad_arch_kwarg": (["sd"], ["sd.pt", *ARCH, "--arch-kwarg", "width"], 2, ["key=value"]),
    "timm_weights_kwarg": (
        ["sd"],
        ["sd.pt", *ARCH, "--arch-kwarg", "pretrained=true"],
        2,
        ["'pretrained' is not allowed"],
    ),
    "unknown_option": (["sd"], ["sd.pt", "--mm", "2"], 2, ["No such option: --mm"]),
}


@pytest.mark.parametrize("name", list(BAD_INPUT))
def test_bad_input_one_line_nothing_written(
    tmp_path: Path, files: dict[str, Path], name: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    inputs, args, code, fragments = BAD_INPUT[name]
    put(tmp_path, files, *inputs)
    monkeypatch.chdir(tmp_path)
    before = snapshot(tmp_path)
    assert_error(cli(*args), code, *fragments)
    assert snapshot(tmp_path) == before


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        (("{src}", "--arch", "nosuch_net"), "unknown architecture 'nosuch_net'"),
        (("{src}", "--arch", "bireal_digits", "--m", "-1"), "--m -1"),
        (("freeze", "{src}", "--arch", "nosuch_net"), "unknown architecture"),
        (("freeze", "{src}", "--arch-kwarg", "width"), "--arch-kwarg 'width'"),
        (("export", "{src}", "--input-size", "abc"), "--input-size 'abc'"),
        (("export", "{src}", "--arch", "nosuch_net"), "unknown architecture"),
    ],
)
def test_argument_errors_come_before_the_output_exists_check(
    tmp_path: Path, files: dict[str, Path], args: tuple[str, ...], fragment: str
) -> None:
    (src,) = put(tmp_path, files, "sd")
    for name in ("sd.uabnn.pt", "sd.frozen.pt", "sd.onnx"):
        (tmp_path / name).write_bytes(b"old")
    before = snapshot(tmp_path)
    message = assert_error(cli(*(a.format(src=src) for a in args)), 2, fragment)
    assert "already exists" not in message
    assert snapshot(tmp_path) == before


def test_existing_output_needs_force_and_input_is_never_replaced(
    tmp_path: Path, files: dict[str, Path]
) -> None:
    (src,) = put(tmp_path, files, "sd")
    out = tmp_path / "sd.uabnn.pt"
    out.write_bytes(b"old")
    before = snapshot(tmp_path)
    assert_error(cli(src, *ARCH), 2, "already exists", "--force")
    assert_error(cli(src, *ARCH, "-o", src, "--force"), 2, "is the input file")
    link = tmp_path / "link.pt"
    link.symlink_to(src)
    assert_error(cli(src, *ARCH, "-o", link, "--force"), 2, "is the input file")
    link.unlink()
    assert snapshot(tmp_path) == before
    result = cli(src, *ARCH, "--force")
    assert result.exit_code == 0, result.stderr
    assert out.read_bytes() != b"old" and load(out) is not None


def test_unwritable_output_directory(tmp_path: Path, files: dict[str, Path]) -> None:
    (src,) = put(tmp_path, files, "sd")
    if os.geteuid() == 0:  # root writes anywhere a mode allows; /sys refuses even root
        target = Path("/sys")
    else:
        target = tmp_path / "locked"
        target.mkdir(mode=0o500)
    before = snapshot(tmp_path)
    assert_error(cli(src, *ARCH, "-o", target / "x.pt"), 1, "cannot write to", "choose another")
    assert snapshot(tmp_path) == before and not (target / "x.pt").exists()


def test_already_converted_and_not_converted_files(tmp_path: Path, files: dict[str, Path]) -> None:
    (src,) = put(tmp_path, files, "sd")
    assert cli(src, *ARCH).exit_code == 0
    before = snapshot(tmp_path)
    assert_error(cli(tmp_path / "sd.uabnn.pt", "-o", tmp_path / "x.pt"), 1, "already converted")
    assert_error(cli("freeze", src), 1, "plain state_dict", "convert first")
    assert_error(cli("inspect", tmp_path / "gone.pt"), 2, "does not exist")
    assert snapshot(tmp_path) == before


def test_interrupted_write_leaves_nothing(
    tmp_path: Path, files: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ctrl-C in the middle of writing: no output, no temporary file, exit 130."""
    (src,) = put(tmp_path, files, "sd")
    before = snapshot(tmp_path)
    real_save = torch.save

    def save_then_interrupt(obj: object, f: object, *args: object, **kwargs: object) -> None:
        real_save(obj, f, *args, **kwargs)
        f.write(b"partial")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", save_then_interrupt)
    assert_error(cli(src, *ARCH), 130, "interrupted")
    assert snapshot(tmp_path) == before


def test_atomic_save_replaces_whole_or_not_at_all(tmp_path: Path) -> None:
    path = tmp_path / "x.pt"
    uio.atomic_save({"v": 1}, path)
    assert torch.load(path, weights_only=True) == {"v": 1}
    assert oct(path.stat().st_mode & 0o777) == oct(0o666 & ~_umask())

    class Boom:
        def __reduce__(self) -> tuple:
            raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        uio.atomic_save({"v": Boom()}, path)
    assert torch.load(path, weights_only=True) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["x.pt"]


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# ---------------------------------------------------------------------------- working commands


def test_checkpoint_dict_with_dataparallel_prefix(tmp_path: Path, files: dict[str, Path]) -> None:
    (src,) = put(tmp_path, files, "ckpt")
    result = cli(src, *ARCH, "--m", "3", "--delta", "0.25", "--sigma", "0.05")
    assert result.exit_code == 0, result.stderr
    notes = result.stderr.splitlines()
    assert any("ignored checkpoint entries epoch, optimizer" in n for n in notes), notes
    assert any("'module.' prefix" in n for n in notes), notes
    model = load(tmp_path / "ckpt.uabnn.pt")
    assert {(s.m, s.delta, s.sigma) for _, s in uc.sites(model)} == {(3, 0.25, 0.05)}
    original = torch.load(files["sd"], weights_only=True)
    assert all(torch.equal(model.state_dict()[k], v) for k, v in original.items())


def test_converted_file_is_weights_only_and_self_describing(
    tmp_path: Path, files: dict[str, Path]
) -> None:
    (src,) = put(tmp_path, files, "sd")
    out = tmp_path / "out.pt"
    args = ["--include", "layer1.*", "--exclude", "layer1.1*", "-o", out]
    assert cli(src, *ARCH, "--arch-kwarg", "num_classes=10", *args).exit_code == 0
    record = torch.load(out, weights_only=True)
    assert record["format"] == "uabnn-convert" and record["format_version"] == 2
    assert record["package_version"] == uc.__version__ and record["kind"] == "converted"
    assert record["arch"] == "bireal_digits" and record["arch_kwargs"] == {"num_classes": 10}
    settings = record["config"]
    assert (settings["m"], settings["delta"], settings["sigma"]) == (2, 0.1, "std")
    assert settings["include"] == ["layer1.*"] and settings["exclude"] == ["layer1.1*"]
    model = load(out)
    assert [n for n, _ in uc.sites(model)] == [
        "layer1.0.binary_conv.weight_csign",
        "layer1.2.binary_conv.weight_csign",
    ]


def test_json_report(tmp_path: Path, files: dict[str, Path]) -> None:
    (src,) = put(tmp_path, files, "sd")
    result = cli(src, *ARCH, "--json")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["command"] == "convert" and data["output"] == str(tmp_path / "sd.uabnn.pt")
    assert len(data["rows"]) == 3 and data["total"]["elements"] == 3 * 32 * 32 * 9
    assert (
        data["rows"][0]["shape"] == [32, 32, 3, 3]
        and data["rows"][0]["family"] == "bireal/reactnet"
    )
    assert data["settings"] == uc.ConvertConfig().to_dict()


def test_inspect_dry_run_writes_nothing(tmp_path: Path, files: dict[str, Path]) -> None:
    (src,) = put(tmp_path, files, "sd")
    before = snapshot(tmp_path)
    result = cli("inspect", src, *ARCH)
    assert result.exit_code == 0, result.stderr
    assert "would convert 3 sites" in result.stdout and "nothing written" in result.stdout
    assert "layer1.2.binary_conv.weight_csign" in result.stdout
    assert snapshot(tmp_path) == before
    (plain,) = put(tmp_path, files, "plain")
    before = snapshot(tmp_path)
    assert_error(cli("inspect", plain, "--arch", "cli_factories:plain_mlp"), 1, "no weight-sign")
    assert snapshot(tmp_path) == before


def _train(model: torch.nn.Module, steps: int) -> None:
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    model.train()
    torch.manual_seed(1)
    for _ in range(steps):
        x, y = torch.rand(16, 1, 8, 8), torch.randint(0, 10, (16,))
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()
    model(torch.rand(2, 1, 8, 8))  # the last step's weights reach the c-sign state


def test_inspect_converted_file_shows_settings_and_stats(tmp_path: Path) -> None:
    """No --arch needed: the file says how to rebuild the model; stats come from its state."""
    model = uc.patch(_digits(), m=1, delta=0.2)
    _train(model, 4)
    path = save_converted(model, tmp_path / "trained.pt", arch="bireal_digits")
    before = snapshot(tmp_path)
    result = cli("inspect", path)
    assert result.exit_code == 0, result.stderr
    assert "architecture: bireal_digits" in result.stdout
    assert "settings: m=1 delta=0.2 sigma=std" in result.stdout
    assert "5 updates so far" in result.stdout and "flip_rate" in result.stdout
    data = json.loads(cli("inspect", path, "--json").stdout)
    assert data["kind"] == "converted" and data["settings"]["m"] == 1
    expected = uc.stats(model, uncertainty=True).to_dict()["total"]
    assert data["stats"]["total"]["flips"] == expected["flips"]
    assert data["stats"]["total"]["updates"] == 5
    assert snapshot(tmp_path) == before


def test_load_restores_held_state_exactly(tmp_path: Path) -> None:
    model = uc.patch(_digits(), m=2, delta=0.1)
    _train(model, 5)
    path = save_converted(model, tmp_path / "m.pt", arch="bireal_digits")
    again = load(path)
    a, b = model.state_dict(), again.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    x = torch.rand(8, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(model.eval()(x), again.eval()(x))


def test_save_converted_records_per_site_overrides(tmp_path: Path) -> None:
    model = uc.patch(_digits(), m=2, overrides={"layer1.2.*": {"m": 4, "sigma": 0.1}})
    again = load(save_converted(model, tmp_path / "o.pt", arch="bireal_digits"))
    assert [(s.m, s.sigma) for _, s in uc.sites(again)] == [(2, "std"), (2, "std"), (4, 0.1)]


def test_freeze_writes_deployable_file(tmp_path: Path) -> None:
    model = uc.patch(_digits())
    _train(model, 3)
    src = save_converted(model, tmp_path / "m.uabnn.pt", arch="bireal_digits")
    result = cli("freeze", src, "--json")
    assert result.exit_code == 0, result.stderr
    data = json.loads(result.stdout)
    out = tmp_path / "m.frozen.pt"
    assert data["output"] == str(out) and data["binary_weights"] == 27648
    assert data["packed_bytes"] == math.ceil(9216 / 8) * 3 and data["binary_bytes"] == 27648 * 4
    record = torch.load(out, weights_only=True)
    assert record["kind"] == "frozen" and record["arch"] == "bireal_digits"
    frozen = load(out)
    assert not list(uc.sites(frozen))
    x = torch.rand(8, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(frozen(x), model.eval()(x))
    table = cli("inspect", out)
    assert table.exit_code == 0 and "packed at 1 bit each" in table.stdout
    before = snapshot(tmp_path)
    assert_error(cli("freeze", out, "-o", tmp_path / "again.pt"), 1, "already frozen")
    assert_error(cli("freeze", src), 2, "already exists")
    assert snapshot(tmp_path) == before


def test_pickled_module_with_opt_in(tmp_path: Path, files: dict[str, Path]) -> None:
    (src,) = put(tmp_path, files, "mod")
    result = cli(src, "--trust-pickle")
    assert result.exit_code == 0, result.stderr
    assert "records no architecture" in result.stderr
    out = tmp_path / "mod.uabnn.pt"
    assert_error(cli("inspect", out), 2, "records no architecture", "--arch")
    assert cli("inspect", out, *ARCH).exit_code == 0
    assert cli(src, "--trust-pickle", *ARCH, "-o", tmp_path / "b.pt").exit_code == 0
    assert torch.load(tmp_path / "b.pt", weights_only=True)["arch"] == "bireal_digits"


def test_file_named_factory_needs_trust(tmp_path: Path, files: dict[str, Path]) -> None:
    """A file that names code to call is as dangerous as a pickle: opt in, or name it yourself."""
    (src,) = put(tmp_path, files, "tiny")
    assert cli(src, "--arch", "cli_factories:tiny_bnn", "--arch-kwarg", "width=6").exit_code == 0
    out = tmp_path / "tiny.uabnn.pt"
    assert_error(cli("inspect", out), 2, "names the factory cli_factories:tiny_bnn", "--trust-code")
    assert cli("inspect", out, "--trust-code").exit_code == 0
    assert cli("inspect", out, "--arch", "cli_factories:tiny_bnn").exit_code == 0
    with pytest.raises(CheckpointError, match="trust_code=True"):
        load(out)
    model = load(out, trust_code=True)
    assert [n for n, _ in uc.sites(model)] == ["0.weight_csign", "2.weight_csign"]


def test_load_refuses_other_files(tmp_path: Path, files: dict[str, Path]) -> None:
    with pytest.raises(CheckpointError, match="not a file written by uabnn-convert"):
        load(files["sd"])
    with pytest.raises(CheckpointError, match="--trust-pickle"):
        load(files["mod"])
    saved = save_converted(uc.patch(_digits()), tmp_path / "a.pt", arch="bireal_digits")
    record = torch.load(saved, weights_only=True)
    torch.save({**record, "format_version": 99}, tmp_path / "new.pt")
    with pytest.raises(CheckpointError, match="newer uabnn-convert"):
        load(tmp_path / "new.pt")


# ------------------------------------------------------------------------------------ help


def test_version_and_help() -> None:
    version = cli("--version")
    assert version.exit_code == 0 and version.stdout.startswith(f"uabnn-convert {uc.__version__}")
    top = cli("--help")
    assert top.exit_code == 0
    listed = set(typer.main.get_command(app).commands)
    assert {"convert", "inspect", "freeze", "summary", "export", "finetune"} <= listed
    assert all(f"│ {name} " in top.stdout for name in listed)
    assert "uabnn-convert model.pt --arch" in top.stdout
    for command in sorted(listed):  # every listed command has a working help with an example
        page = cli(command, "--help")
        assert page.exit_code == 0 and "Example" in page.stdout, command
        assert f"uabnn-convert {'' if command == 'convert' else command + ' '}" in page.stdout
    no_args = cli()
    assert no_args.exit_code == 2 and "Usage" in no_args.stdout


def test_convert_captures_an_untraceable_model_given_its_input_size(tmp_path: Path) -> None:
    """BinaryNet's ``input.size(1) != 3`` branch refuses the trace: convert needs example
    inputs, from --input-size (or the model's pretrained_cfg); the file then loads and runs."""
    from upstream import misc_patterns

    torch.manual_seed(0)
    original = misc_patterns.make_shape_branch().eval()
    src = tmp_path / "net.pt"
    torch.save(original.state_dict(), src)
    arch = ("--arch", "upstream.misc_patterns:make_shape_branch")
    assert_error(cli(src, *arch), 1, "cannot be traced", "--input-size C,H,W")
    assert not (tmp_path / "net.uabnn.pt").exists()
    result = cli(src, *arch, "--input-size", "3,8,8")
    assert result.exit_code == 0, result.stderr
    loaded = load(tmp_path / "net.uabnn.pt", trust_code=True).eval()
    assert [n for n, _ in uc.sites(loaded)] == ["convs.1.weight_csign", "convs.2.weight_csign"]
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(loaded(x), original(x))
