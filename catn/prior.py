"""The bias-only rating prior CATN starts from, its shrinkage chosen on the validation users.

prior(u, i) = μ_i + b_u, with μ_i the item's visible ratings shrunk toward the domain's mean,
(Σ r + k_i·ḡ) / (n_i + k_i), and b_u the user's residuals against those μ in the domain of
the user's document, shrunk toward 0: Σ (r − μ) / (n_u + k_u). With few ratings per item
or per user, raw means are noisier than the global mean (on a real Amazon category split by
item, item means alone were 0.04 MSE worse than the global mean), so (k_i, k_u) are chosen
from ``SHRINK_GRID`` by the MSE of the cold-start validation users' target ratings, which the
prior never sees; the largest grid value is, for such data, the global mean itself. The
trivial rows of the table keep their textbook forms (raw item means, k_u = 3).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import numpy as np

from catn.data.dataset import EtaData

SHRINK_GRID = (0.0, 1.0, 3.0, 10.0, 30.0, 100.0, 1000.0)
"""Pseudo-counts tried for k_i and for k_u (each pair once)."""


@dataclass(frozen=True)
class Prior:
    """``item_mean_s`` (items_s,), ``item_mean_t`` (items_t,), ``user_prior`` (2, users):
    row 0 the user's offset from source reviews, row 1 from target reviews (float32)."""

    item_mean_s: np.ndarray
    item_mean_t: np.ndarray
    user_prior: np.ndarray
    item_shrink: float
    user_shrink: float
    val_mse: float


def _shrunk_means(keys: np.ndarray, values: np.ndarray, n: int, toward: float,
                  k: float) -> np.ndarray:
    cnt = np.bincount(keys, minlength=n)
    tot = np.bincount(keys, weights=values, minlength=n)
    out = np.full(n, toward, dtype=np.float64)
    seen = cnt + k > 0
    out[seen] = (tot[seen] + k * toward) / (cnt[seen] + k)
    return out


def shrunk_prior(data: EtaData, item_shrink: float, user_shrink: float) -> Prior:
    """The prior with pseudo-counts ``item_shrink`` (k_i) and ``user_shrink`` (k_u), from
    the visible ratings of ``data``; ``val_mse`` on its validation users."""
    num_users = len(data.user_source_offset)
    means, offsets = [], []
    for (u, i, r), n_items, g in ((data.visible_s, len(data.item_mean_s), data.global_mean_s),
                                  (data.visible_t, len(data.item_mean_t), data.global_mean_t)):
        mu = _shrunk_means(i, r, n_items, g, item_shrink)
        means.append(mu.astype(np.float32))
        offsets.append(_shrunk_means(u, r - mu[i], num_users, 0.0, user_shrink)
                       .astype(np.float32))
    vu, vi, vr = data.val
    pred = means[1][vi] + offsets[0][vu]
    mse = float(np.mean((pred - vr) ** 2)) if len(vr) else float("nan")
    return Prior(means[0], means[1], np.stack(offsets), item_shrink, user_shrink, mse)


def choose_prior(data: EtaData) -> Prior:
    """The prior of ``SHRINK_GRID`` x ``SHRINK_GRID`` with the lowest validation MSE (the
    first such in grid order); without validation pairs, k_i = 0 and k_u = 3."""
    if len(data.val[0]) == 0:
        return shrunk_prior(data, 0.0, 3.0)
    return min((shrunk_prior(data, ki, ku)
                for ki, ku in itertools.product(SHRINK_GRID, SHRINK_GRID)),
               key=lambda p: p.val_mse)
