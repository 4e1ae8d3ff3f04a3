"""Text CNN + aspect gates + per-aspect word attention, batched across aspects.

Shapes: B documents, L words, d word dims, F conv filters, M aspects, k latent dims.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

# Softmax logit for padded words: large and finite, so an all-padding document gives uniform
# weights over zero vectors (a zero aspect matrix) instead of NaN.
_MASKED = -1e9


class AspectExtractor(nn.Module):
    """One domain's aspect extractor.

    ``c = ReLU(conv_window(E))`` (F filters); for each aspect m,
    ``g_m = (W_m c + b_m) ⊙ σ(W_m^g c + b_m^g)`` in R^k; ``β_m = softmax_l(g_mᵀ v_m)`` over the
    document's real words; ``a_m = Σ_l β_ml g_ml``. All M aspects come from one matmul with a
    (F, 2·M·k) weight, so there is no Python loop over aspects.

    With ``aux=True`` the conv features pass one more conv (F -> F, same window, ReLU): the
    extra layer the paper puts on auxiliary documents.
    """

    def __init__(self, word_dim: int, num_filters: int, window: int, num_aspects: int,
                 latent_dim: int, with_aux: bool = True, dropout: float = 0.2,
                 v_std: float = 0.3) -> None:
        super().__init__()
        if window % 2 != 1:
            raise ValueError(f"window must be odd to keep the length, got {window}")
        self.M, self.k = num_aspects, latent_dim
        self.conv = nn.Conv1d(word_dim, num_filters, window, padding=window // 2)
        self.aux_conv = (nn.Conv1d(num_filters, num_filters, window, padding=window // 2)
                         if with_aux else None)
        self.proj = nn.Linear(num_filters, 2 * num_aspects * latent_dim)
        self.v = nn.Parameter(torch.randn(num_aspects, latent_dim) * v_std)
        self.dropout = nn.Dropout(dropout)
        nn.init.trunc_normal_(self.conv.weight, std=0.1)
        nn.init.constant_(self.conv.bias, 0.1)
        nn.init.trunc_normal_(self.proj.weight, std=0.1)
        nn.init.constant_(self.proj.bias, 0.1)
        if self.aux_conv is not None:
            nn.init.trunc_normal_(self.aux_conv.weight, std=0.1)
            nn.init.constant_(self.aux_conv.bias, 0.1)

    def features(self, emb: torch.Tensor, aux: bool = False) -> torch.Tensor:
        """(B, L, d) word vectors -> (B, L, F) conv features."""
        c = F.relu(self.conv(emb.transpose(1, 2)))
        if aux:
            if self.aux_conv is None:
                raise RuntimeError("extractor built without the auxiliary conv")
            c = F.relu(self.aux_conv(c))
        return c.transpose(1, 2)

    def gates(self, c: torch.Tensor) -> torch.Tensor:
        """(B, L, F) -> gated aspect word vectors (B, L, M, k)."""
        B, L, _ = c.shape
        h = self.proj(c).view(B, L, 2, self.M, self.k)
        return h[:, :, 0] * torch.sigmoid(h[:, :, 1])

    def forward(self, emb: torch.Tensor, mask: torch.Tensor, aux: bool = False
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """emb (B, L, d), mask (B, L) bool -> (aspects (B, M, k), attention (B, M, L))."""
        g = self.gates(self.features(emb, aux))  # (B, L, M, k)
        # padded words get weight exactly 0 from the softmax, so g needs no masking itself
        logits = (g * self.v).sum(-1).masked_fill(~mask[:, :, None], _MASKED)  # (B, L, M)
        beta = torch.softmax(logits, dim=1)
        a = (beta.unsqueeze(-1) * g).sum(1)  # (B, M, k)
        # an all-padding document (e.g. a user without auxiliary reviews) has no aspects
        a = a * mask.any(1)[:, None, None]
        return self.dropout(a), beta.transpose(1, 2)


def loop_aspects(ext: AspectExtractor, emb: torch.Tensor, mask: torch.Tensor, aux: bool = False
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """The same function as :meth:`AspectExtractor.forward`, one aspect at a time.

    A straightforward transcription of the per-aspect equations, shaped like the authors'
    code: each aspect runs its own pass conv -> gate -> attention (so the conv is recomputed
    per aspect). It shares ``ext``'s parameters, so it is the reference for the equivalence
    test and the baseline of ``benchmarks/catn_throughput.py``.
    """
    M, k = ext.M, ext.k
    W = ext.proj.weight.view(2, M, k, -1)
    b = ext.proj.bias.view(2, M, k)
    nonempty = mask.any(1)[:, None].to(emb.dtype)
    aspects, attns = [], []
    for m in range(M):
        c = ext.features(emb, aux)
        g = F.linear(c, W[0, m], b[0, m]) * torch.sigmoid(F.linear(c, W[1, m], b[1, m]))
        g = g * mask[:, :, None]
        logit = (g @ ext.v[m]).masked_fill(~mask, _MASKED)
        beta = torch.softmax(logit, dim=-1)
        aspects.append(ext.dropout((beta[:, :, None] * g).sum(1) * nonempty))
        attns.append(beta)
    return torch.stack(aspects, 1), torch.stack(attns, 1)


class RunningCentre(nn.Module):
    """Subtract a running mean over documents from aspect matrices: (N, M, k) -> (N, M, k).

    Attention-pooled conv features of a long document are dominated by what every document
    shares (ReLU features are non-negative, most words are generic), so across documents an
    aspect vector is a large common offset plus a small document-specific part. In the
    bilinear score ``A_s W A_tᵀ`` the offset turns the user x item term, the only one the
    biases cannot express, into a second-order effect whose gradient is lost in batch noise.
    Removing the mean leaves only the document-specific part.

    The mean is a buffer (no gradient through it), updated in training mode from each
    batch's documents with ``momentum`` (the first batch sets it); eval mode uses it as is, so
    scores do not depend on the batch. Under data parallelism each rank updates its own copy:
    the trainer averages the copies before evaluating.
    """

    def __init__(self, num_aspects: int, latent_dim: int, momentum: float = 0.1) -> None:
        super().__init__()
        self.momentum = momentum
        self.register_buffer("mean", torch.zeros(num_aspects, latent_dim))
        self.register_buffer("updates", torch.zeros((), dtype=torch.long))

    def forward(self, a: torch.Tensor) -> torch.Tensor:
        if self.training and a.shape[0] > 0:
            with torch.no_grad():
                batch_mean = a.mean(0)
                if int(self.updates) == 0:
                    self.mean.copy_(batch_mean)
                else:
                    self.mean.lerp_(batch_mean, self.momentum)
                self.updates += 1
        return a - self.mean


class AuxFusion(nn.Module):
    """Fuse auxiliary-document aspects into the user's aspects (paper eq. for g_aux, A_u).

    ``g = σ(W_f1 [A_u − A_aux ; A_u ⊙ A_aux] + b1)``; ``A_u' = tanh(W_f2 [A_u ; g ⊙ A_aux] + b2)``.
    Inputs and output (B, M, k).
    """

    def __init__(self, latent_dim: int) -> None:
        super().__init__()
        self.gate = nn.Linear(2 * latent_dim, latent_dim)
        self.merge = nn.Linear(2 * latent_dim, latent_dim)
        for lin in (self.gate, self.merge):
            nn.init.trunc_normal_(lin.weight, std=0.1)
            nn.init.constant_(lin.bias, 0.1)

    def forward(self, a_user: torch.Tensor, a_aux: torch.Tensor) -> torch.Tensor:
        g = torch.sigmoid(self.gate(torch.cat([a_user - a_aux, a_user * a_aux], -1)))
        return torch.tanh(self.merge(torch.cat([a_user, g * a_aux], -1)))
