"""Raw interaction-log readers: each turns one public dataset format into a stream of
``pyarrow.RecordBatch`` with exactly the columns ``user``, ``item`` (int64 or string raw ids) and
``timestamp`` (int64 unix seconds, UTC).

Every source is a module here with ``read(path, *, chunk_rows=1_000_000, **options)``; the file is
streamed in chunks of about ``chunk_rows`` rows, never loaded whole, and all batches of one call
share one schema. ``read`` returns a :class:`Batches` iterator whose ``stats`` dict counts rows
read and rows dropped or skipped. Bad input raises :class:`~recsys_common.errors.DataError`
naming the file and the line/row, column and value; an unknown option raises TypeError listing
the accepted ones.

    for batch in read_source("yelp", "review.json", min_stars=4):
        ...
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from recsys_common.files import (
    NULL_TOKENS,
    PARQUET_ERRORS,
    READ_ERRORS,
    check_input_path,
    check_text_file,
    decode_line,
    field_list,
    open_binary,
    printable,
    reason,
)
from sml_torchrec.data.sources import adressa, csv, movielens, yelp
from sml_torchrec.data.sources._common import Batches

# name -> read function; each also has `.options`, the tuple of keyword options it accepts.
SOURCES: dict[str, Callable[..., Batches]] = {
    "csv": csv.read,
    "movielens": movielens.read,
    "yelp": yelp.read,
    "adressa": adressa.read,
}


def read_source(name: str, path: str | Path, **options: Any) -> Batches:
    """``SOURCES[name](path, **options)``, with a ValueError listing the sources for a bad name."""
    try:
        reader = SOURCES[name]
    except KeyError:
        raise ValueError(
            f"unknown source {name!r}; available sources: {', '.join(SOURCES)}"
        ) from None
    return reader(path, **options)


__all__ = [
    "NULL_TOKENS",
    "PARQUET_ERRORS",
    "READ_ERRORS",
    "SOURCES",
    "Batches",
    "check_input_path",
    "check_text_file",
    "decode_line",
    "field_list",
    "open_binary",
    "printable",
    "reason",
    "read_source",
]
