"""CATN's bias-only prior: shrinkage toward the domain mean, chosen on the validation users."""

import itertools

import numpy as np
import pytest

from catn.data.dataset import prepare_eta
from catn.data.synthetic import SyntheticConfig, synthetic_corpus
from catn.prior import SHRINK_GRID, choose_prior, shrunk_prior

SMALL = {"overlap_users": 160, "source_only_users": 30, "target_only_users": 30,
         "items_source": 25, "items_target": 25, "seed": 3, "word_vectors": 8}


@pytest.fixture(scope="module")
def data():
    return prepare_eta(synthetic_corpus(SyntheticConfig(**SMALL)), 0.5, 24)


def test_no_item_shrinkage_and_user_shrinkage_3_is_the_textbook_prior(data):
    p = shrunk_prior(data, 0.0, 3.0)
    np.testing.assert_allclose(p.item_mean_s, data.item_mean_s, atol=1e-6)
    np.testing.assert_allclose(p.item_mean_t, data.item_mean_t, atol=1e-6)
    np.testing.assert_allclose(p.user_prior, data.user_prior(), atol=1e-6)


def test_shrinkage_by_hand_on_one_item_and_one_user(data):
    k_i, k_u = 10.0, 30.0
    p = shrunk_prior(data, k_i, k_u)
    u, i, r = data.visible_t
    item = int(np.bincount(i).argmax())
    want = (r[i == item].sum() + k_i * data.global_mean_t) / ((i == item).sum() + k_i)
    assert p.item_mean_t[item] == pytest.approx(want, rel=1e-5)
    us, is_, rs = data.visible_s
    user = int(np.bincount(us).argmax())
    mine = us == user
    want = (rs[mine] - p.item_mean_s[is_[mine]]).sum() / (mine.sum() + k_u)
    assert p.user_prior[0, user] == pytest.approx(want, rel=1e-4, abs=1e-6)
    # a large pseudo-count is the global mean and no user offset
    far = shrunk_prior(data, 1e9, 1e9)
    np.testing.assert_allclose(far.item_mean_t, data.global_mean_t, atol=1e-4)
    np.testing.assert_allclose(far.user_prior, 0.0, atol=1e-4)


def test_chosen_prior_is_the_grid_point_best_on_validation(data):
    chosen = choose_prior(data)
    vu, vi, vr = data.val
    scores = {}
    for ki, ku in itertools.product(SHRINK_GRID, SHRINK_GRID):
        p = shrunk_prior(data, ki, ku)
        scores[(ki, ku)] = float(np.mean((p.item_mean_t[vi] + p.user_prior[0, vu] - vr) ** 2))
    best = min(scores.values())
    assert chosen.val_mse == pytest.approx(best)
    assert scores[(chosen.item_shrink, chosen.user_shrink)] == pytest.approx(best)
    assert len(set(np.round(list(scores.values()), 6))) > 1  # the grid is not flat here
