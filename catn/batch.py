"""The model's input: :class:`FlowBatch`, the pairs of one learning flow.

Built by :mod:`catn.data.batches`, read by :mod:`catn.modules.model`; it lives apart from both
so that neither imports the other. Shapes: B pairs, Uq unique users, Iq unique items, L words.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

# The two domains, as FlowBatch.user_domain (and the rows of per-domain tables) number them.
SOURCE, TARGET = 0, 1


@dataclass
class FlowBatch:
    """Pairs of one flow: ``user_domain`` is the domain of the user's document, and
    :attr:`items_from` that of the items.

    user_docs/aux_docs (Uq, L) int64 word ids of the unique users; item_docs (Iq, L) of the
    unique items (of :attr:`items_from`); user_index (B,) into Uq; item_index (B,) into Iq;
    users (B,) global user ids; items (B,) item ids; ratings (B,) float or None.
    """

    user_domain: int
    user_docs: torch.Tensor
    aux_docs: torch.Tensor | None
    item_docs: torch.Tensor
    user_index: torch.Tensor
    item_index: torch.Tensor
    users: torch.Tensor
    items: torch.Tensor
    ratings: torch.Tensor | None = None
    # None: the other domain (a cross-domain pair); == user_domain: an in-domain pair, which
    # needs no overlapping user and pretrains the extractors on every review
    item_domain: int | None = None

    @property
    def items_from(self) -> int:
        """The domain of the items (and of their documents)."""
        return 1 - self.user_domain if self.item_domain is None else self.item_domain

    def to(self, device: torch.device) -> FlowBatch:
        def mv(t):
            return None if t is None else t.to(device, non_blocking=True)
        return FlowBatch(self.user_domain, *(mv(getattr(self, f)) for f in (
            "user_docs", "aux_docs", "item_docs", "user_index", "item_index", "users", "items",
            "ratings")), self.item_domain)
