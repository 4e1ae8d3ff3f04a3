"""Turn raw (user, item, timestamp) records into a period dataset.

Steps, in order: read the source in chunks -> drop exact nothing (duplicates are kept: a re-click
is an interaction) -> optional k-core filter -> sort by time -> cut into periods -> number users
and items 0..n-1 by first appearance -> write atomically (see ``period_dataset``).

Nothing questionable passes silently: missing or spelled-out-missing ids (``NaN``, ``null``),
negative timestamps, a k-core filter that removes everything, and more periods than the log can
fill (fewer distinct timestamps than ``--periods`` under ``--cut time``, fewer interactions under
``--cut count``, or an empty time span) are DataErrors with the counts. Under ``--cut count``
periods have exactly equal sizes, so one timestamp's interactions may straddle a boundary: that
is allowed but warned about (one line, with how many timestamps straddle), because cutting only
where the timestamp changes would make the periods of a log with many ties very uneven.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from recsys_common.errors import DataError
from sml_torchrec.data.period_dataset import PeriodMetadata, write_period_dataset
from sml_torchrec.data.sources._common import check_id_text, row_locator

log = logging.getLogger(__name__)


@dataclass
class BuildConfig:
    """How raw records become periods.

    ``cut="time"`` splits [first, last] timestamp into ``periods`` equal spans, each of which
    must hold an interaction (a log with fewer distinct timestamps than periods is refused);
    ``cut="count"`` into ``periods`` chunks of equal interaction count. Equal counts are kept
    exact, so interactions sharing one timestamp may straddle a boundary; the build warns with
    how many timestamps do (cutting only at timestamp changes would make periods of a log with
    many ties, e.g. daily dates, very uneven).
    ``kcore`` > 0 keeps only users and items with at least ``kcore`` interactions, repeated until
    stable.
    """

    periods: int = 10
    cut: str = "time"
    kcore: int = 0

    def __post_init__(self) -> None:
        if self.periods < 1:
            raise ValueError(f"periods must be >= 1, got {self.periods}")
        if self.cut not in ("time", "count"):
            raise ValueError(f"cut must be 'time' or 'count', got {self.cut!r}")
        if self.kcore < 0:
            raise ValueError(f"kcore must be >= 0, got {self.kcore}")


def collect(batches: Iterable[pa.RecordBatch], source: str = "input") -> pa.Table:
    """Concatenate a source's batches (user, item, timestamp), printing progress every ~5 s."""
    chunks, rows, last = [], 0, time.monotonic()
    for b in batches:
        for col in ("user", "item", "timestamp"):
            if col not in b.schema.names:
                raise DataError(source, f"source batch lacks column {col!r}")
        chunks.append(b)
        rows += b.num_rows
        if time.monotonic() - last > 5:
            log.info("read %s rows from %s", f"{rows:,}", source)
            last = time.monotonic()
    if not chunks:
        raise DataError(
            source,
            "no records: the log has no data rows, or a filter (--min-rating) dropped them all",
        )
    return pa.Table.from_batches(chunks)


def cut_periods(timestamp: np.ndarray, periods: int, cut: str) -> np.ndarray:
    """Period index per record; ``timestamp`` must be sorted ascending."""
    n = len(timestamp)
    if cut == "count":
        return (np.arange(n, dtype=np.int64) * periods // max(n, 1)).astype(np.int32)
    t0, t1 = int(timestamp[0]), int(timestamp[-1])
    span = t1 - t0 + 1
    # Integer arithmetic: exact and free of float rounding at boundaries.
    return ((timestamp - t0) * periods // span).astype(np.int32)


def kcore_filter(user: np.ndarray, item: np.ndarray, k: int) -> np.ndarray:
    """Boolean mask of records kept by iterative k-core filtering on (dense) user/item codes."""
    keep = np.ones(len(user), dtype=bool)
    if k <= 1:
        return keep
    while True:
        u, i = user[keep], item[keep]
        bad_u = np.bincount(u, minlength=user.max() + 1) < k
        bad_i = np.bincount(i, minlength=item.max() + 1) < k
        drop = bad_u[u] | bad_i[i]
        if not drop.any():
            return keep
        idx = np.flatnonzero(keep)
        keep[idx[drop]] = False


def _codes(column: pa.ChunkedArray, name: str, source: str) -> tuple[np.ndarray, pa.Array]:
    """Dense codes 0..n-1 for a raw id column plus the raw id of each code."""
    if column.null_count:
        raise DataError(source, f"column {name!r} has {column.null_count} missing ids")
    if pa.types.is_string(column.type) or pa.types.is_large_string(column.type):
        check_id_text(column.combine_chunks(), source, f"column {name!r}", row_locator(0))
    if pa.types.is_integer(column.type):
        lo = pc.min(column).as_py()
        if lo is not None and lo < 0:
            raise DataError(source, f"column {name!r} has a negative id {lo}")
    enc = column.combine_chunks().dictionary_encode()
    return enc.indices.to_numpy(zero_copy_only=False).astype(np.int64), enc.dictionary


def renumber_by_first_appearance(codes: np.ndarray, num: int) -> tuple[np.ndarray, np.ndarray]:
    """Renumber codes in order of first appearance. Returns (new codes, old code of each new id)."""
    uniq, first = np.unique(codes, return_index=True)
    order = uniq[np.argsort(first, kind="stable")]
    new_of_old = np.full(num, -1, dtype=np.int64)
    new_of_old[order] = np.arange(len(order))
    return new_of_old[codes], order


def build_period_dataset(
    table: pa.Table,
    out_dir: str | Path,
    config: BuildConfig,
    source: str = "input",
    *,
    overwrite: bool = False,
    inputs: Sequence[str | Path | None] = (),
    culprit: str | Path | None = None,
) -> PeriodMetadata:
    """Cut, filter, renumber and write ``table`` (columns user, item, timestamp) to ``out_dir``.

    ``out_dir`` must be new, empty, or (with ``overwrite``) a period dataset, and must not be or
    hold any of ``inputs`` (see :mod:`recsys_common.output`). Under ``cut="count"`` the
    number of timestamps whose interactions straddle a period boundary is logged as a warning
    and stored as ``build["straddling_timestamps"]``. Errors name ``culprit`` (default:
    ``source``), the file the records came from.
    """
    origin = source
    source = str(culprit) if culprit is not None else source
    ts = _timestamps(table, source)
    user, user_raw = _codes(table.column("user"), "user", source)
    item, item_raw = _codes(table.column("item"), "item", source)
    n_raw = len(ts)
    user, item, ts = _filter_and_sort(user, item, ts, config.kcore, source)
    period, straddling = _cut(ts, config, source)
    user, user_old = renumber_by_first_appearance(user, len(user_raw))
    item, item_old = renumber_by_first_appearance(item, len(item_raw))
    build = asdict(config) | {
        "raw_interactions": n_raw,
        "kept_interactions": int(len(ts)),
        "straddling_timestamps": straddling,
    }
    return write_period_dataset(
        out_dir,
        user,
        item,
        ts,
        period,
        cut=config.cut,
        user_raw_ids=user_raw.take(pa.array(user_old)),
        item_raw_ids=item_raw.take(pa.array(item_old)),
        source=origin,
        build=build,
        overwrite=overwrite,
        inputs=inputs,
    )


def _timestamps(table: pa.Table, source: str) -> np.ndarray:
    """The timestamp column as int64, refused (naming ``source``) unless whole, integer and
    non-negative, and not empty."""
    ts_col = table.column("timestamp")
    if not pa.types.is_integer(ts_col.type):
        raise DataError(source, f"column 'timestamp' has type {ts_col.type}, expected integers")
    if ts_col.null_count:
        raise DataError(source, f"column 'timestamp' has {ts_col.null_count} missing values")
    ts = ts_col.to_numpy().astype(np.int64)
    if len(ts) and ts.min() < 0:
        k = int(np.argmax(ts < 0))
        raise DataError(
            source,
            f"column 'timestamp': row {k + 1}: {int(ts[k])} is negative; timestamps are unix "
            "seconds (or any non-negative clock)",
        )
    if len(ts) == 0:
        raise DataError(source, "no interactions")
    return ts


def _filter_and_sort(
    user: np.ndarray, item: np.ndarray, ts: np.ndarray, kcore: int, source: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The k-core of the interactions, sorted by time (stable); an empty k-core is refused
    with what the log holds."""
    keep = kcore_filter(user, item, kcore)
    if not keep.any():
        users_n, items_n = np.bincount(user), np.bincount(item)
        raise DataError(
            source,
            f"--kcore {kcore} removed all {len(ts):,} interactions (of "
            f"{int((users_n > 0).sum()):,} users and {int((items_n > 0).sum()):,} items; the "
            f"most active user has {int(users_n.max()):,} interactions, the most popular item "
            f"{int(items_n.max()):,}); use a smaller --kcore",
        )
    user, item, ts = user[keep], item[keep], ts[keep]
    order = np.argsort(ts, kind="stable")
    return user[order], item[order], ts[order]


def _cut(ts: np.ndarray, config: BuildConfig, source: str) -> tuple[np.ndarray, int]:
    """The period of each (time-sorted) interaction and how many timestamps straddle a period
    boundary; periods that cannot all be filled are refused with the counts."""
    after = "" if config.kcore <= 1 else f" left by --kcore {config.kcore}"
    if config.cut == "count" and len(ts) < config.periods:
        raise DataError(
            source,
            f"--periods {config.periods} with --cut count needs at least {config.periods} "
            f"interactions, the log has {len(ts):,}{after}; use fewer --periods",
        )
    distinct = 1 + int(np.count_nonzero(np.diff(ts)))
    if config.cut == "time" and distinct < config.periods:
        raise DataError(
            source,
            f"--periods {config.periods} with --cut time needs at least {config.periods} "
            f"distinct timestamps, the log has {distinct:,}{after} (from {int(ts[0])} to "
            f"{int(ts[-1])}); use --periods {distinct} or fewer",
        )
    period = cut_periods(ts, config.periods, config.cut)
    empty = np.flatnonzero(np.bincount(period, minlength=config.periods) == 0)
    if len(empty):
        span = (int(ts[-1]) - int(ts[0]) + 1) / config.periods
        raise DataError(
            source,
            f"with --cut time, period(s) {_few(empty.tolist())} of {config.periods} would be "
            f"empty: the log has no interactions in those spans of {span:,.0f} time units; "
            "use fewer --periods or --cut count",
        )
    straddling = int(np.count_nonzero((np.diff(period) != 0) & (np.diff(ts) == 0)))
    if straddling:
        log.warning(
            "--cut count: %d timestamp(s) straddle a period boundary (their interactions are "
            "split between two periods); use --cut time to cut on time only",
            straddling,
        )
    return period, straddling


def _few(values: list[int], limit: int = 8) -> str:
    shown = ", ".join(str(v) for v in values[:limit])
    return shown + (f" and {len(values) - limit} more" if len(values) > limit else "")
