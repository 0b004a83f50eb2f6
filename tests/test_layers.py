"""The package's architecture: one-way layers (import-linter, as CI runs it), no import cycle
anywhere (imports inside functions counted), and a command line that stays light."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grimp

ROOT = Path(__file__).resolve().parents[1]


def _cycles(graph: grimp.ImportGraph, package: str) -> list[list[str]]:
    """Every strongly connected group of more than one module (Tarjan), as sorted lists."""
    modules = sorted(m for m in graph.modules if m == package or m.startswith(package + "."))
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []
    counter = 0

    def visit(node: str) -> None:
        nonlocal counter
        index[node] = low[node] = counter
        counter += 1
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(graph.find_modules_directly_imported_by(node)):
            if not nxt.startswith(package):
                continue
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                groups.append(sorted(group))

    for module in modules:
        if module not in index:
            visit(module)
    return groups


def test_no_import_cycle_in_the_package() -> None:
    graph = grimp.build_graph("uabnn_convert", include_external_packages=False)
    assert _cycles(graph, "uabnn_convert") == []


def test_cycle_finder_finds_a_cycle() -> None:
    graph = grimp.ImportGraph()
    for name in ("p", "p.a", "p.b", "p.c"):
        graph.add_module(name)
    graph.add_import(importer="p.a", imported="p.b")
    graph.add_import(importer="p.b", imported="p.a")
    graph.add_import(importer="p.c", imported="p.a")
    assert _cycles(graph, "p") == [["p.a", "p.b"]]


def test_import_linter_contracts_hold() -> None:
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "lint-imports")],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-2000:]
    assert "0 broken" in proc.stdout


def test_help_and_version_load_no_torch() -> None:
    """``--help`` (of the group and of every command) and ``--version`` import neither torch,
    timm nor torchvision: they answer in a fraction of torch's own import time."""
    code = (
        "import sys\n"
        "from uabnn_convert.cli import app\n"
        "import typer\n"
        "commands = sorted(typer.main.get_command(app).commands)\n"
        "for args in [['--help'], ['--version'], *[[c, '--help'] for c in commands]]:\n"
        "    try:\n"
        "        app(args, prog_name='uabnn-convert')\n"
        "    except SystemExit:\n"
        "        pass\n"
        "heavy = ('torch', 'timm', 'torchvision')\n"
        "print(len(commands), sorted(m for m in heavy if m in sys.modules))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip().splitlines()[-1] == "8 []"
    assert "finetune" in proc.stdout and "convert" in proc.stdout
