"""The retraining strategies (see ``strategy.Strategy`` for the interface) and their registry."""

from __future__ import annotations

import logging

import numpy as np
import torch

from sml_torchrec.data.period_dataset import Interactions
from sml_torchrec.retrain.sequential import CaserStrategy, GRU4RecStrategy
from sml_torchrec.retrain.strategy import Strategy

log = logging.getLogger(__name__)


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


class SML(Strategy):
    """Sequential meta-learning: W_t = f_Θ(W_{t-1}, Ŵ_t), Θ trained toward the next period.

    Offline periods follow Algorithm 1, online periods Algorithm 2; see ``train_period``.
    State between calls: ``prev`` = W_{t-1}, ``new`` = Ŵ_t; the served model is f(prev, new).
    """

    name = "sml"
    transfer = True

    def _step1(self, t: int, k: int) -> None:
        self.model.train_epoch(self.ds[t], self.ds.meta.items_upto[t], self._seed(t, k), "tables")

    def _step2(self, s: int, k: int) -> None:
        self.model.train_epoch(
            self.ds[s], self.ds.meta.items_upto[s], self._seed(s, 50_000 + k), "transfer"
        )

    def train_period(self, t: int) -> None:
        r, last_offline = self.cfg.rounds, self.roles.last_offline
        if t < last_offline:
            # Algorithm 1: Ŵ_t <- W_{t-1}; alternate steps on D_t and D_{t+1}; W_t = f(.).
            # (prev and new both hold W_{t-1} here: start() and materialize() ensure it.)
            for k in range(r):
                self._step1(t, k)
                self._step2(t + 1, k)
            self.model.materialize()
        elif t == last_offline:
            # Last offline period: D_{t+1} is the first online period, never trained on first.
            for k in range(r):
                self._step1(t, k)
        else:
            # Algorithm 2, after W_{t-1} = f(prev, new) was tested on D_t: refit Θ on D_t and
            # Ŵ_{t-1} on D_{t-1}, one more Θ step, W_{t-1} = f(.), then learn Ŵ_t on D_t.
            for k in range(r):
                self._step2(t, k)
                self._step1(t - 1, 1000 + k)
            self._step2(t, r)
            self.model.materialize()
            for k in range(max(r, self.cfg.epochs)):
                self._step1(t, 2000 + k)


STRATEGIES: dict[str, type[Strategy]] = {
    s.name: s for s in (SML, FineTune, FullRetrain, SampleBased, GRU4RecStrategy, CaserStrategy)
}
