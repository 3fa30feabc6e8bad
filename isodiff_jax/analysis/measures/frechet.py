"""Fréchet distance between Gaussians fitted to two feature sets (FID when the features are
Inception-v3 pool features; method.md §6).

    FD = |μ₁ − μ₂|² + Tr(Σ₁ + Σ₂ − 2 (Σ₁^{1/2} Σ₂ Σ₁^{1/2})^{1/2})

From statistics, the matrix square root is taken of the symmetric PSD matrix Σ₁^{1/2} Σ₂ Σ₁^{1/2}
by an eigendecomposition in float64, which is exact up to rounding and never complex (unlike
sqrtm of the non-symmetric product Σ₁Σ₂).

From features the trace term needs no D × D square root at all: with X₁ (N, D), X₂ (M, D) the
centred features scaled by 1/sqrt(N − 1) and 1/sqrt(M − 1), Σᵢ = XᵢᵀXᵢ and

    Tr (Σ₁^{1/2} Σ₂ Σ₁^{1/2})^{1/2} = Σ σ(X₁X₂ᵀ)   (the nuclear norm),

since the non-zero eigenvalues of Σ₁Σ₂ = X₁ᵀ(X₁X₂ᵀ)X₂ are the squared singular values of X₁X₂ᵀ.
When N and M exceed D, X₁ and X₂ are first reduced to their D × D QR factors. One SVD of size
min(N, M, D) replaces two 2048 × 2048 eigendecompositions (about 10 s on 2 CPU cores).
"""
import numpy as np


def feature_statistics(features) -> tuple[np.ndarray, np.ndarray]:
    """(N, D) features -> (mean (D,), covariance (D, D)), float64, unbiased covariance."""
    f = np.asarray(features, np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"features must be (N >= 2, D), got shape {f.shape}")
    return f.mean(axis=0), np.cov(f, rowvar=False)


def _psd_sqrt(matrix: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """FD between N(mu1, sigma1) and N(mu2, sigma2); mu (D,), sigma (D, D)."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape or sigma1.shape != (mu1.size, mu1.size):
        raise ValueError(f"shapes do not match: mu {mu1.shape} {mu2.shape}, sigma {sigma1.shape} {sigma2.shape}")
    root1 = _psd_sqrt(sigma1)
    cross = np.trace(_psd_sqrt(root1 @ sigma2 @ root1))
    value = np.sum((mu1 - mu2) ** 2) + np.trace(sigma1) + np.trace(sigma2) - 2 * cross
    return float(max(value, 0.0))


def _scaled_centred(features) -> np.ndarray:
    f = np.asarray(features, np.float64)
    if f.ndim != 2 or f.shape[0] < 2:
        raise ValueError(f"features must be (N >= 2, D), got shape {f.shape}")
    return (f - f.mean(axis=0)) / np.sqrt(f.shape[0] - 1)


def frechet_distance_of_features(features1, features2) -> float:
    """FD of an (N, D) and an (M, D) feature set (unbiased covariances), through the nuclear norm."""
    x1, x2 = _scaled_centred(features1), _scaled_centred(features2)
    if x1.shape[1] != x2.shape[1]:
        raise ValueError(f"feature dimensions differ: {x1.shape} and {x2.shape}")
    mean_term = np.sum((np.mean(features1, axis=0, dtype=np.float64) - np.mean(features2, axis=0, dtype=np.float64)) ** 2)
    if min(x1.shape[0], x2.shape[0]) > x1.shape[1]:  # reduce to D × D factors: X = QR, X₁X₂ᵀ ~ R₁R₂ᵀ
        x1, x2 = np.linalg.qr(x1, mode="r"), np.linalg.qr(x2, mode="r")
    cross = np.linalg.svd(x1 @ x2.T, compute_uv=False).sum()
    value = mean_term + np.sum(x1 ** 2) + np.sum(x2 ** 2) - 2 * cross
    return float(max(value, 0.0))
