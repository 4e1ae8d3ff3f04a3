"""Batches of CATN: an η view's documents gathered for a set of (user, item) pairs.

Training feeds both flows each step: flow s (a training user's *target* document vs *source*
items, the pairs ``EtaData.train_s``) and flow t (the user's source document vs target items,
``train_t``), mixed in proportion to their sizes. Each rank takes a disjoint shard of each
flow's pairs. Evaluation scores cold-start users from their source documents (flow t).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from catn.batch import SOURCE, TARGET, FlowBatch
from catn.data.dataset import DOC_KEYS, EtaData


def doc_tensors(data: EtaData) -> dict[str, torch.Tensor]:
    """The η view's six document matrices ((N, L) int32) as tensors, by ``EtaData`` name."""
    return {k: torch.from_numpy(np.ascontiguousarray(getattr(data, k))) for k in DOC_KEYS}


def make_flow_batch(tensors: dict[str, torch.Tensor], user_domain: int, users: torch.Tensor,
                    items: torch.Tensor, ratings: torch.Tensor | None, use_aux: bool,
                    item_domain: int | None = None) -> FlowBatch:
    """Gather the unique documents (from :func:`doc_tensors`) of a set of pairs into a
    :class:`FlowBatch`; items are of the other domain unless ``item_domain`` says."""
    uq, uidx = torch.unique(users, return_inverse=True)
    iq, iidx = torch.unique(items, return_inverse=True)
    d = "s" if user_domain == SOURCE else "t"
    idom = 1 - user_domain if item_domain is None else item_domain
    o = "s" if idom == SOURCE else "t"
    return FlowBatch(
        user_domain=user_domain,
        user_docs=tensors[f"user_docs_{d}"][uq].long(),
        aux_docs=tensors[f"aux_docs_{d}"][uq].long() if use_aux else None,
        item_docs=tensors[f"item_docs_{o}"][iq].long(),
        user_index=uidx, item_index=iidx, users=users, items=items, ratings=ratings,
        item_domain=item_domain)


@dataclass(frozen=True)
class EpochPlan:
    """Steps per epoch and the pairs of each flow one rank takes per step (both >= 1)."""

    steps: int
    per_step_s: int
    per_step_t: int


def epoch_plan(n_s: int, n_t: int, batch_size: int, world: int) -> EpochPlan:
    """Split the global ``batch_size`` over ranks and over the flows (``n_s``, ``n_t`` pairs)
    in proportion to their sizes; an epoch is enough steps to cover all pairs once."""
    local = max(2, batch_size // world)
    steps = max(1, math.ceil((n_s + n_t) / (local * world)))
    bs_s = min(local - 1, max(1, round(local * n_s / (n_s + n_t))))
    return EpochPlan(steps, bs_s, local - bs_s)


def training_batches(data: EtaData, tensors: dict, plan: EpochPlan, seed: int, rank: int,
                     world: int, use_aux: bool, in_domain: bool = False
                     ) -> Iterator[tuple[FlowBatch, FlowBatch]]:
    """This rank's ``plan.steps`` (flow s, flow t) batches of one epoch, shuffled by ``seed``.

    The cross-domain flows by default (training users' pairs ``train_s``, ``train_t``); with
    ``in_domain`` every visible review of each domain scored from the user's document of the
    same domain (``visible_s``, ``visible_t``: no overlapping user needed).

    Every rank draws the same permutation and takes every world-th pair, so the shards are
    disjoint; a shard shorter than the epoch wraps around.
    """
    pairs_s, pairs_t = (data.visible_s, data.visible_t) if in_domain else \
        (data.train_s, data.train_t)
    us, is_, rs = (torch.from_numpy(a) for a in pairs_s)
    ut, it, rt = (torch.from_numpy(a) for a in pairs_t)
    # flow s: source items, scored from the user's target (cross) or source (in-domain) doc
    doc_s, doc_t = (SOURCE, TARGET) if in_domain else (TARGET, SOURCE)
    items_s, items_t = (SOURCE, TARGET) if in_domain else (None, None)
    g = torch.Generator().manual_seed(seed)
    sh_s = torch.randperm(len(us), generator=g)[rank::world]
    sh_t = torch.randperm(len(ut), generator=g)[rank::world]
    for step in range(plan.steps):
        ks = sh_s[(step * plan.per_step_s + torch.arange(plan.per_step_s)) % len(sh_s)]
        kt = sh_t[(step * plan.per_step_t + torch.arange(plan.per_step_t)) % len(sh_t)]
        yield (make_flow_batch(tensors, doc_s, us[ks], is_[ks], rs[ks], use_aux, items_s),
               make_flow_batch(tensors, doc_t, ut[kt], it[kt], rt[kt], use_aux, items_t))
