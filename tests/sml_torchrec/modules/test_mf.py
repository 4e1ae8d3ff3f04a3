"""Matrix factorisation with and without biases, on one process, unsharded."""

import numpy as np
import torch
from torchrec.modules.embedding_modules import EmbeddingBagCollection

from sml_torchrec.data.batching import make_kjt
from sml_torchrec.modules.mf import BIAS_WIDTH, MatrixFactorization, bias_tables, mf_tables


def _model(biases: bool) -> MatrixFactorization:
    torch.manual_seed(0)
    emb = EmbeddingBagCollection(tables=mf_tables(6, 9, 4))
    bias = EmbeddingBagCollection(tables=bias_tables(6, 9)) if biases else None
    return MatrixFactorization(emb, bias)


def _features():
    return make_kjt(np.array([0, 3, 5]), np.array([1, 2, 8]), np.array([4, 0, 7]))


def test_bias_tables_start_at_zero_and_are_four_columns_wide():
    mf = _model(True)
    for w in mf.bias.parameters():
        assert w.shape[1] == BIAS_WIDTH
        assert torch.count_nonzero(w) == 0


def test_logits_add_the_user_and_item_bias_to_the_dot_product():
    plain, biased = _model(False), _model(True)
    biased.embedding.load_state_dict(plain.embedding.state_dict())
    ub = biased.bias.embedding_bags["user_bias"].weight
    ib = biased.bias.embedding_bags["item_bias"].weight
    with torch.no_grad():
        ub.copy_(torch.arange(6.0)[:, None].expand(6, BIAS_WIDTH))
        ib.copy_(-0.1 * torch.arange(9.0)[:, None].expand(9, BIAS_WIDTH))
    p0, n0, sq0 = plain(_features())
    p1, n1, sq1 = biased(_features())
    users, items = torch.tensor([0, 3, 5.0]), torch.tensor([1, 2, 8.0])
    negs = torch.tensor([4, 0, 7.0])
    torch.testing.assert_close(p1, p0 + users - 0.1 * items)
    torch.testing.assert_close(n1, n0 + users - 0.1 * negs)
    want_sq = (users**2).sum() + ((0.1 * items) ** 2).sum() + ((0.1 * negs) ** 2).sum()
    torch.testing.assert_close(biased.bias_sq_norm, want_sq)
    torch.testing.assert_close(sq1, sq0 + want_sq)


def test_frozen_biases_get_no_gradient_but_the_embeddings_do():
    mf = _model(True)
    mf.train_bias = False
    pos, neg, _ = mf(_features())
    (pos.sum() - neg.sum()).backward()
    assert all(w.grad is None for w in mf.bias.parameters())
    assert all(w.grad is not None for w in mf.embedding.parameters())
    mf.train_bias = True
    pos, neg, _ = mf(_features())
    (pos.sum() - neg.sum()).backward()
    assert all(w.grad is not None for w in mf.bias.parameters())
