"""Per-interaction item sequences for sequential recommenders (GRU4Rec, Caser).

For an interaction (u, i, t) the input sequence is the ``seq_len`` items u consumed just before
it, over everything the arrays hold (so a period's examples see the user's history from earlier
periods too). Sequences are right-aligned: column ``L-1`` is the most recent item, and
``PAD`` (-1) fills the left of users with fewer than ``L`` earlier items. Right alignment gives
every column a fixed meaning ("the k-th most recent item"), which Caser's vertical convolution
relies on.

Everything is vectorised: one stable sort by (user, time), then one shifted gather per column.
"""

from __future__ import annotations

import numpy as np
import torch
from torchrec.sparse.jagged_tensor import KeyedJaggedTensor

from sml_torchrec.data.period_dataset import Interactions

PAD = -1
# Keys of the batches built here: an example's previous items, its user, its positive item and
# its sampled negatives (the sequential models in ``sml_torchrec.modules`` read these keys).
SEQ = "seq"
USER = "user_id"
TARGET = "target"
NEG = "neg"


def previous_items(
    user: np.ndarray, item: np.ndarray, timestamp: np.ndarray, seq_len: int
) -> np.ndarray:
    """``out[j]`` = the ``seq_len`` items of ``user[j]`` before row ``j``: int64 [n, seq_len].

    "Before" is by timestamp, ties broken by row order (rows are expected in time order, as
    period files and their concatenations are), so the result does not depend on the sort
    algorithm.
    """
    if seq_len < 1:
        raise ValueError(f"seq_len must be >= 1, got {seq_len}")
    user = np.asarray(user, dtype=np.int64)
    item = np.asarray(item, dtype=np.int64)
    n = len(user)
    out = np.full((n, seq_len), PAD, dtype=np.int64)
    if n == 0:
        return out
    order = np.lexsort((np.arange(n), np.asarray(timestamp), user))
    su, si = user[order], item[order]
    start = np.flatnonzero(np.r_[True, su[1:] != su[:-1]])  # first sorted row of each user
    group_len = np.diff(np.r_[start, n])
    rank_in_user = np.arange(n) - np.repeat(start, group_len)
    for lag in range(1, seq_len + 1):
        ok = rank_in_user >= lag
        col = np.full(n, PAD, dtype=np.int64)
        col[ok] = si[np.flatnonzero(ok) - lag]
        out[order, seq_len - lag] = col
    return out


def period_examples(
    history: Interactions, period: Interactions, seq_len: int
) -> np.ndarray:
    """Input sequences [len(period), seq_len] of ``period``'s interactions.

    ``history`` holds the interactions before the period (earlier periods); each example's
    sequence may reach back into it, and into the period itself up to that interaction.
    """
    both = Interactions.concat([history, period])
    seqs = previous_items(both.user_id, both.item_id, both.timestamp, seq_len)
    return seqs[len(history):]


def last_items(history: Interactions, users: np.ndarray, seq_len: int) -> np.ndarray:
    """Each of ``users``' last ``seq_len`` items in ``history``: [len(users), seq_len].

    Used to serve the next period: the sequence a user brings to it is the one that would feed
    a (virtual) interaction right after all of ``history``.
    """
    users, back = np.unique(np.asarray(users, dtype=np.int64), return_inverse=True)
    if len(history) == 0:
        return np.full((len(back), seq_len), PAD, dtype=np.int64)
    # One virtual row per distinct user: duplicates would see each other's virtual item.
    after = int(history.timestamp.max()) + 1
    user = np.concatenate([history.user_id, users])
    item = np.concatenate([history.item_id, np.zeros(len(users), dtype=np.int64)])
    ts = np.concatenate([history.timestamp, np.full(len(users), after, dtype=np.int64)])
    return previous_items(user, item, ts, seq_len)[len(history):][back]


def input_kjt(seqs: np.ndarray, users: np.ndarray | None = None) -> KeyedJaggedTensor:
    """Right-aligned id sequences [B, L] (PAD = -1) and optional users [B] -> a KJT.

    Keys: ``seq`` (the non-PAD ids of each row, in order) and, if given, ``user_id``.
    """
    seqs = np.asarray(seqs, dtype=np.int64)
    real = seqs != PAD
    values = [seqs[real]]
    lengths = [real.sum(axis=1)]
    keys = [SEQ]
    if users is not None:
        keys.append(USER)
        values.append(np.asarray(users, dtype=np.int64))
        lengths.append(np.ones(len(users), dtype=np.int64))
    return KeyedJaggedTensor.from_lengths_sync(
        keys=keys,
        values=torch.from_numpy(np.concatenate(values)),
        lengths=torch.from_numpy(np.concatenate(lengths).astype(np.int32)),
    )


def output_kjt(target: np.ndarray, neg: np.ndarray) -> KeyedJaggedTensor:
    """Targets [B] and sampled negatives [B, n] -> a KJT with keys ``target``, ``neg``."""
    target = np.asarray(target, dtype=np.int64)
    neg = np.asarray(neg, dtype=np.int64).reshape(len(target), -1)
    b, n = neg.shape
    return KeyedJaggedTensor.from_lengths_sync(
        keys=[TARGET, NEG],
        values=torch.from_numpy(np.concatenate([target, neg.reshape(-1)])),
        lengths=torch.from_numpy(
            np.concatenate([np.ones(b), np.full(b, n)]).astype(np.int32)
        ),
    )
