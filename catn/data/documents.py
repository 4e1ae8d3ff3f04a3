"""Vectorised document and auxiliary-document construction.

A document is the concatenation of an owner's reviews (oldest first), cut or zero-padded to
``doc_len`` word ids. Everything here is numpy array work: no per-review Python loop, so a
category with millions of reviews builds in seconds.
"""

from __future__ import annotations

import numpy as np


def _gather_index(starts: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenated ``arange(starts[k], starts[k] + lengths[k])`` over k."""
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    shift = starts - (np.cumsum(lengths) - lengths)
    return np.repeat(shift, lengths) + np.arange(total, dtype=np.int64)


def build_documents(
    owner: np.ndarray,
    time: np.ndarray,
    rows: np.ndarray,
    tokens: np.ndarray,
    offsets: np.ndarray,
    num_owners: int,
    doc_len: int,
) -> np.ndarray:
    """Documents of shape (num_owners, doc_len), int32, 0 = padding.

    Entry ``k`` contributes the tokens of review ``rows[k]`` to the document of ``owner[k]``,
    placed in ``time[k]`` order (ties by ``k``). Reviews that would start past ``doc_len`` are
    skipped before any token is touched, so a popular item with thousands of reviews costs no
    more than ``doc_len`` tokens.
    """
    docs = np.zeros((num_owners, doc_len), dtype=np.int32)
    if len(owner) == 0:
        return docs
    order = np.lexsort((np.arange(len(owner)), time, owner))
    own, src = owner[order], rows[order]
    lengths = offsets[src + 1] - offsets[src]
    ends = np.cumsum(lengths)
    first = np.searchsorted(own, own, side="left")  # first entry of each owner's run
    owner_base = (ends - lengths)[first]
    start_in_doc = ends - lengths - owner_base
    keep = start_in_doc < doc_len
    own, src, lengths, start_in_doc = own[keep], src[keep], lengths[keep], start_in_doc[keep]
    lengths = np.minimum(lengths, doc_len - start_in_doc)
    idx = _gather_index(offsets[src], lengths)
    tok_owner = np.repeat(own, lengths)
    tok_pos = np.repeat(start_in_doc - (np.cumsum(lengths) - lengths), lengths) + np.arange(
        idx.size, dtype=np.int64
    )
    docs[tok_owner, tok_pos] = tokens[idx]
    return docs


def match_auxiliary_reviews(
    user: np.ndarray, item: np.ndarray, rating: np.ndarray, seed: int
) -> np.ndarray:
    """For each review, the row of an auxiliary review, or -1 where none exists.

    The rule of the CATN authors: for a review of item i with rating r, draw uniformly one
    other review of i with rating r; if there is none, one with rating r + 1; else r - 1.
    "Other" excludes the review itself and any review by the same user. Done with one sort and
    binary searches over (item, rating) keys.
    """
    n = len(user)
    out = np.full(n, -1, dtype=np.int64)
    if n == 0:
        return out
    r = np.rint(rating).astype(np.int64)
    r_span = int(r.max() - r.min()) + 3  # room for r +- 1 without colliding with the next item
    key = item.astype(np.int64) * r_span + (r - r.min() + 1)
    order = np.argsort(key, kind="stable")
    sorted_key = key[order]
    rng = np.random.default_rng(seed)
    for delta in (0, 1, -1):
        todo = out < 0
        if not todo.any():
            break
        q = key[todo] + delta
        lo = np.searchsorted(sorted_key, q, side="left")
        hi = np.searchsorted(sorted_key, q, side="right")
        cnt = hi - lo
        if delta == 0:
            # the review itself always sits in its own range: draw among the others
            cnt = cnt - 1
        pick = lo + np.floor(rng.random(q.size) * np.maximum(cnt, 0)).astype(np.int64)
        if delta == 0:
            self_pos = np.empty(n, dtype=np.int64)
            self_pos[order] = np.arange(n)
            pick = pick + (pick >= self_pos[todo])
        ok = cnt > 0
        cand = np.full(q.size, -1, dtype=np.int64)
        cand[ok] = order[np.minimum(pick[ok], n - 1)]
        # a review by the same user is not an auxiliary review: retry below with the next rule
        same_user = ok & (cand >= 0)
        same_user[same_user] = user[cand[same_user]] == user[todo][same_user]
        cand[same_user] = -1
        out[todo] = cand
    return out
