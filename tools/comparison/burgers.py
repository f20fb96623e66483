"""1-D viscous Burgers, ``u_t + u u_x = ν u_xx`` on the periodic domain ``[0, 2π)``: a pseudo-spectral solver
and the Cole–Hopf exact solutions it is checked against.

The solver is written here rather than taken from a library because the data set must be generated
deterministically, offline, at any resolution, with no solver package installed; it is the standard scheme
(Fourier pseudo-spectral, 2/3-rule dealiasing, fourth-order Runge–Kutta on the integrating factor
``exp(−ν k² t)``, so the stiff diffusion is exact and only the advection limits the step).
"""

from __future__ import annotations

import math

import numpy as np


def wavenumbers(points: int) -> np.ndarray:
    """Integer wavenumbers ``[points // 2 + 1]`` of a real FFT on ``[0, 2π)``."""
    return np.fft.rfftfreq(points, d=1.0 / points)


def solve_burgers(initial: np.ndarray, viscosity: float, t_end: float, dt: float = 1e-3) -> np.ndarray:
    """``u(t_end)`` ``[S, N]`` from ``initial`` ``u(0)`` ``[S, N]`` (``N`` equispaced points ``2π·j/N``).

    Integrating-factor RK4 in Fourier space with the 2/3 rule; ``dt`` is rounded down so that whole steps reach
    ``t_end``. Raises if ``dt`` breaks the advective CFL limit (``dt · max|u| · N / 2π ≤ 1``) or the solution
    blows up.
    """
    if initial.ndim != 2:
        raise ValueError(f"initial must be [samples, points], got shape {initial.shape}")
    if viscosity <= 0 or t_end <= 0 or dt <= 0:
        raise ValueError(f"viscosity, t_end and dt must be > 0, got {viscosity}, {t_end}, {dt}")
    points = initial.shape[1]
    steps = math.ceil(t_end / dt)
    h = t_end / steps
    courant = h * float(np.abs(initial).max()) * points / (2 * math.pi)
    if courant > 1.0:
        raise ValueError(f"time step {h:.2e} breaks the CFL limit at {points} points (Courant number {courant:.2f})")
    k = wavenumbers(points)
    keep = (np.abs(k) < points / 3).astype(np.float64)  # 2/3-rule dealiasing
    half = np.exp(-viscosity * k**2 * h / 2)
    full = half**2

    def advection(spectrum: np.ndarray) -> np.ndarray:
        u = np.fft.irfft(spectrum, n=points)
        return -0.5j * k * np.fft.rfft(u * u) * keep

    spectrum = np.fft.rfft(initial.astype(np.float64))
    for _ in range(steps):
        a = advection(spectrum)
        b = advection(half * (spectrum + h / 2 * a))
        c = advection(half * spectrum + h / 2 * b)
        d = advection(full * spectrum + h * half * c)
        spectrum = full * spectrum + h / 6 * (full * a + 2 * half * (b + c) + d)
    result = np.fft.irfft(spectrum, n=points)
    if not np.isfinite(result).all():
        raise FloatingPointError("the Burgers solution blew up; lower dt")
    return result


def cole_hopf(x: np.ndarray, t: float, viscosity: float, offset: float, amplitudes: np.ndarray,
              phases: np.ndarray) -> np.ndarray:
    """The exact solution ``u = −2ν φ_x / φ`` at ``x`` and time ``t``, where ``φ`` solves the heat equation
    ``φ_t = ν φ_xx`` from ``φ(x, 0) = offset + Σ_m amplitudes[m−1] cos(m x + phases[m−1])`` (``offset`` must
    exceed ``Σ |amplitudes|`` so that ``φ > 0``)."""
    if offset <= np.abs(amplitudes).sum():
        raise ValueError("offset must exceed the sum of |amplitudes| so that φ stays positive")
    modes = np.arange(1, len(amplitudes) + 1)
    decay = amplitudes * np.exp(-viscosity * modes**2 * t)
    angle = modes[:, None] * x[None, :] + phases[:, None]
    phi = offset + (decay[:, None] * np.cos(angle)).sum(0)
    phi_x = -(decay[:, None] * modes[:, None] * np.sin(angle)).sum(0)
    return -2 * viscosity * phi_x / phi


def random_initial_conditions(samples: int, points: int, rng: np.random.Generator, modes: int = 8,
                              rms: float = 0.5) -> np.ndarray:
    """Smooth random periodic fields ``[samples, points]``: Fourier modes 1..``modes`` with Gaussian
    coefficients decaying as ``k^−1.5``, each field scaled to root-mean-square ``rms``."""
    x = 2 * math.pi * np.arange(points) / points
    k = np.arange(1, modes + 1)
    coefficients = rng.standard_normal((samples, 2, modes)) / k**1.5
    fields = (coefficients[:, 0, :, None] * np.cos(k[:, None] * x)).sum(1) + \
             (coefficients[:, 1, :, None] * np.sin(k[:, None] * x)).sum(1)
    return fields * (rms / np.sqrt((fields**2).mean(1, keepdims=True)))
