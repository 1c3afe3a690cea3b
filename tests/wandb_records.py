"""Read the records of an offline W&B run file (``run-<id>.wandb``) in tests.

The file is a LevelDB-style log: a 7-byte file header (``:W&B``, magic 0xBEE1, version 0), then
32 KiB blocks of chunks, each with a 7-byte header (CRC, length, type: 1 full, 2 first, 3 middle,
4 last) followed by a serialised ``wandb.proto.wandb_internal_pb2.Record``. wandb 0.31 reads these
files in its Go core only, so the tests carry this small reader to check what a run stored.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

from wandb.proto import wandb_internal_pb2

FILE_HEADER = struct.Struct("<4sHB")
CHUNK_HEADER = struct.Struct("<IHB")
BLOCK_SIZE = 32768
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def read_records(path: str | Path) -> list[wandb_internal_pb2.Record]:
    data = Path(path).read_bytes()
    ident, magic, version = FILE_HEADER.unpack_from(data, 0)
    if ident != b":W&B" or magic != 0xBEE1 or version != 0:
        raise ValueError(f"{path} is not a W&B run file (header {ident!r}, {magic:#x}, {version})")

    records = []
    position = FILE_HEADER.size
    pending = b""
    while position + CHUNK_HEADER.size <= len(data):
        space_in_block = BLOCK_SIZE - position % BLOCK_SIZE
        if space_in_block < CHUNK_HEADER.size:
            position += space_in_block
            continue
        _, length, kind = CHUNK_HEADER.unpack_from(data, position)
        position += CHUNK_HEADER.size
        if kind == 0 and length == 0:
            position += space_in_block - CHUNK_HEADER.size
            continue
        chunk = data[position : position + length]
        position += length
        if kind == FULL:
            pending = chunk
        elif kind == FIRST:
            pending = chunk
            continue
        elif kind == MIDDLE:
            pending += chunk
            continue
        elif kind == LAST:
            pending += chunk
        record = wandb_internal_pb2.Record()
        record.ParseFromString(pending)
        records.append(record)
        pending = b""
    return records


def _item_key(item: Any) -> str:
    # Newer wandb versions fill `nested_key` (a path) instead of `key`.
    return item.key or ".".join(item.nested_key)


def run_contents(path: str | Path) -> dict[str, Any]:
    """Return the run id, its config (merged updates), its history rows and its summary."""
    config: dict[str, Any] = {}
    history: list[dict[str, Any]] = []
    summary: dict[str, Any] = {}
    run_id = None
    for record in read_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run_id = record.run.run_id
            for item in record.run.config.update:
                config[item.key] = json.loads(item.value_json)
        elif kind == "config":
            for item in record.config.update:
                config[item.key] = json.loads(item.value_json)
        elif kind == "history":
            history.append(
                {_item_key(item): json.loads(item.value_json) for item in record.history.item}
            )
        elif kind == "summary":
            for item in record.summary.update:
                summary[_item_key(item)] = json.loads(item.value_json)
    return {"run_id": run_id, "config": config, "history": history, "summary": summary}


def find_run_files(root: str | Path) -> list[Path]:
    """All offline run files below ``root``."""
    return sorted(Path(root).rglob("offline-run-*/run-*.wandb"))
