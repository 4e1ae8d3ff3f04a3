"""The paper's MF baselines: fine-tuning, full retraining and sample-based retraining (SPMF)."""

from __future__ import annotations

import numpy as np
import torch

from sml_torchrec.data.period_dataset import Interactions
from sml_torchrec.retrain.strategies.base import Strategy


class FineTune(Strategy):
    """W_t = W_{t-1} trained on D_t only."""

    name = "fine_tune"

    def train_period(self, t: int) -> None:
        self._fit_tables(self.ds[t], t, self.cfg.epochs)


class FullRetrain(Strategy):
    """W_t trained from scratch on D_0..D_t (only for models that are served to a test)."""

    name = "full_retrain"

    def start(self, initial: dict[str, torch.Tensor]) -> None:
        self.initial = initial

    def checkpoint_state(self) -> dict:
        return {}  # each period's model is retrained from scratch: nothing to carry over

    def train_period(self, t: int) -> None:
        if t + 1 < self.roles.first_online:
            return  # its model would never be tested: skip the most expensive retrain
        self.model = self._new_model()  # random init from the same seed every period
        self._fit_tables(self.ds.periods(0, t + 1), t, self.cfg.epochs)


class SampleBased(Strategy):
    """SPMF-style: D_t plus a reservoir sample of older interactions, fine-tuned."""

    name = "sample_based"

    def start(self, initial: dict[str, torch.Tensor]) -> None:
        super().start(initial)
        self.rng = np.random.default_rng(self.cfg.seed)
        self.reservoir = Interactions.concat([])
        self.seen = 0
        for t in range(self.roles.init):
            self._add_to_reservoir(self.ds[t])

    def _add_to_reservoir(self, d: Interactions) -> None:
        """Classic reservoir sampling (Algorithm R), vectorised per period."""
        cap = self.cfg.reservoir_size
        n = len(d)
        idx = np.arange(self.seen, self.seen + n)
        fill = max(0, min(n, cap - len(self.reservoir)))
        res = Interactions.concat([self.reservoir, d.select(np.arange(fill))])
        if fill < n:
            j = (self.rng.random(n - fill) * (idx[fill:] + 1)).astype(np.int64)
            hit = j < cap
            # Later records overwrite earlier ones at the same slot, as in the sequential form.
            slots, src = j[hit], np.arange(fill, n)[hit]
            for f in Interactions._fields():
                getattr(res, f)[slots] = getattr(d, f)[src]
        self.reservoir = res
        self.seen += n

    def extra_state(self) -> dict:
        return {"reservoir": self.reservoir, "seen": self.seen,
                "rng": self.rng.bit_generator.state}

    def load_extra_state(self, extra: dict) -> None:
        self.reservoir, self.seen = extra["reservoir"], extra["seen"]
        self.rng.bit_generator.state = extra["rng"]

    def train_period(self, t: int) -> None:
        data = Interactions.concat([self.ds[t], self.reservoir])
        self._fit_tables(data, t, self.cfg.epochs)
        self._add_to_reservoir(self.ds[t])
