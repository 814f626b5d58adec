"""Batch runs: input lists, skipping finished bundles, failures recorded."""

from __future__ import annotations

import pandas as pd
import pytest

from corrscan.distributed.batch import bundle_is_complete, list_inputs, output_path_for, run_batch
from corrscan.errors import FileFormatError, InputError


def _make_inputs(tmp_path, n=3):
    paths = []
    for i in range(n):
        p = tmp_path / f"mic_{i:02d}.mrc"
        p.write_bytes(b"x")
        paths.append(p)
    return paths


def test_list_inputs_glob_csv_star(tmp_path):
    paths = _make_inputs(tmp_path)
    assert list_inputs(str(tmp_path / "mic_*.mrc")) == paths
    pd.DataFrame({"path": [p.name for p in paths[::-1]]}).to_csv(tmp_path / "l.csv", index=False)
    assert list_inputs(tmp_path / "l.csv") == paths[::-1]
    star = tmp_path / "l.star"
    star.write_text(
        "data_micrographs\n\nloop_\n_rlnMicrographName #1\n" + "".join(f"{p.name}\n" for p in paths)
    )
    assert list_inputs(star) == paths
    with pytest.raises(InputError, match="no input files match"):
        list_inputs(str(tmp_path / "nothing_*.mrc"))
    pd.DataFrame({"path": ["missing.mrc"]}).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(FileFormatError, match="not found: .*missing.mrc"):
        list_inputs(tmp_path / "bad.csv")
    pd.DataFrame({"other": ["a"]}).to_csv(tmp_path / "nocol.csv", index=False)
    with pytest.raises(InputError, match="no column naming"):
        list_inputs(tmp_path / "nocol.csv")


def test_run_batch_skips_done_and_records_failures(tmp_path):
    paths = _make_inputs(tmp_path)
    out = tmp_path / "out"
    calls = []

    def run_one(src, dest):
        calls.append(src.name)
        if src.name == "mic_01.mrc":
            raise ValueError("boom")
        dest.mkdir()
        (dest / "metadata.json").write_text("{}")
        return {"n_picks": 3}

    summary = run_batch(paths, run_one, out)
    assert list(summary["status"]) == ["done", "failed", "done"]
    assert "boom" in summary.loc[1, "error"]
    assert bundle_is_complete(output_path_for(paths[0], out))
    assert (out / "summary.csv").is_file()
    calls.clear()
    summary = run_batch(paths, run_one, out)
    assert calls == ["mic_01.mrc"]  # finished ones skipped
    assert list(summary["status"]) == ["skipped", "failed", "skipped"]
    with pytest.raises(ValueError, match="boom"):
        run_batch(paths, run_one, out, stop_on_error=True)
