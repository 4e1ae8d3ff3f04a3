"""SML (Algorithms 1 and 2 of the paper) as a retraining strategy."""

from __future__ import annotations

from sml_torchrec.retrain.progress_bars import bar
from sml_torchrec.retrain.strategies.base import Strategy


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
            for k in bar(range(r), f"period {t} rounds"):
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
            for k in bar(range(r), f"period {t} rounds"):
                self._step2(t, k)
                self._step1(t - 1, 1000 + k)
            self._step2(t, r)
            self.model.materialize()
            for k in bar(range(max(r, self.cfg.epochs)), f"period {t} epochs"):
                self._step1(t, 2000 + k)
