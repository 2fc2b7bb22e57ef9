"""Read the records of an offline W&B run file (run-*.wandb): LevelDB log blocks of protobuf `Record`s.

wandb 0.31 has no Python reader of its own; the format is a 7-byte ":W&B" header, then 32 KiB blocks of
records (crc32 u32, length u16, type u8: 1 full, 2 first, 3 middle, 4 last).
"""

import struct
from pathlib import Path

BLOCK = 32768


def read_records(path):
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
    position, pending, records = 7, b"", []
    while position + 7 <= len(data):
        left = BLOCK - position % BLOCK
        if left < 7:
            position += left
            continue
        _, length, kind = struct.unpack("<IHB", data[position : position + 7])
        if kind == 0:  # zero padding to the end of the block
            position += left
            continue
        payload = data[position + 7 : position + 7 + length]
        position += 7 + length
        if kind == 1:
            records.append(payload)
        elif kind == 2:
            pending = payload
        elif kind == 3:
            pending += payload
        elif kind == 4:
            records.append(pending + payload)
    parsed = []
    for payload in records:
        record = pb.Record()
        record.ParseFromString(payload)
        parsed.append(record)
    return parsed


def summarise(path):
    """(run record, config dict of JSON strings, list of history dicts of JSON strings)."""
    run, config, history = None, {}, []
    for record in read_records(path):
        kind = record.WhichOneof("record_type")
        if kind == "run":
            run = record.run
        elif kind == "config":
            for item in record.config.update:
                config[item.key or "/".join(item.nested_key)] = item.value_json
        elif kind == "history":
            history.append({item.key or "/".join(item.nested_key): item.value_json for item in record.history.item})
    return run, config, history
