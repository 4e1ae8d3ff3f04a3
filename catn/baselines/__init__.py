"""Rating predictors compared against CATN, by name (the rows of ``catn-train``'s table).

A method is either *trained* (``catn``, run by :mod:`catn.train`) or a predictor registered
here: ``fn(data: EtaData, users, items) -> predictions``. Adding a baseline means registering
one more entry; ``--methods`` picks the rows.

The paper's baselines (CMF, EMCDR, CDLFM, DFM, R-DFM, ANR; one module each) are predictors
that fit on their first call for an :class:`EtaData` and cache the fit for it (see
:func:`catn.baselines._common.cached_predictor`), so :mod:`catn.train` runs them like the
closed-form ones: once per η, single process, on the same splits as CATN.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from catn.baselines.anr import anr
from catn.baselines.cdlfm import cdlfm
from catn.baselines.cmf import cmf
from catn.baselines.dfm import dfm, rdfm
from catn.baselines.emcdr import emcdr
from catn.baselines.trivial import global_mean, item_mean, user_source_mean_item_bias
from catn.data.dataset import EtaData

Predictor = Callable[[EtaData, np.ndarray, np.ndarray], np.ndarray]


@dataclass(frozen=True)
class Method:
    name: str
    label: str
    predict: Predictor | None  # None: trained by catn.train


METHODS: dict[str, Method] = {
    m.name: m
    for m in (
        Method("global_mean", "Global mean", global_mean),
        Method("item_mean", "Item mean", item_mean),
        Method("user_mean_item_bias", "User src mean + item bias", user_source_mean_item_bias),
        Method("cmf", "CMF", cmf),
        Method("emcdr", "EMCDR", emcdr),
        Method("cdlfm", "CDLFM", cdlfm),
        Method("dfm", "DFM", dfm),
        Method("rdfm", "R-DFM", rdfm),
        Method("anr", "ANR", anr),
        Method("catn", "CATN", None),
    )
}


def register(method: Method) -> None:
    """Add a method (e.g. a new baseline) so ``--methods`` can name it."""
    METHODS[method.name] = method


def resolve(names: list[str]) -> list[Method]:
    unknown = [n for n in names if n not in METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; known: {sorted(METHODS)}")
    return [METHODS[n] for n in names]
