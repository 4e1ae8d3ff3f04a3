"""Adressa news event logs (NTNU / Adresseavisen, ``one_week`` and ``three_month`` releases).

Raw format
----------
JSON lines, one page-view event per line, e.g.::

    {"eventId": 1234, "userId": "cx:i8qbidb4...:3qtt", "id": "3e9d8f...", "time": 1483225202,
     "url": "http://adressa.no/...", "activeTime": 12, ...}

(one line in the file). Used fields: ``userId`` -> user (string), ``id`` -> item (article id,
string), ``time`` -> timestamp (integer unix seconds). Events without an article (no ``id``, or
``id`` null: front-page and section views) are skipped; their number is ``stats["skipped"]`` on the
returned iterator and is logged at the end. Blank lines are skipped.

``path`` is one file or a directory of them (the release ships one file per day, e.g.
``20170101``): every regular file directly in it is read, in sorted name order, dotfiles excepted.
``.gz`` files are decompressed on the fly. A malformed line, or a missing/null ``userId`` or
``time`` on an article event, is a DataError naming the file and the 1-based line number.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa

from recsys_common.files import (
    files_in,
    json_objects,
    missing_field,
)
from sml_torchrec.data.sources._common import (
    DEFAULT_CHUNK_ROWS,
    Batches,
    check_id_text,
    check_timestamps,
    line_locator,
    log,
    output_schema,
    pylist_to_array,
    source_reader,
)

SCHEMA = output_schema(pa.string())
FIELDS = ("userId", "id", "time")


@source_reader("adressa")
def read(path: str | Path, *, chunk_rows: int = DEFAULT_CHUNK_ROWS) -> Batches:
    """Stream (user, item, timestamp) batches of Adressa article events from a file or directory."""
    files = files_in(path)
    return Batches(lambda stats: _read(path, files, chunk_rows, stats))


def _read(
    path: str | Path, files: list[Path], chunk_rows: int, stats: dict[str, int]
) -> Iterator[pa.RecordBatch]:
    stats["skipped"] = 0
    stats["files"] = 0
    for file in files:
        users: list[Any] = []
        items: list[Any] = []
        times: list[Any] = []
        lines: list[int] = []
        for lineno, obj in json_objects(file):
            try:
                item = obj.get("id")
                if item is None:
                    stats["skipped"] += 1
                    continue
                users.append(obj["userId"])
                times.append(obj["time"])
            except (KeyError, AttributeError):
                raise missing_field(file, lineno, obj, FIELDS) from None
            items.append(item)
            lines.append(lineno)
            if len(lines) == chunk_rows:
                yield _batch(file, users, items, times, lines)
                users, items, times, lines = [], [], [], []
        # Chunks end at file boundaries so that line numbers in errors refer to one file.
        if lines:
            yield _batch(file, users, items, times, lines)
        stats["files"] += 1
    log.info(
        "%s: read %s article events from %d file(s), skipped %s events without an article id",
        path,
        stats["rows"],
        stats["files"],
        stats["skipped"],
    )


def _batch(
    file: Path, users: list[Any], items: list[Any], times: list[Any], lines: list[int]
) -> pa.RecordBatch:
    where = line_locator(lines)
    user = pylist_to_array(users, pa.string(), file, "userId", lines)
    item = pylist_to_array(items, pa.string(), file, "id", lines)
    check_id_text(user, file, "userId", where)
    check_id_text(item, file, "id", where)
    time = check_timestamps(pylist_to_array(times, pa.int64(), file, "time", lines), file,
                            "time", where)
    return pa.RecordBatch.from_arrays([user, item, time], schema=SCHEMA)
