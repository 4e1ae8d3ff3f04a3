"""Yelp Open Dataset reviews (``yelp_academic_dataset_review.json`` / ``review.json``).

Raw format
----------
JSON lines, one review object per line, e.g.::

    {"review_id": "...", "user_id": "q_QQ5kBBwlCcbL1s4NVK3g", "business_id": "8HfRHJk...",
     "stars": 4.0, "useful": 0, "text": "...", "date": "2016-03-09 00:44:15"}

(one line in the file). Used fields: ``user_id`` -> user, ``business_id`` -> item (both strings),
``date`` -> timestamp, read as UTC ``"YYYY-MM-DD HH:MM:SS"`` (older releases' date-only
``"YYYY-MM-DD"`` means midnight), and ``stars`` only when ``min_stars`` is given (reviews with
fewer stars are dropped, counted in ``stats["filtered"]``). Blank lines are skipped; a ``.gz``
file is decompressed on the fly.

A malformed line, a missing or null field, a non-string id or one that spells a missing value
(``"NaN"``, ``"null"``, ...), a date that does not parse or lies before 1970 is a DataError
naming the file and the 1-based line number.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc

from recsys_common.errors import DataError
from recsys_common.files import json_objects, missing_field
from sml_torchrec.data.sources._common import (
    DEFAULT_CHUNK_ROWS,
    Batches,
    check_id_text,
    check_timestamps,
    first_null,
    line_locator,
    log,
    output_schema,
    pylist_to_array,
    source_reader,
)

SCHEMA = output_schema(pa.string())


@source_reader("yelp")
def read(
    path: str | Path, *, chunk_rows: int = DEFAULT_CHUNK_ROWS, min_stars: float | None = None
) -> Batches:
    """Stream (user, item, timestamp) batches of Yelp reviews (>= ``min_stars`` if given)."""
    if min_stars is not None and (
        isinstance(min_stars, bool) or not isinstance(min_stars, (int, float))
    ):
        raise ValueError(f"source 'yelp': min_stars must be a number, got {min_stars!r}")
    return Batches(lambda stats: _read(path, min_stars, chunk_rows, stats))


def _read(
    path: str | Path, min_stars: float | None, chunk_rows: int, stats: dict[str, int]
) -> Iterator[pa.RecordBatch]:
    fields = ("user_id", "business_id", "date") + (("stars",) if min_stars is not None else ())
    users: list[Any] = []
    items: list[Any] = []
    dates: list[Any] = []
    stars: list[Any] = []
    lines: list[int] = []
    stats["filtered"] = 0
    # Plain Python per line (json.loads is the cost); the conversion to arrow and the date
    # parsing run once per chunk on whole columns.
    for lineno, obj in json_objects(path):
        try:
            users.append(obj["user_id"])
            items.append(obj["business_id"])
            dates.append(obj["date"])
            if min_stars is not None:
                stars.append(obj["stars"])
        except (KeyError, TypeError):
            raise missing_field(path, lineno, obj, fields) from None
        lines.append(lineno)
        if len(lines) == chunk_rows:
            yield from _batch(path, users, items, dates, stars, lines, min_stars, stats)
            users, items, dates, stars, lines = [], [], [], [], []
    if lines:
        yield from _batch(path, users, items, dates, stars, lines, min_stars, stats)
    dropped = f", dropped {stats['filtered']} below min_stars" if min_stars is not None else ""
    log.info("%s: read %s reviews%s", path, stats["rows"], dropped)


def _batch(
    path: str | Path,
    users: list[Any],
    items: list[Any],
    dates: list[Any],
    stars: list[Any],
    lines: list[int],
    min_stars: float | None,
    stats: dict[str, int],
) -> Iterator[pa.RecordBatch]:
    # A line whose fields were appended only in part (error mid-line) never reaches here: the
    # error is raised first, so the lists stay aligned with `lines`.
    where = line_locator(lines)
    user = pylist_to_array(users, pa.string(), path, "user_id", lines)
    item = pylist_to_array(items, pa.string(), path, "business_id", lines)
    check_id_text(user, path, "user_id", where)
    check_id_text(item, path, "business_id", where)
    ts = parse_dates(pylist_to_array(dates, pa.string(), path, "date", lines), path, lines)
    batch = pa.RecordBatch.from_arrays(
        [user, item, check_timestamps(ts, path, "date", where)], schema=SCHEMA
    )
    if min_stars is not None:
        keep = pc.greater_equal(
            pylist_to_array(stars, pa.float64(), path, "stars", lines), min_stars
        )
        n = batch.num_rows
        batch = batch.filter(keep)
        stats["filtered"] += n - batch.num_rows
    if batch.num_rows:
        yield batch


def parse_dates(dates: pa.Array, path: str | Path, lines: list[int]) -> pa.Array:
    """'YYYY-MM-DD HH:MM:SS' (or 'YYYY-MM-DD'), taken as UTC, to int64 unix seconds."""
    ts = pc.strptime(dates, format="%Y-%m-%d %H:%M:%S", unit="s", error_is_null=True)
    if ts.null_count:
        day = pc.strptime(dates, format="%Y-%m-%d", unit="s", error_is_null=True)
        ts = pc.coalesce(ts, day)
        if ts.null_count:
            k = first_null(ts)
            raise DataError(
                path,
                f"line {lines[k]}: date {dates[k].as_py()!r} is not 'YYYY-MM-DD HH:MM:SS'",
            )
    return ts.cast(pa.int64())
