"""Hostile image files written at test time (no binary is committed)."""

from __future__ import annotations

import struct


def _segment(marker: int, body: bytes) -> bytes:
    return b"\xff" + bytes([marker]) + struct.pack(">H", len(body) + 2) + body


def scan_bomb_jpeg(scans: int, side: int) -> bytes:
    """A greyscale progressive JPEG of ``side`` x ``side`` pixels and ``scans`` scans, all but the first empty
    (10 bytes each): libjpeg works through every scan over the whole image (3,000 at 9459x9459: ~20 s)."""
    out = b"\xff\xd8" + _segment(0xDB, b"\x00" + b"\x01" * 64)
    out += _segment(0xC2, struct.pack(">BHHB", 8, side, side, 1) + b"\x01\x11\x00")
    out += _segment(0xC4, b"\x00" + bytes([1] + [0] * 15) + b"\x00\x10" + bytes([1] + [0] * 15) + b"\x00")
    out += _segment(0xDA, b"\x01\x01\x00\x00\x00\x00")  # the DC scan
    return out + _segment(0xDA, b"\x01\x01\x00\x01\x3f\x00") * (scans - 1) + b"\xff\xd9"
