"""GRU4Rec and Caser modules on one CPU (unsharded ECs): shapes, right alignment, masking."""

import numpy as np
import pytest
import torch

from sml_torchrec.data.sequences import input_kjt, output_kjt
from sml_torchrec.modules.caser import Caser, CaserConfig, CaserEncoder
from sml_torchrec.modules.gru4rec import GRU4Rec, GRU4RecConfig, GRUEncoder
from sml_torchrec.modules.sequence import SEQ, right_align

D = 8


def _seq_and_mask(seed, b=5, L=6):
    g = torch.Generator().manual_seed(seed)
    lens = torch.tensor([0, 1, 3, L, 2])[:b]
    mask = torch.arange(L)[None, :] >= (L - lens)[:, None]
    seq = torch.randn(b, L, D, generator=g) * mask[..., None]
    garbage = seq + torch.randn(b, L, D, generator=g) * 5 * (~mask)[..., None]
    return seq, garbage, mask, lens


def test_input_kjt_and_right_align_place_items_at_the_end():
    seqs = np.array([[-1, -1, 4, 7], [-1, -1, -1, -1], [1, 2, 3, 9]])
    kjt = input_kjt(seqs, np.array([5, 6, 7]))
    assert kjt.keys() == [SEQ, "user_id"]
    jt = kjt.to_dict()[SEQ]
    assert jt.lengths().tolist() == [2, 0, 4]
    assert jt.values().tolist() == [4, 7, 1, 2, 3, 9]
    emb = torch.nn.Embedding(10, 3)
    from torchrec.sparse.jagged_tensor import JaggedTensor

    padded, mask = right_align(JaggedTensor(emb(jt.values()), lengths=jt.lengths()), 4)
    assert padded.shape == (3, 4, 3) and mask.tolist() == [
        [False, False, True, True], [False] * 4, [True] * 4]
    assert torch.equal(padded[0, 2:], emb.weight[[4, 7]])
    assert torch.equal(padded[1], torch.zeros(4, 3))
    assert torch.equal(padded[2], emb.weight[[1, 2, 3, 9]])
    with pytest.raises(ValueError, match="more than L"):
        right_align(JaggedTensor(emb(jt.values()), lengths=jt.lengths()), 3)


def test_output_kjt_layout():
    kjt = output_kjt(np.array([1, 2]), np.array([[3, 4, 5], [6, 7, 8]]))
    d = kjt.to_dict()
    assert d["target"].values().tolist() == [1, 2]
    assert d["neg"].lengths().tolist() == [3, 3]
    assert d["neg"].values().tolist() == [3, 4, 5, 6, 7, 8]


def test_gru_padding_is_ignored_and_matches_the_unpadded_sequence():
    torch.manual_seed(0)
    enc = GRUEncoder(D, D).eval()
    with torch.no_grad():
        enc.h0.normal_()
    seq, garbage, mask, lens = _seq_and_mask(1)
    out = enc(seq, mask)
    assert out.shape == (5, D)
    assert torch.allclose(enc(garbage, mask), out, atol=0, rtol=0)
    # a padded sequence gives what the same items give with no padding at all
    for b, n in enumerate(lens.tolist()):
        alone = enc(seq[b : b + 1, seq.shape[1] - n :], mask[b : b + 1, seq.shape[1] - n :])
        assert torch.allclose(alone, out[b : b + 1], atol=1e-6)
    assert torch.equal(out[0], enc.h0)  # empty history -> the learned initial state
    # and a real item does matter
    changed = seq.clone()
    changed[3, -1] += 1
    assert not torch.allclose(enc(changed, mask)[3], out[3])


def test_caser_padding_is_ignored():
    torch.manual_seed(0)
    L = 6
    enc = CaserEncoder(L, D, n_h=4, n_v=2, dropout=0.5).eval()
    seq, garbage, mask, _ = _seq_and_mask(2, L=L)
    user = torch.randn(5, D)
    out = enc(seq, mask, user)
    assert out.shape == (5, 2 * D)
    assert torch.equal(out[:, D:], user)  # [z; P_u]
    assert torch.allclose(enc(garbage, mask, user), out, atol=1e-6)
    changed = seq.clone()
    changed[2, -1] += 1
    assert not torch.allclose(enc(changed, mask, user)[2], out[2])


@pytest.mark.parametrize("kind", ["gru4rec", "caser"])
def test_model_forward_shapes_and_padding_ids(kind):
    torch.manual_seed(0)
    if kind == "gru4rec":
        m = GRU4Rec(20, D, GRU4RecConfig(seq_len=4, dropout=0.0))
        users, width = None, D
    else:
        m = Caser(7, 20, D, CaserConfig(seq_len=4, dropout=0.0))
        users, width = np.array([0, 3, 6]), 2 * D
    m.eval()
    seqs = np.array([[-1, -1, 4, 7], [-1, -1, -1, -1], [1, 2, 3, 9]])
    pos, neg, sq = m(input_kjt(seqs, users), output_kjt(np.array([1, 2, 3]),
                                                       np.arange(9).reshape(3, 3)))
    assert pos.shape == (3,) and neg.shape == (3, 3) and sq.ndim == 0 and sq > 0
    v = m.encode(input_kjt(seqs, users))
    assert v.shape == (3, width)
    w = m.output_emb.embeddings["item_out"].weight
    assert torch.allclose(pos, (v * w[[1, 2, 3]]).sum(-1), atol=1e-6)
    assert torch.allclose(neg[2], v[2] @ w[[6, 7, 8]].T, atol=1e-6)
    loss = m.loss(pos, neg)
    loss.backward()
    assert all(p.grad is not None for p in m.encoder.parameters())
