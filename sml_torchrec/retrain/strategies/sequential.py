"""The paper's sequential baselines, GRU4Rec and Caser, as retraining strategies.

How they are retrained (one choice for both, stated here because the paper does not say):

* **Initial model.** The shared initial MF tables are *not* used: a sequential model's item
  rows are scored against a sequence encoder's output, not against MF user rows, so they live
  in another space (and Caser's output rows are 2d wide). Instead, at the first retraining
  period the model is trained from a seeded random init on D_0..D_{init-1} (the data the
  initial MF saw) for ``init_epochs`` epochs.
* **Each period t.** Fine-tuned on D_t's interactions for ``epochs`` epochs, warm-started from
  the previous period (tables, dense weights and both optimizers' states carry over). Every
  example's input is the user's previous L items over D_0..D_t up to that interaction, so a
  sequence crosses period boundaries.
* **Serving period t+1.** A user's vector encodes their last L items of D_0..D_t (a user with no
  history gets the encoder's empty-sequence vector); item rows are the output item table.

The models themselves: ``retrain/sequential_model.py``.
"""

from __future__ import annotations

import torch

from sml_torchrec.data.period_dataset import Interactions
from sml_torchrec.modules.caser import CaserConfig
from sml_torchrec.modules.gru4rec import GRU4RecConfig
from sml_torchrec.retrain.progress_bars import bar
from sml_torchrec.retrain.sequential_model import SequentialModel
from sml_torchrec.retrain.strategies.base import Strategy


class SequentialStrategy(Strategy):
    """Fine-tunes a sequential model on each period; see the module docstring.

    Checkpoints go through the base class's hooks: tables, dense weights and the fused
    optimizer state through DCP, the dense Adam state from rank 0. The served history is
    recomputed from the dataset by the next ``train_period``, so it is not saved.
    """

    kind = ""
    model_config: type = GRU4RecConfig

    def start(self, initial: dict[str, torch.Tensor]) -> None:
        del initial  # not used: see the module docstring
        torch.manual_seed(self.cfg.seed)
        self.model = SequentialModel(self.kind, self.ds.num_users, self.ds.num_items, self.cfg,
                                     self.model_config())

    def train_period(self, t: int) -> None:
        init = self.roles.init
        if t == init:
            data = self.ds.periods(0, init)
            for e in range(self.cfg.init_epochs):
                self.model.train_epoch(data, Interactions.concat([]),
                                       self.ds.meta.items_upto[init - 1], self._seed(t, 7000 + e))
        history = self.ds.periods(0, t)
        for e in bar(range(self.cfg.epochs), f"period {t} epochs"):
            self.model.train_epoch(self.ds[t], history, self.ds.meta.items_upto[t],
                                   self._seed(t, e))
        self.model.set_history(Interactions.concat([history, self.ds[t]]))


class GRU4RecStrategy(SequentialStrategy):
    name = "gru4rec"
    kind = "gru4rec"
    model_config = GRU4RecConfig


class CaserStrategy(SequentialStrategy):
    name = "caser"
    kind = "caser"
    model_config = CaserConfig
