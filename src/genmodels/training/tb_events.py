"""TensorBoard event files, written and read without ``tensorboard`` or TensorFlow installed.

``EventWriter`` appends TFRecord frames (length, masked CRC-32C, record, masked CRC-32C) of
``Event`` protobufs with scalar (and PNG image) ``Summary`` values, so ``tensorboard --logdir
<out_dir>`` shows the curves. Each writer starts with a ``SessionLog.START`` event at step
``start + 1``, so TensorBoard drops what an earlier (killed) run logged after the checkpoint a
resumed run starts from. ``read_scalars`` parses such a file back (for tests and tools).
"""

from __future__ import annotations

import os
import socket
import struct
import time
from pathlib import Path
from typing import Any

__all__ = ["EventWriter", "crc32c", "read_scalars"]


def _crc_table() -> list[int]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1  # Castagnoli, reflected
        table.append(c)
    return table


_CRC32C = _crc_table()


def crc32c(data: bytes) -> int:
    """CRC-32C (Castagnoli) of ``data``, as TFRecord frames use."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _CRC32C[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def _masked_crc(data: bytes) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        low, n = n & 0x7F, n >> 7
        out.append(low | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _field_bytes(number: int, payload: bytes) -> bytes:  # wire type 2: length-delimited
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _event(
    step: int,
    *,
    file_version: str | None = None,
    start: bool = False,
    scalars: dict[str, float] | None = None,
) -> bytes:
    """An ``Event`` protobuf: wall_time (1, double), step (2, int64) and file_version (3),
    summary (5: ``Summary.Value`` entries tag (1), simple_value (2, float)) or session_log
    (7: ``SessionLog`` status (1) START = 1)."""
    msg = b"\x09" + struct.pack("<d", time.time()) + b"\x10" + _varint(step)
    if file_version is not None:
        msg += _field_bytes(3, file_version.encode())
    if start:
        msg += _field_bytes(7, b"\x08\x01")
    if scalars:
        values = b"".join(
            _field_bytes(1, _field_bytes(1, tag.encode()) + b"\x15" + struct.pack("<f", value))
            for tag, value in scalars.items()
        )
        msg += _field_bytes(5, values)
    return msg


class EventWriter:
    """Appends scalar events to ``<log_dir>/events.out.tfevents.<time>.<host>.<pid>``;
    ``start``: the step the run starts from (0, or the step it resumes at)."""

    def __init__(self, log_dir: str | Path, start: int = 0) -> None:
        log_dir = Path(log_dir)
        log_dir.mkdir(parents=True, exist_ok=True)
        name = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}.{os.getpid()}"
        self.path = log_dir / name
        self._file = self.path.open("ab")
        self._write(_event(0, file_version="brain.Event:2"))
        self._write(_event(start + 1, start=True))

    def _write(self, record: bytes) -> None:
        header = struct.pack("<Q", len(record))
        self._file.write(header + struct.pack("<I", _masked_crc(header)))
        self._file.write(record + struct.pack("<I", _masked_crc(record)))

    def add_scalars(self, scalars: dict[str, float], step: int) -> None:
        self._write(_event(step, scalars={k: float(v) for k, v in scalars.items()}))
        self._file.flush()

    def add_image(self, tag: str, png: bytes, height: int, width: int, step: int) -> None:
        """An image summary: ``Summary.Value`` tag (1), image (4: ``Summary.Image`` height (1),
        width (2), colorspace (3; 3 = RGB), encoded_image_string (4, PNG bytes))."""
        image = (b"\x08" + _varint(height) + b"\x10" + _varint(width) + b"\x18\x03"
                 + _field_bytes(4, png))  # fmt: skip
        value = _field_bytes(1, tag.encode()) + _field_bytes(4, image)
        msg = b"\x09" + struct.pack("<d", time.time()) + b"\x10" + _varint(step)
        self._write(msg + _field_bytes(5, _field_bytes(1, value)))
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def _read_varint(buf: bytes, i: int) -> tuple[int, int]:
    shift = value = 0
    while True:
        byte = buf[i]
        value |= (byte & 0x7F) << shift
        i, shift = i + 1, shift + 7
        if not byte & 0x80:
            return value, i


def _fields(buf: bytes) -> list[tuple[int, Any]]:
    """(field number, value) of a protobuf message (varint, 64-bit, bytes and 32-bit fields)."""
    out, i = [], 0
    while i < len(buf):
        key, i = _read_varint(buf, i)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, i = _read_varint(buf, i)
        elif wire == 1:
            value, i = buf[i : i + 8], i + 8
        elif wire == 2:
            n, i = _read_varint(buf, i)
            value, i = buf[i : i + n], i + n
        elif wire == 5:
            value, i = buf[i : i + 4], i + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        out.append((number, value))
    return out


def read_scalars(path: str | Path) -> list[tuple[int, str, float]]:
    """(step, tag, value) of every scalar in an event file, checking each frame's CRCs."""
    data, i, out = Path(path).read_bytes(), 0, []
    while i < len(data):
        header = data[i : i + 8]
        (length,) = struct.unpack("<Q", header)
        (crc,) = struct.unpack("<I", data[i + 8 : i + 12])
        record = data[i + 12 : i + 12 + length]
        (record_crc,) = struct.unpack("<I", data[i + 12 + length : i + 16 + length])
        if crc != _masked_crc(header) or record_crc != _masked_crc(record):
            raise ValueError(f"{path}: bad CRC in the record at byte {i}")
        i += 16 + length
        fields = _fields(record)
        step = next((v for n, v in fields if n == 2), 0)
        for summary in (v for n, v in fields if n == 5):
            for _, value in _fields(summary):
                entry = dict(_fields(value))
                (scalar,) = struct.unpack("<f", entry[2])
                out.append((step, entry[1].decode(), scalar))
    return out
