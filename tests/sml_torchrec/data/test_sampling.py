import numpy as np
import pytest

from sml_torchrec.data.sampling import sample_negatives


def test_never_observed_and_reproducible():
    rng = np.random.default_rng(0)
    user = rng.integers(0, 200, 5000)
    item = rng.integers(0, 40, 5000)  # dense: many collisions to redraw
    neg = sample_negatives(user, item, 40, seed=3)
    observed = set(zip(user.tolist(), item.tolist()))
    assert not any((u, j) in observed for u, j in zip(user.tolist(), neg.tolist()))
    assert neg.min() >= 0 and neg.max() < 40
    assert np.array_equal(neg, sample_negatives(user, item, 40, seed=3))
    assert not np.array_equal(neg, sample_negatives(user, item, 40, seed=4))


def test_roughly_uniform_over_unobserved():
    user = np.zeros(20000, dtype=np.int64)
    item = np.zeros(20000, dtype=np.int64)  # user 0 saw item 0 only
    neg = sample_negatives(user, item, 5, seed=0)
    counts = np.bincount(neg, minlength=5)
    assert counts[0] == 0
    assert np.all(np.abs(counts[1:] / 20000 - 0.25) < 0.02)


def test_user_who_saw_everything_is_reported():
    with pytest.raises(ValueError, match=r"user\(s\) \[7\]"):
        sample_negatives(np.array([7, 7, 7]), np.array([0, 1, 2]), 3, seed=0)
