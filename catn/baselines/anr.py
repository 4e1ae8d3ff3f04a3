"""ANR: aspect-based neural recommender (Chin, Zhao, Joty, Cong, "ANR: Aspect-based Neural
Recommender", CIKM 2018), applied to cold-start users as the CATN paper does: a user is their
*source-domain* document, an item its *target-domain* document, and the model is trained on
the overlapping training users' (source document, target item, rating) pairs.

Model (one side shown; users and items each have their own aspect parameters):

* shared word embeddings ``e_j``; aspect-specific projections ``z_{a,j} = W_aᵀ e_j`` (h1);
* aspect-specific local-context attention: ``α_{a,j} = softmax_j(v_aᵀ [z_{a,j−c} ⊕ … ⊕
  z_{a,j+c}])`` over the document's real words, aspect representation
  ``p_a = Σ_j α_{a,j} z_{a,j}``;
* aspect importance by co-attention: ``S = ReLU(P_u W_s P_iᵀ)``,
  ``β_u = softmax(ReLU(P_u W_x + S (P_i W_y)) v_x)``,
  ``β_i = softmax(ReLU(P_i W_y + Sᵀ (P_u W_x)) v_y)``;
* rating ``r̂ = Σ_a β_{u,a} β_{i,a} p_{u,a}ᵀ q_{i,a} + b_i + b_0``.

Choices: separate user/item aspect projections (the two documents are in different domains
here); no user bias (a cold-start user has none; ANR's other terms see their document); item
bias initialised to the visible item mean; no aspect pretraining; random word embeddings
(the synthetic corpus has no pretrained ones); dropout on the aspect representations;
mini-batch Adam, early stopping on the validation cold-start users.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from catn.baselines._common import FitConfig, Scorer, cached_predictor, fit, mse
from catn.data.dataset import EtaData


@dataclass(frozen=True)
class ANRConfig:
    word_dim: int = 32
    num_aspects: int = 5
    h1: int = 10  # aspect representation size (paper: 10)
    h2: int = 50  # co-attention hidden size (paper: 50)
    context: int = 3  # local context window (odd)
    dropout: float = 0.2
    fit: FitConfig = FitConfig(lr=2e-3, max_epochs=40, patience=4, batch_size=128)


class AspectRepresentation(nn.Module):
    """(B, L, d) embedded document -> (B, K, h1) aspect representations."""

    def __init__(self, word_dim: int, num_aspects: int, h1: int, context: int) -> None:
        super().__init__()
        if context % 2 != 1:
            raise ValueError(f"context window must be odd, got {context}")
        self.c = context
        self.W = nn.Parameter(torch.randn(num_aspects, word_dim, h1) * 0.1)
        self.v = nn.Parameter(torch.randn(num_aspects, h1, context) * 0.1)

    def forward(self, emb: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        z = torch.einsum("bld,kdh->bklh", emb, self.W)  # (B, K, L, h1)
        half = self.c // 2
        windows = F.pad(z, (0, 0, half, half)).unfold(2, self.c, 1)  # (B, K, L, h1, c)
        logits = torch.einsum("bklhc,khc->bkl", windows, self.v)
        logits = logits.masked_fill(~mask[:, None, :], -1e9)
        attn = torch.softmax(logits, dim=-1) * mask.any(1)[:, None, None]
        return (attn[..., None] * z).sum(2)


class ANR(nn.Module):
    def __init__(self, vocab: int, item_mean: np.ndarray, cfg: ANRConfig) -> None:
        super().__init__()
        K, h1, h2 = cfg.num_aspects, cfg.h1, cfg.h2
        self.emb = nn.Embedding(vocab, cfg.word_dim, padding_idx=0)
        self.user_aspects = AspectRepresentation(cfg.word_dim, K, h1, cfg.context)
        self.item_aspects = AspectRepresentation(cfg.word_dim, K, h1, cfg.context)
        self.Ws = nn.Parameter(torch.randn(h1, h1) * 0.1)
        self.Wx = nn.Linear(h1, h2, bias=False)
        self.Wy = nn.Linear(h1, h2, bias=False)
        self.vx = nn.Linear(h2, 1, bias=False)
        self.vy = nn.Linear(h2, 1, bias=False)
        self.bi = nn.Parameter(torch.as_tensor(item_mean, dtype=torch.float32).clone())
        self.b0 = nn.Parameter(torch.zeros(()))
        self.drop = nn.Dropout(cfg.dropout)

    def encode_users(self, docs: torch.Tensor) -> torch.Tensor:
        return self.drop(self.user_aspects(self.emb(docs), docs > 0))

    def encode_items(self, docs: torch.Tensor) -> torch.Tensor:
        return self.drop(self.item_aspects(self.emb(docs), docs > 0))

    def rate(self, P: torch.Tensor, Q: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """P (B, K, h1) user aspects, Q (B, K, h1) item aspects -> (B,) ratings."""
        S = F.relu(P @ self.Ws @ Q.transpose(1, 2))  # (B, K, K)
        px, qy = self.Wx(P), self.Wy(Q)
        beta_u = torch.softmax(self.vx(F.relu(px + S @ qy))[..., 0], -1)
        beta_i = torch.softmax(self.vy(F.relu(qy + S.transpose(1, 2) @ px))[..., 0], -1)
        return (beta_u * beta_i * (P * Q).sum(-1)).sum(-1) + self.bi[items] + self.b0


def fit_anr(data: EtaData, cfg: ANRConfig = ANRConfig()) -> Scorer:
    """ANR on (source-domain user document, target item document) pairs."""
    udocs = torch.from_numpy(np.ascontiguousarray(data.user_docs_s)).long()
    idocs = torch.from_numpy(np.ascontiguousarray(data.item_docs_t)).long()
    vocab = int(max(udocs.max(), idocs.max())) + 1
    torch.manual_seed(cfg.fit.seed)
    model = ANR(vocab, data.item_mean_t, cfg)
    u, i, r = (torch.as_tensor(a) for a in data.train_t)

    def predict(users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        uq, ui = torch.unique(users, return_inverse=True)
        iq, ii = torch.unique(items, return_inverse=True)
        P, Q = model.encode_users(udocs[uq]), model.encode_items(idocs[iq])
        return model.rate(P[ui], Q[ii], items)

    def predict_all(users: np.ndarray, items: np.ndarray, chunk: int = 2048) -> torch.Tensor:
        out = [predict(torch.as_tensor(users[lo:lo + chunk]),
                       torch.as_tensor(items[lo:lo + chunk]))
               for lo in range(0, len(users), chunk)]
        return torch.cat(out) if out else torch.zeros(0)

    vu, vi, vr = data.val
    vr_t = torch.as_tensor(vr)
    fit(model, lambda b: mse(predict(u[b], i[b]), r[b]), len(r),
        (lambda: float(mse(predict_all(vu, vi), vr_t))) if len(vu) else None, cfg.fit)

    @torch.no_grad()
    def score(users: np.ndarray, items: np.ndarray) -> np.ndarray:
        return predict_all(users, items).numpy()

    return score


anr = cached_predictor(fit_anr)
