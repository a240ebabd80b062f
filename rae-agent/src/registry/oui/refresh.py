#!/usr/bin/env python3
"""Regenerates table.bin.z, the vendor table rae-agent embeds (see registry/oui.rs).

Input: the IEEE Registration Authority's public CSV listings, unchanged:
  MA-L  oui.csv     https://standards-oui.ieee.org/oui/oui.csv
  MA-M  mam.csv     https://standards-oui.ieee.org/oui28/mam.csv
  MA-S  oui36.csv   https://standards-oui.ieee.org/oui36/oui36.csv
  IAB   iab.csv     https://standards-oui.ieee.org/iab/iab.csv   (the MA-S predecessor)
Where IEEE's site is not reachable, the same files come from Debian's `ieee-data` package
(/usr/share/ieee-data, refreshed by its `update-ieee-data`) or from the `data/` folder of the
crates.io crate `oui-data` (which names mam.csv `oui28.csv`), e.g. after `cargo fetch`:
  ~/.cargo/registry/src/*/oui-data-*/data

Usage:
  python3 refresh.py --src DIR [--source-note TEXT]
Writes table.bin.z next to this script. Then run the table's unit tests:
  cargo test -p rae-agent --lib registry::oui

Output format (zlib stream, everything little-endian once inflated):
  b"RAEOUI1\\n"
  u16 note length, note (UTF-8): where the data came from
  u32 names byte length, names: organisation names, sorted, '\\n'-separated
  then three sections, MA-S (36-bit prefixes, IAB included), MA-M (28-bit), MA-L (24-bit):
    u32 count, count prefixes as LEB128 deltas (ascending), count u16 name indices
Names are IEEE's, with runs of whitespace collapsed; nothing else is changed.
"""

import argparse
import csv
import os
import struct
import sys
import zlib

SECTIONS = [
    # (section, file names tried in order, hex digits of the prefix)
    ("MA-S", ["oui36.csv", "iab.csv"], 9),
    ("MA-M", ["mam.csv", "oui28.csv"], 7),
    ("MA-L", ["oui.csv"], 6),
]


def read_csv(path, digits):
    entries = {}
    with open(path, encoding="utf-8", newline="") as f:
        rows = csv.reader(f)
        header = next(rows)
        if header[:3] != ["Registry", "Assignment", "Organization Name"]:
            sys.exit(f"{path}: not an IEEE registry CSV (header {header[:3]})")
        for row in rows:
            if len(row) < 3:
                continue
            prefix = row[1].strip().upper()
            if len(prefix) != digits or any(c not in "0123456789ABCDEF" for c in prefix):
                sys.exit(f"{path}: bad assignment {row[1]!r}")
            name = " ".join(row[2].split())
            if name:
                entries.setdefault(int(prefix, 16), name)
    return entries


def leb128(value):
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--src", required=True, help="folder holding the IEEE CSV files")
    parser.add_argument("--source-note", default=None, help="recorded in the table")
    args = parser.parse_args()

    sections = []
    for name, files, digits in SECTIONS:
        merged = {}
        found = False
        for file in files:
            path = os.path.join(args.src, file)
            if name == "MA-M" and found:
                break  # mam.csv and oui28.csv are the same listing under two names
            if os.path.exists(path):
                found = True
                for prefix, org in read_csv(path, digits).items():
                    merged.setdefault(prefix, org)
        if not found:
            sys.exit(f"{args.src}: none of {files} found (needed for {name})")
        sections.append((name, merged))

    names = sorted({org for _, entries in sections for org in entries.values()})
    if len(names) > 0xFFFF:
        sys.exit(f"{len(names)} distinct names do not fit u16 indices")
    index = {org: i for i, org in enumerate(names)}
    note = args.source_note or f"IEEE RA CSV listings from {os.path.abspath(args.src)}"
    note_bytes = note.encode()

    out = bytearray(b"RAEOUI1\n")
    out += struct.pack("<H", len(note_bytes)) + note_bytes
    names_bytes = "\n".join(names).encode()
    out += struct.pack("<I", len(names_bytes)) + names_bytes
    for name, entries in sections:
        prefixes = sorted(entries)
        out += struct.pack("<I", len(prefixes))
        previous = 0
        for prefix in prefixes:
            out += leb128(prefix - previous)
            previous = prefix
        for prefix in prefixes:
            out += struct.pack("<H", index[entries[prefix]])
        print(f"{name}: {len(prefixes)} prefixes", file=sys.stderr)

    packer = zlib.compressobj(9, zlib.DEFLATED, 15, 9)
    packed = packer.compress(bytes(out)) + packer.flush()
    target = os.path.join(os.path.dirname(os.path.abspath(__file__)), "table.bin.z")
    with open(target, "wb") as f:
        f.write(packed)
    print(f"{len(names)} names, {len(out)} bytes inflated, {len(packed)} bytes written to {target}",
          file=sys.stderr)


if __name__ == "__main__":
    main()
