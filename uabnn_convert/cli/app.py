"""The ``uabnn-convert`` typer app: the group, the one exit-code policy, and ``main``.

``convert`` is the default command: ``uabnn-convert model.pt --arch NAME`` is
``uabnn-convert convert model.pt --arch NAME``. Each command lives in a module of its own
(:mod:`.convert`, :mod:`.inspect`, …) and holds no domain logic: it parses, calls the layers
below, and prints.

Every failure prints one line, ``error: …``, on stderr and exits non-zero without a traceback,
the same way for every command: a :class:`~uabnn_convert.errors.UabnnError` exits with its own
status (2 when the command line must change — bad option value, missing input, existing
output, unknown architecture, a missing opt-in flag; 1 when a file cannot be read, converted or
written), 130 when interrupted. Set ``UABNN_CONVERT_DEBUG=1`` for the traceback of an
unexpected error. Nothing here imports torch, timm or torchvision: ``--help`` and
``--version`` stay fast, and each command imports what it needs when it runs.
"""

from __future__ import annotations

import difflib
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Annotated, Any

import typer
from typer.core import TyperGroup

from .._version import __version__
from ..errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_USAGE, UabnnError

PROG = "uabnn-convert"
DEFAULT_COMMAND = "convert"


class UsageError(UabnnError):
    """The command line must change (exit status 2)."""

    def __init__(self, message: object) -> None:
        super().__init__(message, usage=True)


class _DefaultGroup(TyperGroup):
    """A typer group that runs ``convert`` when the first argument is not a command, suggests
    the nearest command for a mistyped one, and turns every error into one ``error: …`` line
    (typer would print a multi-line panel)."""

    def parse_args(self, ctx: Any, args: list[str]) -> list[str]:
        group_options = {o for p in self.get_params(ctx) for o in (*p.opts, *p.secondary_opts)}
        if args and args[0] not in self.commands and args[0] not in group_options:
            first = args[0]
            if not first.startswith("-") and not Path(first).exists():
                close = difflib.get_close_matches(first, list(self.commands), n=1, cutoff=0.6)
                if close:
                    raise UsageError(
                        f"no command {first!r} (and no file of that name); did you mean "
                        f"'{PROG} {close[0]}'? Commands: {', '.join(self.commands)}"
                    )
            args = [DEFAULT_COMMAND, *args]
        return super().parse_args(ctx, args)

    def get_command(self, ctx: Any, cmd_name: str) -> Any:
        command = super().get_command(ctx, cmd_name)
        if command is not None:
            _untyped_flags(command, ctx)
        return command

    def format_help(self, ctx: Any, formatter: Any) -> None:
        _untyped_flags(self, ctx)
        super().format_help(ctx, formatter)

    def main(
        self,
        args: Sequence[str] | None = None,
        prog_name: str | None = None,
        complete_var: str | None = None,
        standalone_mode: bool = True,
        **extra: Any,
    ) -> Any:
        code = run(
            lambda: super(_DefaultGroup, self).main(
                args, prog_name or PROG, complete_var, standalone_mode=False, **extra
            )
        )
        if standalone_mode:
            sys.exit(code)
        return code


def _untyped_flags(command: Any, ctx: Any) -> None:
    """Flags take no value, so help shows no type for them (typer prints ``<bool>``)."""
    for param in command.get_params(ctx):
        if getattr(param, "is_flag", False) and param.metavar is None:
            param.metavar = ""


def run(call: Any) -> int:
    """Call the group; map every outcome to an exit status, printing at most one error line."""
    cwd = os.getcwd()
    if cwd not in sys.path:  # --arch mymodels:build finds ./mymodels.py; last, so it never
        sys.path.append(cwd)  # shadows an installed package (a stray ./timm.py, say)
    try:
        rv = call()
    except UabnnError as e:
        return fail(str(e), e.exit_code)
    except ValueError as e:
        return fail(str(e), EXIT_USAGE)
    except KeyboardInterrupt:
        return _interrupted()
    except OSError as e:
        where = f"{e.filename}: " if e.filename else ""
        return fail(f"{where}{e.strerror or e}", EXIT_FAILED)
    except Exception as e:
        if _is_click_error(e):
            return _click_error(e)
        if os.environ.get("UABNN_CONVERT_DEBUG"):
            raise
        return fail(
            f"unexpected {type(e).__name__}: {e} (set UABNN_CONVERT_DEBUG=1 for the traceback)",
            EXIT_FAILED,
        )
    code = rv if isinstance(rv, int) and not isinstance(rv, bool) else 0
    if code == EXIT_INTERRUPTED:  # typer turns Ctrl-C into Exit(130)
        return _interrupted()
    return code


def _is_click_error(e: BaseException) -> bool:
    return isinstance(getattr(e, "exit_code", None), int) and hasattr(e, "format_message")


def _click_error(e: Any) -> int:
    if type(e).__name__ == "NoArgsIsHelpError":  # typer's rich help printed itself already
        return EXIT_USAGE
    ctx = getattr(e, "ctx", None)
    hint = f" (see '{ctx.command_path} --help')" if ctx is not None else ""
    return fail(e.format_message().rstrip(".") + hint, e.exit_code)


def _interrupted() -> int:
    return fail("interrupted; nothing was written", EXIT_INTERRUPTED)


def fail(message: str, code: int) -> int:
    typer.echo(f"error: {' '.join(str(message).split())}", err=True)
    return code


def _show_version(value: bool) -> None:
    if value:
        from importlib.metadata import PackageNotFoundError, version

        try:
            torch_version = version("torch")
        except PackageNotFoundError:
            torch_version = "not installed"
        typer.echo(f"{PROG} {__version__} (torch {torch_version})")
        raise typer.Exit()


ROOT_HELP = (
    "Turn the weight sign() of a saved BNN into the certainty-sign (c-sign) of UaBNN.\n\n"
    "MODEL without a command runs [bold]convert[/bold]. Examples:\n\n"
    "[cyan]uabnn-convert model.pt --arch bireal_digits --m 2 --delta 0.1[/cyan]\n"
    "[cyan]uabnn-convert inspect model.uabnn.pt[/cyan]\n"
    "[cyan]uabnn-convert freeze model.uabnn.pt -o model.frozen.pt[/cyan]"
)

app = typer.Typer(
    name=PROG,
    cls=_DefaultGroup,
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
    subcommand_metavar="[COMMAND] MODEL [ARGS]...",
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    epilog=(
        "Exit status: 0 done; 1 a file could not be read, converted or written; "
        "2 the command line must change (bad option, missing input, existing output, "
        "unknown architecture, missing opt-in flag); 130 interrupted. "
        "Errors are one line on stderr and never leave a partial output file."
    ),
)


@app.callback(help=ROOT_HELP)
def _root(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_show_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """The group itself does nothing: ``--version`` is eager and commands do the work."""


def main() -> None:
    """Console-script entry point (``uabnn-convert``)."""
    app(prog_name=PROG)
