"""Synthetic fine-tuning updates: a target of low intrinsic rank plus a noise floor.

The target is ``T = U_k diag(sigma) V_k^T + noise * G``: ``k`` planted directions with a chosen
spectrum on random orthonormal bases, plus i.i.d. Gaussian entries of standard deviation
``noise`` (real fine-tuning updates are not exactly low-rank). Its exact singular values and
full singular vectors are computed once here, so the fitter and the Eckart-Young optimum need
no further SVD.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from ._validate import check_choice, check_int, check_real
from .errors import ConfigError

__all__ = ["SPECTRA", "Target", "make_target", "planted_spectrum", "MAX_DIM"]

#: Shapes of the planted spectrum, see :func:`planted_spectrum`.
SPECTRA: tuple[str, ...] = ("flat", "linear", "geometric")

#: Largest d_out or d_in accepted: the target is dense and its full SVD is taken once.
MAX_DIM = 4096


@dataclass(frozen=True, eq=False)
class Target:
    """A synthetic update to fit, with its exact singular value decomposition.

    Attributes
    ----------
    matrix : ndarray of shape (d_out, d_in)
        ``T``, float64.
    singular_values : ndarray of shape (min(d_out, d_in),)
        All singular values of ``T``, descending (exact to round-off).
    signal_values : ndarray of shape (true_rank,)
        The planted spectrum before noise was added.
    true_rank, spectrum, sigma_max, noise, seed
        The settings that made it.
    """

    matrix: np.ndarray
    singular_values: np.ndarray
    signal_values: np.ndarray
    true_rank: int
    spectrum: str
    sigma_max: float
    noise: float
    seed: int
    # Full SVD T = U @ diag(singular_values) @ Vt with square U (d_out, d_out), Vt (d_in, d_in):
    # the fitter runs plain gradient descent in this basis, where T is diagonal.
    U: np.ndarray = field(repr=False)
    Vt: np.ndarray = field(repr=False)

    @property
    def shape(self) -> tuple[int, int]:
        """``(d_out, d_in)``."""
        return self.matrix.shape  # type: ignore[return-value]

    @property
    def norm(self) -> float:
        """Frobenius norm of ``T``."""
        return float(np.sqrt(np.sum(self.singular_values**2)))


def planted_spectrum(true_rank: int, *, spectrum: str = "linear", sigma_max: float = 38.0) -> np.ndarray:
    """The ``true_rank`` singular values planted in a target, descending.

    Parameters
    ----------
    true_rank : int
        Number of directions k >= 1.
    spectrum : {"flat", "linear", "geometric"}, default="linear"
        ``flat``: all equal to ``sigma_max``. ``linear``: ``sigma_i = sigma_max * (1 - (i-1)/(2k))``,
        a straight line from ``sigma_max`` towards ``sigma_max / 2`` (k = 4 gives 38, 33.25,
        28.5, 23.75, close to the article's 37.8, 33.1, 25.8, 24.2). ``geometric``:
        ``sigma_i = sigma_max * 10^(-(i-1)/(k-1))``, a factor 10 from first to last.
    sigma_max : float, default=38.0
        The largest planted singular value (the article's target has 37.8).

    Returns
    -------
    ndarray of shape (true_rank,)
    """
    k = check_int("true_rank", true_rank, minimum=1)
    spectrum = check_choice("spectrum", spectrum, SPECTRA)
    sigma_max = check_real("sigma_max", sigma_max, minimum=0.0, strict_minimum=True)
    i = np.arange(k, dtype=np.float64)
    if spectrum == "flat":
        return np.full(k, sigma_max)
    if spectrum == "linear":
        return sigma_max * (1.0 - i / (2 * k))
    return sigma_max * 10.0 ** (-i / max(k - 1, 1))


def make_target(d_out: int = 64, d_in: int = 64, *, true_rank: int = 4, spectrum: str = "linear",
                sigma_max: float = 38.0, noise: float = 0.01, seed: int = 0) -> Target:
    """A synthetic fine-tuning update of intrinsic rank ``true_rank`` plus a noise floor.

    Parameters
    ----------
    d_out, d_in : int, default=64
        Shape of the update (output and input features), each in [1, MAX_DIM].
    true_rank : int, default=4
        Intrinsic rank k, 1 <= k <= min(d_out, d_in).
    spectrum : {"flat", "linear", "geometric"}, default="linear"
        Shape of the planted singular values, see :func:`planted_spectrum`.
    sigma_max : float, default=38.0
        Largest planted singular value. It sets the learning-rate scale, so it is kept as is.
    noise : float, default=0.01
        Standard deviation of the i.i.d. Gaussian noise added to every entry (>= 0). The
        noise's own singular values reach about ``noise * (sqrt(d_out) + sqrt(d_in))``.
    seed : int, default=0
        Seed of the random bases and noise.

    Returns
    -------
    Target

    Examples
    --------
    >>> t = make_target()
    >>> t.shape, t.true_rank
    ((64, 64), 4)
    """
    d_out = check_int("d_out", d_out, minimum=1, maximum=MAX_DIM)
    d_in = check_int("d_in", d_in, minimum=1, maximum=MAX_DIM)
    k = check_int("true_rank", true_rank, minimum=1)
    if k > min(d_out, d_in):
        raise ConfigError(
            f"`true_rank` = {k} is larger than the matrix allows: min(d_out, d_in) = {min(d_out, d_in)}"
        )
    noise = check_real("noise", noise, minimum=0.0)
    seed = check_int("seed", seed, minimum=0)
    signal = planted_spectrum(k, spectrum=spectrum, sigma_max=sigma_max)
    rng = np.random.default_rng(seed)
    # 1. Random orthonormal k-frames (QR of Gaussian matrices, signs fixed for uniqueness).
    u, _ = np.linalg.qr(rng.standard_normal((d_out, k)))
    v, _ = np.linalg.qr(rng.standard_normal((d_in, k)))
    # 2. The planted update, then the noise floor.
    matrix = (u * signal) @ v.T
    if noise > 0:
        matrix += noise * rng.standard_normal((d_out, d_in))
    # 3. Its exact SVD, with full square bases for the fitter's change of basis.
    U, s, Vt = np.linalg.svd(matrix, full_matrices=True)
    for arr in (matrix, s, signal, U, Vt):
        arr.setflags(write=False)
    return Target(matrix=matrix, singular_values=s, signal_values=signal, true_rank=k,
                  spectrum=spectrum, sigma_max=float(sigma_max), noise=noise, seed=seed, U=U, Vt=Vt)
