"""Popularity anchors: every user is shown the most interacted items, no tables trained.

* ``pop``: items ranked by their interactions in D_0..D_t (everything seen so far).
* ``recent_pop``: items ranked by their interactions in D_t alone (the last period).

They are served like every model (:class:`~sml_torchrec.retrain.serving.ServedModel`): each
user's vector is ``[1]`` and each item's row is ``[count]``, so a score is the item's count and
both protocols rank by it (ties: the lower item id first, as for every model in the full
protocol). Cheap enough to compute on every rank; nothing to checkpoint, since each period's
counts are recomputed from the dataset.
"""

from __future__ import annotations

import numpy as np
import torch

from recsys_common.process_group import rank_block
from sml_torchrec.data.period_dataset import Interactions
from sml_torchrec.retrain.strategies.base import Strategy


class PopularityModel:
    """Serves ``counts`` [num_items]: user vectors [U, 1] of ones, item rows [n, 1] of counts."""

    def __init__(self, counts: np.ndarray) -> None:
        self.counts = torch.from_numpy(np.asarray(counts, dtype=np.float32))
        self.num_items = len(self.counts)

    def user_vectors(self, users: np.ndarray) -> torch.Tensor:
        return torch.ones(len(users), 1)

    def item_block(self) -> tuple[torch.Tensor, int]:
        """This rank's equal share of the rows (the last rank's may be shorter or empty)."""
        rows = rank_block(self.num_items)
        return self.counts[rows, None].clone(), rows.start


class _Popularity(Strategy):
    tuned_fields = ()

    def trained_models(self) -> list:
        return []  # counts, no tables

    def start(self, initial: dict[str, torch.Tensor]) -> None:
        del initial  # nothing is trained

    def _counted(self, t: int) -> Interactions:
        raise NotImplementedError

    def train_period(self, t: int) -> None:
        items = self._counted(t).item_id
        self.model = PopularityModel(np.bincount(items, minlength=self.ds.num_items))

    def checkpoint_state(self) -> dict:
        return {}  # recomputed from the dataset every period

    def extra_state(self) -> dict:
        return {}


class Pop(_Popularity):
    """Most interacted items in D_0..D_t."""

    name = "pop"

    def _counted(self, t: int) -> Interactions:
        return self.ds.periods(0, t + 1)


class RecentPop(_Popularity):
    """Most interacted items in D_t."""

    name = "recent_pop"

    def _counted(self, t: int) -> Interactions:
        return self.ds[t]
