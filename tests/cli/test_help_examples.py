"""Every example a help page shows runs as printed, in one directory, in the order a user
would type them (convert first: the later examples read its output)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import timm
import torch
import typer
from typer.testing import CliRunner

import uabnn_convert.zoo  # noqa: F401  (registers bireal_digits with timm)
from uabnn_convert.cli import app

ORDER = ("", "convert", "inspect", "freeze", "export", "finetune", "summary", "plot", "demo")
EXAMPLE = re.compile(r"^\s*(uabnn-convert\b.*?)\s*$")


def _help(command: str) -> str:
    args = [command, "--help"] if command else ["--help"]
    result = CliRunner().invoke(app, args, terminal_width=80)
    assert result.exit_code == 0, result.output
    return result.stdout


def _examples() -> list[str]:
    commands = set(typer.main.get_command(app).commands)
    assert commands <= set(ORDER), f"give {sorted(commands - set(ORDER))} a place in ORDER"
    found: list[str] = []
    for command in ORDER:
        if command and command not in commands:
            continue
        description = _help(command).split("╭")[0]  # the text above the option panels
        for line in description.splitlines():
            match = EXAMPLE.match(line)
            if match and match.group(1) not in found:
                # Short enough that an 80-column terminal shows it on one line, unwrapped.
                assert len(match.group(1)) <= 76, match.group(1)
                found.append(match.group(1))
    return found


def test_help_pages_show_no_type_on_flags() -> None:
    for command in ORDER:
        page = _help(command)
        assert "<bool>" not in page, command
        assert "Example" in page, command


def test_every_help_example_runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    torch.manual_seed(0)
    torch.save(timm.create_model("bireal_digits").state_dict(), tmp_path / "model.pt")
    examples = _examples()
    assert len(examples) >= 12, examples
    for example in examples:
        args = shlex.split(example)[1:]
        result = CliRunner().invoke(app, args)
        assert result.exit_code == 0, f"{example}\n{result.output}"
    for made in ("model.uabnn.pt", "model.frozen.pt", "model.onnx", "flips.png"):
        assert (tmp_path / made).is_file(), made
