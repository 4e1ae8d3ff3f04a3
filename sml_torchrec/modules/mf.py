"""Matrix factorisation scoring on top of any EBC-like module: ŷ_ui = p_uᵀ q_i.

The embedding module maps a KJT with features ``user_id``, ``item_id``, ``neg_item_id`` (see
``sml_torchrec.data.batching``) to a KeyedTensor; it can be a plain ``EmbeddingBagCollection``
or a :class:`TransferEmbeddingBagCollection`, sharded or not.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchrec.modules.embedding_configs import EmbeddingBagConfig
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

USER_TABLE = "user"
ITEM_TABLE = "item"


def mf_tables(num_users: int, num_items: int, dim: int) -> list[EmbeddingBagConfig]:
    """The two MF tables; negatives share the item table."""
    return [
        EmbeddingBagConfig(
            name=USER_TABLE, embedding_dim=dim, num_embeddings=num_users,
            feature_names=["user_id"],
        ),
        EmbeddingBagConfig(
            name=ITEM_TABLE, embedding_dim=dim, num_embeddings=num_items,
            feature_names=["item_id", "neg_item_id"],
        ),
    ]


class MatrixFactorization(nn.Module):
    """``forward(features)`` -> (positive logits [B], negative logits [B], sq_norm []).

    ``sq_norm`` is the sum of the squared looked-up rows (user, item, negative), for L2
    regularisation. (A transfer-wrapped collection's trained rows are Ŵ_t's, not its output
    rows: it reports their squared norm itself, ``new_table_sq_norm()``.)
    """

    def __init__(self, embedding: nn.Module) -> None:
        super().__init__()
        self.embedding = embedding

    def forward(
        self, features: KeyedJaggedTensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        e = self.embedding(features).to_dict()
        user, item, neg = e["user_id"], e["item_id"], e["neg_item_id"]
        sq = user.pow(2).sum() + item.pow(2).sum() + neg.pow(2).sum()
        return (user * item).sum(-1), (user * neg).sum(-1), sq


def log_loss(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """The paper's L0 with one sampled negative per positive, averaged over the batch."""
    return F.softplus(-pos).mean() + F.softplus(neg).mean()
