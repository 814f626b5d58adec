"""PDB / mmCIF / GRO readers: the same atoms from each format, selections, errors."""

from __future__ import annotations

import numpy as np
import pytest

from corrscan.core.io.structure import read_atoms
from corrscan.errors import FileFormatError, InputError

# (name, residue, element, x, y, z) in Å; a hydrogen, a calcium ion and an iron
ATOMS = [
    ("N", "ALA", "N", 1.204, -0.512, 3.250),
    ("CA", "ALA", "C", 2.461, 0.118, 2.875),
    ("C", "ALA", "C", 3.020, -0.410, 1.553),
    ("O", "ALA", "O", 2.316, -1.032, 0.761),
    ("H", "ALA", "H", 0.880, -1.460, 3.100),
    ("OG1", "THR", "O", -4.255, 7.080, -2.410),
    ("CA", "CA", "CA", 10.500, -3.250, 6.125),
    ("FE", "HEM", "FE", -7.125, 2.750, -9.875),
]


def _pdb_text(atoms, *, with_element=True, second_model=False) -> str:
    lines = ["HEADER    TEST", "MODEL        1"]
    for i, (name, res, el, x, y, z) in enumerate(atoms):
        rec = "HETATM" if res in ("CA", "HEM") else "ATOM  "
        nm = f" {name:<3s}" if len(name) < 4 else name
        tail = f"          {el:>2s}" if with_element else ""
        xyz = f"{x:8.3f}{y:8.3f}{z:8.3f}"
        lines.append(f"{rec}{i + 1:5d} {nm} {res:>3s} A{i + 1:4d}    {xyz}  1.00 20.00{tail}")
    lines.append("ENDMDL")
    if second_model:  # a second model must be ignored
        lines += ["MODEL        2", lines[2].replace("   1.204", "  99.000"), "ENDMDL"]
    return "\n".join([*lines, "END"]) + "\n"


def _cif_text(atoms) -> str:
    head = [
        "data_test", "#", "loop_", "_atom_site.group_PDB", "_atom_site.id",
        "_atom_site.type_symbol", "_atom_site.label_atom_id", "_atom_site.label_comp_id",
        "_atom_site.auth_asym_id", "_atom_site.Cartn_x", "_atom_site.Cartn_y",
        "_atom_site.Cartn_z", "_atom_site.pdbx_PDB_model_num",
    ]  # fmt: skip
    rows = [
        f"ATOM {i + 1} {el} {name} {res} A {x:.3f} {y:.3f} {z:.3f} 1"
        for i, (name, res, el, x, y, z) in enumerate(atoms)
    ]
    rows.append("ATOM 99 C CA ALA A 50.000 50.000 50.000 2")  # second model: dropped
    return "\n".join([*head, *rows, "#"]) + "\n"


def _gro_text(atoms) -> str:
    lines = ["test system", f"{len(atoms):5d}"]
    for i, (name, res, _el, x, y, z) in enumerate(atoms):
        lines.append(
            f"{i + 1:5d}{res:<5s}{name:>5s}{i + 1:5d}{x / 10:8.4f}{y / 10:8.4f}{z / 10:8.4f}"
            "  0.1000 -0.2000  0.3000"  # velocities are ignored
        )
    lines.append("   5.00000   5.00000   5.00000")
    return "\n".join(lines) + "\n"


@pytest.mark.parametrize("fmt", ["pdb", "cif", "gro"])
def test_every_format_gives_the_planted_atoms(tmp_path, fmt):
    text = {"pdb": _pdb_text(ATOMS, second_model=True), "cif": _cif_text(ATOMS)}.get(fmt)
    path = tmp_path / f"model.{fmt}"
    path.write_text(text if text is not None else _gro_text(ATOMS))
    df = read_atoms(path)
    assert list(df.columns) == ["record", "name", "residue", "chain", "element", "x", "y", "z"]
    assert len(df) == len(ATOMS)
    xyz = np.array([a[3:] for a in ATOMS])
    # GRO keeps 4 decimals of nm (1e-3 Å); PDB/mmCIF 3 decimals of Å
    np.testing.assert_allclose(df[["x", "y", "z"]].to_numpy(), xyz, atol=6e-4)
    assert df["element"].tolist() == [a[2] for a in ATOMS]
    assert df["name"].tolist() == [a[0] for a in ATOMS]
    assert df["residue"].tolist() == [a[1] for a in ATOMS]


def test_pdb_element_falls_back_to_the_atom_name(tmp_path):
    p = tmp_path / "noelem.pdb"
    p.write_text(_pdb_text(ATOMS[:5], with_element=False))
    assert read_atoms(p)["element"].tolist() == ["N", "C", "C", "O", "H"]


def test_selections(tmp_path):
    p = tmp_path / "m.pdb"
    p.write_text(_pdb_text(ATOMS))
    assert len(read_atoms(p, selection="heavy")) == len(ATOMS) - 1
    # the calcium ion named CA is neither an alpha carbon nor backbone
    assert read_atoms(p, selection="CA")["residue"].tolist() == ["ALA"]
    assert read_atoms(p, selection="backbone")["name"].tolist() == ["N", "CA", "C", "O"]
    with pytest.raises(InputError, match="selection"):
        read_atoms(p, selection="sidechain")


def test_likelihood_reexport_is_the_core_reader():
    from corrscan.core.io import structure
    from corrscan.likelihood import templates

    assert templates.read_atoms is structure.read_atoms


@pytest.mark.parametrize(
    ("name", "text", "match"),
    [
        ("missing.pdb", None, "not found"),
        ("m.xyz", "1\n", "unknown atom model format"),
        ("empty.pdb", "HEADER\nEND\n", "no atoms"),
        ("bad.pdb", "ATOM      1  CA  ALA A   1    1.0xx   2.000   3.000\n", "bad coordinates"),
        ("nota.cif", "data_x\n_cell.length_a 10\n", "no _atom_site"),
        ("short.gro", "title\n   3\n    1ALA     CA    1   0.100   0.200   0.300\n", "header says"),
        ("count.gro", "title\nthree\n", "number of atoms"),
    ],
)
def test_bad_files_raise_file_format_errors(tmp_path, name, text, match):
    p = tmp_path / name
    if text is not None:
        p.write_text(text)
    with pytest.raises(FileFormatError, match=match):
        read_atoms(p)
