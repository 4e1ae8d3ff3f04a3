"""Rating predictors compared against CATN, by name (the rows of ``catn-train``'s table).

A method is either *trained* (``catn``, run by :mod:`catn.train`) or a closed-form predictor
registered here: ``fn(data: EtaData, users, items) -> predictions``. Adding a baseline (CMF,
EMCDR, ANR, ...) means registering one more entry; ``--methods`` picks the rows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

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
