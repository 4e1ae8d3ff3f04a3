"""Tokenisation and TF-IDF vocabulary selection, with numpy only.

Word ids: 0 is padding; vocabulary word ``w`` with rank ``j`` (0-based) has id ``j + 1``.
Tokenised reviews are kept as a flat ``tokens`` array plus ``offsets`` (``n + 1``), the
review ``r`` being ``tokens[offsets[r]:offsets[r + 1]]``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

import numpy as np

_TOKEN = re.compile(r"\b\w\w+\b")


def tokenize(text: str) -> list[str]:
    """Lower-cased words of two or more word characters (the usual TF-IDF token pattern)."""
    return _TOKEN.findall(text.lower())


class Tokenizer:
    """Maps words to provisional ids (first-seen order) while texts stream past."""

    def __init__(self) -> None:
        self.index: dict[str, int] = {}
        self._tokens: list[np.ndarray] = []
        self._lengths: list[int] = []

    def add(self, text: str) -> None:
        ids = [self.index.setdefault(w, len(self.index)) for w in tokenize(text)]
        self._tokens.append(np.asarray(ids, dtype=np.int32))
        self._lengths.append(len(ids))

    def add_all(self, texts: Iterable[str]) -> None:
        for t in texts:
            self.add(t)

    def flat(self) -> tuple[np.ndarray, np.ndarray]:
        """(tokens (T,) int32 provisional ids, offsets (n + 1,) int64)."""
        offsets = np.zeros(len(self._lengths) + 1, dtype=np.int64)
        np.cumsum(self._lengths, out=offsets[1:])
        tokens = (
            np.concatenate(self._tokens) if self._tokens else np.zeros(0, dtype=np.int32)
        ).astype(np.int32)
        return tokens, offsets

    @property
    def words(self) -> list[str]:
        return list(self.index)


def select_vocabulary(
    tokens: np.ndarray, offsets: np.ndarray, num_words: int, max_df: float = 0.5
) -> np.ndarray:
    """Provisional ids of the ``num_words`` most informative words, best first.

    A word's score is its summed TF-IDF over all reviews: sum over reviews of
    ``count(w, r) / len(r)`` times the smoothed ``idf(w) = ln((1 + n) / (1 + df(w))) + 1``.
    Words in more than ``max_df`` of the reviews are dropped (as the authors' max_df=0.5).
    Ties break on the smaller id so the choice is deterministic.
    """
    n_docs = len(offsets) - 1
    if tokens.size == 0 or n_docs == 0:
        return np.zeros(0, dtype=np.int64)
    n_words = int(tokens.max()) + 1
    lengths = np.diff(offsets)
    doc = np.repeat(np.arange(n_docs, dtype=np.int64), lengths)
    # document frequency from the unique (doc, word) pairs
    pairs = np.unique(doc * n_words + tokens.astype(np.int64))
    df = np.bincount(pairs % n_words, minlength=n_words)
    tf = np.bincount(tokens, weights=1.0 / lengths[doc], minlength=n_words)
    idf = np.log((1.0 + n_docs) / (1.0 + df)) + 1.0
    score = tf * idf
    score[df > max_df * n_docs] = -1.0
    score[df == 0] = -1.0
    order = np.lexsort((np.arange(n_words), -score))
    order = order[score[order] > 0]
    return order[:num_words].astype(np.int64)


def remap_tokens(
    tokens: np.ndarray, offsets: np.ndarray, chosen: np.ndarray, n_provisional: int
) -> tuple[np.ndarray, np.ndarray]:
    """Rewrite provisional ids to vocabulary ids (1-based), dropping words not chosen."""
    table = np.zeros(max(n_provisional, 1), dtype=np.int32)
    table[chosen] = np.arange(1, len(chosen) + 1, dtype=np.int32)
    mapped = table[tokens] if tokens.size else tokens.astype(np.int32)
    keep = mapped > 0
    kept_before = np.zeros(tokens.size + 1, dtype=np.int64)
    np.cumsum(keep, out=kept_before[1:])
    new_offsets = kept_before[offsets]
    return mapped[keep].astype(np.int32), new_offsets


def load_word_vectors(path: str, words: list[str], dim: int | None = None) -> np.ndarray:
    """Rows for ``words`` (id order, row 0 = padding) from a word2vec/GloVe text file.

    Words absent from the file get small random vectors; a word2vec header line
    ("count dim") is skipped. Raises DataError on a ragged line, a non-numeric value or bytes
    that are not UTF-8, naming the line.
    """
    from catn.data.errors import DataError
    from recsys_common.files import READ_ERRORS, decode_line, open_binary, reason

    want = {w: j + 1 for j, w in enumerate(words)}
    table: np.ndarray | None = None
    found = 0

    def numbered_lines() -> Iterator[tuple[int, bytes]]:
        with open_binary(path) as f:  # plain, gzip, bz2 or xz, recognised by content
            try:
                yield from enumerate(f, start=1)
            except READ_ERRORS as e:  # truncated or corrupt compressed file
                raise DataError(path, f"cannot read: {reason(e)}") from None

    for lineno, raw in numbered_lines():
        parts = decode_line(path, lineno, raw).rstrip().split(" ")
        if lineno == 1 and len(parts) == 2 and all(p.isdigit() for p in parts):
            continue
        if len(parts) < 2:
            continue
        if table is None:
            d = len(parts) - 1
            if dim is not None and d != dim:
                raise DataError(path, f"line {lineno}: vectors have {d} dims, expected {dim}")
            rng = np.random.default_rng(0)
            table = rng.normal(0, 0.1, size=(len(words) + 1, d)).astype(np.float32)
            table[0] = 0
        if len(parts) - 1 != table.shape[1]:
            raise DataError(
                path, f"line {lineno}: {len(parts) - 1} values, expected {table.shape[1]}"
            )
        j = want.get(parts[0])
        if j is not None:
            try:
                table[j] = np.asarray(parts[1:], dtype=np.float32)
            except ValueError:
                raise DataError(path, f"line {lineno}: non-numeric vector value") from None
            found += 1
    if table is None:
        raise DataError(path, "no word vectors in file")
    return table
