"""The CATN model: two domain extractors, auxiliary fusion and the aspect-correlation head.

Shapes: B pairs, L words, M aspects, k latent dims. A batch of one *flow* carries its unique
user and item documents once and index vectors mapping each pair to them, so a user who
appears in many pairs of the batch is encoded once (:class:`~catn.batch.FlowBatch`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from catn.batch import SOURCE, TARGET, FlowBatch
from catn.modules.aspects import AspectExtractor, AuxFusion, RunningCentre, loop_aspects


@dataclass
class CATNConfig:
    """Model sizes; defaults are the authors' except where noted in the train CLI."""

    vocab_size: int  # number of word ids, including padding id 0
    num_users: int
    num_items_source: int
    num_items_target: int
    word_dim: int = 300
    num_filters: int = 50
    window: int = 3
    num_aspects: int = 5
    latent_dim: int = 32
    dropout: float = 0.2  # the authors' keep probability 0.8, applied after centring
    centre_aspects: bool = True  # subtract the running mean aspect matrix (see RunningCentre)
    use_aux: bool = True  # ablation "w/o auxiliary reviews" when False
    use_global_correlation: bool = True  # ablation "w/o S" (plain mean of S_ui) when False
    leaky_slope: float = 0.2


def _trunc(shape: tuple[int, ...], std: float) -> nn.Parameter:
    p = torch.empty(shape)
    nn.init.trunc_normal_(p, std=std)
    return nn.Parameter(p)


class CATN(nn.Module):
    """rating(u, i) = mean_{p,q}(S ⊙ S_ui) + b_u + b_i.

    ``S = LeakyReLU(V_s W V_tᵀ)`` (M, M), divided by its mean absolute value, from the
    per-aspect attention vectors of the source and target extractors; ``S_ui = A_s W A_tᵀ``
    where A_s/A_t are the aspect matrices (M, k) of whichever of the pair's two documents is
    in the source/target domain.

    Before the product, each domain's user and item aspect matrices are centred by a running
    mean over documents (:class:`RunningCentre`), then dropped out: without centring the
    aspect vectors are nearly the same for every document and the interaction does not learn.

    Biases: ``b_i`` per domain, initialised to the item's mean visible rating (the domain's
    global mean for items with none, never 0). ``b_u`` is a fixed buffer (2, num_users): the
    user's shrunk mean residual against item means *in the domain of the user's document*
    (row ``SOURCE`` for pairs scored from the source document). Cold-start users never receive
    a gradient, so a trained user bias would be fitted for training users and left at its
    initial value for the users it is evaluated on; and taking it from the document's domain
    means a training pair's bias never contains the rating it predicts (the rating is in the
    other domain), exactly as for a cold-start user at test time. A 1-D ``user_offset`` is used
    for both domains.
    """

    def __init__(self, cfg: CATNConfig, item_mean_source: np.ndarray | None = None,
                 item_mean_target: np.ndarray | None = None,
                 user_offset: np.ndarray | None = None,
                 word_vectors: np.ndarray | None = None) -> None:
        super().__init__()
        self.cfg = cfg
        self.embedding = nn.Embedding(cfg.vocab_size, cfg.word_dim, padding_idx=0)
        if word_vectors is not None:
            if word_vectors.shape != (cfg.vocab_size, cfg.word_dim):
                raise ValueError(f"word vectors {word_vectors.shape} != "
                                 f"{(cfg.vocab_size, cfg.word_dim)}")
            with torch.no_grad():
                self.embedding.weight.copy_(torch.as_tensor(word_vectors))
                self.embedding.weight[0].zero_()
        self.extractors = nn.ModuleList(
            AspectExtractor(cfg.word_dim, cfg.num_filters, cfg.window, cfg.num_aspects,
                            cfg.latent_dim, with_aux=cfg.use_aux, dropout=0.0)
            for _ in (SOURCE, TARGET))
        # dropout after centring: on the raw vectors its noise scales with the shared offset
        # and swamps the small document-specific part
        self.dropout = nn.Dropout(cfg.dropout)

        def centres():
            return nn.ModuleList(RunningCentre(cfg.num_aspects, cfg.latent_dim)
                                 if cfg.centre_aspects else nn.Identity()
                                 for _ in (SOURCE, TARGET))
        self.user_centre, self.item_centre = centres(), centres()
        self.fusion = AuxFusion(cfg.latent_dim) if cfg.use_aux else None
        self.W = _trunc((cfg.latent_dim, cfg.latent_dim), 0.3)

        def init(v, n, fill):
            return torch.as_tensor(v, dtype=torch.float32) if v is not None else \
                torch.full((n,), fill)
        self.item_bias = nn.ParameterList([
            nn.Parameter(init(item_mean_source, cfg.num_items_source, 3.0).clone()),
            nn.Parameter(init(item_mean_target, cfg.num_items_target, 3.0).clone())])
        ub = init(user_offset, cfg.num_users, 0.0)
        if ub.dim() == 1:
            ub = ub.expand(2, -1)
        if ub.shape != (2, cfg.num_users):
            raise ValueError(f"user_offset {tuple(ub.shape)} is not (num_users,) or "
                             f"(2, num_users) with num_users={cfg.num_users}")
        self.register_buffer("user_bias", ub.clone())
        self.loop_over_aspects = False  # the benchmark's reference path

    def global_correlation(self) -> torch.Tensor:
        """S (M, M): rows source aspects, columns target aspects."""
        if not self.cfg.use_global_correlation:
            return torch.ones(self.cfg.num_aspects, self.cfg.num_aspects,
                              device=self.W.device)
        vs, vt = self.extractors[SOURCE].v, self.extractors[TARGET].v
        s = F.leaky_relu(vs @ self.W @ vt.T, self.cfg.leaky_slope)
        # S is a weighting of aspect pairs, so it is normalised to mean |S| = 1. Unnormalised,
        # S is the cheapest way for the optimiser to remove the (at first random) interaction
        # term: it drives S to ~0 within an epoch, after which nothing upstream learns.
        return s / (s.abs().mean() + 1e-12)

    def encode(self, docs: torch.Tensor, domain: int, aux: bool = False) -> torch.Tensor:
        """(N, L) word ids -> aspect matrices (N, M, k) with ``domain``'s extractor."""
        mask = docs > 0
        emb = self.embedding(docs)
        ext = self.extractors[domain]
        a, _ = loop_aspects(ext, emb, mask, aux) if self.loop_over_aspects else \
            ext(emb, mask, aux)
        return a

    def encode_user(self, docs: torch.Tensor, aux_docs: torch.Tensor | None, domain: int
                    ) -> torch.Tensor:
        """User aspects (N, M, k), fused with the auxiliary document's when enabled."""
        a = self.encode(docs, domain)
        if self.fusion is not None:
            if aux_docs is None:
                raise ValueError("model uses auxiliary documents but none were given")
            a = self.fusion(a, self.encode(aux_docs, domain, aux=True))
        return a

    def score(self, b: FlowBatch) -> torch.Tensor:
        """Predicted ratings (B,) for one flow."""
        ud, idom = b.user_domain, 1 - b.user_domain
        a_u = self.dropout(self.user_centre[ud](self.encode_user(b.user_docs, b.aux_docs, ud)))
        a_i = self.dropout(self.item_centre[idom](self.encode(b.item_docs, idom)))
        a_u, a_i = a_u[b.user_index], a_i[b.item_index]
        a_s, a_t = (a_u, a_i) if ud == SOURCE else (a_i, a_u)
        s_ui = a_s @ self.W @ a_t.transpose(1, 2)  # (B, M, M)
        inter = (self.global_correlation() * s_ui).mean(dim=(1, 2))
        return inter + self.user_bias[ud][b.users] + self.item_bias[idom][b.items]

    def forward(self, *flows: FlowBatch) -> list[torch.Tensor]:
        """One prediction vector per flow (a training step passes both flows at once)."""
        return [self.score(b) for b in flows]

    def l2_penalty(self) -> torch.Tensor:
        """½ Σ w² over weights (not embeddings, biases or attention vectors), as the authors."""
        terms = [self.W]
        for ext in self.extractors:
            terms += [ext.conv.weight, ext.proj.weight]
            if ext.aux_conv is not None:
                terms.append(ext.aux_conv.weight)
        if self.fusion is not None:
            terms += [self.fusion.gate.weight, self.fusion.merge.weight]
        return 0.5 * sum((t * t).sum() for t in terms)
