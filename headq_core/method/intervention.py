"""Null-space intervention: same-norm key perturbations outside or inside the top query subspace.

Each token's real quantization error ``e_j = k^_j - k_j`` is replaced by seeded Gaussian noise
projected onto the orthogonal complement of (``outside``) or onto (``inside``) the span of the top
``dims`` query directions ``U`` [Hkv, d, m], rescaled to ‖e_j‖. key_mse is therefore unchanged
while the logit error ``tau <q, n_j>`` is tiny (outside) or large (inside).
"""

from __future__ import annotations

import torch

from headq_core.config import InterventionConfig
from headq_core.method.quant import check_finite


def project(noise: torch.Tensor, basis: torch.Tensor, subspace: str) -> torch.Tensor:
    """noise [B, Hkv, S, d] projected inside / outside span(basis [Hkv, d, m])."""
    inside = torch.einsum("bhsd,hdm,hem->bhse", noise, basis, basis)
    return inside if subspace == "inside" else noise - inside


def perturb_keys(k: torch.Tensor, k_hat: torch.Tensor, basis: torch.Tensor,
                 cfg: InterventionConfig) -> torch.Tensor:
    """k, k_hat [B, Hkv, S, d], basis [Hkv, d, >= dims] (orthonormal, e.g. the query_pca basis)
    -> perturbed keys [B, Hkv, S, d] with ‖k'_j - k_j‖ = ‖k^_j - k_j‖ for every token."""
    if k.shape != k_hat.shape or k.dim() != 4:
        raise ValueError(f"k_hat: expected the shape of k [B, Hkv, S, d], got {tuple(k_hat.shape)}")
    check_finite(k, "k")
    check_finite(k_hat, "k_hat")
    d = k.shape[-1]
    if basis.shape[0] != k.shape[1] or basis.shape[1] != d or basis.shape[2] < cfg.dims:
        raise ValueError(f"dims: basis {tuple(basis.shape)} must be [Hkv, {d}, >= {cfg.dims}]")
    if cfg.subspace == "outside" and cfg.dims >= d:
        raise ValueError(f"dims: {cfg.dims} leaves no room outside the subspace of head_dim {d}")
    u = basis[..., : cfg.dims].to(k.device, torch.float64)
    gen = torch.Generator().manual_seed(cfg.seed)  # drawn on the CPU: the same noise on any device
    noise = torch.randn(k.shape, generator=gen, dtype=torch.float64).to(k.device)
    noise = project(noise, u, cfg.subspace)
    err_norm = (k_hat.to(torch.float64) - k.to(torch.float64)).norm(dim=-1, keepdim=True)
    noise = noise / noise.norm(dim=-1, keepdim=True).clamp(min=1e-300) * err_norm
    return (k.to(torch.float64) + noise).to(k.dtype)
