#!/usr/bin/env python3
"""Writes disk images in the compact sparse form read by imgpack's `images` fuzz target.

Usage: pack_image.py OUT_DIR IMAGE...   (format from the extension: .qcow2 .vhd .vdi .vmdk .vhdx)

Form (see `imgpack::fuzz_targets::images`): one byte choosing the format, the file's length
(u32 LE), then pieces: offset (u32 LE), length (u16 LE), bytes. Zero 512-byte sectors are left
out, so an 8 MiB VHDX becomes a few KiB the fuzzer can mutate quickly.
"""
import os
import struct
import sys

FORMATS = {".qcow2": 0, ".vhd": 1, ".vdi": 2, ".vmdk": 3, ".vhdx": 4}
SECTOR = 512
MAX_PIECE = 0xFFFF // SECTOR * SECTOR


def pack(data: bytes, selector: int) -> bytes:
    out = bytearray(struct.pack("<BI", selector, len(data)))
    pos = 0
    while pos < len(data):
        if not any(data[pos:pos + SECTOR]):
            pos += SECTOR
            continue
        end = pos
        while end < len(data) and end - pos < MAX_PIECE and any(data[end:end + SECTOR]):
            end += SECTOR
        end = min(end, len(data))
        out += struct.pack("<IH", pos, end - pos) + data[pos:end]
        pos = end
    return bytes(out)


def main() -> None:
    out_dir, images = sys.argv[1], sys.argv[2:]
    os.makedirs(out_dir, exist_ok=True)
    for path in images:
        selector = FORMATS.get(os.path.splitext(path)[1])
        if selector is None:
            continue
        with open(path, "rb") as f:
            data = f.read()
        if len(data) > 16 << 20:
            continue
        with open(os.path.join(out_dir, os.path.basename(path) + ".packed"), "wb") as f:
            f.write(pack(data, selector))


if __name__ == "__main__":
    main()
