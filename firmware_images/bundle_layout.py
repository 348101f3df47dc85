"""The one byte layout of a bundle: every byte is fixed by the three members' contents.

A bundle's signature covers the manifest, and the manifest pins the model's SHA-256; the
ZIP container around them is not signed. So the container may hold nothing the members
do not determine, or one signed bundle would have many byte strings (and SHA-256s) and
carry unsigned bytes to every device: a ZIP comment, bytes between members or before the
central directory, extra fields, other timestamps or attributes. This module defines the
layout :func:`firmware_images.bundle.pack_bundle` writes, and :func:`check_layout` refuses
any other, byte for byte. The layout (all integers little-endian), for the members in the
signed order ``manifest.json``, ``manifest.sig``, the model:

- each member: a 30-byte local header (``PK\\x03\\x04``, version needed 20, flags 0,
  method 0 = stored, time 0 and date 0x0021 = 1980-01-01 00:00, CRC-32, size, size,
  name length, extra length 0), the name (ASCII), the member's bytes — the first at
  offset 0, each next one right after the previous one's bytes;
- right after the last member, the central directory: per member, in the same order, a
  46-byte record (``PK\\x01\\x02``, version made by 0x0314 = 20 on Unix, version needed
  20, flags 0, method 0, time 0, date 0x0021, CRC-32, size, size, name length, extra 0,
  comment 0, disk 0, internal attributes 0, external attributes 0o644 << 16, the offset
  of its local header), then the name;
- right after it, the 22-byte end record (``PK\\x05\\x06``, disks 0 and 0, 3 entries
  twice, the directory's size and offset, comment length 0), and the end of the file.

Standard ZIP readers (``unzip -l``) read it. Imports only the standard library (device side).
"""

from __future__ import annotations

import struct
import zlib
from collections.abc import Iterator, Sequence

_LOCAL = struct.Struct("<4s2B4HL2L2H")
_CENTRAL = struct.Struct("<4s4B4HL2L5H2L")
_END = struct.Struct("<4s4H2LH")
_VERSION = 20  # 2.0: stored members, no ZIP64
_MADE_BY_UNIX = 3
_DOS_DATE_1980_01_01 = (0 << 9) | (1 << 5) | 1
_TIME = 0
EXTERNAL_ATTR = 0o644 << 16  # a regular file, rw-r--r--


def layout(members: Sequence[tuple[str, bytes]]) -> Iterator[tuple[str, bytes | None, int]]:
    """The pieces of the archive in order: ``(what, bytes, length)``.

    ``bytes`` is None for a member's own contents (``length`` of them, taken as they are);
    every other piece is the exact bytes the layout requires there.
    """
    offsets, crcs = [], []
    position = 0
    for name, data in members:
        encoded = name.encode("ascii")
        crcs.append(zlib.crc32(data))
        header = _LOCAL.pack(
            b"PK\x03\x04", _VERSION, 0, 0, 0, _TIME, _DOS_DATE_1980_01_01,
            crcs[-1], len(data), len(data), len(encoded), 0,
        )  # fmt: skip
        offsets.append(position)
        yield f"the local header of {name}", header + encoded, len(header) + len(encoded)
        yield f"the bytes of {name}", None, len(data)
        position += len(header) + len(encoded) + len(data)
    directory = b""
    for (name, data), offset, crc in zip(members, offsets, crcs, strict=True):
        encoded = name.encode("ascii")
        directory += _CENTRAL.pack(
            b"PK\x01\x02", _VERSION, _MADE_BY_UNIX, _VERSION, 0, 0, 0, _TIME,
            _DOS_DATE_1980_01_01, crc, len(data), len(data), len(encoded),
            0, 0, 0, 0, EXTERNAL_ATTR, offset,
        ) + encoded  # fmt: skip
    yield "the central directory", directory, len(directory)
    end = _END.pack(b"PK\x05\x06", 0, 0, len(members), len(members), len(directory), position, 0)
    yield "the end record (no ZIP comment)", end, len(end)


def pack(members: Sequence[tuple[str, bytes]]) -> bytes:
    """The archive of ``members`` in this layout."""
    data = iter(contents for _name, contents in members)
    return b"".join(piece if piece is not None else next(data) for _, piece, _n in layout(members))


def check_layout(data: bytes, members: Sequence[tuple[str, bytes]]) -> str | None:
    """None when ``data`` is exactly the layout of ``members``; else what differs first.

    The members' own bytes are not compared (they were read from these positions);
    everything around them must match byte for byte, and nothing may follow.
    """
    view = memoryview(data)
    position = 0
    for what, expected, length in layout(members):
        if expected is not None and view[position : position + length] != expected:
            return f"{what} at offset {position} is not the canonical one"
        position += length
    if position != len(data):
        return f"the file is {len(data)} bytes, its members make {position}"
    return None
