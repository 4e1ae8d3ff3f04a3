"""IncCTR as a retraining strategy, on the same sharded MF as the other strategies.

Paper: Yichao Wang, Huifeng Guo, Ruiming Tang, Zhirong Liu, Xiuqiang He, "A Practical Incremental
Method to Train Deep CTR Models", arXiv:2009.02147 (2020). It trains the deployed model
incrementally on each period's data, with three modules: a data module that builds the period's
training set from the new data and a reservoir of historical samples; a feature module that
admits new ids; and a model module that distills the previous period's model into the new one,
so the model does not forget what D_t does not show.

The update of period t here:

* **Data:** D_t plus the reservoir of older interactions (Algorithm R, uniform over everything
  seen, ``--reservoir-size`` rows, the same reservoir as ``sample_based``; 0 turns it off).
  D_t joins the reservoir after the period is trained, as in ``sample_based``.
* **Model:** the tables W_{t-1} are trained further on that data with
  ``(1 - λ) L0(ŷ) + λ L_KD(ŷ, ỹ)`` (λ = ``--kd-weight``), where ỹ are the logits of the teacher,
  the frozen tables of the end of period t-1, on the same positives and sampled negatives, and
  L_KD is the log loss of the student's logits against the teacher's probabilities σ(ỹ) as soft
  labels (per positive and per negative, as L0). Then the teacher becomes this period's model.

Choices the paper leaves open, and what is done here:

* **Teacher and loss.** The paper allows more than one teacher and more than one distillation
  loss; here the teacher is the previous period's model, as in the ASMG authors'
  reimplementation (danni9594/ASMG, ``IncCTR``: soft labels from the previous period's
  model, ``(1 - λ) CE + λ CE(soft)``, λ = 0.2, no temperature). So here: the teacher is fixed
  for the whole period, λ defaults to 0.2 and the soft labels are σ(ỹ) (temperature 1).
* **Feature module.** The MF tables hold every id of the dataset from the start (rows of ids not
  yet seen keep the shared initial model's values), so no table is ever extended; a new id's row
  is the one it already has, as for every other strategy here.
* **Soft labels are computed per batch,** by a second sharded MF holding the teacher's tables
  and looked up under ``no_grad`` (it never gets a gradient, so its fused table never moves),
  rather than precomputed per example as the ASMG authors' code does: negatives are resampled every
  epoch, and a per-batch teacher needs no extra per-example storage.
* **Reservoir size.** The paper does not fix it; ``--reservoir-size`` is shared with
  ``sample_based`` so the two differ only by the distillation term.

Teacher and student have the same plan (both are planned alike), so the teacher is updated by a
copy of the local shards; if a planner ever placed them differently it falls back to a gather.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from sml_torchrec.data.period_dataset import Interactions
from sml_torchrec.distributed.shard_ops import copy_tables, table_weights
from sml_torchrec.modules.mf import log_loss
from sml_torchrec.retrain.model import RetrainModel
from sml_torchrec.retrain.strategies.baselines import SampleBased


def distillation_loss(
    pos: torch.Tensor, neg: torch.Tensor, teacher_pos: torch.Tensor, teacher_neg: torch.Tensor
) -> torch.Tensor:
    """Log loss of the student's logits ``pos``, ``neg`` [B] against the teacher's
    probabilities σ(teacher logits) [B] as soft labels; averaged like L0 (per positive plus per
    negative)."""
    bce = F.binary_cross_entropy_with_logits
    return bce(pos, torch.sigmoid(teacher_pos)) + bce(neg, torch.sigmoid(teacher_neg))


def copy_model(src: RetrainModel, dst: RetrainModel) -> None:
    """``dst``'s tables and biases = ``src``'s (a collective: every rank calls it)."""
    copy_tables(table_weights(src.embedding) | src.bias_weights(),
                table_weights(dst.embedding) | dst.bias_weights())


class IncCTR(SampleBased):
    """Incremental training on D_t and a reservoir, distilling the previous period's model.

    ``model`` is the student (served); ``teacher`` holds the tables of the end of the previous
    period. See the module docstring.
    """

    name = "incctr"

    def start(self, initial: dict[str, torch.Tensor]) -> None:
        super().start(initial)
        self.teacher = self._new_model()
        self.teacher.load_tables(initial)

    def _loss(self, features: KeyedJaggedTensor, pos: torch.Tensor,
              neg: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            t_pos, t_neg, _ = self.teacher.dmp(features.to(self.teacher.device))
        lam = self.cfg.kd_weight
        return (1 - lam) * log_loss(pos, neg) + lam * distillation_loss(pos, neg, t_pos, t_neg)

    def train_period(self, t: int) -> None:
        data = Interactions.concat([self.ds[t], self.reservoir])
        items = self.ds.meta.items_upto[t]
        for e in range(self.cfg.epochs):
            self.model.train_epoch(data, items, self._seed(t, e), "tables", loss_fn=self._loss)
        copy_model(self.model, self.teacher)
        self._add_to_reservoir(self.ds[t])

    def load_checkpoint_state(self, state: dict) -> None:
        # At every period boundary the teacher is the served model: it is not saved twice.
        super().load_checkpoint_state(state)
        copy_model(self.model, self.teacher)
