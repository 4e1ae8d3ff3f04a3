"""Caser (Tang & Wang, "Personalized Top-N Sequential Recommendation via Convolutional Sequence
Embedding", WSDM 2018) on TorchRec embedding tables.

The L most recent items' embeddings form an L x d "image". Horizontal filters of every height
h = 1..L (n_h each) slide over it, ReLU, max-pooled over positions; vertical filters (n_v, each
L x 1) take weighted sums over positions. Both are concatenated, dropped out and mapped by a
ReLU FC layer to z (width d); the user vector is [z; P_u] and an item is scored by its output
row: score(u, i) = [z; P_u] · w'_i, rows of width 2d.

Choices where the paper leaves room:

* One target per example (T = 1: the interaction itself) and binary cross-entropy against
  ``num_negatives`` uniformly sampled items (the paper: T = 3 targets, 3 negatives).
* Users with fewer than L earlier items are padded on the left (the paper drops them or pads
  with a learned item). Here padded slots are zero and masked: a horizontal window that covers
  a padded slot is left out of the max-pool (an all-padded row pools to 0), and the vertical
  filters see zeros there, so a padded slot never changes the output.
* The output bias b' is dropped so that serving stays a dot product.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from torchrec.modules.embedding_configs import EmbeddingConfig
from torchrec.modules.embedding_modules import EmbeddingCollection

from sml_torchrec.modules.sequence import (
    ITEM_IN_TABLE,
    ITEM_OUT_TABLE,
    NEG,
    SEQ,
    TARGET,
    USER,
    USER_TABLE,
    SequentialRecommender,
    bce_loss,
)


@dataclass
class CaserConfig:
    seq_len: int = 5  # L (paper default 5)
    n_h: int = 16  # horizontal filters per height
    n_v: int = 4  # vertical filters
    dropout: float = 0.5
    num_negatives: int = 3
    batch_size: int = 256  # global examples per step (divided among ranks)
    dense_lr: float = 2e-3  # Adam on the convolutions and FC


class CaserEncoder(nn.Module):
    """(seq [B, L, d], mask [B, L], user [B, d]) -> user vector [z; P_u] of shape [B, 2d]."""

    def __init__(self, seq_len: int, dim: int, n_h: int, n_v: int, dropout: float) -> None:
        super().__init__()
        self.seq_len = seq_len
        self.horizontal = nn.ModuleList(
            nn.Conv2d(1, n_h, kernel_size=(h, dim)) for h in range(1, seq_len + 1)
        )
        self.vertical = nn.Conv2d(1, n_v, kernel_size=(seq_len, 1))
        self.dropout = nn.Dropout(dropout)
        self.fc = nn.Linear(n_h * seq_len + n_v * dim, dim)

    def forward(self, seq: torch.Tensor, mask: torch.Tensor, user: torch.Tensor) -> torch.Tensor:
        b, L, _ = seq.shape
        x = (seq * mask[..., None]).unsqueeze(1)  # [B, 1, L, d]; padded slots exactly zero
        # Right-aligned: the first real slot is L - length, so a window starting at j is all
        # real iff j >= L - length.
        first_real = L - mask.sum(1)
        pooled = []
        for h, conv in enumerate(self.horizontal, start=1):
            act = F.relu(conv(x).squeeze(-1))  # [B, n_h, L - h + 1], >= 0
            valid = torch.arange(L - h + 1)[None, :] >= first_real[:, None]
            # ReLU outputs are >= 0, so zeroing invalid windows before the max leaves the max
            # of the valid ones, and 0 when there is none.
            pooled.append((act * valid[:, None, :]).amax(-1))
        o_h = torch.cat(pooled, dim=1)  # [B, n_h * L]
        o_v = self.vertical(x).reshape(b, -1)  # [B, n_v * d]
        z = F.relu(self.fc(self.dropout(torch.cat([o_h, o_v], dim=1))))
        return torch.cat([z, user], dim=1)


class Caser(SequentialRecommender):
    """Caser on input item + user tables (d) and an output item table (2d)."""

    uses_user = True
    loss = staticmethod(bce_loss)

    def __init__(
        self, num_users: int, num_items: int, dim: int, cfg: CaserConfig,
        device: torch.device | None = None,
    ) -> None:
        input_emb = EmbeddingCollection(
            tables=[
                EmbeddingConfig(name=ITEM_IN_TABLE, embedding_dim=dim, num_embeddings=num_items,
                                feature_names=[SEQ]),
                EmbeddingConfig(name=USER_TABLE, embedding_dim=dim, num_embeddings=num_users,
                                feature_names=[USER]),
            ],
            device=device,
        )
        output_emb = EmbeddingCollection(
            tables=[EmbeddingConfig(name=ITEM_OUT_TABLE, embedding_dim=2 * dim,
                                    num_embeddings=num_items, feature_names=[TARGET, NEG])],
            device=device,
        )
        super().__init__(input_emb, output_emb, cfg.seq_len)
        self.encoder = CaserEncoder(cfg.seq_len, dim, cfg.n_h, cfg.n_v, cfg.dropout)

    def encode_dense(self, seq, mask, user=None):
        return self.encoder(seq, mask, user)
