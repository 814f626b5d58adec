"""Tilt-series metadata: tilt angles, exposure, defocus and microscope settings from the files
that tilt-series software writes (IMOD, SerialEM, Warp/M, RELION 5, CTFFIND4).

Every reader returns one :class:`TiltSeriesMeta` with per-tilt arrays in the order of the file
(the stack order; for SerialEM the ``ZValue`` order). Conventions (corrscan's, see
``docs/dev/core-api.md``):

* angles in degrees; exposure in e/Å²; defocus in Å, **positive = underfocus**
  (:mod:`corrscan.core.ctf`); pixel size in Å; voltage in kV; Cs in mm.
* ``accumulated_dose[i]`` is the exposure the specimen had received **before** tilt ``i`` was
  recorded (RELION's ``rlnMicrographPreExposure`` and Warp's ``_wrpDose`` / ``<Dose>``).
* ``defocus`` is the mean defocus ``(U + V) / 2``; ``defocus_astigmatism`` is ``(U - V) / 2``
  (so ``U = defocus + defocus_astigmatism``, ``V = defocus - defocus_astigmatism``, Warp's
  ``Defocus`` / ``DefocusDelta`` form) and ``astigmatism_angle`` the direction of ``U`` in
  degrees from +x towards +y (CTFFIND's "azimuth of astigmatism", RELION's
  ``rlnDefocusAngle``, Warp's ``DefocusAngle``).
* ``use`` marks the tilts to keep (Warp/M ``<UseTilt>``; ``True`` for the other formats).

Formats (:func:`read_tilt_metadata` chooses by suffix, then by content):

============================  ==============================================================
``.tlt`` ``.rawtlt`` text     IMOD tilt files and plain text: one angle per line (``#``
                              comments and blank lines ignored) -> ``tilt_angles``.
``.mdoc``                     SerialEM: ``[ZValue = i]`` sections (``[FrameSet = i]`` for frame
                              mdocs); see :func:`read_mdoc`.
``.xml``                      Warp/M tilt-series XML; see :func:`read_warp_xml`.
``.tomostar`` ``.star``       Warp tomostar (``_wrpAngleTilt``, ``_wrpDose``) or a RELION 5
                              tilt-series STAR; see :func:`read_star_tilts`.
CTFFIND4 output (``.txt``)    ``# Output from CTFFind`` header + one row per micrograph; see
                              :func:`read_ctffind`.
============================  ==============================================================

Every problem (missing or empty file, non-numeric or non-finite values, arrays of different
lengths, malformed XML/STAR) raises :class:`corrscan.errors.FileFormatError` naming the file.
"""

from __future__ import annotations

import math
import os
import re
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np

from corrscan.core.io._util import require_file
from corrscan.errors import CorrscanError, FileFormatError, InputError

__all__ = [
    "TILT_FORMATS",
    "TiltSeriesMeta",
    "read_ctffind",
    "read_mdoc",
    "read_star_tilts",
    "read_tilt_metadata",
    "read_tilt_text",
    "read_warp_xml",
]

#: format names accepted by :func:`read_tilt_metadata` (``fmt=``)
TILT_FORMATS = ("text", "mdoc", "warp", "star", "ctffind")

_PER_TILT = (
    "tilt_angles",
    "accumulated_dose",
    "defocus",
    "defocus_astigmatism",
    "astigmatism_angle",
    "phase_shift",
)


@dataclass(frozen=True, eq=False)
class TiltSeriesMeta:
    """Per-tilt metadata of one tilt series (all arrays ``(n,)``, file order).

    Attributes
    ----------
    tilt_angles
        Tilt angles in degrees, or ``None`` (CTFFIND output carries no angles).
    accumulated_dose
        Exposure received before each tilt (e/Å²), or ``None``.
    defocus
        Mean defocus ``(U + V) / 2`` in Å, positive = underfocus, or ``None``.
    defocus_astigmatism
        ``(U - V) / 2`` in Å, or ``None``.
    astigmatism_angle
        Direction of ``U`` in degrees from +x towards +y, or ``None``.
    phase_shift
        Extra phase shift in degrees (phase plate), or ``None``.
    pixel_size, voltage, cs, amplitude_contrast
        Å, kV, mm and fraction when the file records them, else ``None``.
    use
        ``(n,)`` bool, ``False`` for tilts the file marks as excluded.
    source, format
        The file and the format it was read as (``TILT_FORMATS``).
    """

    tilt_angles: np.ndarray | None = None
    accumulated_dose: np.ndarray | None = None
    defocus: np.ndarray | None = None
    defocus_astigmatism: np.ndarray | None = None
    astigmatism_angle: np.ndarray | None = None
    phase_shift: np.ndarray | None = None
    pixel_size: float | None = None
    voltage: float | None = None
    cs: float | None = None
    amplitude_contrast: float | None = None
    use: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=bool))
    source: str = ""
    format: str = ""

    def __post_init__(self) -> None:
        n = None
        for name in _PER_TILT:
            v = getattr(self, name)
            if v is None:
                continue
            a = np.asarray(v, dtype=np.float64).reshape(-1)
            if n is not None and a.size != n:
                raise InputError(f"{name} has {a.size} values for {n} tilts")
            n = a.size
            object.__setattr__(self, name, a)
        use = np.asarray(self.use, dtype=bool).reshape(-1)
        if n is None:
            n = use.size
        if use.size == 0 and n:
            use = np.ones(n, dtype=bool)
        if use.size != n:
            raise InputError(f"use has {use.size} values for {n} tilts")
        object.__setattr__(self, "use", use)

    @property
    def n_tilts(self) -> int:
        """Number of tilts ``n``."""
        return int(self.use.size)

    @property
    def defocus_u(self) -> np.ndarray | None:
        """``U = defocus + defocus_astigmatism`` (Å) ``(n,)`` or ``None``."""
        if self.defocus is None:
            return None
        return self.defocus + (
            0.0 if self.defocus_astigmatism is None else self.defocus_astigmatism
        )

    @property
    def defocus_v(self) -> np.ndarray | None:
        """``V = defocus - defocus_astigmatism`` (Å) ``(n,)`` or ``None``."""
        if self.defocus is None:
            return None
        return self.defocus - (
            0.0 if self.defocus_astigmatism is None else self.defocus_astigmatism
        )

    def selected(self) -> TiltSeriesMeta:
        """The same record restricted to the tilts with ``use == True``."""
        keep = self.use
        kw: dict[str, Any] = {
            k: (None if getattr(self, k) is None else getattr(self, k)[keep]) for k in _PER_TILT
        }
        return replace(self, **kw, use=np.ones(int(keep.sum()), dtype=bool))


# ---------------------------------------------------------------------- helpers
def _fail(path: Path, msg: str) -> FileFormatError:
    return FileFormatError(f"{path}: {msg}")


def _read_text(path: str | os.PathLike, what: str) -> tuple[Path, str]:
    p = require_file(path, what)
    try:
        text = p.read_bytes().decode("utf-8")
    except UnicodeDecodeError:
        raise _fail(p, f"not a UTF-8 text {what} file") from None
    except OSError as exc:
        raise _fail(p, f"cannot read the {what} file ({exc})") from None
    if "\x00" in text:
        raise _fail(p, f"not a text {what} file (contains NUL bytes)")
    if not text.strip():
        raise _fail(p, f"the {what} file is empty")
    return p, text


def _number(path: Path, text: str, where: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise _fail(path, f"{where}: {text!r} is not a number") from None
    if not math.isfinite(v):
        raise _fail(path, f"{where}: {text!r} is not a finite number")
    return v


def _check_angles(path: Path, angles: np.ndarray | None) -> None:
    if angles is not None and np.any(np.abs(angles) > 90.0):
        bad = float(angles[np.argmax(np.abs(angles))])
        raise _fail(path, f"tilt angle {bad} outside [-90, 90] degrees")


def _make(path: Path, fmt: str, **kw: Any) -> TiltSeriesMeta:
    """Build the record; lengths are checked with messages that name the file."""
    lengths = {k: np.asarray(kw[k]).size for k in _PER_TILT if kw.get(k) is not None}
    if kw.get("use") is not None:
        lengths["use"] = np.asarray(kw["use"]).size
    if not lengths:
        raise _fail(path, "no per-tilt values found")
    if len(set(lengths.values())) > 1:
        desc = ", ".join(f"{k}: {v}" for k, v in lengths.items())
        raise _fail(path, f"per-tilt entries have different lengths ({desc})")
    if next(iter(lengths.values())) == 0:
        raise _fail(path, "no tilts found")
    for k in _PER_TILT:
        if kw.get(k) is not None and not np.all(np.isfinite(np.asarray(kw[k], dtype=float))):
            raise _fail(path, f"{k} contains non-finite values")
    for k in ("pixel_size", "voltage", "cs", "amplitude_contrast"):
        v = kw.get(k)
        if v is not None and not math.isfinite(v):
            raise _fail(path, f"{k} is not a finite number")
    _check_angles(path, None if kw.get("tilt_angles") is None else np.asarray(kw["tilt_angles"]))
    use = kw.pop("use", None)
    return TiltSeriesMeta(
        **kw,
        use=np.zeros(0, dtype=bool) if use is None else np.asarray(use, dtype=bool),
        source=str(path),
        format=fmt,
    )


def _guard(path: str | os.PathLike, what: str, fn: Callable[[], TiltSeriesMeta]) -> TiltSeriesMeta:
    """Run a reader; parser exceptions other than corrscan errors become FileFormatError."""
    try:
        return fn()
    except CorrscanError:
        raise
    except (ValueError, TypeError, KeyError, IndexError, OverflowError, ET.ParseError) as exc:
        raise FileFormatError(
            f"{path} is not a readable {what} file ({type(exc).__name__}: {exc})"
        ) from None


# ---------------------------------------------------------------------- text / IMOD
def read_tilt_text(path: str | os.PathLike) -> TiltSeriesMeta:
    """IMOD ``.tlt`` / ``.rawtlt`` or plain text: one tilt angle (degrees) per line.

    Blank lines and lines starting with ``#`` are skipped; a line with more than one value,
    a non-numeric or non-finite value, or an angle outside [-90, 90] raises FileFormatError.
    """

    def run() -> TiltSeriesMeta:
        p, text = _read_text(path, "tilt angle")
        angles = []
        for i, line in enumerate(text.splitlines(), 1):
            s = line.strip()
            if not s or s.startswith("#"):
                continue
            parts = s.replace(",", " ").split()
            if len(parts) != 1:
                raise _fail(p, f"line {i}: expected one tilt angle per line, got {s!r}")
            angles.append(_number(p, parts[0], f"line {i}"))
        if not angles:
            raise _fail(p, "no tilt angles found (only comments or blank lines)")
        return _make(p, "text", tilt_angles=np.asarray(angles))

    return _guard(path, "tilt angle", run)


# ---------------------------------------------------------------------- SerialEM mdoc
_SECTION = re.compile(r"^\[\s*(ZValue|FrameSet)\s*=\s*([^\]]*)\]\s*$", re.IGNORECASE)
_DATE_FORMATS = ("%d-%b-%y %H:%M:%S", "%d-%b-%Y %H:%M:%S", "%Y-%m-%d %H:%M:%S", "%Y-%b-%d %H:%M:%S")


def _parse_date(text: str) -> datetime | None:
    s = " ".join(text.split())
    for f in _DATE_FORMATS:
        try:
            return datetime.strptime(s, f)
        except ValueError:
            continue
    return None


def _mdoc_sections(p: Path, text: str) -> tuple[dict[str, str], list[tuple[int, dict[str, str]]]]:
    header: dict[str, str] = {}
    sections: list[tuple[int, dict[str, str]]] = []
    current = header
    for i, line in enumerate(text.splitlines(), 1):
        s = line.strip()
        if not s:
            continue
        m = _SECTION.match(s)
        if m:
            z = m.group(2).strip()
            try:
                idx = int(z)
            except ValueError:
                raise _fail(p, f"line {i}: section index {z!r} is not an integer") from None
            current = {}
            sections.append((idx, current))
            continue
        if s.startswith("["):
            current = {}  # other sections ([T = ...] titles, [MontSection ...]): ignored
            continue
        if "=" in s:
            k, v = s.split("=", 1)
            current[k.strip()] = v.strip()
    if not sections:
        raise _fail(p, "no [ZValue = ...] (or [FrameSet = ...]) sections: not a SerialEM mdoc")
    zs = [z for z, _ in sections]
    if len(set(zs)) != len(zs):
        raise _fail(p, "duplicate ZValue sections")
    sections.sort(key=lambda t: t[0])
    return header, sections


def _mdoc_column(
    p: Path, sections: list[tuple[int, dict[str, str]]], key: str
) -> np.ndarray | None:
    """Per-section numbers of ``key`` (first token), or None unless every section has it."""
    if not all(key in sec for _, sec in sections):
        return None
    out = []
    for z, sec in sections:
        tok = sec[key].split()
        if not tok:
            raise _fail(p, f"ZValue {z}: {key} has no value")
        out.append(_number(p, tok[0], f"ZValue {z} {key}"))
    return np.asarray(out)


def read_mdoc(path: str | os.PathLike) -> TiltSeriesMeta:
    """SerialEM ``.mdoc`` of a tilt series.

    Read per ``[ZValue = i]`` section (sorted by ``ZValue``, the stack order):

    * ``TiltAngle`` (required in every section) -> ``tilt_angles``.
    * ``PriorRecordDose`` when every section has it (SerialEM's own pre-exposure) ->
      ``accumulated_dose``; otherwise ``ExposureDose`` (e/Å² of each image) is accumulated in
      **acquisition order**: by ``DateTime`` when every section has a parseable one (ties
      broken by ``ZValue``), else by ``ZValue``. ``accumulated_dose[i]`` is the sum of the
      exposures acquired before tilt ``i``. All-zero exposures (dose not calibrated) give
      ``None``.
    * ``Defocus`` (µm, SerialEM/microscope sign: **negative = underfocus**), or
      ``TargetDefocus`` when no section has ``Defocus`` -> ``defocus = -value * 1e4`` Å
      (corrscan: positive = underfocus). This is the nominal microscope defocus, not a fit.
    * ``PixelSpacing`` (Å; section value, else the header's) and ``Voltage`` (kV).

    Optional keys missing from some sections are treated as absent.
    """

    def run() -> TiltSeriesMeta:
        p, text = _read_text(path, "SerialEM mdoc")
        header, sections = _mdoc_sections(p, text)
        for z, sec in sections:
            if "TiltAngle" not in sec:
                raise _fail(p, f"ZValue {z} has no TiltAngle")
        angles = _mdoc_column(p, sections, "TiltAngle")
        dose = _mdoc_column(p, sections, "PriorRecordDose")
        if dose is None:
            exposure = _mdoc_column(p, sections, "ExposureDose")
            if exposure is not None and np.any(exposure != 0):
                if np.any(exposure < 0):
                    raise _fail(p, "negative ExposureDose")
                dates = [_parse_date(sec.get("DateTime", "")) for _, sec in sections]
                zs = np.array([z for z, _ in sections])
                if all(d is not None for d in dates):
                    ts = np.array([d.timestamp() for d in dates])  # type: ignore[union-attr]
                    order = np.lexsort((zs, ts))
                else:
                    order = np.argsort(zs, kind="stable")
                acc = np.zeros(len(sections))
                acc[order] = np.cumsum(exposure[order]) - exposure[order]
                dose = acc
        defocus = _mdoc_column(p, sections, "Defocus")
        if defocus is None and not any("Defocus" in sec for _, sec in sections):
            defocus = _mdoc_column(p, sections, "TargetDefocus")
        px = _mdoc_column(p, sections, "PixelSpacing")
        pixel = float(px[0]) if px is not None else None
        if pixel is None and "PixelSpacing" in header:
            pixel = _number(p, header["PixelSpacing"].split()[0], "header PixelSpacing")
        volt = _mdoc_column(p, sections, "Voltage")
        voltage = float(volt[0]) if volt is not None else None
        if voltage is None and "Voltage" in header:
            voltage = _number(p, header["Voltage"].split()[0], "header Voltage")
        return _make(
            p, "mdoc", tilt_angles=angles, accumulated_dose=dose,
            defocus=None if defocus is None else -defocus * 1e4,
            pixel_size=pixel, voltage=voltage,
        )  # fmt: skip

    return _guard(path, "SerialEM mdoc", run)


# ---------------------------------------------------------------------- Warp / M XML
def _xml_numbers(p: Path, elem: ET.Element | None, name: str) -> np.ndarray | None:
    if elem is None or elem.text is None or not elem.text.strip():
        return None
    vals = [_number(p, t, f"<{name}> value") for t in elem.text.replace(",", " ").split()]
    return np.asarray(vals)


def _xml_bools(p: Path, elem: ET.Element | None) -> np.ndarray | None:
    if elem is None or elem.text is None or not elem.text.strip():
        return None
    out = []
    for t in elem.text.split():
        low = t.lower()
        if low not in ("true", "false", "1", "0"):
            raise _fail(p, f"<UseTilt> value {t!r} is not True/False")
        out.append(low in ("true", "1"))
    return np.asarray(out, dtype=bool)


def _grid_per_tilt(p: Path, elem: ET.Element | None, name: str) -> np.ndarray | None:
    """Per-Z mean of a Warp ``<Grid... Width Height Depth>`` of ``<Node X Y Z Value>``."""
    if elem is None:
        return None
    nodes = elem.findall("Node")
    if not nodes:
        return None
    depth = int(_number(p, elem.get("Depth", "1"), f"<{name}> Depth"))
    if depth < 1 or depth > 100000:
        raise _fail(p, f"<{name}> Depth {depth} out of range")
    total = np.zeros(depth)
    count = np.zeros(depth)
    for nd in nodes:
        z = int(_number(p, nd.get("Z", "0"), f"<{name}> node Z"))
        if not 0 <= z < depth:
            raise _fail(p, f"<{name}> node Z={z} outside 0..{depth - 1}")
        total[z] += _number(p, nd.get("Value", ""), f"<{name}> node Value")
        count[z] += 1
    if np.any(count == 0):
        raise _fail(p, f"<{name}> has no node for some tilts")
    return total / count


def read_warp_xml(path: str | os.PathLike) -> TiltSeriesMeta:
    """Warp/M tilt-series XML (``<TiltSeries>`` root).

    Read: ``<Angles>`` (degrees, required), ``<Dose>`` (accumulated pre-exposure, e/Å²),
    ``<UseTilt>`` (``True``/``False`` -> ``use``); from ``<CTF>`` (``<Param Name=...
    Value=...>`` children or attributes): ``PixelSize`` (Å), ``Voltage`` (kV), ``Cs`` (mm),
    ``Amplitude`` (fraction), ``Defocus`` / ``DefocusDelta`` (µm, positive = underfocus; Warp's
    mean defocus and half-difference) and ``DefocusAngle`` (degrees). Per-tilt defocus comes
    from ``<GridCTF>`` (node ``Value`` per ``Z`` = tilt, µm; averaged over X/Y nodes), with
    ``<GridCTFDefocusDelta>`` / ``<GridCTFDefocusAngle>`` when present; without a grid the
    ``<CTF>`` values apply to every tilt. Not read: ``PhaseShift`` (Warp's unit is not
    documented here), movement/alignment grids, ``AxisAngle``.
    """

    def run() -> TiltSeriesMeta:
        p, text = _read_text(path, "Warp XML")
        if "<!DOCTYPE" in text or "<!ENTITY" in text:
            raise _fail(p, "XML with a DOCTYPE/ENTITY declaration is not accepted")
        root = ET.fromstring(text)
        angles = _xml_numbers(p, root.find("Angles"), "Angles")
        if angles is None:
            raise _fail(p, "no <Angles> element: not a Warp/M tilt-series XML")
        n = angles.size
        dose = _xml_numbers(p, root.find("Dose"), "Dose")
        use = _xml_bools(p, root.find("UseTilt"))
        params: dict[str, str] = {}
        ctf = root.find("CTF")
        if ctf is not None:
            params.update(ctf.attrib)
            for prm in ctf.iter("Param"):
                if prm.get("Name") is not None and prm.get("Value") is not None:
                    params[prm.get("Name", "")] = prm.get("Value", "")

        def scalar(key: str) -> float | None:
            return _number(p, params[key], f"<CTF> {key}") if key in params else None

        grid = _grid_per_tilt(p, root.find("GridCTF"), "GridCTF")
        gdelta = _grid_per_tilt(p, root.find("GridCTFDefocusDelta"), "GridCTFDefocusDelta")
        gangle = _grid_per_tilt(p, root.find("GridCTFDefocusAngle"), "GridCTFDefocusAngle")
        df, dd, da = scalar("Defocus"), scalar("DefocusDelta"), scalar("DefocusAngle")
        defocus = grid if grid is not None else (None if df is None else np.full(n, df))
        delta = gdelta if gdelta is not None else (None if dd is None else np.full(n, dd))
        angle = gangle if gangle is not None else (None if da is None else np.full(n, da))
        if defocus is None:
            delta = angle = None
        return _make(
            p, "warp", tilt_angles=angles, accumulated_dose=dose,
            defocus=None if defocus is None else defocus * 1e4,
            defocus_astigmatism=None if delta is None else delta * 1e4,
            astigmatism_angle=angle, use=use, pixel_size=scalar("PixelSize"),
            voltage=scalar("Voltage"), cs=scalar("Cs"), amplitude_contrast=scalar("Amplitude"),
        )  # fmt: skip

    return _guard(path, "Warp XML", run)


# ---------------------------------------------------------------------- STAR (Warp, RELION 5)
def read_star_tilts(path: str | os.PathLike) -> TiltSeriesMeta:
    """Warp ``.tomostar`` or a RELION 5 tilt-series STAR.

    Warp: ``_wrpAngleTilt`` (degrees) and ``_wrpDose`` (accumulated pre-exposure, e/Å²).
    RELION 5: ``_rlnTomoNominalStageTiltAngle`` (else ``_rlnTomoYTilt``),
    ``_rlnMicrographPreExposure``, ``_rlnDefocusU/V`` (Å) and ``_rlnDefocusAngle``,
    ``_rlnPhaseShift`` (degrees), ``_rlnVoltage``, ``_rlnSphericalAberration``,
    ``_rlnAmplitudeContrast``, ``_rlnTomoTiltSeriesPixelSize`` / ``_rlnMicrographPixelSize``.
    The first block with a tilt-angle column is used.
    """
    from corrscan.core.io.star import read_star

    def run() -> TiltSeriesMeta:
        p = require_file(path, "STAR")
        blocks = read_star(p)
        tilt_cols = ("wrpAngleTilt", "rlnTomoNominalStageTiltAngle", "rlnTomoYTilt")
        for df in blocks.values():
            col = next((c for c in tilt_cols if c in df.columns), None)
            if col is not None:
                break
        else:
            raise _fail(p, "no _wrpAngleTilt / _rlnTomoNominalStageTiltAngle column")

        def numbers(name: str) -> np.ndarray | None:
            if name not in df.columns:
                return None
            vals = [_number(p, str(v), f"_{name} row {i + 1}") for i, v in enumerate(df[name])]
            return np.asarray(vals, dtype=np.float64)

        def first(*names: str) -> float | None:
            for nm in names:
                v = numbers(nm)
                if v is not None and v.size:
                    return float(v[0])
            return None

        dose = numbers("wrpDose")
        if dose is None:
            dose = numbers("rlnMicrographPreExposure")
        du, dv = numbers("rlnDefocusU"), numbers("rlnDefocusV")
        if du is not None and dv is None:
            dv = du
        return _make(
            p, "star", tilt_angles=numbers(col), accumulated_dose=dose,
            defocus=None if du is None else (du + dv) / 2.0,
            defocus_astigmatism=None if du is None else (du - dv) / 2.0,
            astigmatism_angle=numbers("rlnDefocusAngle") if du is not None else None,
            phase_shift=numbers("rlnPhaseShift"),
            pixel_size=first("rlnTomoTiltSeriesPixelSize", "rlnMicrographPixelSize"),
            voltage=first("rlnVoltage"), cs=first("rlnSphericalAberration"),
            amplitude_contrast=first("rlnAmplitudeContrast"),
        )  # fmt: skip

    return _guard(path, "tilt-series STAR", run)


# ---------------------------------------------------------------------- CTFFIND4
_CTFFIND_HEADER = {
    "pixel_size": re.compile(r"pixel size:\s*([-+0-9.eE]+)", re.IGNORECASE),
    "voltage": re.compile(r"acceleration voltage:\s*([-+0-9.eE]+)", re.IGNORECASE),
    "cs": re.compile(r"spherical aberration:\s*([-+0-9.eE]+)", re.IGNORECASE),
    "amplitude_contrast": re.compile(r"amplitude contrast:\s*([-+0-9.eE]+)", re.IGNORECASE),
}


def read_ctffind(path: str | os.PathLike) -> TiltSeriesMeta:
    """CTFFIND4 output text (``diagnostic_output.txt``), one row per micrograph / tilt.

    Columns: 1 micrograph number, 2 defocus 1 (Å), 3 defocus 2 (Å), 4 azimuth of astigmatism
    (degrees), 5 additional phase shift (radians; converted to degrees), then fit quality
    columns (ignored). ``defocus = (d1 + d2) / 2``, ``defocus_astigmatism = (d1 - d2) / 2``,
    ``astigmatism_angle`` = the azimuth (direction of defocus 1). Header ``#`` lines give
    pixel size, voltage, Cs and amplitude contrast when present. CTFFIND knows no tilt
    angles: ``tilt_angles`` is ``None``.
    """

    def run() -> TiltSeriesMeta:
        p, text = _read_text(path, "CTFFIND")
        rows = []
        hdr: dict[str, float] = {}
        for i, line in enumerate(text.splitlines(), 1):
            s = line.strip()
            if not s:
                continue
            if s.startswith("#"):
                for k, rx in _CTFFIND_HEADER.items():
                    m = rx.search(s)
                    if m and k not in hdr:
                        hdr[k] = _number(p, m.group(1), f"line {i} {k}")
                continue
            parts = s.split()
            if len(parts) < 5:
                raise _fail(p, f"line {i}: {len(parts)} columns, CTFFIND rows have at least 5")
            rows.append(
                [_number(p, t, f"line {i} column {j + 1}") for j, t in enumerate(parts[:5])]
            )
        if not rows:
            raise _fail(p, "no CTFFIND result rows (only comments)")
        a = np.asarray(rows)
        return _make(
            p, "ctffind", defocus=(a[:, 1] + a[:, 2]) / 2.0,
            defocus_astigmatism=(a[:, 1] - a[:, 2]) / 2.0, astigmatism_angle=a[:, 3],
            phase_shift=np.rad2deg(a[:, 4]), **hdr,
        )  # fmt: skip

    return _guard(path, "CTFFIND", run)


# ---------------------------------------------------------------------- dispatch
_READERS: dict[str, Callable[[str | os.PathLike], TiltSeriesMeta]] = {
    "text": read_tilt_text,
    "mdoc": read_mdoc,
    "warp": read_warp_xml,
    "star": read_star_tilts,
    "ctffind": read_ctffind,
}
_SUFFIX = {
    ".tlt": "text", ".rawtlt": "text", ".mdoc": "mdoc", ".xml": "warp",
    ".tomostar": "star", ".star": "star",
}  # fmt: skip


def _sniff(p: Path) -> str:
    try:
        with p.open("rb") as fh:
            head = fh.read(4096).decode("utf-8", errors="replace")
    except OSError as exc:
        raise _fail(p, f"cannot read the file ({exc})") from None
    s = head.lstrip()
    if s.startswith("<"):
        return "warp"
    if "ctffind" in head.lower():
        return "ctffind"
    if re.search(r"^\s*\[\s*(ZValue|FrameSet)\s*=", head, re.MULTILINE | re.IGNORECASE):
        return "mdoc"
    if re.search(r"^\s*data_", head, re.MULTILINE):
        return "star"
    return "text"


def read_tilt_metadata(path: str | os.PathLike, *, fmt: str | None = None) -> TiltSeriesMeta:
    """Read tilt-series metadata from any supported file (see the module docstring).

    Parameters
    ----------
    path
        ``.tlt`` / ``.rawtlt`` / text, ``.mdoc``, Warp ``.xml``, ``.tomostar`` / ``.star`` or
        CTFFIND4 output.
    fmt
        Force a format (one of ``TILT_FORMATS``); by default the suffix decides and, for other
        suffixes (``.txt``, none), the content: XML, a CTFFIND header, mdoc sections, a STAR
        ``data_`` block, else one angle per line.
    """
    if fmt is not None and fmt not in _READERS:
        raise InputError(
            f"unknown tilt metadata format {fmt!r}: use one of {', '.join(TILT_FORMATS)}"
        )
    p = require_file(path, "tilt metadata")
    kind = fmt or _SUFFIX.get(p.suffix.lower()) or _sniff(p)
    return _READERS[kind](p)
