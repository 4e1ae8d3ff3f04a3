"""CDLFM: cross-domain latent feature mapping (Wang, Peng, Wang, Yu, Fu, Xu, Hong, "CDLFM:
cross-domain recommendation for cold-start users via latent feature mapping", Knowledge and
Information Systems 2020 (online 2019); conference version "Cross-Domain Recommendation for
Cold-Start Users via Neighborhood Based Feature Mapping", DASFAA 2018).

What is implemented:

1. MFUS, matrix factorisation with user similarities, in each domain d: biased MF plus a
   similarity regulariser pulling each user towards their rating-behaviour neighbours,
   ``L = Σ (r − μ − b_u − b_i − p_uᵀq_i)² + λ‖·‖² + β Σ_u Σ_{v∈N_k(u)} s_uv ‖p_u − p_v‖²``,
   where ``s_uv`` is the cosine similarity of the two users' item-mean-centred rating vectors
   in d (negative similarities dropped) and ``N_k(u)`` the top-k users (the paper proposes
   three similarity measures; we use this rating-based one).
2. Neighbourhood-based mapping of ``[p^s_u; b^s_u] → [p^t_u; b^t_u]``. The paper fits, for
   each cold-start user, a gradient-boosted-tree (or MLP) mapping on the linked users most
   similar to them in the source domain. Fitting one model per cold-start user is slow and
   unstable on a few neighbours, so we keep the boosting idea with two stages: a global MLP
   ``f`` fitted on all overlapping training users (EMCDR's mapping), then one neighbourhood
   step that adds the similarity-weighted residuals of the user's K nearest linked users,
   ``y_u = f(x_u) + Σ_{v∈N_K(u)} s_uv (y_v − f(x_v)) / (Σ_v s_uv + γ)``, with the shrinkage
   γ picked on the validation cold-start users (γ = ∞ is the global map alone).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from catn.baselines._common import (
    BiasedMF,
    MappingConfig,
    MFConfig,
    Scorer,
    cached_predictor,
    centred_rating_matrix,
    fit_domain_mf,
    fit_mapping,
    mse,
    training_users,
)
from catn.baselines.emcdr import mapped_score
from catn.data.dataset import EtaData


@dataclass(frozen=True)
class CDLFMConfig:
    mf: MFConfig = MFConfig()
    similarity_weight: float = 0.05  # β
    mf_neighbours: int = 10  # k
    map_neighbours: int = 20  # K
    shrinkage_grid: tuple[float, ...] = (0.25, 1.0, 4.0, float("inf"))  # γ
    mapping: MappingConfig = MappingConfig()


def topk_cosine(a: torch.Tensor, b: torch.Tensor, k: int, exclude: torch.Tensor | None = None,
                chunk: int = 2048) -> tuple[torch.Tensor, torch.Tensor]:
    """For each row of ``a``, the ``k`` most cosine-similar rows of ``b`` (indices, similarities
    clamped at 0). ``exclude[j]`` = index into ``b`` to skip for ``a``'s row j (itself)."""
    an = a / a.norm(dim=1, keepdim=True).clamp_min(1e-8)
    bn = b / b.norm(dim=1, keepdim=True).clamp_min(1e-8)
    k = min(k, b.shape[0])
    idx, sim = [], []
    for lo in range(0, a.shape[0], chunk):
        s = an[lo:lo + chunk] @ bn.T
        if exclude is not None:
            ex = exclude[lo:lo + chunk]
            s[torch.arange(len(ex)), ex] = -2.0  # below any cosine: never picked
        v, j = s.topk(k, dim=1)
        idx.append(j)
        sim.append(v.clamp_min(0.0))
    return torch.cat(idx), torch.cat(sim)


def similarity_penalty(data: EtaData, domain: str, cfg: CDLFMConfig):
    """β · mean over neighbour edges of s_uv ‖p_u − p_v‖² (users with ratings in the domain)."""
    R = centred_rating_matrix(data, domain)
    active = torch.as_tensor(np.unique((data.visible_s if domain == "s" else data.visible_t)[0]))
    j, s = topk_cosine(R[active], R[active], cfg.mf_neighbours,
                       exclude=torch.arange(len(active)))
    src = active[:, None].expand_as(j).reshape(-1)
    dst, w = active[j.reshape(-1)], s.reshape(-1)
    keep = w > 0
    src, dst, w = src[keep], dst[keep], w[keep]

    def penalty(m: BiasedMF) -> torch.Tensor:
        if len(w) == 0:
            return m.P.sum() * 0.0
        return cfg.similarity_weight * (w * ((m.P[src] - m.P[dst]) ** 2).sum(-1)).mean()

    return penalty


def fit_cdlfm(data: EtaData, cfg: CDLFMConfig = CDLFMConfig()) -> Scorer:
    """MFUS in each domain + neighbourhood-boosted cross-domain mapping."""
    mf_s = fit_domain_mf(data, "s", cfg.mf, similarity_penalty(data, "s", cfg))
    mf_t = fit_domain_mf(data, "t", cfg.mf, similarity_penalty(data, "t", cfg))
    x, y = mf_s.user_vectors(), mf_t.user_vectors()
    train = training_users(data)
    cold = mapped_score(mf_t)
    f = fit_mapping(x, y, train, cold, data, cfg.mapping)
    R_s = centred_rating_matrix(data, "s")
    tr = torch.as_tensor(train)
    with torch.no_grad():
        resid = y[tr] - f(x[tr])  # (n_train, dim + 1)

    @torch.no_grad()
    def mapped(users: np.ndarray, gamma: float) -> torch.Tensor:
        uq, inv = np.unique(users, return_inverse=True)
        base = f(x[torch.as_tensor(uq)])
        if np.isfinite(gamma) and len(tr):
            j, s = topk_cosine(R_s[torch.as_tensor(uq)], R_s[tr], cfg.map_neighbours)
            w = s / (s.sum(1, keepdim=True) + gamma)
            base = base + (w[:, :, None] * resid[j]).sum(1)
        return base[torch.as_tensor(inv)]

    vu, vi, vr = data.val
    gamma = float("inf")
    if len(vu):
        vr_t = torch.as_tensor(vr)
        with torch.no_grad():
                errs = {g: float(mse(cold(mapped(vu, g), vu, vi), vr_t))
                    for g in cfg.shrinkage_grid}
        gamma = min(errs, key=errs.get)

    @torch.no_grad()
    def score(users: np.ndarray, items: np.ndarray) -> np.ndarray:
        return cold(mapped(users, gamma), users, items).numpy()

    return score


cdlfm = cached_predictor(fit_cdlfm)
