"""MovieLens ratings (GroupLens), in any of its three on-disk layouts.

Raw formats
-----------
* ``u.data`` (ML-100K): tab-separated, no header: ``user item rating timestamp``, e.g.
  ``196\\t242\\t3\\t881250949``.
* ``ratings.csv`` (ML-20M, ML-25M, ml-latest): comma-separated with the header
  ``userId,movieId,rating,timestamp``, e.g. ``1,296,5.0,1147880044``.
* ``ratings.dat`` (ML-1M, ML-10M): ``UserID::MovieID::Rating::Timestamp``, e.g.
  ``1::1193::5::978300760``.

The layout is detected from the first line, not the file name, so a renamed or gzipped copy works;
a directory path picks ``ratings.csv``, ``ratings.dat`` or ``u.data`` inside it. Columns are taken
by position (user, item, rating, timestamp). Ids are integers (int64); timestamps are unix seconds.

``min_rating`` keeps only ratings >= it, turning explicit ratings into implicit feedback; the
number of dropped ratings is ``stats["filtered"]`` on the returned iterator.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from recsys_common.errors import DataError
from recsys_common.files import (
    READ_ERRORS,
    open_binary,
    reason,
)
from sml_torchrec.data.sources._common import (
    DEFAULT_CHUNK_ROWS,
    Batches,
    csv_names,
    csv_text_batches,
    log,
    output_schema,
    row_locator,
    source_reader,
    to_float64,
    to_ids,
    to_timestamp,
)

FILE_NAMES = ("ratings.csv", "ratings.dat", "u.data")


@source_reader("movielens")
def read(
    path: str | Path, *, chunk_rows: int = DEFAULT_CHUNK_ROWS, min_rating: float | None = None
) -> Batches:
    """Stream (user, item, timestamp) batches of MovieLens ratings (>= ``min_rating`` if given)."""
    if min_rating is not None and (
        isinstance(min_rating, bool) or not isinstance(min_rating, (int, float))
    ):
        raise ValueError(f"source 'movielens': min_rating must be a number, got {min_rating!r}")
    p = Path(path)
    if p.is_dir():
        found = [p / n for n in FILE_NAMES if (p / n).is_file()]
        if not found:
            raise DataError(p, f"no MovieLens ratings file in directory ({', '.join(FILE_NAMES)})")
        p = found[0]
    delimiter, header, positions = _layout(p)
    return Batches(
        lambda stats: _read(p, delimiter, header, positions, min_rating, chunk_rows, stats)
    )


def _layout(path: Path) -> tuple[str, bool, list[int]]:
    """(delimiter, header, positions of user/item/rating/timestamp) from the first line."""
    with open_binary(path) as f:
        try:
            first = next((line for line in f if line.strip()), b"")
        except READ_ERRORS as e:
            raise DataError(path, f"cannot read: {reason(e)}") from None
    if not first:
        raise DataError(path, "holds only blank lines")
    text = first.decode("utf-8", errors="replace").strip()
    if "::" in text:
        # pyarrow's CSV reader takes one-character delimiters: split on ':' and keep every
        # other field (the empty ones between the two colons are dropped).
        return ":", False, [0, 2, 4, 6]
    for delimiter in ("\t", ","):
        fields = text.split(delimiter)
        if len(fields) >= 4:
            return delimiter, not fields[0].strip().isdigit(), [0, 1, 2, 3]
    raise DataError(
        path,
        f"line 1: not a MovieLens ratings line (expected user, item, rating, timestamp "
        f"separated by tab, ',' or '::'): {text[:200]!r}",
    )


def _read(
    path: Path,
    delimiter: str,
    header: bool,
    positions: list[int],
    min_rating: float | None,
    chunk_rows: int,
    stats: dict[str, int],
) -> Iterator[pa.RecordBatch]:
    names = csv_names(path, delimiter, header)
    if len(names) <= positions[-1]:
        raise DataError(
            path, f"expected at least 4 ratings columns, found {len(names)}: {', '.join(names)}"
        )
    user, item, rating, ts = (names[k] for k in positions)
    roles = ("user id", "item id", "rating", "timestamp")
    label = dict(
        zip(
            (user, item, rating, ts),
            (
                f"column {names[k]!r}" if header else f"field {i + 1} ({role})"
                for i, (k, role) in enumerate(zip(positions, roles))
            ),
        )
    )
    schema = output_schema(pa.int64())
    stats["filtered"] = 0
    for batch, start in csv_text_batches(
        path, [user, item, rating, ts], delimiter, header, chunk_rows
    ):
        where = row_locator(start)
        out = pa.RecordBatch.from_arrays(
            [
                to_ids(batch.column(user), pa.int64(), path, label[user], where),
                to_ids(batch.column(item), pa.int64(), path, label[item], where),
                to_timestamp(batch.column(ts), path, label[ts], where),
            ],
            schema=schema,
        )
        if min_rating is not None:
            stars = to_float64(batch.column(rating), path, label[rating], where)
            out = out.filter(pc.greater_equal(stars, min_rating))
            stats["filtered"] += batch.num_rows - out.num_rows
        if out.num_rows:
            yield out
    dropped = f", dropped {stats['filtered']} below min_rating" if min_rating is not None else ""
    log.info("%s: read %s ratings%s", path, stats["rows"], dropped)
