"""Reading users' input files and writing results atomically.

Text inputs are recognised by their first bytes, not their names: gzip, bz2 and xz are read
transparently, archives, binary and UTF-16 files are refused with what they are, and every
decoding error names the file, the line and the byte. Used by the data builders of both
products.
"""

from __future__ import annotations

import bz2
import gzip
import json
import lzma
import os
import zlib
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import IO, Any

import pyarrow as pa
import pyarrow.parquet as pq

from recsys_common.errors import DataError

NULL_TOKENS = ("", "nan", "-nan", "null", "none", "na", "n/a", "<na>", "#n/a", "#na", "nil")


def write_json_atomic(path: str | os.PathLike, obj: Any) -> Path:
    """Write ``obj`` as JSON to ``path`` through a temporary file and a rename: a reader (or a
    crash) never sees half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(json.dumps(obj, indent=2) + "\n")
    os.replace(tmp, path)
    return path


# Leading bytes of the formats a log is mistaken for. Compressed text is read transparently
# whatever the file is called; the rest is refused with what the file is.
_MAGIC = (
    (b"\x1f\x8b", "gzip"),
    (b"BZh", "bz2"),
    (b"\xfd7zXZ\x00", "xz"),
    (b"\x28\xb5\x2f\xfd", "zstd"),
    (b"\x04\x22\x4d\x18", "lz4"),
    (b"PK\x03\x04", "zip"),
    (b"7z\xbc\xaf\x27\x1c", "7z"),
    (b"PAR1", "parquet"),
    (b"\xff\xfe", "utf-16"),
    (b"\xfe\xff", "utf-16"),
)
_REFUSED = {
    "zstd": "is zstd-compressed; decompress it first (zstd -d)",
    "lz4": "is lz4-compressed; decompress it first (lz4 -d)",
    "zip": "is a zip archive; unzip it and give the file inside",
    "7z": "is a 7z archive; extract it and give the file inside",
    "parquet": "is a parquet file, not text; --source csv reads parquet",
    "utf-16": "is UTF-16 text; save it as UTF-8",
    "binary": "is a binary file, not text (it holds NUL bytes)",
    "tar": "is a tar archive; extract it and give the file inside",
}
_OPENERS: dict[str, Callable[..., IO[bytes]]] = {
    "gzip": gzip.open,
    "bz2": bz2.open,
    "xz": lzma.open,
}
UTF8_BOM = b"\xef\xbb\xbf"
# What reading a truncated or corrupt (compressed) file raises, depending on the codec.
READ_ERRORS = (OSError, EOFError, lzma.LZMAError, zlib.error)
# What pyarrow raises for a corrupt parquet file (a damaged footer can even fail to decode).
PARQUET_ERRORS = (pa.ArrowException, OSError, ValueError)


def _kind(head: bytes) -> str:
    if not head:
        return "empty"
    for magic, kind in _MAGIC:
        if head.startswith(magic):
            return kind
    if head[257:262] == b"ustar":
        return "tar"
    return "binary" if b"\x00" in head else "text"


def sniff(path: str | Path) -> str:
    """What a file holds, from its first bytes: a key of ``_MAGIC``, "tar", "empty", "binary"
    or "text"."""
    with open(path, "rb") as f:
        return _kind(f.read(8192))


def check_input_path(path: str | Path, what: str = "") -> None:
    """A clear DataError for an input that is missing, unreadable or not a file or directory."""
    p = Path(path)
    label = f" ({what})" if what else ""
    if not p.exists():
        raise DataError(path, f"no such file or directory{label}")
    if not (p.is_file() or p.is_dir()):
        raise DataError(path, f"is not a regular file or directory{label}")
    if not os.access(p, os.R_OK) or (p.is_dir() and not os.access(p, os.X_OK)):
        raise DataError(path, f"permission denied{label}")


def check_text_file(path: str | Path) -> str:
    """The compression of a text input ("gzip", "bz2", "xz" or "text"); anything else (an empty
    file, a directory, an archive, a binary or UTF-16 file) is a DataError saying what it is."""
    check_input_path(path)
    if Path(path).is_dir():
        raise DataError(path, "is a directory; give the file to read")
    kind = sniff(path)
    if kind == "empty":
        raise DataError(path, "empty file")
    if kind in _REFUSED:
        raise DataError(path, _REFUSED[kind])
    if kind in _OPENERS:
        # What is inside counts too: a .tar.gz or a compressed binary is no more a log.
        try:
            with _OPENERS[kind](path, "rb") as f:
                inner = _kind(f.read(8192))
        except READ_ERRORS as e:
            raise DataError(path, f"cannot read: {kind} data is corrupt ({reason(e)})") from None
        if inner == "empty":
            raise DataError(path, f"empty file ({kind}-compressed)")
        if inner in _REFUSED:
            raise DataError(path, f"{kind}-compressed, and {_REFUSED[inner].removeprefix('is ')}")
    return kind


def open_binary(path: str | Path) -> IO[bytes]:
    """Open a text input for reading bytes, decompressing gzip, bz2 or xz (recognised by their
    magic bytes, not by the name); see :func:`check_text_file` for what is refused."""
    kind = check_text_file(path)
    if kind in _OPENERS:
        return _OPENERS[kind](path, "rb")
    return open(path, "rb")  # the caller closes it


def decode_line(path: str | Path, lineno: int, raw: bytes) -> str:
    """``raw`` as UTF-8 text, or an error naming the line and the offending byte."""
    if lineno == 1 and raw.startswith(UTF8_BOM):
        raw = raw[len(UTF8_BOM):]
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise DataError(
            path,
            f"line {lineno}: byte 0x{raw[e.start]:02x} at column {e.start + 1} is not UTF-8; "
            "save the file as UTF-8 (e.g. iconv -f latin1 -t utf-8)",
        ) from None


def first_non_utf8_line(path: str | Path) -> DataError | None:
    """The :func:`decode_line` error of the first line of ``path`` that is not UTF-8, if any."""
    with open_binary(path) as f:
        try:
            for lineno, raw in enumerate(f, 1):
                try:
                    decode_line(path, lineno, raw)
                except DataError as e:
                    return e
        except READ_ERRORS as e:
            return DataError(path, f"cannot read: {reason(e)}")
    return None


def json_objects(path: str | Path) -> Iterator[tuple[int, Any]]:
    """(1-based line number, parsed value) per non-blank line of a JSON-lines file."""
    loads = json.loads
    with open_binary(path) as f:
        try:
            for lineno, line in enumerate(f, 1):
                if line.isspace() or not line:
                    continue
                text = decode_line(path, lineno, line)
                try:
                    yield lineno, loads(text)
                except ValueError as e:
                    raise DataError(path, f"line {lineno}: malformed JSON: {reason(e)}") from None
        except READ_ERRORS as e:  # truncated or corrupt compressed file
            raise DataError(path, f"cannot read: {reason(e)}") from None


def printable(text: str) -> str:
    """``text`` with control characters escaped, so that an error stays one readable line."""
    return "".join(c if c >= " " or c == "\t" else repr(c)[1:-1] for c in text)


def reason(e: BaseException) -> str:
    """A library's exception text for an error message: one line, control characters escaped
    (pyarrow's messages span lines)."""
    return printable(str(e))


def field_list(obj: dict) -> str:
    """The keys of a parsed JSON object, for an error message ("none" when there are none)."""
    return ", ".join(printable(str(k)) for k in obj) or "none"


def missing_field(path: str | Path, lineno: int, obj: Any, fields: Sequence[str]) -> DataError:
    """The error for a JSON line lacking a required field (or not being an object at all)."""
    if not isinstance(obj, dict):
        return DataError(path, f"line {lineno}: expected a JSON object, got {type(obj).__name__}")
    absent = [f for f in fields if f not in obj]
    return DataError(
        path,
        f"line {lineno}: missing field {absent[0]!r} (fields present: {field_list(obj)})",
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


def read_json_object(path: Path) -> dict:
    """A JSON file holding one object, or a DataError naming the file (and the line)."""
    try:
        obj = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise DataError(path, f"line {e.lineno}: invalid JSON: {e.msg}") from None
    except (OSError, UnicodeDecodeError) as e:
        raise DataError(path, f"unreadable: {reason(e)}") from None
    if not isinstance(obj, dict):
        raise DataError(path, f"expected a JSON object, got {type(obj).__name__}")
    return obj


def read_parquet(path: Path) -> pa.Table:
    """A whole parquet file, validated, or a DataError naming it (truncated or corrupt)."""
    try:
        table = pq.read_table(path)
        # Damaged pages or names (text that is not UTF-8) fail here, not at first use.
        table.validate(full=True)
        _ = table.column_names
    except PARQUET_ERRORS as e:
        raise DataError(path, f"unreadable parquet file (truncated or corrupt?): {reason(e)}") \
            from None
    return table
