#!/usr/bin/env python3
"""Where the bytes of a .wasm are, by crate: `twiggy top` (every item, shallow sizes) summed by the
crate that names each function; data segments, tables and the like are listed as their own rows.

    cargo install twiggy   # the Wasm size profiler (not needed by CI)
    scripts/build.sh        # keeps the function names in the raw module
    .venv/bin/python benches/size/by_crate.py [FILE.wasm] [--top 25]

FILE defaults to the raw (pre-wasm-opt) filter module in $CARGO_TARGET_DIR (or target/). The figures
are the raw module's, before wasm-opt, which drops the names; docs/benchmarks.md has the table."""
import argparse
import csv
import io
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RAW = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "wasm32-wasip1" / "release" / \
    "portcullis_filter.wasm"
WORD = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# Paths that name no crate of their own: look further into the name.
NOT_CRATES = {"impl", "dyn", "mut", "const", "as", "for", "unsafe", "extern", "fn", "_"}


def crate_of(name):
    """The first crate named in a demangled item name (`<cel::Value as core::fmt::Debug>::fmt` -> cel)."""
    if re.fullmatch(r"(data|elem|table|global|type|import|export)\[.*", name) or name.startswith("custom section"):
        return "(" + name.split("[", 1)[0].split(" ", 1)[0] + ")"
    for m in re.finditer(r"([A-Za-z_][A-Za-z0-9_]*)::", name):
        word = m.group(1)
        if word not in NOT_CRATES:
            return word
    if name.startswith("code["):
        return "(unnamed code)"
    word = WORD.match(name.lstrip("<&*"))
    return word.group(0) if word and ("(" not in name) else "(other: " + name[:40] + ")"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("wasm", nargs="?", default=str(RAW))
    p.add_argument("--top", type=int, default=25)
    a = p.parse_args()
    out = subprocess.run(["twiggy", "top", "-n", "1000000", "--format", "csv", a.wasm],
                         capture_output=True, text=True, check=True).stdout
    sizes = Counter()
    total = 0
    for row in csv.DictReader(io.StringIO(out)):
        name, size = row["Name"], int(row["ShallowSize"])
        if name.startswith("Σ") or name.startswith("..."):
            continue
        sizes[crate_of(name)] += size
        total += size
    file_size = Path(a.wasm).stat().st_size
    print(f"{a.wasm}: {file_size} bytes ({total} in items)")
    print(f"{'crate':32} {'bytes':>10} {'%':>6}")
    for crate, size in sizes.most_common(a.top):
        print(f"{crate:32} {size:>10} {100 * size / file_size:6.1f}")
    rest = sum(s for _, s in sizes.most_common()[a.top:])
    if rest:
        print(f"{'(the rest)':32} {rest:>10} {100 * rest / file_size:6.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
