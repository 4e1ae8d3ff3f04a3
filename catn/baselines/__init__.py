"""Rating predictors compared against CATN, by name (the rows of ``catn-train``'s table).

The registry below is the one list of method names: ``catn-train``'s ``--methods``, its
default rows (:data:`DEFAULT_METHODS`), the TorchX component and the tests read it. A method is
either *trained* (``catn``, run by :mod:`catn.train`) or a predictor of a module of this
package: ``fn(data: EtaData, users, items) -> predictions``. Adding a baseline means one more
registry entry. Predictors are imported on use (:func:`resolve`), so reading the names (parsing
flags, loading the TorchX component) does not import torch.

The paper's baselines (CMF, EMCDR, CDLFM, DFM, R-DFM, ANR; one module each) are predictors
that fit on their first call for an :class:`EtaData` and cache the fit for it (see
:func:`catn.baselines._common.cached_predictor`), so :mod:`catn.train` runs them like the
closed-form ones: once per η, single process, on the same splits as CATN.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

    from catn.data.dataset import EtaData

    Predictor = Callable[[EtaData, np.ndarray, np.ndarray], np.ndarray]

# name -> (table label, "module:function" of its predictor in this package; None: trained)
_REGISTRY: dict[str, tuple[str, str | None]] = {
    "global_mean": ("Global mean", "trivial:global_mean"),
    "item_mean": ("Item mean", "trivial:item_mean"),
    "user_mean_item_bias": ("User src mean + item bias", "trivial:user_source_mean_item_bias"),
    "cmf": ("CMF", "cmf:cmf"),
    "emcdr": ("EMCDR", "emcdr:emcdr"),
    "cdlfm": ("CDLFM", "cdlfm:cdlfm"),
    "dfm": ("DFM", "dfm:dfm"),
    "rdfm": ("R-DFM", "dfm:rdfm"),
    "anr": ("ANR", "anr:anr"),
    "catn": ("CATN", None),
}
METHOD_NAMES: tuple[str, ...] = tuple(_REGISTRY)
DEFAULT_METHODS: tuple[str, ...] = ("catn", "global_mean", "item_mean", "user_mean_item_bias")
# the row label of each method in the tables
LABELS: dict[str, str] = {name: label for name, (label, _) in _REGISTRY.items()}


@dataclass(frozen=True)
class Method:
    name: str
    label: str
    predict: Predictor | None  # None: trained by catn.train


def resolve(names: list[str]) -> list[Method]:
    """The methods called ``names``, their predictors imported."""
    unknown = [n for n in names if n not in _REGISTRY]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; known: {sorted(METHOD_NAMES)}")
    methods = []
    for name in names:
        label, where = _REGISTRY[name]
        predict = None
        if where is not None:
            module, fn = where.split(":")
            predict = getattr(importlib.import_module(f"{__name__}.{module}"), fn)
        methods.append(Method(name, label, predict))
    return methods


__all__ = ["DEFAULT_METHODS", "LABELS", "METHOD_NAMES", "Method", "resolve"]
