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
    in_domain: bool = False  # also score in-domain pairs (pretraining on every review)
    aspect_gain_init: float = 1.0  # the learned scale of the aspect term (0: the prior)
    leaky_slope: float = 0.2


def _trunc(shape: tuple[int, ...], std: float) -> nn.Parameter:
    p = torch.empty(shape)
    nn.init.trunc_normal_(p, std=std)
    return nn.Parameter(p)


class CATN(nn.Module):
    """rating(u, i) = prior(u, i) + g · mean_{p,q}(S ⊙ S_ui): a residual over the trivial prior.

    ``prior(u, i) = b_u + μ_i + δ_i``: the user's rating offset, the item's mean visible
    rating and a learned item residual ``δ_i`` (initialised to 0 and penalised toward it by
    the trainer). The aspect term is scaled by a learned gain ``g`` (initialised to
    ``aspect_gain_init``); with ``g = 0`` the model *is* the prior, and the trainer keeps that
    as a candidate, so with few overlapping users the aspect term has to earn its place against
    the best bias-only predictor. (Starting at ``g = 0`` would leave the aspect weights without
    a gradient and ``g`` without a signal: the term never takes off.)

    ``S = LeakyReLU(V_s W V_tᵀ)`` (M, M), divided by its mean absolute value, from the
    per-aspect attention vectors of the source and target extractors; ``S_ui = A_s W A_tᵀ``
    where A_s/A_t are the aspect matrices (M, k) of whichever of the pair's two documents is
    in the source/target domain.

    In-domain pairs (``FlowBatch.items_from == user_domain``; built when ``in_domain``) score
    ``mean(A_u W_d A_iᵀ)`` with a per-domain matrix ``W_d`` and their own gain: they need no
    overlapping user, so every review of both domains trains the extractors.

    Before the product, each domain's user and item aspect matrices are centred by a running
    mean over documents (:class:`RunningCentre`), then dropped out: without centring the
    aspect vectors are nearly the same for every document and the interaction does not learn.

    ``b_u`` is a fixed buffer (2, num_users): the user's shrunk mean residual against item
    means *in the domain of the user's document* (row ``SOURCE`` for pairs scored from the
    source document). Cold-start users never receive a gradient, so a trained user bias
    would be fitted for training users and left at its initial value for the users it is
    evaluated on; and taking it from the document's domain means a cross-domain training
    pair's bias never contains the rating it predicts, exactly as for a cold-start user at
    test time. A 1-D ``user_offset`` is used for both domains. ``μ_i`` (buffers
    ``item_mean_0``/``item_mean_1``) is the domain's global mean for items with no rating.
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
        self.W_in = nn.ParameterList(_trunc((cfg.latent_dim, cfg.latent_dim), 0.3)
                                     for _ in (SOURCE, TARGET)) if cfg.in_domain else None
        # gains of the cross-domain and the in-domain aspect term
        self.aspect_gain = nn.Parameter(torch.full((2 if cfg.in_domain else 1,),
                                                   cfg.aspect_gain_init))
        self._init_prior(item_mean_source, item_mean_target, user_offset)
        self.loop_over_aspects = False  # the benchmark's reference path

    def _init_prior(self, item_mean_source: np.ndarray | None,
                    item_mean_target: np.ndarray | None, user_offset: np.ndarray | None
                    ) -> None:
        cfg = self.cfg

        def init(v, n, fill):
            return torch.as_tensor(v, dtype=torch.float32) if v is not None else \
                torch.full((n,), fill)
        for dom, mean, n in ((SOURCE, item_mean_source, cfg.num_items_source),
                             (TARGET, item_mean_target, cfg.num_items_target)):
            self.register_buffer(f"item_mean_{dom}", init(mean, n, 3.0).clone())
        self.item_residual = nn.ParameterList([
            nn.Parameter(torch.zeros(cfg.num_items_source)),
            nn.Parameter(torch.zeros(cfg.num_items_target))])
        ub = init(user_offset, cfg.num_users, 0.0)
        if ub.dim() == 1:
            ub = ub.expand(2, -1)
        if ub.shape != (2, cfg.num_users):
            raise ValueError(f"user_offset {tuple(ub.shape)} is not (num_users,) or "
                             f"(2, num_users) with num_users={cfg.num_users}")
        self.register_buffer("user_bias", ub.clone())

    def item_bias(self, domain: int) -> torch.Tensor:
        """(num_items,) μ_i + δ_i of ``domain``."""
        return getattr(self, f"item_mean_{domain}") + self.item_residual[domain]

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

    def aspect_term(self, b: FlowBatch) -> torch.Tensor:
        """The gained aspect interaction (B,) of one flow (0 when the gain is 0)."""
        ud, idom = b.user_domain, b.items_from
        a_u = self.dropout(self.user_centre[ud](self.encode_user(b.user_docs, b.aux_docs, ud)))
        a_i = self.dropout(self.item_centre[idom](self.encode(b.item_docs, idom)))
        a_u, a_i = a_u[b.user_index], a_i[b.item_index]
        if ud == idom:
            if self.W_in is None:
                raise ValueError("an in-domain batch for a model built without in_domain")
            return self.aspect_gain[1] * (a_u @ self.W_in[ud] @ a_i.transpose(1, 2)).mean(
                dim=(1, 2))
        a_s, a_t = (a_u, a_i) if ud == SOURCE else (a_i, a_u)
        s_ui = a_s @ self.W @ a_t.transpose(1, 2)  # (B, M, M)
        return self.aspect_gain[0] * (self.global_correlation() * s_ui).mean(dim=(1, 2))

    def prior(self, b: FlowBatch) -> torch.Tensor:
        """b_u + μ_i + δ_i (B,) of one flow."""
        return self.user_bias[b.user_domain][b.users] + self.item_bias(b.items_from)[b.items]

    def score(self, b: FlowBatch) -> torch.Tensor:
        """Predicted ratings (B,) for one flow."""
        return self.prior(b) + self.aspect_term(b)

    def forward(self, *flows: FlowBatch) -> list[torch.Tensor]:
        """(prediction, aspect term) per flow (a training step passes both flows at once)."""
        out = []
        for b in flows:
            aspect = self.aspect_term(b)
            out.append((self.prior(b) + aspect, aspect))
        return out

    def l2_penalty(self, in_domain: bool = False) -> torch.Tensor:
        """½ Σ w² over weights (not embeddings, biases or attention vectors), as the authors.

        Of the interaction matrices, only those of the flows trained: ``W_in`` for in-domain
        steps, ``W`` otherwise (under DistributedDataParallel a penalty on a matrix the
        step's forward did not use would give it a gradient DDP does not expect).
        """
        terms = list(self.W_in or ()) if in_domain else [self.W]
        for ext in self.extractors:
            terms += [ext.conv.weight, ext.proj.weight]
            if ext.aux_conv is not None:
                terms.append(ext.aux_conv.weight)
        if self.fusion is not None:
            terms += [self.fusion.gate.weight, self.fusion.merge.weight]
        return 0.5 * sum((t * t).sum() for t in terms)
