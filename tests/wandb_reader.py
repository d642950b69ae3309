"""Read an offline ``.wandb`` file back, so tests can check what a run recorded.

wandb 0.31 ships no reader, and offline runs write no history JSON: the ``.wandb`` file is the
only record. Its format: a 7-byte header (``:W&B``, magic 0xBEE1 little-endian, version 0), then
LevelDB-log framing in 32 KiB blocks -- each chunk has a 7-byte header (crc32 over type byte +
data as uint32, length as uint16, type: 1 full, 2 first, 3 middle, 4 last) and a block tail
under 7 bytes is padding. Reassembled records are ``wandb_internal_pb2.Record`` protobufs.
"""

from __future__ import annotations

import json
import struct
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

BLOCK = 32 * 1024
_HEADER = struct.Struct("<4sHB")  # ident, magic, version
_CHUNK = struct.Struct("<IHB")  # crc32, length, type
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def read_payloads(path: Path) -> Iterator[bytes]:
    """The raw record payloads of a ``.wandb`` file, checksums verified."""
    data = Path(path).read_bytes()
    ident, magic, version = _HEADER.unpack_from(data)
    if (ident, magic, version) != (b":W&B", 0xBEE1, 0):
        raise ValueError(f"{path}: not a .wandb file (header {data[:7]!r})")
    pos, parts = _HEADER.size, []
    while pos + _CHUNK.size <= len(data):
        left = BLOCK - pos % BLOCK
        if left < _CHUNK.size:  # block trailer: padding
            pos += left
            continue
        crc, length, kind = _CHUNK.unpack_from(data, pos)
        if crc == 0 and length == 0 and kind == 0:  # zero padding at the end of a block
            pos += left
            continue
        body = data[pos + _CHUNK.size : pos + _CHUNK.size + length]
        if len(body) != length or zlib.crc32(bytes([kind]) + body) != crc:
            raise ValueError(f"{path}: corrupt chunk at byte {pos}")
        pos += _CHUNK.size + length
        if kind == _FULL:
            yield body
        elif kind == _FIRST:
            parts = [body]
        elif kind == _MIDDLE:
            parts.append(body)
        elif kind == _LAST:
            yield b"".join([*parts, body])
            parts = []
        else:
            raise ValueError(f"{path}: unknown chunk type {kind} at byte {pos}")


def read_records(path: Path) -> Iterator[Any]:
    """Every ``Record`` protobuf in the file, in order."""
    from wandb.proto import wandb_internal_pb2

    for payload in read_payloads(path):
        record = wandb_internal_pb2.Record()
        record.ParseFromString(payload)
        yield record


def read_history(path: Path) -> list[dict[str, Any]]:
    """One dict per history row (``_step``, ``_runtime`` ... included), values decoded."""
    rows = []
    for record in read_records(path):
        if record.WhichOneof("record_type") != "history":
            continue
        row = {}
        for item in record.history.item:
            key = item.key or "/".join(item.nested_key)
            row[key] = json.loads(item.value_json)
        rows.append(row)
    return rows


def read_run(path: Path) -> Any:
    """The file's ``RunRecord`` (id, group, config ...), or None."""
    for record in read_records(path):
        if record.WhichOneof("record_type") == "run":
            return record.run
    return None
