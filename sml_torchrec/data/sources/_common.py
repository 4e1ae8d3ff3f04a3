"""Pieces shared by the source readers: the output schema, option checking, the batch iterator
with its counters, value conversion with row-precise errors, and streaming line/CSV input."""

from __future__ import annotations

import functools
import gzip
import inspect
import json
import logging
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pa_csv

from sml_torchrec.data.errors import DataError

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
            if not Path(path).exists():
                raise DataError(path, "no such file or directory")
            return fn(path, **options)

        read.options = accepted  # type: ignore[attr-defined]
        return read

    return wrap


# ---------------------------------------------------------------- value conversion with locations


def first_null(arr: pa.Array) -> int:
    return pc.index(pc.is_null(arr), True).as_py()


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
        raise DataError(path, f"{what}: {where(first_null(arr))}: missing value")
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
            raise DataError(path, f"{what}: {where(k)}: {arr[k].as_py()!r} is not an integer")
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
        raise DataError(path, f"{what}: {where(first_null(arr))}: missing id")
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


def open_binary(path: str | Path) -> IO[bytes]:
    """Open for reading bytes, decompressing gzip (recognised by its magic bytes, not the name)."""
    f = open(path, "rb")  # the caller closes it
    if f.peek(2)[:2] == b"\x1f\x8b":
        f.close()
        return gzip.open(path, "rb")  # type: ignore[return-value]
    return f


def json_objects(path: str | Path) -> Iterator[tuple[int, Any]]:
    """(1-based line number, parsed value) per non-blank line of a JSON-lines file."""
    loads = json.loads
    with open_binary(path) as f:
        try:
            for lineno, line in enumerate(f, 1):
                if line.isspace() or not line:
                    continue
                try:
                    yield lineno, loads(line)
                except ValueError as e:  # JSONDecodeError and UnicodeDecodeError
                    raise DataError(path, f"line {lineno}: malformed JSON: {e}") from None
        except (OSError, EOFError) as e:  # truncated or corrupt gzip
            raise DataError(path, f"cannot read: {e}") from None


def missing_field(path: str | Path, lineno: int, obj: Any, fields: Sequence[str]) -> DataError:
    """The error for a JSON line lacking a required field (or not being an object at all)."""
    if not isinstance(obj, dict):
        return DataError(path, f"line {lineno}: expected a JSON object, got {type(obj).__name__}")
    absent = [f for f in fields if f not in obj]
    return DataError(
        path, f"line {lineno}: missing field {absent[0]!r} (fields present: {', '.join(obj)})"
    )


def files_in(path: str | Path, suffixes: tuple[str, ...] | None = None) -> list[Path]:
    """``path`` itself, or the regular files directly in it in sorted order (dotfiles skipped)."""
    p = Path(path)
    if not p.is_dir():
        return [p]
    files = sorted(
        f
        for f in p.iterdir()
        if f.is_file()
        and not f.name.startswith(".")
        and (suffixes is None or f.name.lower().endswith(suffixes))
    )
    if not files:
        wanted = f" ending in {'/'.join(suffixes)}" if suffixes else ""
        raise DataError(p, f"directory has no files{wanted}")
    return files


def csv_names(path: str | Path, delimiter: str, header: bool) -> list[str]:
    """Column names of a CSV as pyarrow will see them (autogenerated f0, f1, ... without header)."""
    reader = pa_csv.open_csv(
        path,
        read_options=pa_csv.ReadOptions(autogenerate_column_names=not header),
        parse_options=pa_csv.ParseOptions(delimiter=delimiter),
    )
    try:
        return list(reader.schema.names)
    finally:
        reader.close()


def csv_text_batches(
    path: str | Path, columns: Sequence[str], delimiter: str, header: bool, chunk_rows: int
) -> Iterator[tuple[pa.RecordBatch, int]]:
    """Stream ``columns`` of a CSV as text, in batches of ``chunk_rows`` rows (the last shorter),
    each with the 0-based index of its first data row.

    Everything is read as text and converted by the caller: pyarrow's own typed conversion
    reports neither the row nor, in streaming mode, anything that locates the bad value.
    Empty fields become nulls so that "missing" is one check.
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
    try:
        reader = pa_csv.open_csv(
            path,
            read_options=reader_opts,
            parse_options=pa_csv.ParseOptions(delimiter=delimiter),
            convert_options=convert,
        )
        start = 0
        for batch in rechunk(reader, chunk_rows):
            yield batch, start
            start += batch.num_rows
    except (pa.ArrowInvalid, OSError, EOFError) as e:
        raise DataError(path, f"cannot parse as CSV: {e}") from None


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
