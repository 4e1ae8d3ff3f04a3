"""Closed-form baselines that anchor the MSE scale of the cold-start task.

All use only what is visible at training time (never the cold-start users' target ratings):
target-domain item means fall back to the target global mean for items with no visible
rating; the user term is the cold-start user's shrunk mean residual in the *source* domain.
"""

from __future__ import annotations

import numpy as np

from catn.data.dataset import EtaData


def global_mean(data: EtaData, users: np.ndarray, items: np.ndarray) -> np.ndarray:
    """The target domain's mean visible rating, for every pair."""
    return np.full(len(users), data.global_mean_t, dtype=np.float32)


def item_mean(data: EtaData, users: np.ndarray, items: np.ndarray) -> np.ndarray:
    """The target item's mean visible rating (global mean for unrated items)."""
    return data.item_mean_t[items]


def user_source_mean_item_bias(data: EtaData, users: np.ndarray, items: np.ndarray
                               ) -> np.ndarray:
    """Item mean + the user's mean offset from item means in the source domain."""
    return data.item_mean_t[items] + data.user_source_offset[users]
