"""Scores of 3D template matching and the per-box hot loop.

Notation (the peer spec ``shared/peers/pytme.md`` §4): ``f`` target box, ``g`` template rotated by
``R`` and filtered, ``m`` template mask (rotated with the template for FLC and MCC), ``t``
target mask, ``N_m = sum m``, ``a ⋆ b`` the cross-correlation
``(a ⋆ b)(p) = sum_q a(p + q - c) b(q)`` with ``c = S // 2`` (so the score at ``p`` places the
template's centre voxel at ``p``). Masked standardisation ``ĝ = m (g - mu) / sigma`` with the
mean and standard deviation of ``g`` over the voxels where ``m > 0``.

========================  ==============================================================
score                     ``S(p)``
========================  ==============================================================
``CC``                    ``f ⋆ g``
``LCC``                   ``(∇²f) ⋆ (∇²g)`` (discrete Laplacian before the search)
``NCC``                   ``(f_s ⋆ g_s) / sqrt(N_t)``: ``f`` standardised over the whole
                          target, ``g`` over all ``N_t`` template voxels (a global z-score)
``FLCSphericalMask``      ``(f ⋆ ĝ) / (N_m sigma_f)``, ``sigma_f² = (f² ⋆ m)/N_m -
                          ((f ⋆ m)/N_m)²`` computed once with the unrotated mask
``FLC``                   same with the mask rotated per rotation and ``sigma_f`` recomputed
``MCC``                   Padfield masked NCC with ``f' = f t``, overlap ``O = t ⋆ m``;
                          clipped to [-1, 1], 0 where ``O < overlap_ratio max(O)``
========================  ==============================================================

The local-normalisation scores are invariant to an affine change of ``f``; the target is
standardised with its global mean and standard deviation first (for float32 accuracy of
``sigma_f``; the same global values in every split box keep splits exact). Where
``sigma_f <= 1e-4`` (flat or empty regions) it is set to 1.

Hot loop per rotation batch (:class:`BoxScorer`): rotate template (and mask), optional lab-frame
Fourier filter on the template box, standardise, write (point-reflected) into the corner of a
zero buffer of the FFT box, forward FFT, multiply in place by the precomputed target spectrum (a
plain complex multiply), inverse FFT into a preallocated buffer (in place when paired),
normalise in place (or fused into the analyzer), hand the valid region to the analyzer.

**Paired transforms (the CPU default).** The target ``f`` is real, so two real templates can
share one complex transform: with ``z = g_a + i g_b``,
``ifftn(F · fftn(z)) = (f * g_a) + i (f * g_b)`` (``F`` the full complex spectrum of
``f``). One complex 3D FFT pair costs less than two real pairs (on this 2-core CPU, 128^3:
7.7 + 8.2 ms against 2 x (3.3 + 7.0) ms), so on CPU
rotations go through the transforms two by two and the scores of a pair are the real and
imaginary parts of one complex buffer (returned as a strided ``(2, ...)`` view, which the
analyzer reads in place). The real part is independent of the imaginary input in exact
arithmetic; in floating point the pairing changes scores by rounding only (~1e-6 relative),
and a search gives the same bits whenever the same rotations are paired (chunks start at
multiples of the batch size, which is even on CPU). On GPU (``paired=False``) transforms are
real and batched.
"""

from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch
from scipy import ndimage

from corrscan.errors import InputError

__all__ = ["SCORES", "BoxScorer", "ScoreName", "needs_rotated_mask"]

ScoreName = Literal["CC", "LCC", "NCC", "FLCSphericalMask", "FLC", "MCC"]
SCORES: tuple[str, ...] = ("CC", "LCC", "NCC", "FLCSphericalMask", "FLC", "MCC")
_SIGMA_FLOOR = 1e-4
_EPS = float(np.finfo(np.float32).eps)


def needs_rotated_mask(score: str) -> bool:
    """True for scores that rotate the mask with the template (FLC, MCC)."""
    return score in ("FLC", "MCC")


def laplace(volume: np.ndarray) -> np.ndarray:
    """Discrete Laplacian (``scipy.ndimage.laplace``, mode ``reflect``) in float64."""
    return ndimage.laplace(np.asarray(volume, dtype=np.float64), mode="reflect")


class BoxScorer:
    """Score maps of one target box for batches of rotated templates.

    Parameters
    ----------
    target
        ``(D, H, W)`` float32 target box (already filtered, standardised, masked as the score
        requires; see :func:`prepare_target`).
    template_shape
        ``(S0, S1, S2)``.
    mask
        ``(S0, S1, S2)`` template mask (unrotated; used by FLCSphericalMask setup).
    target_mask
        ``(D, H, W)`` target mask for MCC (``None`` = ones).
    score
        One of :data:`SCORES`.
    fft_shape
        FFT box (>= target box per axis); the target sits in its corner, zeros elsewhere.
    batch_size
        Rotations per call (rotation, standardisation, analyzer). Paired (CPU): two per
        complex transform, one transform at a time; use an even size (2 is best: larger
        batches copy the maps out of the complex buffers). GPU: one batched transform.
    overlap_ratio
        MCC only.
    defer_scale
        FLCSphericalMask: return the raw correlation and leave the multiplication by
        ``scale = 1 / (N_m sigma_f)`` to the caller (fused into the analyzer update).
    paired
        Two rotations per complex transform (see the module docstring). Default: on for CPU
        targets.
    """

    def __init__(
        self,
        target: torch.Tensor,
        template_shape: tuple[int, int, int],
        mask: torch.Tensor | None,
        target_mask: torch.Tensor | None,
        score: str,
        fft_shape: tuple[int, int, int],
        batch_size: int,
        *,
        overlap_ratio: float = 0.3,
        defer_scale: bool = False,
        paired: bool | None = None,
    ) -> None:
        if score not in SCORES:
            raise InputError(f"unknown score {score!r}: choose one of {', '.join(SCORES)}")
        self.score = score
        self.device = target.device
        self.box_shape = tuple(int(s) for s in target.shape)
        self.template_shape = tuple(int(s) for s in template_shape)
        self.fft_shape = tuple(int(s) for s in fft_shape)
        self.center = tuple(s // 2 for s in self.template_shape)
        self.batch_size = int(batch_size)
        # MKL's batched 3D transforms are slower per item than single ones on CPU
        self.fft_batch = 1 if target.device.type == "cpu" else self.batch_size
        self.overlap_ratio = float(overlap_ratio)
        self.defer_scale = bool(defer_scale)
        self.scale: torch.Tensor | None = None
        self._dims = (-3, -2, -1)
        self.paired = target.device.type == "cpu" if paired is None else bool(paired)
        b, n = self.batch_size, self.fft_shape
        opts = dict(device=self.device)
        n_extra = {"FLC": 2, "MCC": 5}.get(score, 0)
        if self.paired:
            # complex full-size buffers, one per PAIR of rotations; the forward transform is
            # done in place in ``_spec`` (no separate zero-padded input buffer)
            p = (b + 1) // 2
            self._pad = torch.zeros(0, dtype=torch.complex64, **opts)
            self._spec = torch.empty((p, *n), dtype=torch.complex64, **opts)
            self._out = torch.empty((p, *n), dtype=torch.complex64, **opts)
            cshape = (p, *n)
            # the inverse transforms run in place: only products that keep their input
            # spectrum (keep=True) need an output buffer of their own
            used = {"FLC": (True, False), "MCC": (False, True, True, False, False)}.get(score, ())
            self._outs = [
                torch.empty(cshape, dtype=torch.complex64, **opts) if u else None for u in used
            ]
        else:
            rn = (*n[:-1], n[-1] // 2 + 1)
            self._pad = torch.zeros((b, *n), dtype=torch.float32, **opts)
            self._spec = torch.empty((b, *rn), dtype=torch.complex64, **opts)
            self._out = torch.empty((b, *n), dtype=torch.float32, **opts)
            cshape = (b, *rn)
            self._outs = [torch.empty((b, *n), dtype=torch.float32, **opts) for _ in range(n_extra)]
        self._spec2 = torch.empty(cshape, dtype=torch.complex64, **opts) if n_extra else None
        self._spec3 = torch.empty(cshape, dtype=torch.complex64, **opts) if score == "MCC" else None

        f = target.to(torch.float32)
        if score == "MCC":
            t = torch.ones_like(f) if target_mask is None else target_mask.to(torch.float32)
            fp = f * t
            self._T1 = self._target_spectrum(fp)
            self._T2 = self._target_spectrum(fp * fp)
            self._Tt = self._target_spectrum(t)
            self._norm = None
        elif score == "FLC":
            self._T1 = self._target_spectrum(f)
            self._T2 = self._target_spectrum(f * f)
            self._norm = None
        else:
            self._T1 = self._target_spectrum(f)
            self._norm = None
            if score == "FLCSphericalMask":
                if mask is None:
                    raise InputError("FLCSphericalMask needs a template mask")
                m = mask.to(torch.float32)[None]
                nm = float(m.sum())
                t2 = self._target_spectrum(f * f)
                spec_m = self._forward(m)
                mu = self._xcorr(self._T1, spec_m, self._out, keep=True, b=1)[0] / nm
                e2 = self._xcorr(t2, spec_m, self._out, keep=True, b=1)[0] / nm
                sigma = torch.sqrt(torch.clamp(e2 - mu * mu, min=0.0))
                sigma = torch.where(sigma <= _SIGMA_FLOOR, torch.ones_like(sigma), sigma)
                self._norm = 1.0 / (nm * sigma)
                self.scale = self._norm
                self._pad.zero_()
            elif score == "NCC":
                self._ncc_scale = 1.0 / math.sqrt(math.prod(self.template_shape))

    def fork(self) -> BoxScorer:
        """A scorer sharing this one's target spectra with its own work buffers (threads)."""
        import copy

        other = copy.copy(self)
        other._pad = torch.zeros_like(self._pad)
        other._spec = torch.empty_like(self._spec)
        other._out = torch.empty_like(self._out)
        other._spec2 = None if self._spec2 is None else torch.empty_like(self._spec2)
        other._spec3 = None if self._spec3 is None else torch.empty_like(self._spec3)
        other._outs = [None if o is None else torch.empty_like(o) for o in self._outs]
        return other

    # ------------------------------------------------------------------ FFT helpers
    # The correlation is computed as a convolution with the point-reflected template (written
    # flipped into the corner of the zero buffer), which avoids a conjugate multiply (4-5x
    # slower than a plain complex multiply in torch on CPU). With ``h(j) = g(S - 1 - j)``,
    # ``(f * h)(s) = sum_q f(s - S + 1 + q) g(q)``, so rolling the target by ``-(S - 1 - c)``
    # puts the score of "template centre at p" at index p.
    def _target_spectrum(self, x: torch.Tensor) -> torch.Tensor:
        """Spectrum of ``x`` in the corner of the FFT box, rolled by ``-(S - 1 - c)``:
        ``rfftn`` (half spectrum), or the full complex ``fftn`` when paired."""
        buf = torch.zeros(self.fft_shape, dtype=torch.float32, device=self.device)
        d, h, w = x.shape
        buf[:d, :h, :w] = x
        shifts = tuple(-(s - 1 - c) for s, c in zip(self.template_shape, self.center, strict=True))
        buf = torch.roll(buf, shifts=shifts, dims=(0, 1, 2))
        if self.paired:
            return torch.fft.fftn(buf.to(torch.complex64), dim=self._dims)
        return torch.fft.rfftn(buf, dim=self._dims)

    def _slots(self, buf: torch.Tensor, b: int) -> torch.Tensor:
        """The part of a work buffer that holds ``b`` rotations (``ceil(b / 2)`` when paired)."""
        return buf[: (b + 1) // 2] if self.paired else buf[:b]

    def _forward(self, vols: torch.Tensor, spec: torch.Tensor | None = None) -> torch.Tensor:
        """Zero-padded forward FFT of flipped ``(b, S0, S1, S2)`` volumes.

        ``(b, *rfft)`` half spectra, or when paired ``(ceil(b / 2), *fft_shape)`` full spectra
        of ``v[2j] + i v[2j + 1]``.
        """
        b = vols.shape[0]
        s0, s1, s2 = self.template_shape
        out = self._slots(self._spec if spec is None else spec, b)
        if self.paired:
            p = out.shape[0]
            flipped = vols.flip((-3, -2, -1))
            for j in range(p):  # one transform per pair: MKL's batched 3D FFTs are slower
                out[j].zero_()
                pad = torch.view_as_real(out[j])
                pad[:s0, :s1, :s2, 0] = flipped[2 * j]
                if 2 * j + 1 < b:
                    pad[:s0, :s1, :s2, 1] = flipped[2 * j + 1]
                torch.fft.fftn(out[j], dim=self._dims, out=out[j])
            return out
        pad = self._pad[:b]
        pad[:, :s0, :s1, :s2] = vols.flip((-3, -2, -1))
        for i in range(0, b, self.fft_batch):  # CPU: one transform at a time is faster
            j = min(i + self.fft_batch, b)
            torch.fft.rfftn(pad[i:j], dim=self._dims, out=out[i:j])
        return out

    def _xcorr(
        self,
        target_ft: torch.Tensor,
        spec: torch.Tensor,
        out: torch.Tensor,
        *,
        keep: bool,
        b: int | None = None,
    ) -> torch.Tensor:
        """``irfftn(T * spec)`` as ``(b, *fft_shape)`` real scores, in ``out`` (``keep=False``
        overwrites ``spec``). Paired: ``ifftn`` in place, in ``spec`` (``keep=False``) or the
        complex ``out``, returned as the real view (real parts = even items, imaginary parts
        = odd items; a copy for more than 2)."""
        if self.paired:
            # in place (a smaller working set): the product goes to ``out`` (kept spec) or
            # over ``spec``, and the inverse transform overwrites it
            p = spec.shape[0]
            dst = spec if not keep else out[:p]
            torch.mul(spec, target_ft, out=dst)
            for j in range(p):
                torch.fft.ifftn(dst[j], dim=self._dims, out=dst[j])
            n = 2 * p if b is None else b
            real = torch.view_as_real(dst).movedim(-1, 1)  # (p, 2, *n)
            return real.reshape(2 * p, *self.fft_shape)[:n]
        prod = spec * target_ft if keep else torch.mul(spec, target_ft, out=spec)
        out = out[: prod.shape[0]]
        for i in range(0, prod.shape[0], self.fft_batch):
            j = min(i + self.fft_batch, prod.shape[0])
            torch.fft.irfftn(prod[i:j], s=self.fft_shape, dim=self._dims, out=out[i:j])
        return out

    # ------------------------------------------------------------------ scores
    @staticmethod
    def _standardize(g: torch.Tensor, m: torch.Tensor | None) -> torch.Tensor:
        """``m (g - mu) / sigma`` per batch item over ``m > 0`` (all voxels if ``m`` is None)."""
        dims = (1, 2, 3)
        if m is None:
            mu = g.mean(dim=dims, keepdim=True)
            sd = g.std(dim=dims, keepdim=True, unbiased=False)
            sd = torch.where(sd > 0, sd, torch.ones_like(sd))
            return (g - mu) / sd
        inside = (m > 0).to(g.dtype)
        n = inside.sum(dim=dims, keepdim=True).clamp(min=1.0)
        mu = (g * inside).sum(dim=dims, keepdim=True) / n
        var = (((g - mu) * inside) ** 2).sum(dim=dims, keepdim=True) / n
        sd = torch.sqrt(var)
        sd = torch.where(sd > 0, sd, torch.ones_like(sd))
        return m * (g - mu) / sd

    def __call__(self, g: torch.Tensor, m: torch.Tensor | None = None) -> torch.Tensor:
        """Scores ``(b, *fft_shape)`` for rotated (filtered) templates ``g`` ``(b, S...)``.

        ``m``: rotated masks ``(b, S...)`` for FLC/MCC, or the unrotated mask ``(1, S...)``
        for FLCSphericalMask standardisation. The result lives in an internal buffer, valid
        until the next call; paired (CPU) with ``b <= 2`` it is a non-contiguous view of a
        complex buffer (real and imaginary parts; item stride 1), for ``b > 2`` a copy.
        """
        b = g.shape[0]
        sc = self.score
        out = self._slots(self._out, b)
        if sc in ("CC", "LCC"):
            return self._xcorr(self._T1, self._forward(g), out, keep=False, b=b)
        if sc == "NCC":
            gs = self._standardize(g, None)
            res = self._xcorr(self._T1, self._forward(gs), out, keep=False, b=b)
            return res.mul_(self._ncc_scale)
        if sc == "FLCSphericalMask":
            gh = self._standardize(g, m)
            res = self._xcorr(self._T1, self._forward(gh), out, keep=False, b=b)
            return res if self.defer_scale else res.mul_(self._norm)
        if m is None or m.shape[0] != b:
            raise InputError(f"{sc} needs one rotated mask per rotation")
        if sc == "FLC":
            return self._flc(g, m, out)
        return self._mcc(g, m, out)

    def _flc(self, g: torch.Tensor, m: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        b = g.shape[0]
        nm = m.sum(dim=(1, 2, 3)).clamp(min=_EPS).reshape(b, 1, 1, 1)
        gh = self._standardize(g, m)
        num = self._xcorr(self._T1, self._forward(gh), out, keep=False, b=b)
        spec_m = self._forward(m, self._spec2)
        mu = self._xcorr(self._T1, spec_m, self._outs[0], keep=True, b=b).div_(nm)
        e2 = self._xcorr(self._T2, spec_m, self._outs[1], keep=False, b=b).div_(nm)
        var = e2.sub_(mu.mul_(mu)).clamp_(min=0.0).sqrt_()
        var.masked_fill_(var <= _SIGMA_FLOOR, 1.0)
        return num.div_(var.mul_(nm))

    def _mcc(self, g: torch.Tensor, m: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
        b = g.shape[0]
        gh = self._standardize(g, m)
        o1, o2, o3, o4, o5 = self._outs
        spec_g = self._forward(gh)
        spec_m = self._forward(m, self._spec2)
        spec_g2 = self._forward(gh * gh, self._spec3)
        a = self._xcorr(self._T1, spec_g, out, keep=True, b=b)  # f' ⋆ ĝ
        d = self._xcorr(self._Tt, spec_g, o1, keep=False, b=b)  # t ⋆ ĝ
        bb = self._xcorr(self._T1, spec_m, o2, keep=True, b=b)  # f' ⋆ m
        e = self._xcorr(self._T2, spec_m, o3, keep=True, b=b)  # f'² ⋆ m
        ov = self._xcorr(self._Tt, spec_m, o4, keep=False, b=b)  # t ⋆ m
        h = self._xcorr(self._Tt, spec_g2, o5, keep=False, b=b)  # t ⋆ ĝ²
        omax = ov.amax(dim=(1, 2, 3), keepdim=True)
        low = ov < self.overlap_ratio * omax
        ov.clamp_(min=_EPS)
        num = a.sub_(bb * d / ov)
        den1 = e.sub_(bb.mul_(bb).div_(ov)).clamp_(min=0.0)
        den2 = h.sub_(d.mul_(d).div_(ov)).clamp_(min=0.0)
        den = den1.mul_(den2).sqrt_()
        dmax = den.amax(dim=(1, 2, 3), keepdim=True)
        den = torch.where(den < 1000.0 * _EPS * dmax, torch.ones_like(den), den)
        res = num.div_(den).clamp_(-1.0, 1.0)
        return res.masked_fill_(low, 0.0)
