"""Synthetic fine-tuning updates: a target of low intrinsic rank plus a noise floor.

The target is built from its singular value decomposition, so nothing is ever decomposed::

    T = U diag(sigma) V^T = U_k diag(planted) V_k^T + (noise floor on the other directions)

1. ``U`` (d_out x d_out) and ``V`` (d_in x d_in) are random orthogonal matrices: Haar
   distributed (QR of a Gaussian matrix with the signs of R's diagonal fixed) up to
   :data:`HAAR_MAX` rows; above it a product of :data:`LAYERS` layers, each a random row
   permutation followed by a block-diagonal matrix of independent Haar blocks of at most
   :data:`BLOCK` rows. Each is exactly orthogonal and every column spreads over all
   coordinates; it costs O(d^2 BLOCK) instead of O(d^3).
2. Their first ``k`` columns carry the planted spectrum; the other ``min(d_out, d_in) - k``
   carry the noise floor: the singular values a ``(d_out - k) x (d_in - k)`` matrix of
   i.i.d. Gaussian entries of standard deviation ``noise`` typically has (the quantiles of the
   Marchenko-Pastur law). In distribution this is Gaussian noise projected off the planted
   directions (``(I - U_k U_k^T) G (I - V_k V_k^T)``), with its spectrum at its typical values.
3. ``sigma`` is that union, sorted; ``T``, ``U`` and ``V`` are formed from the factors on
   first use. The exact SVD comes with it: the fitter and the Eckart-Young optimum need no
   decomposition, and plain gradient descent needs only ``sigma`` and ``V`` (the old
   construction, planted + i.i.d. noise on every entry, spent most of a d = 1024 sweep in
   ``np.linalg.svd``). The tests check ``sigma`` against a dense SVD of ``T``.

References
----------
V. A. Marchenko and L. A. Pastur, "Distribution of eigenvalues for some sets of random
matrices", Math. USSR-Sbornik 1 (1967). F. Mezzadri, "How to generate random matrices from the
classical compact groups", Notices of the AMS 54 (2007) (Haar matrices by QR).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from functools import cached_property

import math

import numpy as np

from ._validate import check_choice, check_int, check_real
from .errors import ConfigError

__all__ = ["SPECTRA", "Target", "make_target", "planted_spectrum", "noise_spectrum",
           "random_orthogonal", "rotate_by_orthogonal", "MAX_DIM", "DEMO_SHAPES", "DEMO_PLANTED",
           "make_demo_adapter", "DEMO_RUN_STEPS", "make_demo_run"]

#: Shapes of the planted spectrum, see :func:`planted_spectrum`.
SPECTRA: tuple[str, ...] = ("flat", "linear", "geometric")

#: Largest d_out or d_in accepted: the target is held dense.
MAX_DIM = 4096
#: Random orthogonal matrices up to this size are exactly Haar (one QR); larger ones are layered.
HAAR_MAX = 256
#: Rows of the Haar blocks of a layered random orthogonal matrix, and the number of layers.
BLOCK, LAYERS = 64, 3
#: Points of the quadrature that tabulates the Marchenko-Pastur distribution function.
_MP_GRID = 4097
_U_STREAM, _V_STREAM = 0x55, 0x56


@dataclass(frozen=True, eq=False)
class Target:
    """A synthetic update to fit, with its exact singular value decomposition.

    Built from its factors (see the module's docstring); the dense ``matrix`` and the bases
    ``U`` and ``Vt`` are formed on first use only, so a fit that needs just the spectrum and
    ``Vt`` (plain gradient descent) never forms ``T`` or ``U``.

    Attributes
    ----------
    d_out, d_in : int
        The shape.
    singular_values : ndarray of shape (min(d_out, d_in),)
        All singular values of ``T``, descending: the planted ones and the noise floor's
        (:func:`noise_spectrum`), exact by construction.
    signal_values : ndarray of shape (true_rank,)
        The planted spectrum.
    true_rank, spectrum, sigma_max, noise, seed
        The settings that made it.
    order : ndarray of shape (min(d_out, d_in),)
        ``singular_values[i]`` sits on the ``order[i]``-th column of the random bases (the
        first ``true_rank`` columns carry the planted values).
    """

    d_out: int
    d_in: int
    singular_values: np.ndarray
    signal_values: np.ndarray
    true_rank: int
    spectrum: str
    sigma_max: float
    noise: float
    seed: int
    order: np.ndarray = field(repr=False)

    @property
    def shape(self) -> tuple[int, int]:
        """``(d_out, d_in)``."""
        return self.d_out, self.d_in

    @property
    def norm(self) -> float:
        """Frobenius norm of ``T``."""
        return float(np.sqrt(np.sum(self.singular_values**2)))

    @cached_property
    def U(self) -> np.ndarray:
        """Left singular vectors, ndarray of shape (d_out, d_out), orthogonal: ``T = U[:, :m] diag(s) Vt[:m]``."""
        return self._basis(self.d_out, _U_STREAM)

    @cached_property
    def Vt(self) -> np.ndarray:
        """Right singular vectors as rows, ndarray of shape (d_in, d_in), orthogonal.

        The fitter runs plain gradient descent in the basis ``(U, Vt)``, where ``T`` is diagonal.
        """
        return self._basis(self.d_in, _V_STREAM).T

    def to_right_basis(self, X: np.ndarray) -> np.ndarray:
        """``X @ Vt.T``: rows of X (length d_in) in the basis of the right singular vectors.

        Uses ``Vt`` when it is built (or small); else applies the random basis layer by layer
        (:func:`rotate_by_orthogonal`) and never forms the d_in x d_in matrix.

        Parameters
        ----------
        X : ndarray of shape (n, d_in)

        Returns
        -------
        ndarray of shape (n, d_in)
        """
        if "Vt" in self.__dict__ or self.d_in <= HAAR_MAX:
            return X @ self.Vt.T
        Y = rotate_by_orthogonal(X, self.d_in, seed=[self.seed, _V_STREAM])
        m = self.order.size
        Y[:, :m] = Y[:, self.order]
        return Y

    @cached_property
    def matrix(self) -> np.ndarray:
        """``T``, ndarray of shape (d_out, d_in), float64, read-only."""
        m = self.singular_values.size
        T = (self.U[:, :m] * self.singular_values) @ self.Vt[:m]
        T.setflags(write=False)
        return T

    def _basis(self, d: int, stream: int) -> np.ndarray:
        Q = random_orthogonal(d, seed=[self.seed, stream])
        m = self.order.size
        Q[:, :m] = Q[:, self.order]
        Q.setflags(write=False)
        return Q


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


def noise_spectrum(rows: int, cols: int, *, noise: float) -> np.ndarray:
    """The typical singular values of a ``rows x cols`` matrix of i.i.d. N(0, noise^2) entries.

    With ``p = min(rows, cols)``, ``q = max(rows, cols)`` and ``y = p / q``, the eigenvalues of
    ``G G^T / q`` follow the Marchenko-Pastur law on ``[(1 - sqrt(y))^2, (1 + sqrt(y))^2]``;
    the i-th value returned is ``noise * sqrt(q * lambda_i)`` with ``lambda_i`` its
    ``(p - i + 1/2) / p`` quantile. The largest is just under ``noise * (sqrt(rows) + sqrt(cols))``.

    Parameters
    ----------
    rows, cols : int
        Shape of the noise matrix (>= 0).
    noise : float
        Standard deviation of its entries (>= 0).

    Returns
    -------
    ndarray of shape (min(rows, cols),)
        Descending.

    Notes
    -----
    The distribution function is tabulated by the trapezoidal rule after the substitution
    ``lambda = a + (b - a)(1 - cos theta) / 2``, which turns the square-root edges of the
    density into a smooth integrand, and normalised to end at 1.
    """
    rows = check_int("rows", rows, minimum=0)
    cols = check_int("cols", cols, minimum=0)
    noise = check_real("noise", noise, minimum=0.0)
    p, q = min(rows, cols), max(rows, cols)
    if p == 0 or noise == 0:
        return np.zeros(p)
    y = p / q
    a, b = (1.0 - math.sqrt(y)) ** 2, (1.0 + math.sqrt(y)) ** 2
    theta = np.linspace(0.0, math.pi, _MP_GRID)
    lam = a + (b - a) * (1.0 - np.cos(theta)) / 2.0
    # f(lambda) dlambda = ((b - a) / 2)^2 sin^2(theta) / (2 pi y lambda) dtheta; finite at lambda -> 0.
    with np.errstate(divide="ignore", invalid="ignore"):
        dens = np.where(lam > 0, np.sin(theta) ** 2 / np.where(lam > 0, lam, 1.0), 4.0 / (b - a))
    cdf = np.concatenate([[0.0], np.cumsum((dens[1:] + dens[:-1]) / 2.0)])
    cdf /= cdf[-1]
    probs = (np.arange(p, 0, -1) - 0.5) / p  # descending values
    return noise * np.sqrt(q * np.interp(probs, cdf, lam))


def random_orthogonal(d: int, *, seed: object = 0) -> np.ndarray:
    """A random ``d x d`` orthogonal matrix, as the synthetic targets use.

    Haar distributed for ``d <= HAAR_MAX`` (QR of a Gaussian matrix, each column's sign fixed by
    R's diagonal); larger, a product of :data:`LAYERS` layers ``D_l P_l`` (``P_l`` a random
    row permutation, ``D_l`` block-diagonal with independent Haar blocks of at most
    :data:`BLOCK` rows), which costs ``LAYERS * d^2 * BLOCK`` multiply-adds and mixes every
    coordinate into every column (``BLOCK^2 >= MAX_DIM``).

    Parameters
    ----------
    d : int
    seed : int or sequence of int, default=0
        Seed of ``np.random.default_rng``.

    Returns
    -------
    ndarray of shape (d, d)
        Orthogonal to round-off.
    """
    rng = np.random.default_rng(seed)
    if d <= HAAR_MAX:
        return _haar(rng, d)[0]
    Q = np.zeros((d, d))
    for layer, (perm, blocks) in enumerate(_layers(rng, d)):
        if layer == 0:
            # D P for the identity: the Haar blocks on the diagonal, columns placed by the permutation.
            D = np.zeros((d, d))
            start = 0
            for size, count, h in blocks:
                for block in h:
                    D[start:start + size, start:start + size] = block
                    start += size
            Q[:, perm] = D
            continue
        Q = Q[perm]
        start = 0
        for size, count, h in blocks:
            rows = Q[start:start + size * count].reshape(count, size, d)
            Q[start:start + size * count] = (h @ rows).reshape(size * count, d)
            start += size * count
    return Q


def rotate_by_orthogonal(X: np.ndarray, d: int, *, seed: object = 0) -> np.ndarray:
    """``X @ random_orthogonal(d, seed=seed)`` without forming the d x d matrix above HAAR_MAX.

    The layers of :func:`random_orthogonal` are applied to the rows of ``X`` (last one first):
    ``LAYERS * n * d * BLOCK`` multiply-adds instead of ``LAYERS * d^2 * BLOCK`` to form the
    matrix and ``n * d^2`` to multiply by it. Equal to the product to round-off (tested).

    Parameters
    ----------
    X : ndarray of shape (n, d)
    d : int
    seed : int or sequence of int, default=0
        As in :func:`random_orthogonal`.

    Returns
    -------
    ndarray of shape (n, d)
    """
    X = np.asarray(X, dtype=np.float64)
    if d <= HAAR_MAX:
        return X @ random_orthogonal(d, seed=seed)
    n = X.shape[0]
    Y = X.copy()
    # Q = H_{L-1} P_{L-1} ... H_1 P_1 H_0 P_0: multiply by each block-diagonal H_l (blocks of
    # columns times h), then by the permutation P_l, which moves column k to perm[k].
    for perm, blocks in reversed(_layers(np.random.default_rng(seed), d)):
        Z = np.empty_like(Y)
        start = 0
        for size, count, h in blocks:
            cols = Y[:, start:start + size * count].reshape(n, count, size).transpose(1, 0, 2)
            Z[:, start:start + size * count] = (cols @ h).transpose(1, 0, 2).reshape(n, size * count)
            start += size * count
        Y = np.empty_like(Z)
        Y[:, perm] = Z
    return Y


def _layers(rng: np.random.Generator, d: int) -> list[tuple[np.ndarray, list[tuple[int, int, np.ndarray]]]]:
    """The random draws of :func:`random_orthogonal` above HAAR_MAX, in draw order: per layer the
    row permutation and the Haar blocks as (size, count, blocks of shape (count, size, size))."""
    # Near-equal blocks covering the d rows: `count` blocks of each size, in runs of rows.
    nblocks = -(-d // BLOCK)
    small, extra = divmod(d, nblocks)
    groups = [(size, count) for size, count in ((small + 1, extra), (small, nblocks - extra)) if count]
    layers = []
    for _ in range(LAYERS):
        perm = rng.permutation(d)
        layers.append((perm, [(size, count, _haar(rng, size, count=count)) for size, count in groups]))
    return layers


def _haar(rng: np.random.Generator, n: int, *, count: int = 1) -> np.ndarray:
    """``count`` independent Haar ``n x n`` orthogonal matrices, shape (count, n, n)."""
    Q, R = np.linalg.qr(rng.standard_normal((count, n, n)))
    signs = np.sign(np.diagonal(R, axis1=1, axis2=2))
    signs[signs == 0] = 1.0
    return Q * signs[:, None, :]


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
        Level of the noise floor (>= 0): the other ``min(d_out, d_in) - k`` singular values are
        those of a ``(d_out - k) x (d_in - k)`` matrix of i.i.d. Gaussian entries of this
        standard deviation (:func:`noise_spectrum`), reaching about
        ``noise * (sqrt(d_out - k) + sqrt(d_in - k))``, on directions orthogonal to the planted ones.
    seed : int, default=0
        Seed of the random orthogonal bases.

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
    # 1. The planted values on the first k directions of the random bases, the noise floor on
    #    the rest; the bases themselves (independent streams of the seed) are drawn on first use.
    raw = np.concatenate([signal, noise_spectrum(d_out - k, d_in - k, noise=noise)])
    # 2. The spectrum sorted; the basis columns follow their values.
    order = np.argsort(-raw, kind="stable")
    s = raw[order]
    for arr in (s, signal, order):
        arr.setflags(write=False)
    return Target(d_out=d_out, d_in=d_in, singular_values=s, signal_values=signal, true_rank=k,
                  spectrum=spectrum, sigma_max=float(sigma_max), noise=noise, seed=seed, order=order)


# ------------------------------------------------------------------------------ demo adapters
#: Module shapes (d_out, d_in) of the demo adapter, a 2-layer Llama-shaped PEFT adapter.
DEMO_SHAPES = {"q_proj": (128, 128), "k_proj": (64, 128), "v_proj": (64, 128),
               "o_proj": (128, 128), "gate_proj": (256, 128), "up_proj": (256, 128),
               "down_proj": (128, 256)}
#: Planted directions per module type of the demo adapter.
DEMO_PLANTED = {"q_proj": 2, "k_proj": 2, "v_proj": 6, "o_proj": 5, "gate_proj": 3,
                "up_proj": 4, "down_proj": 8}
_DEMO_LAYERS = 2


def make_demo_adapter(variant: str = "a"):
    """A small synthetic PEFT adapter of known planted ranks (Llama-shaped, 2 layers x 7 modules).

    Parameters
    ----------
    variant : {"a", "b"}
        ``"a"`` has r = 16, ``"b"`` r = 8. In every module of either, ``dW = s * B @ A`` has k
        planted directions (:data:`DEMO_PLANTED`: 2 for q_proj ... 8 for down_proj) with
        singular values from 10 down to 5 and a tail of noise directions at about 0.1; the two
        variants share their planted input directions (the row space of A), so a comparison
        finds them.

    Returns
    -------
    lorarank.adapters.Adapter
        float32 factors, ``lora_alpha = r`` (scale 1), a PEFT config.
    """
    from .adapters import Adapter, LoraModule

    variant = check_choice("variant", variant, ("a", "b"))
    r = 16 if variant == "a" else 8
    shared = np.random.default_rng(2024)
    own = np.random.default_rng(7 if variant == "a" else 8)
    modules = []
    for layer in range(_DEMO_LAYERS):
        for kind, (d_out, d_in) in DEMO_SHAPES.items():
            k = DEMO_PLANTED[kind]
            # 1. Shared planted input directions, own output directions and noise directions.
            v_planted = np.linalg.qr(shared.standard_normal((d_in, k)))[0]
            v_noise = own.standard_normal((d_in, r - k))
            v = np.linalg.qr(np.hstack([v_planted, v_noise]))[0]
            u = np.linalg.qr(own.standard_normal((d_out, r)))[0]
            # 2. Singular values: planted 10 -> 5, then a noise tail near 0.1.
            s = np.concatenate([np.linspace(10.0, 5.0, k), 0.1 * own.uniform(0.5, 1.5, r - k)])
            s = np.sort(s)[::-1]
            root = np.sqrt(s)
            name = f"base_model.model.model.layers.{layer}." + (
                "self_attn." if kind.endswith(("q_proj", "k_proj", "v_proj", "o_proj")) else "mlp.") + kind
            modules.append(LoraModule(name, (root[:, None] * v.T).astype(np.float32),
                                      (u * root).astype(np.float32), 1.0, alpha=float(r)))
    config = {"r": r, "lora_alpha": r, "peft_type": "LORA", "target_modules": list(DEMO_SHAPES),
              "base_model_name_or_path": "synthetic-demo (lorarank)"}
    return Adapter(format="peft", modules=modules, scaling="", source="demo", config=config)


#: Steps of the demo training run's checkpoints.
DEMO_RUN_STEPS = (50, 100, 150, 200, 250, 300)
_DEMO_RUN_SHAPES = {"self_attn.q_proj": (64, 64), "self_attn.v_proj": (32, 64),
                    "mlp.down_proj": (64, 128)}
_DEMO_RUN_FINAL = {"self_attn.q_proj": 2, "self_attn.v_proj": 4, "mlp.down_proj": 6}


def make_demo_run() -> list:
    """A synthetic training run: six PEFT checkpoints (r = 8) of 2 layers x 3 modules.

    Module type t has ``k_t`` planted directions (q_proj 2, v_proj 4, down_proj 6); at
    checkpoint i = 0..5 the update holds ``min(k_t, 2 (i + 1))`` of them, all growing in
    strength, and A's row space turns from a random start towards the planted one.

    Returns
    -------
    list of (int, lorarank.adapters.Adapter)
        ``(step, adapter)`` for the steps :data:`DEMO_RUN_STEPS`.
    """
    from .adapters import Adapter, LoraModule

    rng = np.random.default_rng(11)
    r = 8
    final = {}
    for layer in range(2):
        for kind, (d_out, d_in) in _DEMO_RUN_SHAPES.items():
            final[(layer, kind)] = (np.linalg.qr(rng.standard_normal((d_out, r)))[0],
                                    np.linalg.qr(rng.standard_normal((d_in, r)))[0],
                                    np.linalg.qr(rng.standard_normal((d_in, r)))[0])
    run = []
    for i, step in enumerate(DEMO_RUN_STEPS):
        t = (i + 1) / len(DEMO_RUN_STEPS)
        modules = []
        for (layer, kind), (u, v, v0) in final.items():
            k = _DEMO_RUN_FINAL[kind]
            s = np.full(r, 0.02)
            grown = min(k, 2 * (i + 1))  # q_proj has all its directions at step 50, down_proj at 150
            s[:grown] = np.linspace(4.0, 2.0, k)[:grown] * t
            v_t = np.linalg.qr((1 - t) * v0 + t * v)[0]
            root = np.sqrt(s)
            modules.append(LoraModule(f"base_model.model.model.layers.{layer}.{kind}",
                                      (root[:, None] * v_t.T).astype(np.float32),
                                      (u * root).astype(np.float32), 1.0, alpha=float(r)))
        config = {"r": r, "lora_alpha": r, "peft_type": "LORA", "target_modules":
                  sorted(k.split(".")[-1] for k in _DEMO_RUN_SHAPES),
                  "base_model_name_or_path": "synthetic-demo-run (lorarank)"}
        run.append((step, Adapter(format="peft", modules=modules, scaling="", source="demo",
                                  config=config)))
    return run
