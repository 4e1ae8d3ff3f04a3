"""Shared parts of the sequential recommenders (GRU4Rec, Caser) on TorchRec embedding tables.

A sequential recommender here is a sequence encoder between two ``EmbeddingCollection``s:

* ``input_emb``: the item table read by the sequence (feature ``seq``, unpooled: one row per
  position), plus, for models that have one, a user table (feature ``user_id``).
* ``output_emb``: the output item table (features ``target`` and ``neg``), whose rows are the
  items' served vectors.

The encoder maps a user's recent items to a user vector ``v`` of the output table's width, and
an item is scored by ``v · w_i`` (no output bias, so serving stays a plain dot product: a
popularity direction can still be learned inside ``v``). Input and output item tables are
separate, as in both papers (GRU4Rec's one-hot input and output layer; Caser's E and W').

Sequences arrive as KeyedJaggedTensors: each example's real items in time order (padding is
simply absent), and are laid out right-aligned in a ``[B, L, d]`` tensor with a ``[B, L]``
mask; every padded slot holds zeros and encoders must ignore it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torchrec.sparse.jagged_tensor import JaggedTensor, KeyedJaggedTensor

# The KJT keys these models read (``sml_torchrec.data.sequences`` builds batches with them).
SEQ = "seq"
USER = "user_id"
TARGET = "target"
NEG = "neg"
ITEM_IN_TABLE = "item_in"
ITEM_OUT_TABLE = "item_out"
USER_TABLE = "user"


def right_align(jt: JaggedTensor, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Jagged rows (values [N, d], lengths [B], each <= L) -> (padded [B, L, d], mask [B, L]).

    Row b's k-th value goes to column ``L - len_b + k``; other slots are zero, mask False.
    Differentiable with respect to the values.
    """
    values, lens = jt.values(), jt.lengths().long()
    b, d = lens.numel(), values.shape[-1]
    if len(lens) and int(lens.max()) > seq_len:
        raise ValueError(f"a sequence has {int(lens.max())} items, more than L={seq_len}")
    rows = torch.repeat_interleave(torch.arange(b), lens)
    starts = torch.cumsum(lens, 0) - lens
    cols = seq_len - lens[rows] + (torch.arange(values.shape[0]) - starts[rows])
    padded = values.new_zeros(b, seq_len, d).index_put((rows, cols), values)
    mask = torch.zeros(b, seq_len, dtype=torch.bool)
    mask[rows, cols] = True
    return padded, mask


def bpr_loss(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """BPR: -log σ(pos - neg), averaged over examples [B] and their negatives [B, n]."""
    return F.softplus(neg - pos[:, None]).mean()


def bce_loss(pos: torch.Tensor, neg: torch.Tensor) -> torch.Tensor:
    """Binary cross-entropy: targets are 1, sampled negatives 0 (summed over negatives)."""
    return F.softplus(-pos).mean() + F.softplus(neg).sum(-1).mean()


class SequentialRecommender(nn.Module):
    """Embedding tables + a sequence encoder; subclasses define ``encode_dense``.

    Args:
        input_emb: EmbeddingCollection with feature ``seq`` (and ``user_id`` if the model
            uses a user table), tables of width d.
        output_emb: EmbeddingCollection with features ``target`` and ``neg``, width d_out.
        seq_len: L, the longest sequence an example carries.

    ``forward(inputs, outputs)`` -> (positive scores [B], negative scores [B, n], sq_norm [])
    where ``sq_norm`` sums the squares of the looked-up rows (L2 regularisation).
    ``encode(inputs)`` -> user vectors [B, d_out].
    """

    uses_user = False

    def __init__(self, input_emb: nn.Module, output_emb: nn.Module, seq_len: int) -> None:
        super().__init__()
        self.input_emb = input_emb
        self.output_emb = output_emb
        self.seq_len = seq_len

    def encode_dense(
        self, seq: torch.Tensor, mask: torch.Tensor, user: torch.Tensor | None
    ) -> torch.Tensor:
        """(seq [B, L, d], mask [B, L], user [B, d] or None) -> user vectors [B, d_out]."""
        raise NotImplementedError

    def _encode(self, inputs: KeyedJaggedTensor) -> tuple[torch.Tensor, torch.Tensor]:
        e = self.input_emb(inputs)
        seq_jt = e[SEQ]
        seq, mask = right_align(seq_jt, self.seq_len)
        sq = seq_jt.values().pow(2).sum()
        user = None
        if self.uses_user:
            user = e[USER].values()
            sq = sq + user.pow(2).sum()
        return self.encode_dense(seq, mask, user), sq

    def encode(self, inputs: KeyedJaggedTensor) -> torch.Tensor:
        return self._encode(inputs)[0]

    def forward(
        self, inputs: KeyedJaggedTensor, outputs: KeyedJaggedTensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        v, sq = self._encode(inputs)
        o = self.output_emb(outputs)
        target, neg = o[TARGET].values(), o[NEG].values()
        pos_score = (v * target).sum(-1)
        neg_score = torch.einsum("bd,bnd->bn", v, neg.view(v.shape[0], -1, neg.shape[-1]))
        sq = sq + target.pow(2).sum() + neg.pow(2).sum()
        return pos_score, neg_score, sq
