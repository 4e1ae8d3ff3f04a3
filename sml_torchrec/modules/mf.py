"""Matrix factorisation scoring on top of any EBC-like module: ŷ_ui = p_uᵀ q_i (+ b_u + b_i).

The embedding module maps a KJT with features ``user_id``, ``item_id``, ``neg_item_id`` (see
``sml_torchrec.data.batching``) to a KeyedTensor; it can be a plain ``EmbeddingBagCollection``
or a :class:`TransferEmbeddingBagCollection`, sharded or not. The optional bias module is a
plain EBC over the same features (:func:`bias_tables`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchrec.modules.embedding_configs import EmbeddingBagConfig
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

USER_TABLE = "user"
ITEM_TABLE = "item"
USER_BIAS_TABLE = "user_bias"
ITEM_BIAS_TABLE = "item_bias"
BIAS_WIDTH = 4
"""Columns of a bias row: FBGEMM's kernels need row widths that are multiples of 4. The bias is
the row's mean; its columns start equal and get equal gradients, so they stay equal, and
row-wise Adagrad steps the mean exactly as it would step a single scalar."""


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


def bias_tables(num_users: int, num_items: int) -> list[EmbeddingBagConfig]:
    """The user and item bias tables (``BIAS_WIDTH`` columns, zero at the start), over the same
    features as :func:`mf_tables`, for a second collection."""
    return [
        EmbeddingBagConfig(
            name=name, embedding_dim=BIAS_WIDTH, num_embeddings=n, feature_names=features,
            init_fn=nn.init.zeros_,
        )
        for name, n, features in (
            (USER_BIAS_TABLE, num_users, ["user_id"]),
            (ITEM_BIAS_TABLE, num_items, ["item_id", "neg_item_id"]),
        )
    ]


def bias_lookup(bias: nn.Module, features: KeyedJaggedTensor) -> dict[str, torch.Tensor]:
    """Per feature, the [B] biases of its ids from a collection over :func:`bias_tables`."""
    return {k: v.mean(-1) for k, v in bias(features).to_dict().items()}


class MatrixFactorization(nn.Module):
    """``forward(features)`` -> (positive logits [B], negative logits [B], sq_norm []).

    ``sq_norm`` is the sum of the squared looked-up rows (user, item, negative), for L2
    regularisation, biases included. (A transfer-wrapped collection's trained rows are Ŵ_t's,
    not its output rows: it reports their squared norm itself, ``new_table_sq_norm()``; the
    biases' part of the last forward is ``bias_sq_norm``.)

    With ``bias`` (an EBC over :func:`bias_tables`), logits are p_uᵀq_i + b_u + b_i. Setting
    ``train_bias = False`` keeps the biases out of the backward pass (their fused optimizer then
    leaves them alone), e.g. while SML trains its transfer.
    """

    def __init__(self, embedding: nn.Module, bias: nn.Module | None = None) -> None:
        super().__init__()
        self.embedding = embedding
        self.bias = bias
        self.train_bias = True
        self.bias_sq_norm = torch.zeros(())

    def forward(
        self, features: KeyedJaggedTensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        e = self.embedding(features).to_dict()
        user, item, neg = e["user_id"], e["item_id"], e["neg_item_id"]
        sq = user.pow(2).sum() + item.pow(2).sum() + neg.pow(2).sum()
        pos, negs = (user * item).sum(-1), (user * neg).sum(-1)
        if self.bias is not None:
            b = bias_lookup(self.bias, features)
            if not self.train_bias:
                b = {k: v.detach() for k, v in b.items()}
            pos = pos + b["user_id"] + b["item_id"]
            negs = negs + b["user_id"] + b["neg_item_id"]
            self.bias_sq_norm = sum(v.pow(2).sum() for v in b.values())
            sq = sq + self.bias_sq_norm
        return pos, negs, sq


def log_loss(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """The paper's L0 with one sampled negative per positive, averaged over the batch."""
    return F.softplus(-pos).mean() + F.softplus(neg).mean()
