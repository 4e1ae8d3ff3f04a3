"""The paper's baselines on a tiny hand-built cross-domain corpus.

The corpus is built here (not taken from the synthetic generator) so that the signal each
method should find is known: users carry a rating offset and a taste vector into both
domains, and their reviews name their rating level and tastes. The item mean sees none of
that, so every cross-domain method must beat it on cold-start users.
"""

from __future__ import annotations

import time

import numpy as np
import pytest
import torch

from catn.baselines import resolve
from catn.baselines._common import (
    FitConfig,
    cached_predictor,
    fit,
    frequent_words,
    tfidf,
    training_users,
)
from catn.baselines.cdlfm import topk_cosine
from catn.baselines.trivial import item_mean
from catn.data.dataset import (
    ROLE_COLD_TEST,
    ROLE_COLD_VAL,
    CrossDomainCorpus,
    DomainReviews,
    EtaData,
    assign_roles,
    prepare_eta,
)
from catn.evaluate import mse_mae

BASELINES = ("cmf", "emcdr", "cdlfm", "dfm", "rdfm", "anr")
TEXT_BASELINES = ("rdfm", "anr")
N_OVERLAP, N_SRC_ONLY, N_TGT_ONLY, N_ITEMS, DIM = 240, 40, 40, 30, 2
PER_USER = 10


def _domain(rng: np.random.Generator, users: np.ndarray, taste: np.ndarray,
            offset: np.ndarray, word_base: int) -> DomainReviews:
    q = rng.normal(0, 1, size=(N_ITEMS, DIM))
    b = rng.normal(0, 0.3, size=N_ITEMS)
    rows_u, rows_i, rows_r, toks, offs = [], [], [], [], [0]
    for u in users:
        items = rng.choice(N_ITEMS, size=PER_USER, replace=False)
        mean = 3.2 + offset[u] + b[items] + 0.6 * q[items] @ taste[u]
        r = np.clip(np.rint(mean + rng.normal(0, 0.3, size=PER_USER)), 1, 5)
        for i, rating in zip(items, r, strict=True):
            # words: rating level (1..5), the user's taste signs, the item's quality signs,
            # two filler words; ids are 1-based and domain-specific except the level words
            t = [int(rating)] * 2
            t += [word_base + 2 * d + int(taste[u, d] > 0) for d in range(DIM)]
            t += [word_base + 10 + 2 * d + int(q[i, d] > 0) for d in range(DIM)]
            t += list(rng.integers(40, 60, size=2))
            rows_u.append(u)
            rows_i.append(i)
            rows_r.append(rating)
            toks += t
            offs.append(len(toks))
    n = len(rows_u)
    return DomainReviews(user=np.array(rows_u, dtype=np.int64),
                         item=np.array(rows_i, dtype=np.int64),
                         rating=np.array(rows_r, dtype=np.float32),
                         time=np.arange(n, dtype=np.int64),
                         tokens=np.array(toks, dtype=np.int32),
                         offsets=np.array(offs, dtype=np.int64), num_items=N_ITEMS)


def tiny_corpus(seed: int = 0) -> CrossDomainCorpus:
    rng = np.random.default_rng(seed)
    nu = N_OVERLAP + N_SRC_ONLY + N_TGT_ONLY
    taste = rng.normal(0, 1, size=(nu, DIM))
    offset = rng.normal(0, 0.7, size=nu)
    src_users = np.arange(N_OVERLAP + N_SRC_ONLY)
    tgt_users = np.r_[np.arange(N_OVERLAP), np.arange(N_OVERLAP + N_SRC_ONLY, nu)]
    S = _domain(rng, src_users, taste, offset, word_base=10)
    T = _domain(rng, tgt_users, taste, offset, word_base=25)
    role, rank = assign_roles(S.user, T.user, nu, seed)
    return CrossDomainCorpus(source=S, target=T, num_users=nu,
                             vocab=[f"w{j}" for j in range(60)], role=role, common_rank=rank)


@pytest.fixture(scope="module")
def corpus() -> CrossDomainCorpus:
    return tiny_corpus()


@pytest.fixture(scope="module")
def data(corpus) -> EtaData:
    return prepare_eta(corpus, 1.0, doc_len=60)


def test_registry_has_every_baseline_with_the_paper_label():
    labels = {m.name: m.label for m in resolve(list(BASELINES))}
    assert labels == {"cmf": "CMF", "emcdr": "EMCDR", "cdlfm": "CDLFM", "dfm": "DFM",
                      "rdfm": "R-DFM", "anr": "ANR"}
    assert all(m.predict is not None for m in resolve(BASELINES))


def test_visible_ratings_hold_no_cold_start_target_rating(corpus, data):
    cold = np.isin(corpus.role, (ROLE_COLD_VAL, ROLE_COLD_TEST))
    assert not cold[data.visible_t[0]].any()
    # cold-start users keep their source ratings: the rating-matrix methods need them
    assert cold[data.visible_s[0]].sum() == cold[corpus.source.user].sum() > 0
    assert len(training_users(data)) == data.num_training_users


@pytest.mark.parametrize("name", BASELINES)
def test_baseline_beats_item_mean_on_cold_start_users(name, data):
    u, i, r = data.test
    t0 = time.perf_counter()
    pred = resolve([name])[0].predict(data, u, i)
    seconds = time.perf_counter() - t0
    assert pred.shape == (len(u),) and pred.dtype == np.float32
    assert np.isfinite(pred).all()
    assert pred.min() >= 1.0 and pred.max() <= 5.0
    assert pred.std() > 0.1, "a constant-ish predictor learned nothing about the users"
    ours = mse_mae(pred, r)["mse"]
    base = mse_mae(item_mean(data, u, i), r)["mse"]
    assert ours < 0.9 * base, f"{name}: MSE {ours:.4f} vs item mean {base:.4f}"
    assert seconds < 60


def test_predictions_are_cached_per_eta_data_and_deterministic(corpus):
    calls = []

    def fit_fn(d):
        calls.append(d.eta)
        return lambda users, items: np.full(len(users), 9.0)

    pred = cached_predictor(fit_fn)
    d1 = prepare_eta(corpus, 1.0, doc_len=20)
    u, i, _ = d1.test
    out = pred(d1, u, i)
    pred(d1, u[:5], i[:5])
    assert calls == [1.0]
    assert out.max() == 5.0  # clipped to the visible rating range
    pred(prepare_eta(corpus, 0.5, doc_len=20), u, i)
    assert calls == [1.0, 0.5]
    # a fresh but equal EtaData refits and, seeded, gives the same predictions
    cmf = resolve(["cmf"])[0].predict
    a = cmf(prepare_eta(corpus, 0.5, doc_len=20), u, i)
    b = cmf(prepare_eta(corpus, 0.5, doc_len=20), u, i)
    np.testing.assert_array_equal(a, b)


def test_small_eta_still_runs(corpus):
    d = prepare_eta(corpus, 0.05, doc_len=40)
    assert d.num_training_users <= 6
    u, i, _ = d.test
    for name in ("emcdr", "cdlfm", "dfm"):
        pred = resolve([name])[0].predict(d, u, i)
        assert pred.shape == (len(u),) and np.isfinite(pred).all()


def test_fit_restores_the_best_epoch_and_stops_early():
    w = torch.nn.Parameter(torch.zeros(1))
    module = torch.nn.Module()
    module.w = w
    vals = iter([3.0, 1.0, 2.0, 2.5, 0.5, 4.0, 4.0, 4.0])
    seen = []

    def val():
        seen.append(w.item())
        return next(vals)

    res = fit(module, lambda b: ((w - 10.0) ** 2).sum(), 4, val,
              FitConfig(lr=0.1, max_epochs=8, patience=2))
    # best at epoch 2 (1.0); epochs 3 and 4 do not improve -> stop after epoch 4
    assert (res.best_epoch, res.epochs_run, res.best_val_mse) == (2, 4, 1.0)
    assert w.item() == pytest.approx(seen[1])


def test_topk_cosine_skips_self_and_clamps_negative_similarity():
    a = torch.tensor([[1.0, 0.0], [0.9, 0.1], [-1.0, 0.0]])
    idx, sim = topk_cosine(a, a, 2, exclude=torch.arange(3))
    assert idx[0, 0] == 1 and idx[1, 0] == 0
    assert (idx != torch.arange(3)[:, None]).all()
    assert (sim >= 0).all() and sim[2].max() == 0


def test_tfidf_rows_are_unit_norm_over_the_chosen_words():
    docs = np.array([[1, 2, 2, 0], [3, 3, 0, 0], [0, 0, 0, 0]])
    words = frequent_words(docs, top=2)
    assert list(words) == [2, 3]
    x = tfidf(docs, words)
    assert x.shape == (3, 2)
    np.testing.assert_allclose(x.norm(dim=1).numpy(), [1, 1, 0], atol=1e-6)
