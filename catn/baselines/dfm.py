"""DFM and R-DFM: deep fusion models for cold-start users (Fu, Peng, Wang, Xu, Li, "Deeply
Fusing Reviews and Contents for Cold Start Users in Cross-Domain Recommendation Systems",
AAAI 2019). That paper's RC-DFM fuses ratings, review text and item contents; DFM (ratings
only) and R-DFM (ratings + reviews) are its reduced variants, the two the CATN paper reports.

Per domain d, an extended stacked denoising autoencoder (aSDAE, Dong et al. AAAI 2017) gives
user and item latent factors:

* user input: the user's item-mean-centred rating vector ``s_u`` over the domain's items and,
  for R-DFM, the user's review features ``x_u``; item input: the item's centred rating vector
  over users and (R-DFM) the item's review features;
* masking noise (dropout) on the inputs; code ``h = tanh(W s̃ + V x̃ + b)``; decoders
  reconstruct ``s`` (observed cells only) and ``x``;
* rating ``r̂_ui = μ_d + b_i + wᵀh_u + h_uᵀ h_i``, loss
  ``MSE(r, r̂) + α (‖s − ŝ‖²_obs + ‖x − x̂‖²)`` + weight decay.

Then EMCDR-style transfer: an MLP maps a user's source code ``h^s_u`` to the target code
``h^t_u``, trained on the overlapping training users; a cold-start user is scored with
``μ_t + b_i + wᵀĥ + ĥᵀ h^t_i`` where ``ĥ = f(h^s_u)``.

Choices where the paper is vague or our data differs: one hidden layer per autoencoder; the
review vector is TF-IDF over the domain's most frequent words (the paper max-pools pretrained
word embeddings, which the synthetic corpus does not have); no item contents (the data has
none); a linear user-bias head ``wᵀh_u`` so the user's rating level travels with the code;
each domain's epoch count is picked on a 10% holdout of its ratings (held-out ratings are
removed from the autoencoder inputs too), then refit on all.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from catn.baselines._common import (
    FitConfig,
    MappingConfig,
    Scorer,
    Stage,
    cached_predictor,
    centred_rating_matrix,
    fit_holdout_refit,
    fit_mapping,
    frequent_words,
    mse,
    sizes,
    tfidf,
    training_users,
)
from catn.data.dataset import EtaData


@dataclass(frozen=True)
class DFMConfig:
    reviews: bool = False  # False: DFM; True: R-DFM
    code_dim: int = 16
    noise: float = 0.3  # masking-noise rate on the autoencoder inputs
    recon_weight: float = 0.1  # α
    vocab_features: int = 2000  # review features: the domain's most frequent words
    fit: FitConfig = FitConfig(lr=0.005, max_epochs=300, patience=20, weight_decay=1e-5)
    mapping: MappingConfig = MappingConfig()


class ASDAE(nn.Module):
    """One-hidden-layer autoencoder over [rating vector; side features] with masking noise."""

    def __init__(self, dim_r: int, dim_x: int, code: int, noise: float) -> None:
        super().__init__()
        self.enc_r = nn.Linear(dim_r, code)
        self.dec_r = nn.Linear(code, dim_r)
        self.enc_x = nn.Linear(dim_x, code, bias=False) if dim_x else None
        self.dec_x = nn.Linear(code, dim_x) if dim_x else None
        self.drop = nn.Dropout(noise)

    def encode(self, r: torch.Tensor, x: torch.Tensor | None) -> torch.Tensor:
        z = self.enc_r(self.drop(r))
        if self.enc_x is not None and x is not None:
            z = z + self.enc_x(self.drop(x))
        return torch.tanh(z)

    def recon_loss(self, h: torch.Tensor, r: torch.Tensor, x: torch.Tensor | None
                   ) -> torch.Tensor:
        obs = r != 0  # centred ratings: an observed cell equal to its item mean counts as 0
        err = ((self.dec_r(h) - r) ** 2 * obs).sum() / obs.sum().clamp_min(1)
        if self.dec_x is not None and x is not None:
            err = err + ((self.dec_x(h) - x) ** 2).sum(1).mean()
        return err


class DomainDFM(nn.Module):
    """User and item aSDAEs of one domain and the rating head."""

    def __init__(self, R: torch.Tensor, xu: torch.Tensor | None, xi: torch.Tensor | None,
                 mu: float, item_mean: np.ndarray, cfg: DFMConfig) -> None:
        super().__init__()
        self.R, self.xu, self.xi, self.mu = R, xu, xi, mu
        dx_u = 0 if xu is None else xu.shape[1]
        dx_i = 0 if xi is None else xi.shape[1]
        self.user_ae = ASDAE(R.shape[1], dx_u, cfg.code_dim, cfg.noise)
        self.item_ae = ASDAE(R.shape[0], dx_i, cfg.code_dim, cfg.noise)
        self.user_bias = nn.Linear(cfg.code_dim, 1)
        self.bi = nn.Parameter(torch.as_tensor(item_mean, dtype=torch.float32) - mu)

    def user_codes(self, u: torch.Tensor) -> torch.Tensor:
        return self.user_ae.encode(self.R[u], None if self.xu is None else self.xu[u])

    def item_codes(self, i: torch.Tensor) -> torch.Tensor:
        return self.item_ae.encode(self.R.T[i], None if self.xi is None else self.xi[i])

    def head(self, hu: torch.Tensor, i: torch.Tensor, hi: torch.Tensor) -> torch.Tensor:
        return self.mu + self.bi[i] + self.user_bias(hu)[:, 0] + (hu * hi).sum(-1)

    def loss(self, u: torch.Tensor, i: torch.Tensor, r: torch.Tensor, alpha: float
             ) -> torch.Tensor:
        uq, ui = torch.unique(u, return_inverse=True)
        iq, ii = torch.unique(i, return_inverse=True)
        hu, hi = self.user_codes(uq), self.item_codes(iq)
        pred = self.head(hu[ui], i, hi[ii])
        rec = self.user_ae.recon_loss(hu, self.R[uq], None if self.xu is None else self.xu[uq])
        rec = rec + self.item_ae.recon_loss(hi, self.R.T[iq],
                                            None if self.xi is None else self.xi[iq])
        return mse(pred, r) + alpha * rec

    def forward(self, u: torch.Tensor, i: torch.Tensor) -> torch.Tensor:
        return self.head(self.user_codes(u), i, self.item_codes(i))


def fit_domain(data: EtaData, domain: str, cfg: DFMConfig) -> DomainDFM:
    u, i, r = data.visible_s if domain == "s" else data.visible_t
    mu = data.global_mean_s if domain == "s" else data.global_mean_t
    imean = data.item_mean_s if domain == "s" else data.item_mean_t
    xu = xi = None
    if cfg.reviews:
        ud = data.user_docs_s if domain == "s" else data.user_docs_t
        idoc = data.item_docs_s if domain == "s" else data.item_docs_t
        words = frequent_words(ud, idoc, top=cfg.vocab_features)
        xu, xi = tfidf(ud, words), tfidf(idoc, words)
    ut, it, rt = torch.as_tensor(u), torch.as_tensor(i), torch.as_tensor(r)

    def build(rows: np.ndarray) -> Stage:
        torch.manual_seed(cfg.fit.seed)
        m = DomainDFM(centred_rating_matrix(data, domain, rows), xu, xi, mu, imean, cfg)
        ru, ri, rr = ut[rows], it[rows], rt[rows]
        return Stage(m, lambda b: m.loss(ru[b], ri[b], rr[b], cfg.recon_weight),
                     lambda rows2: m(ut[rows2], it[rows2]), len(rows))

    return fit_holdout_refit(build, r, cfg.fit).module  # type: ignore[return-value]


def fit_dfm(data: EtaData, cfg: DFMConfig = DFMConfig()) -> Scorer:
    """aSDAE factors in each domain + MLP mapping of the user codes."""
    src, tgt = fit_domain(data, "s", cfg), fit_domain(data, "t", cfg)
    nu, _, nt = sizes(data)
    all_users = torch.arange(nu)
    with torch.no_grad():
        x, y = src.user_codes(all_users), tgt.user_codes(all_users)
        items = torch.arange(nt)
        hi = tgt.item_codes(items)

    def cold(vec: torch.Tensor, users: np.ndarray, it: np.ndarray) -> torch.Tensor:
        i = torch.as_tensor(it)
        return tgt.head(vec, i, hi[i])

    f = fit_mapping(x, y, training_users(data), cold, data, cfg.mapping)

    @torch.no_grad()
    def score(users: np.ndarray, items: np.ndarray) -> np.ndarray:
        return cold(f(x[torch.as_tensor(users)]), users, items).numpy()

    return score


def fit_rdfm(data: EtaData, cfg: DFMConfig = DFMConfig(reviews=True)) -> Scorer:
    """R-DFM: DFM whose autoencoders also reconstruct the users' and items' review text."""
    return fit_dfm(data, cfg)


dfm = cached_predictor(fit_dfm)
rdfm = cached_predictor(fit_rdfm)
