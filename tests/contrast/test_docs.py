"""The Python examples of docs/contrast.md run and give what they claim (on a smaller
volume: the examples' 200 x 512 x 512 takes ~15 s to simulate)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

DOC = Path(__file__).resolve().parents[2] / "docs" / "contrast.md"


@pytest.fixture
def stop_server():
    import neuroglancer

    yield
    neuroglancer.stop()


def test_docs_python_examples_run(tmp_path, monkeypatch, stop_server) -> None:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(), re.S)
    assert len(blocks) == 2
    code = "\n".join(blocks).replace("(200, 512, 512)", "(64, 128, 128)")
    assert "(64, 128, 128)" in code
    monkeypatch.chdir(tmp_path)
    ns: dict = {}
    exec(compile(code.replace("print(", "_ = ("), str(DOC), "exec"), ns)
    bg = ns["truth"]["components"]["background"]
    assert ns["low"] == pytest.approx(bg.mean - 3.0 * bg.std, abs=0.1)
    assert ns["high"] == pytest.approx(bg.mean + 0.8 * bg.std, abs=0.05)
    assert ns["report"].details["n_components"] == 3
    assert ns["lazy"] == pytest.approx((ns["low"], ns["high"]), abs=0.05)
    assert ns["cdf"].low < ns["low"] < ns["high"] < ns["cdf"].high
    assert len(ns["picks"]) == 2 and ns["picks"].coordinates[0].tolist() == [100, 256, 256]
    assert ns["url"].startswith("https://neuroglancer-demo.appspot.com/#!")
    assert [layer.name for layer in ns["state"].layers] == ["TS_01", "picks"]
    assert ns["viewer"].url.startswith("http://127.0.0.1:")
