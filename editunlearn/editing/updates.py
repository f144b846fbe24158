"""Closed-form weight updates of a linear layer W (out x in) that stores values v under keys k.

Shapes follow torch.nn.Linear: W is (d, d_ff), a key is a d_ff vector, a value a d vector; a batch
of keys is K (d_ff, n), of value residuals R (d, n). Everything in float64 for the solves: the
matrices involved (lambda*C + K K^T, projections) are badly conditioned, and these are small.
"""

from __future__ import annotations

import torch


def _f64(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to(torch.float64)


def rank_one_update(weight: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                    cov: torch.Tensor | None = None) -> torch.Tensor:
    """ROME (Meng et al. 2022): the update Delta with (W + Delta) k = v exactly, of rank one.

    Without ``cov`` the direction is k itself (EasyEdit's mom2_adjustment false); with the key
    second moment C it is C^-1 k, the minimal change in the C-weighted norm, which disturbs the
    outputs for typical keys least: Delta = (v - W k) (C^-1 k)^T / ((C^-1 k)^T k).
    """
    w, k, v = _f64(weight), _f64(key), _f64(value)
    direction = k if cov is None else torch.linalg.solve(_f64(cov), k)
    denominator = direction @ k
    if not torch.isfinite(denominator) or denominator.abs() < 1e-12:
        raise FloatingPointError(f"rank-one update: degenerate key (k . u = {float(denominator)})")
    residual = v - w @ k
    return torch.outer(residual, direction) / denominator


def least_squares_update(residuals: torch.Tensor, keys: torch.Tensor, cov: torch.Tensor,
                         weight: float) -> torch.Tensor:
    """MEMIT (Meng et al. 2023): Delta = R K^T (lambda C + K K^T)^-1, the minimiser of
    |Delta K - R|^2 + lambda * E_k |Delta k|^2 over keys k of the corpus (C = E[k k^T])."""
    r, k = _f64(residuals), _f64(keys)
    a = weight * _f64(cov) + k @ k.T
    return torch.linalg.solve(a, k @ r.T).T


def nullspace_projection(cov: torch.Tensor, threshold: float) -> tuple[torch.Tensor, int]:
    """AlphaEdit (Fang et al. 2025): P = U U^T over the eigenvectors of C = E[k k^T]
    whose eigenvalues are below ``threshold`` -- directions preserved keys (almost) never take.
    Returns P and its rank (the null space's dimension)."""
    values, vectors = torch.linalg.eigh(_f64(cov))
    kept = vectors[:, values < threshold]
    return kept @ kept.T, kept.shape[1]


def nullspace_update(residuals: torch.Tensor, keys: torch.Tensor, projection: torch.Tensor,
                     previous: torch.Tensor | None, l2: float) -> torch.Tensor:
    """AlphaEdit: Delta = R K^T P (K_p K_p^T P + K K^T P + l2 I)^-1.

    ``previous`` is K_p K_p^T, the accumulated keys of earlier edits (kept fixed: their
    values should not move); ``l2`` weighs the ridge term |Delta P|^2. Delta (I - P) = 0, so the
    update does not change the layer's output for keys in the preserved subspace.
    """
    r, k, p = _f64(residuals), _f64(keys), _f64(projection)
    if l2 <= 0:
        raise ValueError(f"hyper-parameter 'L2' must be positive, got {l2}")
    kk = k @ k.T
    if previous is not None:
        kk = kk + _f64(previous)
    m = kk @ p + l2 * torch.eye(p.shape[0], dtype=torch.float64, device=p.device)
    # Delta M = R K^T P  <=>  M^T Delta^T = P K R^T  (P symmetric)
    return torch.linalg.solve(m.T, p @ k @ r.T).T
