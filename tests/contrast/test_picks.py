"""Picks from corrscan / RELION 4 / RELION 5 tables and the particle axes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from corrscan.contrast.picks import particle_axes, picks_from_table, read_picks
from corrscan.errors import FileFormatError, InputError


def test_relion4_star_roundtrip(tmp_path: Path) -> None:
    from corrscan.core.io.star import write_star

    df = pd.DataFrame(
        {
            "rlnCoordinateX": [10.0, 20.5],
            "rlnCoordinateY": [30.0, 40.0],
            "rlnCoordinateZ": [5.0, 6.0],
            "rlnAngleRot": [0.0, 10.0],
            "rlnAngleTilt": [0.0, 20.0],
            "rlnAnglePsi": [0.0, 30.0],
            "rlnAutopickFigureOfMerit": [7.0, 9.0],
        }
    )
    write_star(
        tmp_path / "p.star", {"optics": pd.DataFrame({"rlnImagePixelSize": [4.0]}), "particles": df}
    )
    p = read_picks(tmp_path / "p.star")
    np.testing.assert_allclose(p.coordinates, [[5, 30, 10], [6, 40, 20.5]])
    np.testing.assert_allclose(p.angles, [[0, 0, 0], [10, 20, 30]])
    np.testing.assert_allclose(p.scores, [7, 9])
    assert len(p) == 2


def test_relion5_centred_and_corrscan_and_2d_tables(tmp_path: Path) -> None:
    shape = (40, 100, 120)
    df5 = pd.DataFrame(
        {
            "rlnCenteredCoordinateXAngst": [0.0, 50.0],
            "rlnCenteredCoordinateYAngst": [0.0, -20.0],
            "rlnCenteredCoordinateZAngst": [0.0, 10.0],
        }
    )
    p = picks_from_table(df5, voxel_size=10.0, shape=shape)
    np.testing.assert_allclose(p.coordinates, [[20, 50, 60], [21, 48, 65]])
    with pytest.raises(InputError):
        picks_from_table(df5)
    ours = pd.DataFrame({"x": [1.0], "y": [2.0], "z": [3.0], "score": [0.5]})
    ours.to_csv(tmp_path / "p.csv", index=False)
    p = read_picks(tmp_path / "p.csv")
    np.testing.assert_allclose(p.coordinates, [[3, 2, 1]])
    assert p.angles is None and p.scores.tolist() == [0.5]
    flat = picks_from_table(pd.DataFrame({"rlnCoordinateX": [4.0], "rlnCoordinateY": [5.0]}))
    np.testing.assert_allclose(flat.coordinates, [[0, 5, 4]])


def test_bad_tables(tmp_path: Path) -> None:
    with pytest.raises(InputError):
        picks_from_table(pd.DataFrame({"a": [1]}))
    with pytest.raises(FileFormatError):
        read_picks(tmp_path / "missing.star")
    pd.DataFrame({"a": [1]}).to_csv(tmp_path / "bad.csv", index=False)
    with pytest.raises(InputError):
        read_picks(tmp_path / "bad.csv")


def test_particle_axes_are_rows_of_rotation() -> None:
    from scipy.spatial.transform import Rotation

    ang = np.array([[0.0, 0.0, 0.0], [30.0, 50.0, -70.0], [90.0, 90.0, 0.0]])
    axes = particle_axes(ang)
    for a, ax in zip(ang, axes, strict=True):
        r = Rotation.from_euler("ZYZ", a, degrees=True).as_matrix()
        # Reference axis e_k of the particle (reference rotated by R^T) points along R^T e_k.
        np.testing.assert_allclose(ax, (r.T @ np.eye(3)).T, atol=1e-6)
        np.testing.assert_allclose(ax @ ax.T, np.eye(3), atol=1e-6)
    # phi=90, theta=90: R^T e_z = Ry(-90) Rz(-90) e_z = (-1, 0, 0).
    np.testing.assert_allclose(axes[2, 2], [-1.0, 0.0, 0.0], atol=1e-6)


def test_relion5_centre_is_size_over_two_also_for_odd_sizes() -> None:
    """RELION 5's tomogram centre is N / 2 (float): for odd sizes half a voxel beyond N // 2.
    Planted voxel positions survive the corrscan -> RELION 5 -> picks round trip."""
    from corrscan.core.io.star import relion_particles

    shape = (41, 101, 120)  # odd z and y, even x
    df5 = pd.DataFrame(
        {
            "rlnCenteredCoordinateXAngst": [0.0, -35.0],
            "rlnCenteredCoordinateYAngst": [0.0, 7.0],
            "rlnCenteredCoordinateZAngst": [0.0, 14.0],
        }
    )
    p = picks_from_table(df5, voxel_size=7.0, shape=shape)
    np.testing.assert_allclose(p.coordinates, [[20.5, 50.5, 60.0], [22.5, 51.5, 55.0]])
    rng = np.random.default_rng(3)
    zyx = rng.uniform(0, 1, (5, 3)) * (np.array(shape) - 1)
    ours = pd.DataFrame({"x": zyx[:, 2], "y": zyx[:, 1], "z": zyx[:, 0]})
    rel = relion_particles(ours, version=5, pixel_size=13.5, volume_shape=shape)
    np.testing.assert_allclose(
        rel["rlnCenteredCoordinateYAngst"], (zyx[:, 1] - 50.5) * 13.5, rtol=1e-12
    )
    back = picks_from_table(rel, voxel_size=13.5, shape=shape)
    np.testing.assert_allclose(back.coordinates, zyx, rtol=0, atol=1e-9)
