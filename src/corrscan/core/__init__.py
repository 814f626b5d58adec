"""Shared kernels: arrays, fourier, ctf, rotations, projection, stats, peaks, io.

Nothing here imports a job package, ``synthetic``, ``distributed`` or ``cli``.
"""
