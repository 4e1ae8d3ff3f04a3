"""CATN data errors: the project's :class:`DataError`, with CATN-specific subclasses."""

from __future__ import annotations

from recsys_common.errors import DataError

__all__ = ["DataError", "FilterError", "SplitError"]


class FilterError(DataError):
    """The review-count filters left too few users; the message reports every filter step."""


class SplitError(DataError):
    """The cross-domain split is impossible (no overlap, or an η that leaves no training users)."""
