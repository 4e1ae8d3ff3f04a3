"""Pieces shared by the source readers: the output schema, option checking, the batch iterator
with its counters, value conversion with row-precise errors, and streaming line/CSV input."""

from __future__ import annotations

import functools
import inspect
import logging
import re
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv

from recsys_common.errors import DataError
from recsys_common.files import (
    NULL_TOKENS,
    READ_ERRORS,
    check_input_path,
    check_text_file,
    first_non_utf8_line,
    open_binary,
    printable,
)

log = logging.getLogger("sml_torchrec.data.sources")

DEFAULT_CHUNK_ROWS = 1_000_000
COLUMNS = ("user", "item", "timestamp")


def output_schema(user_type: pa.DataType, item_type: pa.DataType | None = None) -> pa.Schema:
    """The schema every batch of one read() call has: user, item (int64 or string), timestamp."""
    item_type = user_type if item_type is None else item_type
    return pa.schema([("user", user_type), ("item", item_type), ("timestamp", pa.int64())])


class Batches(Iterator[pa.RecordBatch]):
    """What every ``read()`` returns: an iterator of RecordBatches plus counters in ``stats``.

    ``stats["rows"]`` counts the rows yielded so far; readers add their own counters (lines read,
    records dropped by a filter, events skipped), which are final once the iterator is exhausted.
    """

    def __init__(self, produce: Callable[[dict[str, int]], Iterator[pa.RecordBatch]]) -> None:
        self.stats: dict[str, int] = {"rows": 0}
        self._it = produce(self.stats)

    def __iter__(self) -> Batches:
        return self

    def __next__(self) -> pa.RecordBatch:
        batch = next(self._it)
        self.stats["rows"] += batch.num_rows
        return batch


def source_reader(name: str) -> Callable[[Callable[..., Batches]], Callable[..., Batches]]:
    """Wrap a ``read(path, *, chunk_rows, **options)`` so that bad calls fail at call time.

    Python's own "unexpected keyword argument" error does not say what *is* accepted, and a
    missing path would otherwise only surface on the first ``next()``.
    """

    def wrap(fn: Callable[..., Batches]) -> Callable[..., Batches]:
        params = inspect.signature(fn).parameters.values()
        accepted = tuple(p.name for p in params if p.kind is p.KEYWORD_ONLY)

        @functools.wraps(fn)
        def read(path: str | Path, **options: Any) -> Batches:
            unknown = sorted(set(options) - set(accepted))
            if unknown:
                raise TypeError(
                    f"source {name!r}: unknown option(s) {', '.join(unknown)}; "
                    f"accepted options: {', '.join(accepted)}"
                )
            chunk_rows = options.get("chunk_rows", DEFAULT_CHUNK_ROWS)
            if isinstance(chunk_rows, bool) or not isinstance(chunk_rows, int) or chunk_rows < 1:
                raise ValueError(
                    f"source {name!r}: chunk_rows must be an int >= 1, got {chunk_rows!r}"
                )
            check_input_path(path)
            return fn(path, **options)

        read.options = accepted  # type: ignore[attr-defined]
        return read

    return wrap


# ---------------------------------------------------------------- value conversion with locations


def first_null(arr: pa.Array) -> int:
    return pc.index(pc.is_null(arr), True).as_py()


# Text that stands for a missing value in exported tables (pandas, R, SQL dumps, spreadsheets);
# as an id it would silently become one user or item shared by every such row.


def _rows(mask: pa.Array, where: Callable[[int], str], limit: int = 3) -> str:
    """'row 4' or 'row 4 (also 9, 12 and 5 more)': the first places where ``mask`` holds."""
    idx = pc.indices_nonzero(pc.fill_null(mask, False)).to_pylist()
    if len(idx) == 1:
        return where(idx[0])
    more = f" and {len(idx) - limit} more" if len(idx) > limit else ""
    rest = ", ".join(where(k).split(" ", 1)[-1] for k in idx[1:limit])
    return f"{where(idx[0])} (also {rest}{more})"


def check_id_text(arr: pa.Array, path: str | Path, what: str, where: Callable[[int], str]) -> None:
    """Refuse text ids that are written-out missing values (``NaN``, ``null``, ``None``, ...)."""
    lowered = pc.utf8_lower(pc.utf8_trim_whitespace(arr))
    bad = pc.is_in(lowered, value_set=pa.array(NULL_TOKENS))
    if pc.any(bad).as_py():
        k = pc.index(bad, True).as_py()
        raise DataError(
            path,
            f"{what}: {_rows(bad, where)}: {arr[k].as_py()!r} is a missing value, not an id; "
            "remove or fill in those rows",
        )


def check_timestamps(
    arr: pa.Array, path: str | Path, what: str, where: Callable[[int], str]
) -> pa.Array:
    """``arr`` (int64) unchanged, or an error naming the first negative timestamps."""
    neg = pc.less(arr, 0)
    if pc.any(neg).as_py():
        k = pc.index(neg, True).as_py()
        raise DataError(
            path,
            f"{what}: {_rows(neg, where)}: timestamp {arr[k].as_py()} is negative; "
            "timestamps are unix seconds (or any other non-negative clock)",
        )
    return arr


def to_timestamp(
    arr: pa.Array, path: str | Path, what: str, where: Callable[[int], str]
) -> pa.Array:
    """:func:`to_int64` for a time column: also refuses negative values."""
    return check_timestamps(to_int64(arr, path, what, where), path, what, where)


def row_locator(first_row: int) -> Callable[[int], str]:
    """Describe element k of a batch as a 1-based data row (header not counted)."""
    return lambda k: f"row {first_row + k + 1}"


def line_locator(line_numbers: Sequence[int]) -> Callable[[int], str]:
    return lambda k: f"line {line_numbers[k]}"


def _first_bad_int(values: list[Any]) -> int:
    for k, v in enumerate(values):
        try:
            if not -(2**63) <= int(v) < 2**63:
                return k
        except (TypeError, ValueError):
            return k
    return -1


def to_int64(arr: pa.Array, path: str | Path, what: str, where: Callable[[int], str]) -> pa.Array:
    """Integer column from text or numbers; nulls, fractions and text are errors naming the value.

    ``what`` names the column or field ("column 'timestamp'"), ``where`` turns a position in
    ``arr`` into "row 12" or "line 12" so the message points into the file.
    """
    if arr.null_count:
        raise DataError(path, f"{what}: {_rows(pc.is_null(arr), where)}: missing value")
    t = arr.type

    def cast(values: pa.Array) -> pa.Array:
        try:
            return values.cast(pa.int64())
        except pa.ArrowInvalid:  # e.g. uint64 or 1e20 beyond int64
            k = _first_bad_int(values.to_pylist())
            raise DataError(path, f"{what}: {where(k)}: {arr[k].as_py()} overflows int64") from None

    if pa.types.is_integer(t):
        return cast(arr)
    if pa.types.is_floating(t):
        nan = pc.is_nan(arr)
        if pc.any(nan).as_py():
            raise DataError(path, f"{what}: {_rows(nan, where)}: missing value (NaN)")
        # A whole-valued float column (e.g. written by pandas after a NaN) loses nothing; a
        # fraction means the column is not unix seconds at all, so it is refused, not rounded.
        bad = pc.fill_null(pc.not_equal(arr, pc.floor(arr)), True)
        if pc.any(bad).as_py():
            k = pc.index(bad, True).as_py()
            raise DataError(path, f"{what}: {where(k)}: {arr[k].as_py()!r} is not an integer")
        return cast(arr)
    if _is_text(t):
        text = pc.utf8_trim_whitespace(arr)
        # pyarrow's cast alone would also take "0x10"; only plain decimal integers are seconds.
        is_int = pc.match_substring_regex(text, r"^-?[0-9]+$")
        if not pc.all(is_int).as_py():
            k = pc.index(is_int, False).as_py()
            value = arr[k].as_py()
            hint = ""
            if what.endswith(f"{value.strip()!r}") or what.endswith(f"({value.strip()})"):
                hint = " (a repeated header line? were several files concatenated?)"
            raise DataError(path, f"{what}: {where(k)}: {value!r} is not an integer{hint}")
        return cast(text)
    if pa.types.is_timestamp(t):
        per_second = {"s": 1, "ms": 1_000, "us": 1_000_000, "ns": 1_000_000_000}[t.unit]
        ticks = arr.cast(pa.int64())
        return ticks if per_second == 1 else pa.array(ticks.to_numpy() // per_second)
    raise DataError(path, f"{what}: has type {t}, expected integers")


def to_float64(arr: pa.Array, path: str | Path, what: str, where: Callable[[int], str]) -> pa.Array:
    if arr.null_count:
        raise DataError(path, f"{what}: {where(first_null(arr))}: missing value")
    if pa.types.is_floating(arr.type) or pa.types.is_integer(arr.type):
        return arr.cast(pa.float64())
    try:
        return pc.utf8_trim_whitespace(arr).cast(pa.float64())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        for k, v in enumerate(arr.to_pylist()):
            try:
                float(v)
            except (TypeError, ValueError):
                raise DataError(path, f"{what}: {where(k)}: {v!r} is not a number") from None
        raise DataError(path, f"{what}: values are not numbers") from None


def to_ids(
    arr: pa.Array, id_type: pa.DataType, path: str | Path, what: str, where: Callable[[int], str]
) -> pa.Array:
    """Raw id column as ``id_type`` (int64 or string); missing ids are errors with a location."""
    if pa.types.is_dictionary(arr.type):
        arr = arr.dictionary_decode()
    if arr.null_count:
        raise DataError(path, f"{what}: {_rows(pc.is_null(arr), where)}: missing id")
    if _is_text(arr.type):
        check_id_text(arr, path, what, where)
    if pa.types.is_floating(arr.type):
        # pandas writes an integer id column holding a NaN as float64.
        nan = pc.is_nan(arr)
        if pc.any(nan).as_py():
            raise DataError(path, f"{what}: {_rows(nan, where)}: missing id (NaN)")
        if id_type == pa.int64():
            return to_int64(arr, path, what, where)
    if id_type == pa.int64():
        if not (pa.types.is_integer(arr.type) or _is_text(arr.type)):
            raise DataError(path, f"{what}: has type {arr.type}, expected integer ids")
        return to_int64(arr, path, what, where)
    if _is_text(arr.type):
        return arr.cast(pa.string())
    if pa.types.is_integer(arr.type):
        return arr.cast(pa.string())
    raise DataError(path, f"{what}: has type {arr.type}, expected integer or string ids")


def _is_text(t: pa.DataType) -> bool:
    return pa.types.is_string(t) or pa.types.is_large_string(t)


def pylist_to_array(
    values: list[Any], type_: pa.DataType, path: str | Path, what: str, lines: Sequence[int]
) -> pa.Array:
    """Arrow array from parsed JSON values; a null or a value of the wrong JSON type names its line.

    Converting the whole chunk at once is the fast path; the per-value scan runs only on failure.
    """
    try:
        if type_ == pa.int64():
            # pa.array(..., type=int64) silently truncates 1.5 to 1: let arrow infer (int64, or
            # double when floats are present) and accept only whole numbers.
            arr = pa.array(values)
            if pa.types.is_floating(arr.type) and not pc.all(pc.equal(arr, pc.floor(arr))).as_py():
                raise pa.ArrowInvalid("fraction")
            if not (pa.types.is_integer(arr.type) or pa.types.is_floating(arr.type)):
                if not pa.types.is_null(arr.type):
                    raise pa.ArrowInvalid(f"type {arr.type}")
            arr = arr.cast(pa.int64())
        else:
            arr = pa.array(values, type=type_)
    except (pa.ArrowInvalid, pa.ArrowTypeError, OverflowError):
        k = next((k for k, v in enumerate(values) if not _json_fits(v, type_)), 0)
        expected = {pa.string(): "a string", pa.int64(): "an integer"}.get(type_, "a number")
        raise DataError(
            path, f"line {lines[k]}: {what} is {values[k]!r}, expected {expected}"
        ) from None
    if arr.null_count:
        raise DataError(path, f"line {lines[first_null(arr)]}: {what} is null")
    return arr


def _json_fits(v: Any, type_: pa.DataType) -> bool:
    if v is None:
        return True
    if type_ == pa.string():
        return isinstance(v, str)
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return False
    if type_ != pa.int64():
        return True
    return (isinstance(v, int) or v.is_integer()) and -(2**63) <= v < 2**63


# ---------------------------------------------------------------------------------- streaming input


def _csv_stream(path: str | Path) -> pa.NativeFile:
    """The CSV's bytes, decompressed by content: pyarrow would go by the file name only."""
    kind = check_text_file(path)
    if kind in ("gzip", "bz2") and pa.Codec.is_available(kind):
        return pa.input_stream(str(path), compression=kind)
    if kind != "text":  # xz, or a codec this pyarrow build lacks
        return pa.PythonFile(open_binary(path), mode="r")
    return pa.input_stream(str(path), compression=None)


_ARROW_ROW = re.compile(r"Row #(\d+): ")


def _csv_error(
    path: str | Path, e: Exception, delimiter: str, header: bool, columns: Sequence[str] | None
) -> DataError:
    """A DataError locating a pyarrow CSV failure: non-UTF-8 bytes by line, parse errors by row.

    pyarrow's threaded reader reports no position, so on failure the file is read again
    serially (which does) to find it; that cost is only ever paid on the error path.
    """
    msg = str(e)
    if "utf8" in msg.lower():
        located = first_non_utf8_line(path)
        if located is not None:
            return located
    if not _ARROW_ROW.search(msg):
        try:
            with _csv_stream(path) as stream:
                reader = pa_csv.open_csv(
                    stream,
                    read_options=pa_csv.ReadOptions(
                        autogenerate_column_names=not header, use_threads=False
                    ),
                    parse_options=pa_csv.ParseOptions(delimiter=delimiter),
                    convert_options=pa_csv.ConvertOptions(
                        include_columns=list(columns or []),
                        column_types={c: pa.string() for c in columns or []},
                    ),
                )
                for _ in reader:
                    pass
        except (pa.ArrowInvalid, *READ_ERRORS) as again:
            msg = str(again)
    m = _ARROW_ROW.search(msg)
    if m:
        # pyarrow counts the header as row 1; our rows are data rows, as everywhere else.
        row = int(m.group(1)) - (1 if header else 0)
        msg = f"row {row}: " + _ARROW_ROW.sub("", msg, count=1)
    msg = msg.replace("CSV parse error: ", "")
    # pyarrow quotes the offending row, which may hold line breaks or other control
    # characters: they are escaped so that the report stays one line.
    msg = printable(msg)
    msg = msg if len(msg) <= 300 else msg[:300] + "..."
    if "Empty CSV file" in msg:
        return DataError(path, "no lines to read")
    return DataError(path, f"cannot parse as CSV (delimiter {delimiter!r}): {msg}")


def csv_names(path: str | Path, delimiter: str, header: bool) -> list[str]:
    """Column names of a CSV as pyarrow will see them (autogenerated f0, f1, ... without header).

    A header naming a column twice is an error: which of the two is meant would be a guess.
    """
    with _csv_stream(path) as stream:
        try:
            reader = pa_csv.open_csv(
                stream,
                read_options=pa_csv.ReadOptions(autogenerate_column_names=not header),
                parse_options=pa_csv.ParseOptions(delimiter=delimiter),
            )
        except (pa.ArrowInvalid, *READ_ERRORS) as e:
            raise _csv_error(path, e, delimiter, header, None) from None
        try:
            names = list(reader.schema.names)
        except UnicodeDecodeError:  # the header line is not UTF-8
            raise first_non_utf8_line(path) or DataError(path, "line 1: not UTF-8") from None
    seen: set[str] = set()
    for n in names:
        if n in seen:
            raise DataError(path, f"the CSV header names column {n!r} twice: {', '.join(names)}")
        seen.add(n)
    return names


def csv_text_batches(
    path: str | Path, columns: Sequence[str], delimiter: str, header: bool, chunk_rows: int
) -> Iterator[tuple[pa.RecordBatch, int]]:
    """Stream ``columns`` of a CSV as text, in batches of ``chunk_rows`` rows (the last shorter),
    each with the 0-based index of its first data row.

    Everything is read as text and converted by the caller: pyarrow's own typed conversion
    reports neither the row nor, in streaming mode, anything that locates the bad value.
    Empty fields become nulls so that "missing" is one check. The file is decompressed by its
    content (gzip, bz2, xz), whatever its name.
    """
    reader_opts = pa_csv.ReadOptions(
        block_size=16 << 20, autogenerate_column_names=not header, use_threads=True
    )
    convert = pa_csv.ConvertOptions(
        include_columns=list(columns),
        column_types={c: pa.string() for c in columns},
        null_values=[""],
        strings_can_be_null=True,
    )
    stream = _csv_stream(path)
    try:
        reader = pa_csv.open_csv(
            stream,
            read_options=reader_opts,
            parse_options=pa_csv.ParseOptions(delimiter=delimiter),
            convert_options=convert,
        )
        start = 0
        for batch in rechunk(reader, chunk_rows):
            yield batch, start
            start += batch.num_rows
    except (pa.ArrowInvalid, *READ_ERRORS) as e:
        raise _csv_error(path, e, delimiter, header, columns) from None
    finally:
        stream.close()


def rechunk(batches: Iterator[pa.RecordBatch], rows: int) -> Iterator[pa.RecordBatch]:
    """Regroup batches into batches of exactly ``rows`` rows (the last may be shorter)."""
    buf: list[pa.RecordBatch] = []
    have = 0
    for batch in batches:
        while batch.num_rows:
            take = min(rows - have, batch.num_rows)
            buf.append(batch.slice(0, take))
            have += take
            batch = batch.slice(take)
            if have == rows:
                yield _concat(buf)
                buf, have = [], 0
    if have:
        yield _concat(buf)


def _concat(batches: list[pa.RecordBatch]) -> pa.RecordBatch:
    if len(batches) == 1:
        return batches[0]
    return pa.Table.from_batches(batches).combine_chunks().to_batches()[0]
