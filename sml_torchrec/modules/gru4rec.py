"""GRU4Rec (Hidasi et al., "Session-based Recommendations with Recurrent Neural Networks",
ICLR 2016) over a user's recent items, on TorchRec embedding tables.

Choices where the paper leaves room or targets another setting:

* Sessions are a user's last ``L`` items across periods (the retraining data has users, not
  session ids); each interaction is one example whose input is the ``L`` items before it.
  The paper trains session-parallel mini-batches that carry the hidden state along a session;
  with fixed-length windows every example is encoded from scratch, which keeps examples
  independent so they can be shuffled and split across ranks.
* The input is an item embedding (the paper found one-hot inputs and embeddings comparable) and
  one GRU layer of width d; the final hidden state is the user vector and the output layer is
  an item table of width d: score(u, i) = h_u · w_i. The paper's output bias is dropped so that
  serving stays a dot product.
* Loss: BPR (one of the paper's two ranking losses) against uniformly sampled negatives instead
  of the other examples of the mini-batch (in-batch negatives would couple ranks).
* Padding: a padded step leaves the hidden state unchanged; the state starts from a learned h0,
  which is also the vector of a user with no history.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torchrec.modules.embedding_configs import EmbeddingConfig
from torchrec.modules.embedding_modules import EmbeddingCollection

from sml_torchrec.modules.sequence import (
    ITEM_IN_TABLE,
    ITEM_OUT_TABLE,
    NEG,
    SEQ,
    TARGET,
    SequentialRecommender,
    bpr_loss,
)


@dataclass
class GRU4RecConfig:
    seq_len: int = 10  # L: items fed to the GRU
    num_negatives: int = 4  # sampled negatives per positive (BPR against each)
    dropout: float = 0.1  # on the input embeddings
    batch_size: int = 256  # global examples per step (divided among ranks)
    dense_lr: float = 2e-3  # Adam on the GRU


class GRUEncoder(nn.Module):
    """Masked GRU: (seq [B, L, d], mask [B, L]) -> last hidden state [B, hidden].

    Steps where ``mask`` is False do not touch the state, so padded slots (wherever they are)
    cannot change the output.
    """

    def __init__(self, dim: int, hidden: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.cell = nn.GRUCell(dim, hidden)
        self.h0 = nn.Parameter(torch.zeros(hidden))
        self.dropout = nn.Dropout(dropout)

    def forward(self, seq: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        x = self.dropout(seq)
        h = self.h0.expand(seq.shape[0], -1)
        for step in range(seq.shape[1]):
            h = torch.where(mask[:, step, None], self.cell(x[:, step], h), h)
        return h


class GRU4Rec(SequentialRecommender):
    """GRU4Rec on an input item table (d) and an output item table (d); see the module doc."""

    uses_user = False
    loss = staticmethod(bpr_loss)

    def __init__(
        self, num_items: int, dim: int, cfg: GRU4RecConfig, device: torch.device | None = None
    ) -> None:
        input_emb = EmbeddingCollection(
            tables=[EmbeddingConfig(name=ITEM_IN_TABLE, embedding_dim=dim,
                                    num_embeddings=num_items, feature_names=[SEQ])],
            device=device,
        )
        output_emb = EmbeddingCollection(
            tables=[EmbeddingConfig(name=ITEM_OUT_TABLE, embedding_dim=dim,
                                    num_embeddings=num_items, feature_names=[TARGET, NEG])],
            device=device,
        )
        super().__init__(input_emb, output_emb, cfg.seq_len)
        self.encoder = GRUEncoder(dim, dim, cfg.dropout)

    def encode_dense(self, seq, mask, user=None):
        return self.encoder(seq, mask)
