"""The on-disk period dataset and its reader.

Layout of a dataset directory::

    metadata.json            counts, how periods were cut, file list, format version
    periods/period=00000.parquet
    periods/period=00001.parquet
    ...                      one file per period: user_id int64, item_id int64,
                             timestamp int64 (unix seconds), period int32; sorted by timestamp
    user_map.parquet         raw_id -> user_id (contiguous, in order of first appearance)
    item_map.parquet         raw_id -> item_id (contiguous, in order of first appearance)

One file per period makes "give me period t" a single-file read, never a scan of the whole
table. Ids are contiguous and numbered by first appearance, so the items that exist by the end of
period t are exactly ``range(items_upto[t])``.

Directories are written atomically (:func:`write_period_dataset`): everything goes to a
temporary directory that is swapped into place only when complete, so a failed build never
leaves a half-written dataset and never destroys the previous one. A build writes only to a
new or empty directory, or over a period dataset when asked to (``overwrite``); see
:mod:`recsys_common.output`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from recsys_common.errors import DataError
from recsys_common.files import PARQUET_ERRORS, read_json_object, read_parquet, reason
from recsys_common.output import DatasetLayout, check_output_dir, write_dataset_dir

FORMAT_VERSION = 1
SCHEMA = pa.schema(
    [
        ("user_id", pa.int64()),
        ("item_id", pa.int64()),
        ("timestamp", pa.int64()),
        ("period", pa.int32()),
    ]
)


LAYOUT = DatasetLayout(
    kind="period dataset",
    marker="metadata.json",
    marker_keys=("format_version", "num_periods", "period_counts"),
    entries=("metadata.json", "user_map.parquet", "item_map.parquet", "periods"),
    subdirs={"periods": "period=*.parquet"},
)


def check_period_output(
    out_dir: str | Path, *, overwrite: bool, inputs: Sequence[str | Path | None] = ()
) -> None:
    """Refuse (:class:`~recsys_common.output.OutputError`) an ``out_dir`` a build must not
    write to; commands call this before reading their input."""
    check_output_dir(out_dir, LAYOUT, overwrite=overwrite, inputs=inputs)


def period_file_name(t: int) -> str:
    return f"periods/period={t:05d}.parquet"


@dataclass
class PeriodMetadata:
    """What ``metadata.json`` holds. ``items_upto[t]`` = number of items seen in periods 0..t."""

    num_users: int
    num_items: int
    num_periods: int
    cut: str  # "time" | "count" | "given"
    period_counts: list[int]
    period_start: list[int]  # first timestamp of each period (inclusive)
    period_end: list[int]  # last timestamp of each period (inclusive)
    users_upto: list[int]
    items_upto: list[int]
    source: str = ""
    build: dict = field(default_factory=dict)
    format_version: int = FORMAT_VERSION

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=2)


@dataclass
class Interactions:
    """One period's (or several periods') interactions as 1-D int64 numpy arrays of equal length."""

    user_id: np.ndarray
    item_id: np.ndarray
    timestamp: np.ndarray
    period: np.ndarray

    def __len__(self) -> int:
        return len(self.user_id)

    @staticmethod
    def concat(parts: list[Interactions]) -> Interactions:
        if not parts:
            empty = np.zeros(0, dtype=np.int64)
            return Interactions(empty, empty, empty, empty.astype(np.int32))
        return Interactions(
            *(np.concatenate([getattr(p, f) for p in parts]) for f in Interactions._fields())
        )

    @staticmethod
    def _fields() -> tuple[str, ...]:
        return ("user_id", "item_id", "timestamp", "period")

    def select(self, mask_or_index: np.ndarray) -> Interactions:
        return Interactions(*(getattr(self, f)[mask_or_index] for f in self._fields()))


def _check_ids(path: Path, name: str, ids: np.ndarray, upper: int) -> None:
    if len(ids) == 0:
        return
    lo, hi = int(ids.min()), int(ids.max())
    if lo < 0:
        raise DataError(path, f"column {name!r} has a negative id {lo}")
    if hi >= upper:
        raise DataError(
            path, f"column {name!r} has id {hi}, out of range for {upper} ids (0..{upper - 1})"
        )


def _check_schema(path: Path, schema: pa.Schema) -> None:
    for f in SCHEMA:
        if f.name not in schema.names:
            raise DataError(path, f"missing column {f.name!r} (has {', '.join(schema.names)})")
        if schema.field(f.name).type != f.type:
            raise DataError(
                path,
                f"column {f.name!r} has type {schema.field(f.name).type}, expected {f.type}",
            )


_INT_FIELDS = ("num_users", "num_items", "num_periods", "format_version")
_LIST_FIELDS = ("period_counts", "period_start", "period_end", "users_upto", "items_upto")


def read_metadata(meta_path: Path) -> PeriodMetadata:
    """Parse and check a dataset's ``metadata.json``; every inconsistency is a DataError naming
    the file and the field (the period files are checked by :class:`PeriodDataset`)."""
    raw = read_json_object(meta_path)
    version = raw.get("format_version")
    if version != FORMAT_VERSION:
        raise DataError(meta_path, f"format_version is {version!r}, this library reads "
                                   f"{FORMAT_VERSION}")
    known = set(PeriodMetadata.__dataclass_fields__)
    required = set(_INT_FIELDS + _LIST_FIELDS + ("cut",))
    missing = sorted(required - set(raw))
    if missing:
        raise DataError(meta_path, f"missing field(s) {', '.join(missing)}")
    # Fields this version does not know are ignored: a later writer may add some.
    raw = {k: v for k, v in raw.items() if k in known}

    def is_int(v: object) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    for name in _INT_FIELDS:
        if not is_int(raw[name]) or raw[name] < 1:
            raise DataError(meta_path, f"{name} is {raw[name]!r}, expected an integer >= 1")
    n = raw["num_periods"]
    for name in _LIST_FIELDS:
        v = raw[name]
        if not isinstance(v, list) or len(v) != n or not all(is_int(x) for x in v):
            got = f"{len(v)} values" if isinstance(v, list) else repr(v)
            raise DataError(meta_path, f"{name} must be {n} integers (num_periods), got {got}")
    if raw["cut"] not in ("time", "count", "given"):
        raise DataError(meta_path, f"cut is {raw['cut']!r}, expected time, count or given")
    if not isinstance(raw.get("source", ""), str) or not isinstance(raw.get("build", {}), dict):
        raise DataError(meta_path, "source must be a string and build an object")
    m = PeriodMetadata(**raw)
    for t in range(n):
        if m.period_counts[t] < 1:
            raise DataError(meta_path, f"period_counts[{t}] is {m.period_counts[t]}: period {t} "
                                       "is empty")
        if m.period_start[t] > m.period_end[t]:
            raise DataError(meta_path, f"period_start[{t}] {m.period_start[t]} is after "
                                       f"period_end[{t}] {m.period_end[t]}")
        if t and m.period_start[t] < m.period_end[t - 1]:
            raise DataError(meta_path, f"period_start[{t}] {m.period_start[t]} is before "
                                       f"period_end[{t - 1}] {m.period_end[t - 1]}")
        for name, upto in (("users_upto", m.users_upto), ("items_upto", m.items_upto)):
            if upto[t] < 1 or (t and upto[t] < upto[t - 1]):
                raise DataError(meta_path, f"{name}[{t}] is {upto[t]}: counts of ids seen so far "
                                           "must be >= 1 and never decrease")
    for name, upto, total in (("users_upto", m.users_upto, m.num_users),
                              ("items_upto", m.items_upto, m.num_items)):
        if upto[-1] != total:
            field_name = "num_users" if name == "users_upto" else "num_items"
            raise DataError(meta_path, f"{name}[{n - 1}] is {upto[-1]} but {field_name} is "
                                       f"{total}")
    return m


def write_period_dataset(
    out_dir: str | Path,
    user_id: np.ndarray,
    item_id: np.ndarray,
    timestamp: np.ndarray,
    period: np.ndarray,
    cut: str,
    user_raw_ids: pa.Array | None = None,
    item_raw_ids: pa.Array | None = None,
    source: str = "",
    build: dict | None = None,
    *,
    overwrite: bool = False,
    inputs: Sequence[str | Path | None] = (),
) -> PeriodMetadata:
    """Write a period dataset atomically; ids must already be contiguous from 0.

    ``out_dir`` must be new, empty, or (with ``overwrite``) a period dataset, and must not be or
    hold any of ``inputs``: see :mod:`recsys_common.output`, which also does the swap.

    ``user_raw_ids[k]`` is the raw id of contiguous user ``k`` (same for items); when omitted the
    map is the identity. Every period in ``range(period.max() + 1)`` must be non-empty.
    """
    out_dir = Path(out_dir)
    columns = _checked_columns(out_dir, user_id, item_id, timestamp, period)
    columns, meta = _sorted_with_metadata(columns, cut, source, build or {})
    raw_ids = {"user_map.parquet": (user_raw_ids, meta.num_users),
               "item_map.parquet": (item_raw_ids, meta.num_items)}
    write_dataset_dir(out_dir, LAYOUT, lambda tmp: _write_files(tmp, columns, meta, raw_ids),
                      overwrite=overwrite, inputs=inputs)
    return meta


def _checked_columns(
    out_dir: Path, user_id: np.ndarray, item_id: np.ndarray, timestamp: np.ndarray,
    period: np.ndarray,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """The four columns as int arrays, refused (naming ``out_dir``) if they can't be a dataset."""
    n = len(user_id)
    if not (len(item_id) == len(timestamp) == len(period) == n):
        raise ValueError("user_id, item_id, timestamp and period must have the same length")
    if n == 0:
        raise DataError(out_dir, "no interactions to write (did the filters remove everything?)")
    user_id = np.asarray(user_id, dtype=np.int64)
    item_id = np.asarray(item_id, dtype=np.int64)
    timestamp = np.asarray(timestamp, dtype=np.int64)
    period = np.asarray(period, dtype=np.int32)
    _check_ids(out_dir, "user_id", user_id, int(user_id.max()) + 1)
    _check_ids(out_dir, "item_id", item_id, int(item_id.max()) + 1)
    if period.min() < 0:
        raise DataError(out_dir, f"negative period index {int(period.min())}")
    num_periods = int(period.max()) + 1
    empty = np.flatnonzero(np.bincount(period, minlength=num_periods) == 0)
    if len(empty):
        raise DataError(
            out_dir,
            f"period(s) {empty.tolist()} would be empty ({num_periods} periods); use fewer "
            "periods or --cut count",
        )
    return user_id, item_id, timestamp, period


def _sorted_with_metadata(
    columns: tuple[np.ndarray, ...], cut: str, source: str, build: dict
) -> tuple[tuple[np.ndarray, ...], PeriodMetadata]:
    """The columns ordered by period then time (stable), and the metadata describing them."""
    user_id, item_id, timestamp, period = columns
    order = np.lexsort((timestamp, period))
    user_id, item_id, timestamp, period = (a[order] for a in columns)
    num_periods = int(period[-1]) + 1
    counts = np.bincount(period, minlength=num_periods)
    bounds = np.concatenate([[0], np.cumsum(counts)])
    # With ids numbered by first appearance, max id + 1 so far = number of ids seen so far.
    users_upto = np.maximum.accumulate(np.maximum.reduceat(user_id, bounds[:-1]) + 1)
    items_upto = np.maximum.accumulate(np.maximum.reduceat(item_id, bounds[:-1]) + 1)
    meta = PeriodMetadata(
        num_users=int(user_id.max()) + 1,
        num_items=int(item_id.max()) + 1,
        num_periods=num_periods,
        cut=cut,
        period_counts=counts.tolist(),
        period_start=[int(timestamp[bounds[t]]) for t in range(num_periods)],
        period_end=[int(timestamp[bounds[t + 1] - 1]) for t in range(num_periods)],
        users_upto=users_upto.tolist(),
        items_upto=items_upto.tolist(),
        source=source,
        build=build,
    )
    return (user_id, item_id, timestamp, period), meta


def _write_files(
    tmp: Path, columns: tuple[np.ndarray, ...], meta: PeriodMetadata,
    raw_ids: dict[str, tuple[pa.Array | None, int]],
) -> None:
    """Fill ``tmp`` with the period files, the id maps, and ``metadata.json`` last."""
    (tmp / "periods").mkdir()
    bounds = np.concatenate([[0], np.cumsum(meta.period_counts)])
    for t in range(meta.num_periods):
        sl = slice(bounds[t], bounds[t + 1])
        table = pa.table([pa.array(c[sl]) for c in columns], schema=SCHEMA)
        pq.write_table(table, tmp / period_file_name(t))
    for name, (raw, count) in raw_ids.items():
        raw = pa.array(np.arange(count, dtype=np.int64)) if raw is None else raw
        if len(raw) != count:
            raise ValueError(f"{name}: {len(raw)} raw ids for {count} contiguous ids")
        pq.write_table(
            pa.table({"raw_id": raw, "id": pa.array(np.arange(count, dtype=np.int64))}),
            tmp / name,
        )
    # metadata.json last: a directory without it is never a dataset.
    (tmp / "metadata.json").write_text(meta.to_json())


class PeriodDataset:
    """Reads a period dataset directory; ``dataset[t]`` is period t's :class:`Interactions`.

    On open, ``metadata.json`` is checked field by field and held against every file (schema,
    row count, ranges of ids, timestamps and period): the number of period files,
    ``period_counts``, ``period_start``/``period_end``, ``users_upto``/``items_upto``,
    ``num_users``/``num_items`` and the id maps must all agree, or a DataError names
    ``metadata.json`` (or the file) and the field. Each file is read once for that and not
    kept; ``dataset[t]`` then reads period t from its own file, with the same checks.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        meta_path = self.root / "metadata.json"
        if not self.root.is_dir():
            raise DataError(self.root, "not a directory (build one with `sml-data build`)")
        if not meta_path.is_file():
            raise DataError(
                meta_path, "missing: not a period dataset, or its build did not complete"
            )
        self.meta = read_metadata(meta_path)
        self._check_files()
        self._cache: dict[int, Interactions] = {}

    @property
    def num_periods(self) -> int:
        return self.meta.num_periods

    def _check_files(self) -> None:
        """Hold every file against metadata.json, so a dataset that disagrees with its metadata
        is refused on open rather than producing wrong counts later."""
        m, meta_path = self.meta, self.root / "metadata.json"
        periods_dir = self.root / "periods"
        present = sorted(p.name for p in periods_dir.glob("period=*.parquet"))
        expected = [Path(period_file_name(t)).name for t in range(m.num_periods)]
        extra = sorted(set(present) - set(expected))
        if extra:
            raise DataError(
                meta_path,
                f"num_periods is {m.num_periods} but periods/ also holds {', '.join(extra[:3])}"
                + (f" and {len(extra) - 3} more" if len(extra) > 3 else ""),
            )
        user_hi = item_hi = -1
        for t in range(m.num_periods):
            # Every file is read once (and dropped): pyarrow reports a corrupt file cleanly
            # when reading it, whereas inspecting a damaged footer's statistics can abort.
            d = self._read(t)
            user_hi = max(user_hi, int(d.user_id.max()))
            item_hi = max(item_hi, int(d.item_id.max()))
            for field_name, upto, hi in (("users_upto", m.users_upto, user_hi),
                                         ("items_upto", m.items_upto, item_hi)):
                if upto[t] != hi + 1:
                    what = field_name.split("_")[0]
                    raise DataError(
                        meta_path,
                        f"{field_name}[{t}] is {upto[t]} but periods 0..{t} hold {what[:-1]} ids "
                        f"0..{hi}, i.e. {hi + 1} {what}",
                    )
            ts_lo, ts_hi = int(d.timestamp.min()), int(d.timestamp.max())
            if (ts_lo, ts_hi) != (m.period_start[t], m.period_end[t]):
                raise DataError(
                    meta_path,
                    f"period {t} spans timestamps {m.period_start[t]}..{m.period_end[t]} "
                    f"(period_start/period_end) but {period_file_name(t)} holds {ts_lo}..{ts_hi}",
                )
        for kind, count in (("user", m.num_users), ("item", m.num_items)):
            path = self.root / f"{kind}_map.parquet"
            try:
                rows = pq.ParquetFile(path).metadata.num_rows
            except FileNotFoundError:
                raise DataError(path, "missing: the dataset is incomplete; rebuild it") from None
            except PARQUET_ERRORS as e:
                raise DataError(
                    path, f"unreadable id map (truncated or corrupt?): {reason(e)}"
                ) from None
            if rows != count:
                raise DataError(
                    meta_path, f"num_{kind}s is {count} but {path.name} maps {rows} {kind}s"
                )

    @property
    def num_users(self) -> int:
        return self.meta.num_users

    @property
    def num_items(self) -> int:
        return self.meta.num_items

    def count(self, t: int) -> int:
        self._check_period(t)
        return self.meta.period_counts[t]

    def _check_period(self, t: int) -> None:
        if not isinstance(t, (int, np.integer)) or not 0 <= t < self.num_periods:
            raise DataError(
                self.root,
                f"period {t} out of range: the dataset has {self.num_periods} periods "
                f"(0..{self.num_periods - 1})",
            )

    def __len__(self) -> int:
        return self.num_periods

    def __getitem__(self, t: int) -> Interactions:
        self._check_period(t)
        if t not in self._cache:
            self._cache[t] = self._read(int(t))
        return self._cache[t]

    def periods(self, start: int, stop: int) -> Interactions:
        """Periods ``start .. stop-1`` concatenated (in time order)."""
        return Interactions.concat([self[t] for t in range(start, stop)])

    def _read(self, t: int) -> Interactions:
        path = self.root / period_file_name(t)
        if not path.is_file():
            raise DataError(path, f"missing file for period {t}")
        table = read_parquet(path)
        _check_schema(path, table.schema)
        if table.num_rows != self.meta.period_counts[t]:
            raise DataError(
                path,
                f"has {table.num_rows} rows, metadata.json says {self.meta.period_counts[t]}",
            )
        if table.num_rows == 0:
            raise DataError(path, f"period {t} is empty")
        cols = {f.name: table.column(f.name).to_numpy() for f in SCHEMA}
        _check_ids(path, "user_id", cols["user_id"], self.num_users)
        _check_ids(path, "item_id", cols["item_id"], self.num_items)
        bad = cols["period"] != t
        if bad.any():
            raise DataError(path, f"column 'period' holds {int(cols['period'][bad][0])}, not {t}")
        return Interactions(cols["user_id"], cols["item_id"], cols["timestamp"], cols["period"])

    def raw_ids(self, kind: str) -> pa.Array:
        """The raw-id map: ``raw_ids("user")[k]`` is the original id of contiguous user ``k``."""
        if kind not in ("user", "item"):
            raise ValueError(f"kind must be 'user' or 'item', got {kind!r}")
        path = self.root / f"{kind}_map.parquet"
        try:
            table = pq.read_table(path)
            # Damaged pages or names (text that is not UTF-8) fail here, not at first use.
            table.validate(full=True)
            _ = table.column_names
        except PARQUET_ERRORS as e:
            raise DataError(path, f"unreadable id map: {reason(e)}") from e
        for col in ("raw_id", "id"):
            if col not in table.column_names:
                raise DataError(
                    path, f"missing column {col!r} (has {', '.join(table.column_names)})"
                )
        ids = table.column("id").to_numpy(zero_copy_only=False)
        if not np.array_equal(ids, np.arange(len(ids))):
            raise DataError(path, "column 'id' is not 0..n-1 in order")
        return table.column("raw_id").combine_chunks()

    def summary(self) -> list[dict]:
        """Per-period counts: interactions, users, items, new users and new items."""
        rows = []
        for t in range(self.num_periods):
            d = self[t]
            prev_users = self.meta.users_upto[t - 1] if t else 0
            prev_items = self.meta.items_upto[t - 1] if t else 0
            rows.append(
                {
                    "period": t,
                    "interactions": len(d),
                    "users": int(len(np.unique(d.user_id))),
                    "items": int(len(np.unique(d.item_id))),
                    "new_users": int(self.meta.users_upto[t] - prev_users),
                    "new_items": int(self.meta.items_upto[t] - prev_items),
                    "start": self.meta.period_start[t],
                    "end": self.meta.period_end[t],
                }
            )
        return rows
