"""Retraining strategies and their registry, the one list of strategy names.

Every strategy implements :class:`Strategy` (``base.py``); the period loop drives them all the
same way. The CLI, the TorchX component and the tests read :data:`STRATEGIES` and
:data:`DEFAULT_STRATEGIES`.
"""

from sml_torchrec.retrain.strategies.base import Strategy
from sml_torchrec.retrain.strategies.baselines import FineTune, FullRetrain, SampleBased
from sml_torchrec.retrain.strategies.sequential import CaserStrategy, GRU4RecStrategy
from sml_torchrec.retrain.strategies.sml import SML

STRATEGIES: dict[str, type[Strategy]] = {
    s.name: s for s in (SML, FineTune, FullRetrain, SampleBased, GRU4RecStrategy, CaserStrategy)
}

__all__ = ["STRATEGIES", "Strategy"]
