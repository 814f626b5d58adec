"""Atomic models: PDB, mmCIF and GROMACS GRO readers (first model), as one DataFrame.

Every reader returns the same table, one row per atom, in file order::

    record   "ATOM" / "HETATM" (GRO: "ATOM")
    name     atom name ("CA", "OG1", ...)
    residue  residue name ("ALA", ...)
    chain    chain identifier ("" when the format has none, e.g. GRO)
    element  upper-case element symbol ("C", "FE", ...)
    x, y, z  coordinates in Å (GRO stores nm: multiplied by 10)

Elements: PDB columns 77-78, else the first letter of the atom name; mmCIF ``type_symbol``;
GRO has no element column: the first letter of the atom name, except the two-letter elements
that no organic atom name starts with (``FE ZN MG MN CL BR CU SE`` ...: ``FE`` in a haem, ``CL1``
in a ligand) and ions whose atom name equals the residue name (``NA``, ``CA`` in residue
``CA``, ...).

Missing, unreadable or empty files raise :class:`corrscan.errors.FileFormatError` naming the file.
"""

from __future__ import annotations

import os
import shlex
from pathlib import Path

import pandas as pd

from corrscan.errors import FileFormatError, InputError

__all__ = ["STRUCTURE_EXTENSIONS", "read_atoms"]

#: file extensions :func:`read_atoms` understands
STRUCTURE_EXTENSIONS = (".pdb", ".ent", ".cif", ".mmcif", ".gro")

_COLUMNS = ["record", "name", "residue", "chain", "element", "x", "y", "z"]

# two-letter element symbols read as such when an ion's atom name equals its residue name
_TWO_LETTER = {
    "NA", "CL", "MG", "ZN", "CA", "FE", "MN", "CU", "CO", "NI", "BR", "LI", "RB", "CS", "CD",
    "HG", "SE", "SR", "BA", "AL", "AG", "AU", "PT", "PB",
}  # fmt: skip
# two-letter element symbols that no organic (C, H, N, O, S, P) atom name starts with
_UNAMBIGUOUS = {"FE", "ZN", "MG", "MN", "CL", "BR", "CU", "SE", "LI", "AL", "AG", "AU", "PT"}


def _first_letter(name: str) -> str:
    """First alphabetic character of an atom name (``"1HB"`` -> ``"H"``), upper case."""
    for ch in name:
        if ch.isalpha():
            return ch.upper()
    return name[:1].upper()


def _read_pdb(path: Path) -> pd.DataFrame:
    rows = []
    with open(path, errors="replace") as fh:
        for line in fh:
            rec = line[:6]
            if rec.startswith("ENDMDL"):
                break  # first model only
            if rec not in ("ATOM  ", "HETATM"):
                continue
            try:
                x, y, z = float(line[30:38]), float(line[38:46]), float(line[46:54])
            except ValueError as exc:
                raise FileFormatError(f"{path}: bad coordinates in line {line.rstrip()!r}") from exc
            name = line[12:16].strip()
            elem = line[76:78].strip() if len(line) >= 78 else ""
            rows.append(
                {
                    "record": rec.strip(),
                    "name": name,
                    "residue": line[17:20].strip(),
                    "chain": line[21:22].strip(),
                    "element": (elem.upper() or _first_letter(name)),
                    "x": x,
                    "y": y,
                    "z": z,
                }
            )
    return pd.DataFrame(rows, columns=_COLUMNS)


def _read_mmcif(path: Path) -> pd.DataFrame:
    cols: list[str] = []
    rows = []
    in_loop = in_atoms = False
    with open(path, errors="replace") as fh:
        for raw in fh:
            line = raw.strip()
            if not line or line.startswith("#"):
                if in_atoms and rows:
                    break
                in_loop = in_atoms = False if line.startswith("#") else in_loop
                continue
            if line == "loop_":
                if in_atoms and rows:
                    break
                in_loop, in_atoms, cols = True, False, []
                continue
            if in_loop and line.startswith("_"):
                if line.startswith("_atom_site."):
                    in_atoms = True
                    cols.append(line.split()[0][len("_atom_site.") :])
                continue
            if in_atoms:
                if line.startswith(("_", "data_")):
                    break
                try:
                    rows.append(shlex.split(line, posix=True))
                except ValueError as exc:  # unbalanced quotes
                    raise FileFormatError(f"{path}: unreadable atom line {line!r}") from exc
    if not rows:
        raise FileFormatError(f"{path}: no _atom_site loop found (is it an mmCIF file?)")
    df = pd.DataFrame([r[: len(cols)] for r in rows if len(r) >= len(cols)], columns=cols)
    if df.empty:
        raise FileFormatError(
            f"{path}: no complete _atom_site row ({len(cols)} values each; truncated file?)"
        )
    if "pdbx_PDB_model_num" in df:
        df = df[df["pdbx_PDB_model_num"] == df["pdbx_PDB_model_num"].iloc[0]]
    try:
        out = pd.DataFrame(
            {
                "record": df.get("group_PDB", pd.Series(["ATOM"] * len(df))).to_numpy(),
                "name": df.get("label_atom_id", df.get("auth_atom_id")).to_numpy(),
                "residue": df.get("label_comp_id", df.get("auth_comp_id")).to_numpy(),
                "chain": df.get("auth_asym_id", df.get("label_asym_id")).to_numpy(),
                "element": df.get("type_symbol", df.get("label_atom_id")).str.upper().to_numpy(),
                "x": df["Cartn_x"].astype(float).to_numpy(),
                "y": df["Cartn_y"].astype(float).to_numpy(),
                "z": df["Cartn_z"].astype(float).to_numpy(),
            }
        )
    except (KeyError, AttributeError) as exc:
        raise FileFormatError(f"{path}: mmCIF atom_site lacks column {exc}") from exc
    except ValueError as exc:
        raise FileFormatError(f"{path}: bad mmCIF coordinates ({exc})") from exc
    return out


def _read_gro(path: Path) -> pd.DataFrame:
    """GROMACS ``.gro``: title, atom count, fixed-width atom lines (nm), box line."""
    with open(path, errors="replace") as fh:
        lines = fh.read().splitlines()
    if len(lines) < 2:
        raise FileFormatError(f"{path}: a GRO file needs a title and an atom-count line")
    try:
        n = int(lines[1].strip())
    except ValueError:
        raise FileFormatError(
            f"{path}: line 2 must be the number of atoms, got {lines[1]!r}"
        ) from None
    atoms = lines[2 : 2 + n]
    if n < 0 or len(atoms) < n:
        raise FileFormatError(f"{path}: header says {n} atoms, file has {len(atoms)} atom lines")
    rows = []
    for line in atoms:
        # columns: resnr 0-5, resname 5-10, atom name 10-15, atom nr 15-20, x y z 20-44 (%8.3f)
        try:
            x, y, z = (float(line[20 + 8 * i : 28 + 8 * i]) for i in range(3))
        except ValueError as exc:
            raise FileFormatError(f"{path}: bad coordinates in line {line!r}") from exc
        name, res = line[10:15].strip(), line[5:10].strip()
        up = name.upper().lstrip("0123456789")
        if up == res.upper() and up in _TWO_LETTER:
            elem = up
        elif up[:2] in _UNAMBIGUOUS:
            elem = up[:2]
        else:
            elem = _first_letter(name)
        rows.append(
            {
                "record": "ATOM",
                "name": name,
                "residue": res,
                "chain": "",
                "element": elem,
                "x": 10.0 * x,
                "y": 10.0 * y,
                "z": 10.0 * z,
            }
        )
    return pd.DataFrame(rows, columns=_COLUMNS)


def read_atoms(path: str | os.PathLike, *, selection: str = "all") -> pd.DataFrame:
    """Atoms of a PDB (``.pdb``/``.ent``), mmCIF (``.cif``/``.mmcif``) or GRO file.

    Only the first model is read (PDB ``ENDMDL``, mmCIF ``pdbx_PDB_model_num``; GRO holds one
    frame).

    Parameters
    ----------
    path
        The model file; the format is chosen by extension.
    selection
        ``"all"``, ``"heavy"`` (no hydrogens), ``"CA"`` (alpha carbons: name ``CA``, element
        ``C``) or ``"backbone"`` (N, CA, C, O of elements N, C, O).

    Returns
    -------
    pandas.DataFrame
        Columns ``record, name, residue, chain, element, x, y, z`` (Å), index ``0..n-1`` (see
        the module docstring).
    """
    path = Path(path)
    if not path.is_file():
        raise FileFormatError(f"atom model not found: {path}")
    suffix = path.suffix.lower()
    if suffix in (".pdb", ".ent"):
        df = _read_pdb(path)
    elif suffix in (".cif", ".mmcif"):
        df = _read_mmcif(path)
    elif suffix == ".gro":
        df = _read_gro(path)
    else:
        raise FileFormatError(
            f"{path}: unknown atom model format {suffix!r} (use .pdb, .ent, .cif, .mmcif or .gro)"
        )
    if selection == "heavy":
        df = df[df["element"] != "H"]
    elif selection == "CA":
        df = df[(df["name"] == "CA") & (df["element"] == "C")]  # not calcium ions
    elif selection == "backbone":
        df = df[df["name"].isin(["N", "CA", "C", "O"]) & df["element"].isin(["N", "C", "O"])]
    elif selection != "all":
        raise InputError(f"unknown atom selection {selection!r}: all, heavy, CA or backbone")
    if df.empty:
        raise FileFormatError(f"{path}: no atoms match selection {selection!r}")
    return df.reset_index(drop=True)
