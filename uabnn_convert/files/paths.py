"""Input and output paths, checked before anything is loaded or written.

An output is never the input itself, never replaces an existing file without ``force``, and
its directory must exist and be writable: every check that needs no loading fails first, so a
bad request costs nothing and leaves nothing behind.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from ..errors import CheckpointError


def input_path(path: str | os.PathLike[str]) -> Path:
    """``path`` if it is an existing file; a one-line usage error otherwise."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"{path} does not exist; check the path", usage=True)
    if path.is_dir():
        raise CheckpointError(
            f"{path} is a directory; give the checkpoint file inside it", usage=True
        )
    return path


def default_output(src: Path, suffix: str) -> Path:
    """``model.pt`` -> ``model<suffix>``; a converted ``model.uabnn.pt`` drops ``.uabnn``."""
    name = src.name
    for ending in (".pt", ".pth"):
        if name.endswith(ending):
            name = name[: -len(ending)]
            break
    else:
        name = src.stem if src.suffix else name
    if suffix != ".uabnn.pt" and name.endswith(".uabnn"):
        name = name[: -len(".uabnn")]
    return src.with_name(name + suffix)


def output_path(
    src: Path, output: str | os.PathLike[str] | None, suffix: str, *, force: bool
) -> Path:
    """The output for ``src``: not the input, not existing unless ``force``, writable."""
    dst = Path(output) if output is not None else default_output(src, suffix)
    if dst.exists() or dst.is_symlink():
        if dst.is_dir():
            raise CheckpointError(
                f"output {dst} is a directory; give a file name with -o", usage=True
            )
        if dst.resolve() == src.resolve() or (dst.exists() and os.path.samefile(dst, src)):
            raise CheckpointError(
                f"output {dst} is the input file; choose another -o "
                "(the input is never replaced, even with --force)",
                usage=True,
            )
        if not force:
            raise CheckpointError(
                f"output {dst} already exists; pass --force to replace it or choose -o", usage=True
            )
    parent = dst.parent
    if not parent.is_dir():
        what = "does not exist" if not parent.exists() else "is not a directory"
        raise CheckpointError(
            f"output directory {parent} {what}; create it first or choose another -o", usage=True
        )
    try:
        with tempfile.TemporaryFile(dir=parent):
            pass
    except OSError as e:
        raise CheckpointError(f"cannot write to {parent} ({e.strerror}); choose another -o") from e
    return dst
