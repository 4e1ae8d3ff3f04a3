"""Streaming reader for Amazon review files (one object per line, optionally gzipped).

Both published styles are accepted: the 2018 files hold strict JSON, while some copies of the
2014 "5-core" files hold Python dict literals (single quotes, ``True``). Lines are parsed one at
a time, so a multi-GB category never has to fit in memory; :func:`scan_ratings` keeps only the
integer-coded ids, ratings and times, and the text is read in a second pass for the rows that
survive the filters (:func:`iter_texts`).

Nothing is accepted silently: a line that is not UTF-8, JSON or a dict literal, a missing
required field, a null id or one spelling a missing value (``"NaN"``, ``"null"``), a rating
outside the data's scale (``rating_range``, 1..5 by default) and a negative time are each a
:class:`DataError` naming the file and the line.
"""

from __future__ import annotations

import ast
import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from catn.data.errors import DataError
from recsys_common.files import (
    NULL_TOKENS,
    READ_ERRORS,
    decode_line,
    field_list,
    open_binary,
    reason,
)

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


DEFAULT_RATING_RANGE = (1.0, 5.0)


def _parse(path: Path, lineno: int, raw: bytes) -> dict | None:
    line = raw.strip()
    if not line:
        return None
    text = decode_line(path, lineno, line)
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
        raise DataError(
            path,
            f"line {lineno}: missing field(s) {', '.join(missing)} (fields present: "
            f"{field_list(obj)})",
        )
    return obj


def _id(path: Path, lineno: int, obj: dict, name: str) -> str:
    """A review's user or item id as text; null, empty or a spelled-out missing value is an
    error (it would merge every such review into one user or item)."""
    value = obj[name]
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        shown = "null" if value is None else f"{value!r}"
        raise DataError(path, f"line {lineno}: field {name!r} is {shown}, expected a string id")
    text = str(value)
    if text.strip().lower() in NULL_TOKENS:
        raise DataError(
            path, f"line {lineno}: field {name!r} is {value!r}, a missing value, not an id"
        )
    return text


def _rating(
    path: Path, lineno: int, value: object, rating_range: tuple[float, float] | None
) -> float:
    if isinstance(value, bool):
        value = repr(value)  # True would otherwise read as 1.0
    try:
        r = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise DataError(
            path, f"line {lineno}: field 'overall' is not a number: {value!r}"
        ) from None
    if not math.isfinite(r):
        raise DataError(path, f"line {lineno}: field 'overall' is not finite: {value!r}")
    if rating_range is not None and not rating_range[0] <= r <= rating_range[1]:
        lo, hi = rating_range
        raise DataError(
            path,
            f"line {lineno}: rating (field 'overall') {r:g} is outside the rating range "
            f"{lo:g}..{hi:g}; fix the line or pass --rating-range",
        )
    return r


def iter_reviews(
    path: str | Path, rating_range: tuple[float, float] | None = DEFAULT_RATING_RANGE
) -> Iterator[Review]:
    """Yield every review of ``path`` in file order (blank lines are skipped).

    Raises :class:`DataError` naming the line for malformed lines (not JSON, not UTF-8),
    missing required fields (reviewerID, asin, overall), a null or missing-value id, a
    non-numeric rating or one outside ``rating_range`` (inclusive; None: no check), or a
    negative time. ``reviewText`` and ``unixReviewTime`` are optional (some 2018 reviews have
    no text): they default to "" and 0. The file may be gzip/bz2/xz-compressed, whatever its
    name; archives, binary files and empty files are refused.
    """
    path = Path(path)
    with open_binary(path) as f:
        try:
            yield from _reviews(path, f, rating_range)
        except READ_ERRORS as e:  # truncated or corrupt compressed file
            raise DataError(path, f"cannot read: {reason(e)}") from None


def _reviews(
    path: Path, f: Iterator[bytes], rating_range: tuple[float, float] | None
) -> Iterator[Review]:
    for lineno, raw in enumerate(f, start=1):
        obj = _parse(path, lineno, raw)
        if obj is None:
            continue
        text = obj.get("reviewText") or ""
        if not isinstance(text, str):
            raise DataError(path, f"line {lineno}: field 'reviewText' is not a string")
        raw_time = obj.get("unixReviewTime") or 0
        if isinstance(raw_time, float) and raw_time.is_integer():
            raw_time = int(raw_time)
        if isinstance(raw_time, (bool, float)) or not isinstance(raw_time, (int, str)):
            raise DataError(path, f"line {lineno}: field 'unixReviewTime' is {raw_time!r}, "
                                  "expected an integer")
        try:
            t = int(raw_time)
        except ValueError:
            raise DataError(path, f"line {lineno}: field 'unixReviewTime' is {raw_time!r}, "
                                  "expected an integer") from None
        if t < 0:
            raise DataError(path, f"line {lineno}: field 'unixReviewTime' is {t}, negative")
        yield Review(
            line=lineno,
            user=_id(path, lineno, obj, "reviewerID"),
            item=_id(path, lineno, obj, "asin"),
            rating=_rating(path, lineno, obj["overall"], rating_range),
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


def scan_ratings(
    path: str | Path, rating_range: tuple[float, float] | None = DEFAULT_RATING_RANGE
) -> RatingScan:
    """First pass over a review file: ids, ratings, times, line numbers; text is discarded.

    Ratings outside ``rating_range`` (inclusive) are errors naming the line."""
    from array import array

    users: dict[str, int] = {}
    items: dict[str, int] = {}
    u, i, r, t, ln = array("q"), array("q"), array("f"), array("q"), array("q")
    for rev in iter_reviews(path, rating_range):
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
    for rev in iter_reviews(path, rating_range=None):
        if k >= wanted.size:
            break
        if rev.line == wanted[k]:
            yield rev.text
            k += 1
    if k != wanted.size:
        raise DataError(path, f"file changed between passes: line {int(wanted[k])} not found")
