import numpy as np
import pytest
import torch

from catn.batch import SOURCE, TARGET, FlowBatch
from catn.modules.aspects import AspectExtractor, AuxFusion, RunningCentre, loop_aspects
from catn.modules.model import CATN, CATNConfig

V, L = 50, 12


def _cfg(**kw):
    return CATNConfig(vocab_size=V, num_users=7, num_items_source=4, num_items_target=5,
                      word_dim=8, num_filters=6, num_aspects=3, latent_dim=4, **kw)


def _batch(user_domain, B=5, seed=0, item_domain=None):
    g = torch.Generator().manual_seed(seed)
    docs = torch.randint(1, V, (3, L), generator=g)
    docs[1, 6:] = 0  # padding
    aux = torch.randint(1, V, (3, L), generator=g)
    aux[2] = 0  # a user without auxiliary reviews
    idom = 1 - user_domain if item_domain is None else item_domain
    n_items = 4 if idom == SOURCE else 5
    return FlowBatch(user_domain, docs, aux, torch.randint(0, V, (2, L), generator=g),
                     torch.randint(0, 3, (B,), generator=g), torch.randint(0, 2, (B,), generator=g),
                     torch.randint(0, 7, (B,), generator=g),
                     torch.randint(0, n_items, (B,), generator=g), torch.rand(B, generator=g) * 5,
                     item_domain)


def test_extractor_shapes_masking_and_loop_equivalence():
    torch.manual_seed(0)
    ext = AspectExtractor(8, 6, 3, 3, 4).eval()
    emb = torch.randn(4, L, 8)
    mask = torch.ones(4, L, dtype=torch.bool)
    mask[1, 5:] = False
    mask[3] = False
    a, beta = ext(emb, mask)
    assert a.shape == (4, 3, 4) and beta.shape == (4, 3, L)
    assert torch.allclose(beta[:3].sum(-1), torch.ones(3, 3))
    assert (beta[1, :, 5:] == 0).all()  # padded words get no attention
    assert (a[3] == 0).all() and torch.isfinite(a).all()  # empty document: no aspects
    # changing padded words' vectors changes nothing
    emb2 = emb.clone()
    emb2[1, 7:] += 5  # away from the conv window of the last real word
    assert torch.allclose(ext(emb2, mask)[0][1], a[1], atol=1e-6)
    a_loop, beta_loop = loop_aspects(ext, emb, mask)
    assert torch.allclose(a, a_loop, atol=1e-5) and torch.allclose(beta, beta_loop, atol=1e-6)
    for aux in (True,):
        assert torch.allclose(ext(emb, mask, aux)[0], loop_aspects(ext, emb, mask, aux)[0],
                              atol=1e-5)


def test_fusion_shapes():
    f = AuxFusion(4)
    out = f(torch.randn(2, 3, 4), torch.randn(2, 3, 4))
    assert out.shape == (2, 3, 4) and (out.abs() <= 1).all()


def test_model_prediction_formula():
    torch.manual_seed(1)
    m = CATN(_cfg(), np.full(4, 3.5, np.float32), np.full(5, 4.0, np.float32),
             np.linspace(-0.3, 0.3, 7).astype(np.float32)).eval()
    b = _batch(SOURCE)
    with torch.no_grad():  # gain 0 and no item residual: the model is the prior exactly
        m.aspect_gain.zero_()
    assert torch.equal(m.score(b), m.user_bias[SOURCE][b.users] + 4.0)
    with torch.no_grad():
        m.aspect_gain.fill_(0.7)
        m.item_residual[TARGET].normal_()
    # give the centres a non-zero mean, as after training
    for c in (*m.user_centre, *m.item_centre):
        c.mean.normal_()
    pred = m.score(b)
    a_u = (m.encode_user(b.user_docs, b.aux_docs, SOURCE) - m.user_centre[SOURCE].mean)
    a_i = (m.encode(b.item_docs, TARGET) - m.item_centre[TARGET].mean)
    a_u, a_i = a_u[b.user_index], a_i[b.item_index]
    S = torch.nn.functional.leaky_relu(m.extractors[0].v @ m.W @ m.extractors[1].v.T, 0.2)
    S = S / (S.abs().mean() + 1e-12)
    want = 0.7 * (S * (a_u @ m.W @ a_i.transpose(1, 2))).mean((1, 2)) + \
        m.user_bias[SOURCE][b.users] + m.item_residual[TARGET][b.items]
    assert torch.allclose(pred, want + 4.0, atol=1e-5)
    # an unseen target item's prior is the given mean, never 0
    assert torch.equal(m.item_mean_1, torch.full((5,), 4.0))


def test_in_domain_pairs_use_their_own_matrix_and_gain():
    torch.manual_seed(5)
    m = CATN(_cfg(in_domain=True, dropout=0.0)).eval()
    b = _batch(TARGET, item_domain=TARGET)
    a_u = m.encode_user(b.user_docs, b.aux_docs, TARGET) - m.user_centre[TARGET].mean
    a_i = m.encode(b.item_docs, TARGET) - m.item_centre[TARGET].mean
    a_u, a_i = a_u[b.user_index], a_i[b.item_index]
    want = (a_u @ m.W_in[TARGET] @ a_i.transpose(1, 2)).mean((1, 2))
    assert torch.allclose(m.aspect_term(b), want, atol=1e-5)
    assert torch.allclose(m.score(b), want + m.user_bias[TARGET][b.users] + 3.0, atol=1e-5)
    with pytest.raises(ValueError, match="in_domain"):
        CATN(_cfg()).score(b)


@pytest.mark.parametrize("flags", [{}, {"use_aux": False}, {"use_global_correlation": False},
                                   {"in_domain": True}])
def test_gradients_reach_every_branch(flags):
    torch.manual_seed(2)
    m = CATN(_cfg(aspect_gain_init=0.5, **flags))
    flows = [_batch(TARGET, seed=1), _batch(SOURCE, seed=2)]
    if flags.get("in_domain"):
        flows += [_batch(SOURCE, seed=3, item_domain=SOURCE),
                  _batch(TARGET, seed=4, item_domain=TARGET)]
    loss = sum(((p - b.ratings) ** 2).mean() for (p, _), b in zip(m(*flows), flows))
    loss = loss + m.l2_penalty()
    loss.backward()
    for name, p in m.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    if not flags.get("use_aux", True):
        assert m.fusion is None and m.extractors[0].aux_conv is None
    assert m.user_bias.requires_grad is False


def test_gradcheck_each_branch():
    torch.manual_seed(3)
    m = CATN(_cfg(dropout=0.0)).double().eval()
    b = _batch(SOURCE, B=3)
    emb_u = m.embedding(b.user_docs).detach().requires_grad_(True)
    mask = b.user_docs > 0
    ext = m.extractors[SOURCE]
    assert torch.autograd.gradcheck(lambda e: ext(e, mask)[0], (emb_u,))
    assert torch.autograd.gradcheck(lambda e: ext(e, mask, aux=True)[0], (emb_u,))
    x = torch.randn(2, 3, 4, dtype=torch.double, requires_grad=True)
    y = torch.randn(2, 3, 4, dtype=torch.double, requires_grad=True)
    assert torch.autograd.gradcheck(m.fusion, (x, y))
    W = m.W.detach().clone().requires_grad_(True)

    def head(w):
        m.W.data.copy_(w.detach())
        return (m.global_correlation() * 0 + torch.nn.functional.leaky_relu(
            ext.v @ w @ m.extractors[TARGET].v.T, 0.2)).sum()
    assert torch.autograd.gradcheck(head, (W,))


def test_running_centre_sets_tracks_and_freezes_the_mean():
    c = RunningCentre(2, 3, momentum=0.5)
    x = torch.randn(6, 2, 3) + 4.0
    y = c(x)  # training mode: the first batch sets the mean
    assert torch.allclose(c.mean, x.mean(0)) and torch.allclose(y.mean(0), torch.zeros(2, 3),
                                                                 atol=1e-5)
    c(x + 2.0)
    assert torch.allclose(c.mean, x.mean(0) + 1.0)  # moved half-way (momentum 0.5)
    c.eval()
    before = c.mean.clone()
    z = torch.randn(4, 2, 3, requires_grad=True)
    out = c(z)
    assert torch.equal(c.mean, before)  # eval does not update
    out.sum().backward()
    assert torch.equal(z.grad, torch.ones_like(z))  # no gradient through the mean


def test_global_correlation_is_normalised():
    torch.manual_seed(4)
    m = CATN(_cfg())
    with torch.no_grad():
        m.W.mul_(1e-3)  # a raw S of ~1e-6: the collapse the normalisation prevents
    S = m.global_correlation()
    assert torch.allclose(S.abs().mean(), torch.tensor(1.0), atol=1e-2)
    assert torch.equal(CATN(_cfg(use_global_correlation=False)).global_correlation(),
                       torch.ones(3, 3))


def test_user_bias_comes_from_the_document_domain():
    off = np.stack([np.zeros(7), np.full(7, 0.5)]).astype(np.float32)
    m = CATN(_cfg(dropout=0.0, aspect_gain_init=0.0), np.full(4, 3.0, np.float32),
             np.full(5, 3.0, np.float32),
             off).eval()
    assert torch.allclose(m.score(_batch(SOURCE)), torch.full((5,), 3.0))
    assert torch.allclose(m.score(_batch(TARGET)), torch.full((5,), 3.5))
    with pytest.raises(ValueError, match="user_offset"):
        CATN(_cfg(), user_offset=np.zeros((3, 7), np.float32))
