"""Streaming reader for Amazon review files (one object per line, optionally gzipped).

Both published styles are accepted: the 2018 files hold strict JSON, while some copies of the
2014 "5-core" files hold Python dict literals (single quotes, ``True``). Lines are parsed one at
a time, so a multi-GB category never has to fit in memory; :func:`scan_ratings` keeps only the
integer-coded ids, ratings and times, and the text is read in a second pass for the rows that
survive the filters (:func:`iter_texts`).
"""

from __future__ import annotations

import ast
import gzip
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np

from catn.data.errors import DataError

REQUIRED_FIELDS = ("reviewerID", "asin", "overall")


@dataclass
class Review:
    """One parsed review line."""

    line: int
    user: str
    item: str
    rating: float
    text: str
    time: int


def _open(path: Path) -> IO[bytes]:
    with open(path, "rb") as f:
        magic = f.read(2)
    return gzip.open(path, "rb") if magic == b"\x1f\x8b" else open(path, "rb")


def _parse(path: Path, lineno: int, raw: bytes) -> dict | None:
    line = raw.strip()
    if not line:
        return None
    text = line.decode("utf-8", errors="replace")
    try:
        obj = json.loads(text)
    except json.JSONDecodeError:
        try:
            obj = ast.literal_eval(text)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            snippet = text[:60] + ("..." if len(text) > 60 else "")
            raise DataError(
                path, f"line {lineno}: not a JSON object or Python dict literal: {snippet!r}"
            ) from None
    if not isinstance(obj, dict):
        raise DataError(path, f"line {lineno}: expected an object, got {type(obj).__name__}")
    missing = [f for f in REQUIRED_FIELDS if f not in obj]
    if missing:
        raise DataError(path, f"line {lineno}: missing field(s) {', '.join(missing)}")
    return obj


def _rating(path: Path, lineno: int, value: object) -> float:
    try:
        r = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise DataError(
            path, f"line {lineno}: field 'overall' is not a number: {value!r}"
        ) from None
    if not np.isfinite(r):
        raise DataError(path, f"line {lineno}: field 'overall' is not finite: {value!r}")
    return r


def iter_reviews(path: str | Path) -> Iterator[Review]:
    """Yield every review of ``path`` in file order (blank lines are skipped).

    Raises :class:`DataError` naming the line for malformed lines, missing required fields
    (reviewerID, asin, overall) or a non-numeric rating. ``reviewText`` and ``unixReviewTime``
    are optional (some 2018 reviews have no text): they default to "" and 0.
    """
    path = Path(path)
    if not path.exists():
        raise DataError(path, "file not found")
    with _open(path) as f:
        for lineno, raw in enumerate(f, start=1):
            obj = _parse(path, lineno, raw)
            if obj is None:
                continue
            text = obj.get("reviewText") or ""
            if not isinstance(text, str):
                raise DataError(path, f"line {lineno}: field 'reviewText' is not a string")
            try:
                t = int(obj.get("unixReviewTime") or 0)
            except (TypeError, ValueError):
                raise DataError(path, f"line {lineno}: field 'unixReviewTime' is not an integer") \
                    from None
            yield Review(
                line=lineno,
                user=str(obj["reviewerID"]),
                item=str(obj["asin"]),
                rating=_rating(path, lineno, obj["overall"]),
                text=text,
                time=t,
            )


@dataclass
class RatingScan:
    """Integer-coded ratings of one file (first pass; no text kept).

    ``user``/``item`` index ``user_names``/``item_names``; ``line`` is the 1-based line number
    of each row, used to fetch the text of kept rows in the second pass.
    """

    user: np.ndarray  # (n,) int64
    item: np.ndarray  # (n,) int64
    rating: np.ndarray  # (n,) float32
    time: np.ndarray  # (n,) int64
    line: np.ndarray  # (n,) int64
    user_names: list[str]
    item_names: list[str]

    def __len__(self) -> int:
        return int(self.user.shape[0])


def scan_ratings(path: str | Path) -> RatingScan:
    """First pass over a review file: ids, ratings, times, line numbers; text is discarded."""
    from array import array

    users: dict[str, int] = {}
    items: dict[str, int] = {}
    u, i, r, t, ln = array("q"), array("q"), array("f"), array("q"), array("q")
    for rev in iter_reviews(path):
        u.append(users.setdefault(rev.user, len(users)))
        i.append(items.setdefault(rev.item, len(items)))
        r.append(rev.rating)
        t.append(rev.time)
        ln.append(rev.line)
    if not u:
        raise DataError(path, "no reviews in file")
    return RatingScan(
        user=np.frombuffer(u, dtype=np.int64).copy(),
        item=np.frombuffer(i, dtype=np.int64).copy(),
        rating=np.frombuffer(r, dtype=np.float32).copy(),
        time=np.frombuffer(t, dtype=np.int64).copy(),
        line=np.frombuffer(ln, dtype=np.int64).copy(),
        user_names=list(users),
        item_names=list(items),
    )


def iter_texts(path: str | Path, lines: np.ndarray) -> Iterator[str]:
    """Second pass: the review text of the given line numbers (ascending), in that order."""
    wanted = np.asarray(lines, dtype=np.int64)
    if wanted.size and np.any(np.diff(wanted) <= 0):
        raise ValueError("line numbers must be strictly ascending")
    k = 0
    for rev in iter_reviews(path):
        if k >= wanted.size:
            break
        if rev.line == wanted[k]:
            yield rev.text
            k += 1
    if k != wanted.size:
        raise DataError(path, f"file changed between passes: line {int(wanted[k])} not found")
