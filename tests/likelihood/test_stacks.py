"""Polar stack files: round trips, and every kind of damage reported as FileFormatError."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from corrscan.errors import FileFormatError, InputError
from corrscan.likelihood.ctf import CtfParams
from corrscan.likelihood.grid import PolarGrid
from corrscan.likelihood.stacks import PolarImages, PolarTemplates, images_from_real_space
from corrscan.likelihood.workflow import stack_index, stack_name


@pytest.fixture
def files(tmp_path):
    g = PolarGrid.create(8, 2.0, n_shells=4, n_inplanes=8)
    ims = images_from_real_space(
        torch.randn(3, 8, 8, generator=torch.Generator().manual_seed(0)),
        g,
        CtfParams([1e4, 1.2e4, 1.5e4]),
        table=pd.DataFrame({"source": ["a", "b", "c"]}),
    )
    ims.save(tmp_path / "images.pt")
    PolarTemplates(ims.data, g, np.zeros((3, 3)), np.ones(3), "m").save(tmp_path / "tpl.pt")
    return tmp_path, ims


def test_round_trip(files):
    d, ims = files
    back = PolarImages.load(d / "images.pt")
    assert torch.equal(back.data, ims.data) and torch.equal(back.norms, ims.norms)
    np.testing.assert_array_equal(back.ctf.defocus_u, ims.ctf.defocus_u)
    assert list(back.table["source"]) == ["a", "b", "c"]
    tpl = PolarTemplates.load(d / "tpl.pt")
    assert tpl.name == "m" and tpl.grid.compatible(ims.grid) and tpl.euler.shape == (3, 3)


def _damage(d, name, edit):
    obj = torch.load(d / name, weights_only=True)
    edit(obj)
    out = d / f"bad_{name}"
    torch.save(obj, out)
    return out


@pytest.mark.parametrize(
    ("name", "edit", "message"),
    [
        ("images.pt", lambda o: o.pop("norms"), "missing field 'norms'"),
        ("images.pt", lambda o: o.update(grid="{not json"), "not valid JSON"),
        ("images.pt", lambda o: o.update(grid=json.dumps([1, 2])), "not a JSON object"),
        ("images.pt", lambda o: o.update(data=torch.ones(3, 4, 8)), "expected complex"),
        ("images.pt", lambda o: o.update(norms=torch.ones(2)), "norms must be 3"),
        ("images.pt", lambda o: o["ctf"].pop("voltage"), "ctf fields"),
        ("images.pt", lambda o: o.update(table="[1, 2"), "per-image table"),
        ("images.pt", lambda o: o.update(ctf=5), "field 'ctf' is a int"),
        ("tpl.pt", lambda o: o.update(name=3), "field 'name' is a int"),
        ("tpl.pt", lambda o: o.update(weights=-torch.ones(3, dtype=torch.float64)), "positive"),
        ("tpl.pt", lambda o: o.update(euler=torch.zeros(2, 3)), "euler"),
        (
            "tpl.pt",
            lambda o: o.update(grid=o["grid"].replace('"n_shells": 4', '"n_shells": 9')),
            "9 shells",
        ),
        (
            "tpl.pt",
            lambda o: o.update(grid=o["grid"].replace('"gauss-jacobi"', '"simpson"')),
            "invalid grid",
        ),
        ("tpl.pt", lambda o: o.update(kind="corrscan-polar-images"), "not a corrscan"),
    ],
)
def test_damaged_files_raise_file_format_error_naming_the_file(files, name, edit, message):
    d, _ = files
    bad = _damage(d, name, edit)
    reader = PolarImages.load if name == "images.pt" else PolarTemplates.load
    with pytest.raises(FileFormatError, match=message) as info:
        reader(bad)
    assert str(bad) in str(info.value)


def test_stack_names_round_trip():
    assert stack_name("optimal_template", 12) == "optimal_template_stack_000012.pt"
    assert stack_name("optimal_pose", 3, "csv") == "optimal_pose_stack_000003.csv"
    for k in (0, 7, 123456):
        assert stack_index(f"/x/y/{stack_name('particles_fourier', k)}") == k
    for bad in ("particles.pt", "particles_fourier_000001.pt", "a_stack_x1.pt"):
        with pytest.raises(InputError, match="not a stack file name"):
            stack_index(bad)
    with pytest.raises(InputError):
        stack_name("a", -1)
