"""The metrics log: appended line by line, read back even when the last line was torn."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from uabnn_convert.files import append_line
from uabnn_convert.train.plot import read_history


def test_torn_last_line_is_skipped_and_a_torn_middle_line_is_an_error(tmp_path: Path) -> None:
    log = tmp_path / "metrics.jsonl"
    for step in (1, 2):
        append_line(json.dumps({"kind": "train", "step": step}), log)
    with open(log, "a") as f:
        f.write('{"kind": "train", "st')  # the process died mid-write
    assert [r["step"] for r in read_history(tmp_path)] == [1, 2]
    with open(log, "a") as f:
        f.write("\n" + json.dumps({"kind": "train", "step": 3}) + "\n")  # damage inside
    with pytest.raises(json.JSONDecodeError):
        read_history(log)


def test_append_line_writes_whole_lines(tmp_path: Path) -> None:
    log = tmp_path / "m.jsonl"
    append_line("a\n", log)
    append_line("b", log)
    assert log.read_text() == "a\nb\n"
