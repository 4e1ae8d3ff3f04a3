"""CMF: collective matrix factorisation (Singh & Gordon, "Relational learning via collective
matrix factorization", KDD 2008), the CATN paper's first baseline.

Both domains' rating matrices are factorised at once with one set of user factors:
``r̂^d_ui = μ_d + b_u + b^d_i + p_uᵀ q^d_i`` for d ∈ {source, target}, loss
``α·Σ_src (r − r̂)² + Σ_tgt (r − r̂)²`` (means over rows) ``+ λ(‖p_u‖² + ‖q_i‖² + b_u²)``.
A cold-start user's ``p_u`` and ``b_u`` are learned from their source ratings alone and
scored against the target items.

Choices where the paper leaves room: squared loss (CMF's Gaussian link), biases added (a
shared user bias, per-domain item biases initialised to the visible item means; plain CMF
has none and does worse on rating scales), ``α`` = 1, full-batch Adam, early stopping on the
validation cold-start users' target MSE.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from catn.baselines._common import BiasedMF, FitConfig, Scorer, cached_predictor, fit, mse, sizes
from catn.data.dataset import EtaData


@dataclass(frozen=True)
class CMFConfig:
    dim: int = 16
    l2: float = 0.05
    source_weight: float = 1.0  # α
    fit: FitConfig = FitConfig(lr=0.02, max_epochs=400, patience=20)


def fit_cmf(data: EtaData, cfg: CMFConfig = CMFConfig()) -> Scorer:
    """CMF with user factors shared by both domains."""
    nu, ns, nt = sizes(data)
    us, is_, rs = data.visible_s
    ut, it, rt = data.visible_t
    # one item table: target items follow the source items; μ and the item-bias prior differ
    # by domain, so the offset is folded into the item bias init
    u = torch.as_tensor(np.concatenate([us, ut]))
    i = torch.as_tensor(np.concatenate([is_, it + ns]))
    r = torch.as_tensor(np.concatenate([rs, rt]))
    w = torch.cat([torch.full((len(us),), cfg.source_weight), torch.ones(len(ut))])
    torch.manual_seed(cfg.fit.seed)
    mu = data.global_mean_t
    model = BiasedMF(nu, ns + nt, cfg.dim, mu,
                     np.concatenate([data.item_mean_s, data.item_mean_t]))

    def loss(b: torch.Tensor) -> torch.Tensor:
        err = (model(u[b], i[b]) - r[b]) ** 2
        return (w[b] * err).sum() / w[b].sum() + cfg.l2 * model.penalty(u[b], i[b])

    vu, vi, vr = (torch.as_tensor(a) for a in data.val)
    fit(model, loss, len(r), (lambda: float(mse(model(vu, vi + ns), vr))) if len(vu) else None,
        cfg.fit)

    @torch.no_grad()
    def score(users: np.ndarray, items: np.ndarray) -> np.ndarray:
        return model(torch.as_tensor(users), torch.as_tensor(items) + ns).numpy()

    return score


cmf = cached_predictor(fit_cmf)
