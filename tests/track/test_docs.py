"""The Python example of docs/track.md runs and gives the accuracy it claims."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

DOC = Path(__file__).resolve().parents[2] / "docs" / "track.md"


def test_docs_python_example_runs(tmp_path, monkeypatch) -> None:
    text = DOC.read_text()
    block = re.search(r"```python\n(.*?)```", text, re.S).group(1)
    monkeypatch.chdir(tmp_path)
    ns: dict = {}
    exec(compile(block.replace("print(", "_ = ("), str(DOC), "exec"), ns)
    res, xyz = ns["res"], ns["xyz"]
    assert (tmp_path / "zlut.npz").is_file()
    assert (res.flags == 0).mean() > 0.99
    assert np.sqrt(np.nanmean((res.z - xyz[:, 2]) ** 2)) < 5.0
