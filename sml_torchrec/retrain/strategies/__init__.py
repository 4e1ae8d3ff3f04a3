"""Retraining strategies and their registry: the one list of strategy names.

Every strategy implements :class:`~sml_torchrec.retrain.strategies.base.Strategy`; the period
loop drives them all the same way. The configuration, the CLI, the TorchX component and the
tests read :data:`STRATEGY_NAMES` and :data:`DEFAULT_STRATEGIES`; :func:`strategy_class`
imports a strategy on use, so that reading the names (parsing flags) does not import TorchRec.
"""

from __future__ import annotations

import importlib

# name -> (module of this package, class). Each class's ``name`` equals its key (tested).
_REGISTRY: dict[str, tuple[str, str]] = {
    "sml": ("sml", "SML"),
    "fine_tune": ("baselines", "FineTune"),
    "full_retrain": ("baselines", "FullRetrain"),
    "sample_based": ("baselines", "SampleBased"),
    "gru4rec": ("sequential", "GRU4RecStrategy"),
    "caser": ("sequential", "CaserStrategy"),
    "incctr": ("incctr", "IncCTR"),
    "asmg": ("asmg", "ASMG"),
    "pop": ("popularity", "Pop"),
    "recent_pop": ("popularity", "RecentPop"),
}
STRATEGY_NAMES: tuple[str, ...] = tuple(_REGISTRY)
DEFAULT_STRATEGIES: tuple[str, ...] = (
    "sml", "fine_tune", "full_retrain", "sample_based", "pop", "recent_pop",
)


def strategy_class(name: str) -> type:
    """The strategy class registered as ``name``."""
    if name not in _REGISTRY:
        raise KeyError(f"unknown strategy {name!r}; choose from {list(STRATEGY_NAMES)}")
    module, cls = _REGISTRY[name]
    return getattr(importlib.import_module(f"{__name__}.{module}"), cls)


__all__ = ["DEFAULT_STRATEGIES", "STRATEGY_NAMES", "strategy_class"]
