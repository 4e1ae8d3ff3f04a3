"""Generic interaction log: a CSV/TSV file or a parquet file (or directory of parquet files).

Raw format
----------
One interaction per row with (at least) a user id column, an item id column and a time column
holding integer unix seconds (UTC). Other columns are ignored.

* CSV: ``delimiter`` separates fields (``"\\t"`` or ``"tab"`` for TSV); with ``header=True`` the
  first line names the columns, with ``header=False`` columns are addressed by 0-based position
  (``user_col=0`` ...). Positions also work with a header. A ``.gz``/``.bz2`` file is
  decompressed on the fly. Empty fields count as missing values, which are errors.
* Parquet (chosen by a ``.parquet``/``.pq`` name, a directory path, or ``format="parquet"``):
  columns by name or position; a directory is read file by file (``*.parquet``/``*.pq``, sorted).
  The time column may be integer, whole-valued float or an arrow timestamp (floored to seconds).

The time column must be integer seconds: ``"12.5"``, ``"abc"``, ``"1e9"`` or ``"12.0"`` in a CSV,
or a fraction in a float column, are errors naming the file, the column, the row and the value.

Ids keep their text form by default for CSV (``id_type="string"``): inferring integers from the
first rows would break on a later ``B00X...``-style id, and would turn ``"007"`` into 7. Pass
``id_type="int64"`` for integer ids. Parquet ids keep their stored type unless ``id_type`` says
otherwise (integer types become int64).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from recsys_common.errors import DataError
from recsys_common.files import (
    PARQUET_ERRORS,
    files_in,
    reason,
    sniff,
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
    to_ids,
    to_timestamp,
)

PARQUET_SUFFIXES = (".parquet", ".pq")
ID_TYPES = {"string": pa.string(), "int64": pa.int64()}


@source_reader("csv")
def read(
    path: str | Path,
    *,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    user_col: str | int = "user_id",
    item_col: str | int = "item_id",
    time_col: str | int = "timestamp",
    delimiter: str = ",",
    header: bool = True,
    format: str | None = None,
    id_type: str | None = None,
) -> Batches:
    """Stream (user, item, timestamp) batches from a CSV/TSV or parquet interaction log."""
    cols = [user_col, item_col, time_col]
    for c in cols:
        if isinstance(c, bool) or not isinstance(c, (str, int)) or (isinstance(c, int) and c < 0):
            raise ValueError(f"source 'csv': column must be a name or a position >= 0, got {c!r}")
    if len(set(cols)) != 3:
        raise ValueError(f"source 'csv': user_col, item_col, time_col must differ, got {cols}")
    if id_type is not None and id_type not in ID_TYPES:
        raise ValueError(
            f"source 'csv': id_type must be one of {sorted(ID_TYPES)}, got {id_type!r}"
        )
    if format is None:
        p = Path(path)
        format = "parquet" if p.is_dir() or p.name.lower().endswith(PARQUET_SUFFIXES) else "csv"
        if format == "csv" and sniff(p) == "parquet":  # a parquet file under another name
            format = "parquet"
    if format == "parquet":
        forced = None if id_type is None else ID_TYPES[id_type]
        return Batches(lambda stats: _parquet(path, cols, forced, chunk_rows, stats))
    if format != "csv":
        raise ValueError(f"source 'csv': format must be 'csv' or 'parquet', got {format!r}")
    if delimiter in ("\\t", "tab"):  # what a shell user types for a tab
        delimiter = "\t"
    if len(delimiter) != 1:
        raise ValueError(f"source 'csv': delimiter must be one character, got {delimiter!r}")
    if not header and not all(isinstance(c, int) for c in cols):
        raise ValueError(
            f"source 'csv': with header=False give columns as 0-based positions, got {cols}"
        )
    ids = ID_TYPES[id_type or "string"]
    # Columns are resolved now, so a wrong column name fails at the call, not mid-pipeline.
    names = csv_names(path, delimiter, header)
    resolved = _resolve(path, cols, names, "CSV header" if header else "CSV file")
    return Batches(lambda stats: _csv(path, resolved, delimiter, header, ids, chunk_rows))


def _resolve(path: str | Path, cols: list[str | int], names: list[str], what: str) -> list[str]:
    """Column names for names-or-positions, or an error listing what the file does have."""
    out = []
    for role, c in zip(("user", "item", "time"), cols):
        if isinstance(c, int):
            if c >= len(names):
                raise DataError(
                    path,
                    f"{role} column position {c} is out of range: the {what} has "
                    f"{len(names)} columns ({', '.join(names)})",
                )
            out.append(names[c])
        elif c not in names:
            raise DataError(
                path,
                f"missing {role} column {c!r}; the {what} has columns: {', '.join(names)}"
                + (_delimiter_hint(names) or _name_hint(c, names)),
            )
        else:
            out.append(c)
    if len(set(out)) != 3:
        raise ValueError(f"user, item and time columns must differ, got {out} in {path}")
    return out


def _delimiter_hint(names: list[str]) -> str:
    """When the whole header came out as one column, the delimiter is the likely mistake."""
    if len(names) != 1:
        return ""
    for d in (",", ";", "\t", "|", " ", ":"):
        if d in names[0]:
            return f" (one column only: is the delimiter {d!r}? pass --delimiter {d!r})"
    return " (one column only: is the delimiter right?)"


def _name_hint(wanted: str, names: list[str]) -> str:
    """A near miss: the same name with spaces around it or in another case, or a close one."""
    for n in names:
        if n.strip() == wanted:
            return f" (column {n!r} has spaces around its name)"
        if n.strip().lower() == wanted.lower():
            return f" (did you mean {n!r}? names are case-sensitive)"
    close = difflib.get_close_matches(wanted, names, n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _csv(
    path: str | Path,
    cols: list[str],
    delimiter: str,
    header: bool,
    ids: pa.DataType,
    chunk_rows: int,
) -> Iterator[pa.RecordBatch]:
    user, item, ts = cols
    schema = output_schema(ids)
    for batch, start in csv_text_batches(path, [user, item, ts], delimiter, header, chunk_rows):
        where = row_locator(start)
        yield pa.RecordBatch.from_arrays(
            [
                to_ids(batch.column(user), ids, path, f"column {user!r}", where),
                to_ids(batch.column(item), ids, path, f"column {item!r}", where),
                to_timestamp(batch.column(ts), path, f"column {ts!r}", where),
            ],
            schema=schema,
        )


def _iter_parquet(
    file: Path, pf: pq.ParquetFile, chunk_rows: int, columns: list[str]
) -> Iterator[pa.RecordBatch]:
    """``pf``'s batches; a corrupt page part-way through is a DataError naming the file."""
    it = pf.iter_batches(batch_size=chunk_rows, columns=columns)
    while True:
        try:
            batch = next(it)
            batch.validate(full=True)  # a damaged page can decode to text that is not UTF-8
        except StopIteration:
            return
        except PARQUET_ERRORS as e:
            raise DataError(
                file, f"cannot read as parquet (truncated or corrupt?): {reason(e)}"
            ) from None
        yield batch


def _parquet_id_type(t: pa.DataType) -> pa.DataType:
    if pa.types.is_dictionary(t):
        t = t.value_type
    # Float ids are what pandas makes of an integer column with a NaN: read as integers, so
    # that the NaN and any fraction are reported by row.
    return pa.int64() if pa.types.is_integer(t) or pa.types.is_floating(t) else pa.string()


def _parquet(
    path: str | Path,
    cols: list[str | int],
    forced: pa.DataType | None,
    chunk_rows: int,
    stats: dict[str, int],
) -> Iterator[pa.RecordBatch]:
    schema: pa.Schema | None = None
    first_file: Path | None = None
    stats["files"] = 0
    for file in files_in(path, PARQUET_SUFFIXES):
        try:
            pf = pq.ParquetFile(file)
            _ = pf.schema_arrow.names  # names that are not UTF-8 fail here, not at first use
        except PARQUET_ERRORS as e:
            raise DataError(file, f"cannot read as parquet: {reason(e)}") from None
        file_schema = pf.schema_arrow
        user, item, ts = _resolve(file, cols, file_schema.names, "parquet file")
        # One schema for the whole read: id types come from the first file (or id_type), and a
        # later file storing ids differently is an error rather than a silent re-typing.
        types = [forced or _parquet_id_type(file_schema.field(c).type) for c in (user, item)]
        if schema is None:
            schema, first_file = output_schema(*types), file
        for role, c, t in zip(("user", "item"), (user, item), types):
            if t != schema.field(role).type:
                raise DataError(
                    file,
                    f"column {c!r} holds {file_schema.field(c).type} ids but {first_file} "
                    f"holds {schema.field(role).type} ids; pass id_type to choose one",
                )
        stats["files"] += 1
        start = 0
        for batch in _iter_parquet(file, pf, chunk_rows, [user, item, ts]):
            where = row_locator(start)
            yield pa.RecordBatch.from_arrays(
                [
                    to_ids(batch.column(user), types[0], file, f"column {user!r}", where),
                    to_ids(batch.column(item), types[1], file, f"column {item!r}", where),
                    to_timestamp(batch.column(ts), file, f"column {ts!r}", where),
                ],
                schema=schema,
            )
            start += batch.num_rows
    log.debug("read %d parquet file(s) from %s", stats["files"], path)
