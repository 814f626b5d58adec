"""Particle stacks with CTF parameters from RELION STAR + MRC and cryoSPARC ``.cs`` files.

* paired: a STAR file whose particle rows are the images of one MRC stack, in order;
* indexed STAR: ``rlnImageName = "<1-based index>@<stack path>"`` (RELION);
* cryoSPARC: a ``.cs`` table (``blob/path``, ``blob/idx`` 0-based, ``blob/psize_A``,
  ``ctf/df1_A``, ``ctf/df2_A``, ``ctf/df_angle_rad``, ``ctf/cs_mm``, ``ctf/accel_kv``,
  ``ctf/amp_contrast``, ``ctf/phase_shift_rad``, optional ``alignments2D|3D/shift`` pixels).

Prior shifts are used (CryoLike ignores them): RELION ``rlnOriginX/YAngst`` (or ``rlnOriginX/Y``
pixels) and cryoSPARC alignment shifts are returned as ``origin_x/origin_y`` (pixels) in the
table; :func:`load_particles` shifts the images by ``+origin`` (RELION convention: the particle
centre sits at ``centre − origin``) unless ``apply_origin_shifts=False``.

Stack paths are resolved relative to the STAR/.cs file's folder, then its parent folders (RELION
and cryoSPARC write paths relative to the project directory), then the working directory.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from corrscan.core.io.mrc import read_mrc as _core_read_mrc
from corrscan.core.io.star import read_star
from corrscan.errors import FileFormatError, InputError
from corrscan.likelihood.ctf import CtfParams

__all__ = [
    "ParticleStack",
    "read_cryosparc",
    "read_mrc",
    "read_star_indexed",
    "read_star_paired",
    "read_star_table",
]


@dataclass
class ParticleStack:
    """Real-space particle images `(M, N, N)` float32 with CTFs and a per-image table."""

    images: np.ndarray
    pixel_size: float
    ctf: CtfParams
    table: pd.DataFrame


def read_mrc(path: str | Path) -> tuple[np.ndarray, float]:
    """MRC/MRCS data (float32, as stored: (z|n, y, x)) and voxel size in Å (x), via core io."""
    data, vs = _core_read_mrc(path)
    return np.asarray(data, dtype=np.float32), float(vs)


def _mrc_images(path: Path, index: np.ndarray) -> np.ndarray:
    data, _ = _core_read_mrc(path, mmap=True)
    if data.ndim == 2:
        data = data[None]
    if index.size and (index.min() < 0 or index.max() >= data.shape[0]):
        raise FileFormatError(
            f"{path} has {data.shape[0]} images; index {int(index.max()) + 1} requested"
        )
    return np.asarray(data[index], dtype=np.float32)


def _resolve(name: str, base: Path) -> Path:
    p = Path(name.lstrip(">"))
    if p.is_absolute():
        if p.is_file():
            return p
        raise FileFormatError(f"particle stack not found: {p}")
    for folder in [base, *base.parents, Path.cwd()]:
        cand = folder / p
        if cand.is_file():
            return cand
    raise FileFormatError(f"particle stack {name!r} not found relative to {base} or its parents")


def read_star_table(path: str | Path) -> pd.DataFrame:
    """Particle table of a RELION STAR file, optics merged in, ``rln`` prefixes kept."""
    blocks = read_star(path)
    parts = blocks.get("particles")
    if parts is None:
        frames = [v for v in blocks.values() if isinstance(v, pd.DataFrame)]
        parts = next((f for f in frames if "rlnDefocusU" in f.columns), None)
    if parts is None:
        raise FileFormatError(f"{path}: no particle block with rlnDefocusU")
    optics = blocks.get("optics")
    if optics is not None and "rlnOpticsGroup" in parts.columns:
        extra = [c for c in optics.columns if c not in parts.columns or c == "rlnOpticsGroup"]
        parts = parts.merge(optics[extra], on="rlnOpticsGroup", how="left")
    return parts.reset_index(drop=True)


def _ctf_from_star(df: pd.DataFrame, path: Path) -> CtfParams:
    def col(name: str, default: float | None) -> np.ndarray:
        if name in df.columns:
            return df[name].astype(float).to_numpy()
        if default is None:
            raise FileFormatError(f"{path}: column {name} missing")
        return np.full(len(df), default)

    du = col("rlnDefocusU", None)
    return CtfParams(
        defocus_u=du,
        defocus_v=col("rlnDefocusV", None) if "rlnDefocusV" in df.columns else du,
        astigmatism_angle=col("rlnDefocusAngle", 0.0),
        voltage=col("rlnVoltage", 300.0),
        spherical_aberration=col("rlnSphericalAberration", 2.7),
        amplitude_contrast=col("rlnAmplitudeContrast", 0.1),
        phase_shift=col("rlnPhaseShift", 0.0),
        b_factor=col("rlnCtfBfactor", 0.0),
    )


def _star_pixel_size(df: pd.DataFrame, path: Path, fallback: float | None) -> float:
    for c in ("rlnImagePixelSize", "rlnPixelSize"):
        if c in df.columns:
            return float(df[c].iloc[0])
    if "rlnDetectorPixelSize" in df.columns and "rlnMagnification" in df.columns:
        return float(df["rlnDetectorPixelSize"].iloc[0] * 1e4 / df["rlnMagnification"].iloc[0])
    if fallback is not None:
        return fallback
    raise FileFormatError(f"{path}: no pixel size (rlnImagePixelSize) and none given")


def _star_origins(df: pd.DataFrame, pixel_size: float) -> tuple[np.ndarray, np.ndarray]:
    if "rlnOriginXAngst" in df.columns:
        return (
            df["rlnOriginXAngst"].astype(float).to_numpy() / pixel_size,
            df["rlnOriginYAngst"].astype(float).to_numpy() / pixel_size,
        )
    if "rlnOriginX" in df.columns:
        return df["rlnOriginX"].astype(float).to_numpy(), df["rlnOriginY"].astype(float).to_numpy()
    z = np.zeros(len(df))
    return z, z.copy()


def _finish_table(
    df: pd.DataFrame, ox: np.ndarray, oy: np.ndarray, source: list[str], idx
) -> pd.DataFrame:
    tab = pd.DataFrame({"source_file": source, "source_index": np.asarray(idx, dtype=np.int64)})
    tab["origin_x"] = ox
    tab["origin_y"] = oy
    for c in ("rlnAngleRot", "rlnAngleTilt", "rlnAnglePsi"):
        if c in df.columns:
            tab[c] = df[c].astype(float).to_numpy()
    return tab


def read_star_paired(
    star_path: str | Path, mrc_path: str | Path, *, pixel_size: float | None = None
) -> ParticleStack:
    """One STAR file + the MRC stack it describes (row ``i`` = image ``i``)."""
    star_path, mrc_path = Path(star_path), Path(mrc_path)
    df = read_star_table(star_path)
    data, vs = read_mrc(mrc_path)
    if data.ndim == 2:
        data = data[None]
    if data.shape[0] != len(df):
        raise FileFormatError(
            f"{mrc_path} has {data.shape[0]} images but {star_path} has {len(df)} particle rows"
        )
    ps = _star_pixel_size(df, star_path, pixel_size or vs)
    ox, oy = _star_origins(df, ps)
    tab = _finish_table(df, ox, oy, [str(mrc_path)] * len(df), np.arange(len(df)))
    return ParticleStack(data, ps, _ctf_from_star(df, star_path), tab)


def read_star_indexed(star_path: str | Path, *, pixel_size: float | None = None) -> ParticleStack:
    """A STAR file with ``rlnImageName = "idx@stack.mrcs"`` (1-based indices)."""
    star_path = Path(star_path)
    df = read_star_table(star_path)
    if "rlnImageName" not in df.columns:
        raise FileFormatError(f"{star_path}: no rlnImageName column (use the paired reader)")
    parts = df["rlnImageName"].astype(str).str.split("@", n=1, expand=True)
    if parts.shape[1] != 2 or parts[1].isna().any():
        raise FileFormatError(f"{star_path}: rlnImageName must look like '12@stack.mrcs'")
    try:
        idx = parts[0].astype(int).to_numpy() - 1
    except ValueError as exc:
        raise FileFormatError(f"{star_path}: non-integer image index in rlnImageName") from exc
    files = parts[1].to_numpy()
    images = _gather(files, idx, star_path.parent)
    ps = _star_pixel_size(df, star_path, pixel_size)
    ox, oy = _star_origins(df, ps)
    tab = _finish_table(df, ox, oy, list(files), idx)
    return ParticleStack(images, ps, _ctf_from_star(df, star_path), tab)


def _gather(files: np.ndarray, idx: np.ndarray, base: Path) -> np.ndarray:
    out: np.ndarray | None = None
    for name in pd.unique(files):
        sel = np.nonzero(files == name)[0]
        imgs = _mrc_images(_resolve(str(name), base), idx[sel])
        if out is None:
            out = np.empty((len(files), *imgs.shape[1:]), dtype=np.float32)
        if imgs.shape[1:] != out.shape[1:]:
            raise FileFormatError(
                f"stack {name} has images of shape {imgs.shape[1:]}, others {out.shape[1:]}"
            )
        out[sel] = imgs
    assert out is not None
    return out


def read_cryosparc(cs_path: str | Path, *, project_dir: str | Path | None = None) -> ParticleStack:
    """A cryoSPARC particle table (``.cs``) and the stacks it points to."""
    cs_path = Path(cs_path)
    if not cs_path.is_file():
        raise FileFormatError(f"cryoSPARC file not found: {cs_path}")
    try:
        cs = np.load(cs_path, allow_pickle=False)
    except ValueError as exc:
        raise FileFormatError(
            f"{cs_path} is not a cryoSPARC .cs (numpy record) file: {exc}"
        ) from exc
    names = cs.dtype.names or ()
    need = ["blob/path", "blob/idx", "ctf/df1_A", "ctf/df2_A"]
    missing = [n for n in need if n not in names]
    if missing:
        raise FileFormatError(f"{cs_path}: missing fields {missing}")

    def f(name: str, default: float) -> np.ndarray:
        return cs[name].astype(np.float64) if name in names else np.full(len(cs), default)

    files = np.array([p.decode() if isinstance(p, bytes) else str(p) for p in cs["blob/path"]])
    idx = cs["blob/idx"].astype(np.int64)
    base = Path(project_dir) if project_dir is not None else cs_path.parent
    images = _gather(files, idx, base)
    if "blob/psize_A" in names:
        ps = float(cs["blob/psize_A"][0])
    else:
        raise FileFormatError(f"{cs_path}: no blob/psize_A (pixel size)")
    ctf = CtfParams(
        defocus_u=f("ctf/df1_A", 0.0),
        defocus_v=f("ctf/df2_A", 0.0),
        astigmatism_angle=np.rad2deg(f("ctf/df_angle_rad", 0.0)),
        voltage=f("ctf/accel_kv", 300.0),
        spherical_aberration=f("ctf/cs_mm", 2.7),
        amplitude_contrast=f("ctf/amp_contrast", 0.1),
        phase_shift=np.rad2deg(f("ctf/phase_shift_rad", 0.0)),
        b_factor=f("ctf/bfactor", 0.0),
    )
    shift = None
    for slot in ("alignments3D", "alignments2D"):
        if f"{slot}/shift" in names:
            shift = np.asarray(cs[f"{slot}/shift"], dtype=np.float64).reshape(len(cs), 2)
            if f"{slot}/psize_A" in names:  # shifts are in pixels of the alignment
                shift = shift * (cs[f"{slot}/psize_A"].astype(np.float64)[:, None] / ps)
            break
    z = np.zeros(len(cs))
    # cryoSPARC re-centring puts the particle at location - shift: same sense as RELION origins.
    ox, oy = (shift[:, 0], shift[:, 1]) if shift is not None else (z, z.copy())
    tab = pd.DataFrame({"source_file": files, "source_index": idx, "origin_x": ox, "origin_y": oy})
    return ParticleStack(images, ps, ctf, tab)


def check_stack(stack: ParticleStack, n_pixels: int, pixel_size: float) -> None:
    """Raise :class:`InputError` unless the stack matches the grid's box and pixel size."""
    if stack.images.shape[-1] != n_pixels or stack.images.shape[-2] != n_pixels:
        raise InputError(
            f"particles are {stack.images.shape[-2:]} px but the grid is {n_pixels} px: "
            "use the same box (or rebuild the image parameters)"
        )
    if abs(stack.pixel_size - pixel_size) > 1e-3 * pixel_size:
        raise InputError(
            f"particle pixel size {stack.pixel_size} Å differs from the grid's {pixel_size} Å"
        )
