"""EMCDR: embedding and mapping for cross-domain recommendation (Man, Shen, Jin, Cheng,
"Cross-Domain Recommendation: An Embedding and Mapping Approach", IJCAI 2017).

1. Latent factors: biased MF in each domain separately on all its visible ratings
   (``r̂ = μ + b_u + b_i + p_uᵀ q_i``; cold-start users get source factors only).
2. Mapping: an MLP ``f`` (one tanh hidden layer of 2× the input size, the paper's EMCDR-MLP)
   from a user's source vector ``[p^s_u; b^s_u]`` to their target vector ``[p^t_u; b^t_u]``,
   trained with squared error on the overlapping training users.
3. Cold-start user: ``[p; b] = f([p^s_u; b^s_u])``, ``r̂ = μ_t + b + b^t_i + pᵀ q^t_i``.

Choices: MF rather than BPR for step 1 (explicit ratings); the user bias travels with the
factors; each MF's epoch count is picked on a 10% holdout of its domain then refit on all
ratings; the mapping stops early on the validation cold-start users' target MSE.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from catn.baselines._common import (
    BiasedMF,
    MappingConfig,
    MFConfig,
    Scorer,
    cached_predictor,
    fit_domain_mf,
    fit_mapping,
    training_users,
)
from catn.data.dataset import EtaData


@dataclass(frozen=True)
class EMCDRConfig:
    mf: MFConfig = MFConfig()
    mapping: MappingConfig = MappingConfig()


def mapped_score(mf_t: BiasedMF
                 ) -> Callable[[torch.Tensor, np.ndarray, np.ndarray], torch.Tensor]:
    """Score (user, target item) pairs from mapped target vectors ``[p; b]``."""

    def score(vec: torch.Tensor, users: np.ndarray, items: np.ndarray) -> torch.Tensor:
        i = torch.as_tensor(items)
        return mf_t.mu + vec[:, -1] + mf_t.bi[i] + (vec[:, :-1] * mf_t.Q[i]).sum(-1)

    return score


def fit_emcdr(data: EtaData, cfg: EMCDRConfig = EMCDRConfig()) -> Scorer:
    """EMCDR with MF embeddings and an MLP mapping."""
    mf_s = fit_domain_mf(data, "s", cfg.mf)
    mf_t = fit_domain_mf(data, "t", cfg.mf)
    x, y = mf_s.user_vectors(), mf_t.user_vectors()
    cold = mapped_score(mf_t)
    f = fit_mapping(x, y, training_users(data), cold, data, cfg.mapping)

    @torch.no_grad()
    def score(users: np.ndarray, items: np.ndarray) -> np.ndarray:
        return cold(f(x[torch.as_tensor(users)]), users, items).numpy()

    return score


emcdr = cached_predictor(fit_emcdr)
