"""Records of a JSON dataset file, streamed with ijson: a JSON array of objects, or JSON lines (one object a line).

Only ijson's read buffer and the record being built are in memory, whatever the file's size (LLaVA-Video's
annotation files run to hundreds of MB); malformed input raises as soon as the parser meets it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import ijson

BUFFER_BYTES = 1 << 16
UTF8_BOM = b"\xef\xbb\xbf"


def iter_json_records(path: str | Path) -> Iterator[tuple[dict, int]]:
    """Yield ``(record, bytes_read)`` for each object of the array (or line) in ``path``.

    ``bytes_read`` is how far into the file the parser has read (for progress bars).  ValueError, naming the file
    and the record, for invalid JSON, a truncated array, data after the array, or a record that is not an object.
    """
    with open(path, "rb") as handle:
        head = handle.read(len(UTF8_BOM))
        if head != UTF8_BOM:
            handle.seek(0)
        first = _first_character(handle)
        if first == b"[":
            records = ijson.items(handle, "item", use_float=True, buf_size=BUFFER_BYTES)
        elif first == b"{":
            records = ijson.items(handle, "", multiple_values=True, use_float=True, buf_size=BUFFER_BYTES)
        elif first == b"":
            return
        else:
            raise ValueError(f"{path}: expected a JSON array of records or JSON lines, found {first!r} at the start")
        index = 0
        try:
            for record in records:
                if not isinstance(record, dict):
                    raise ValueError(f"{path}: record {index} is a {type(record).__name__}; expected JSON objects")
                yield record, handle.tell()
                index += 1
        except ijson.JSONError as error:
            raise ValueError(f"{path}: invalid JSON after record {index} (near byte {handle.tell()}): {error}") \
                from None


def _first_character(handle) -> bytes:
    """The first byte that is not JSON whitespace (b"" for an empty file); the handle is rewound to it."""
    while True:
        position = handle.tell()
        chunk = handle.read(BUFFER_BYTES)
        if not chunk:
            return b""
        stripped = chunk.lstrip(b" \t\r\n")
        if stripped:
            handle.seek(position + len(chunk) - len(stripped))
            return stripped[:1]
