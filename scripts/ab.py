#!/usr/bin/env python3
"""A/B of the shard job between builds, alternated on one machine.

    python3 scripts/ab.py --input <tree> --shard org-mod-0 --shard-map <map> \
        [--runs 3] [--extra "--memory-limit 4GiB"] A=<binary> B=<binary> ...

Runs `tailor run` of each binary in turn (A, B, A, B, ...) on the same
input, each into a fresh output directory, under /usr/bin/time -v, and
prints every run's wall time, CPU time (user + system) and peak RSS, then
the median of each binary and its ratio to the first. Alternating puts
every binary on the same machine state: this host's wall times drift by
20% over minutes.
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time


def run(binary: str, args: argparse.Namespace, out: str) -> dict:
    cmd = ["/usr/bin/time", "-v", binary, "run", "--input", args.input, "--output", out,
           "--shard", args.shard, "--target-partitions", str(args.partitions)]
    if args.shard_map:
        cmd += ["--shard-map", args.shard_map]
    cmd += args.extra.split()
    t0 = time.monotonic()
    p = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.monotonic() - t0
    if p.returncode != 0:
        sys.stderr.write(p.stderr[-3000:])
        raise SystemExit(f"{binary} failed ({p.returncode})")
    cpu = sum(float(re.search(rf"{k} time \(seconds\): ([0-9.]+)", p.stderr).group(1)) for k in ("User", "System"))
    rss = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", p.stderr).group(1)) * 1024
    return {"wall": wall, "cpu": cpu, "rss": rss}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--input", required=True)
    ap.add_argument("--shard", required=True)
    ap.add_argument("--shard-map")
    ap.add_argument("--partitions", type=int, default=2)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--extra", default="", help="more flags for tailor run")
    ap.add_argument("builds", nargs="+", help="NAME=binary")
    args = ap.parse_args()
    builds = [b.split("=", 1) for b in args.builds]
    results: dict[str, list[dict]] = {name: [] for name, _ in builds}
    work = tempfile.mkdtemp(prefix="tailor-ab-")
    try:
        for i in range(args.runs):
            for name, binary in builds:
                out = f"{work}/{name}-{i}"
                r = run(binary, args, out)
                shutil.rmtree(out, ignore_errors=True)
                results[name].append(r)
                print(f"run {i + 1} {name}: wall {r['wall']:.2f} s, CPU {r['cpu']:.2f} s, "
                      f"peak RSS {r['rss'] / 2**20:.0f} MiB", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    base = None
    for name, rs in results.items():
        med = {k: statistics.median(r[k] for r in rs) for k in ("wall", "cpu", "rss")}
        base = base or med
        print(f"{name}: median wall {med['wall']:.2f} s ({med['wall'] / base['wall']:.3f}), "
              f"CPU {med['cpu']:.2f} s ({med['cpu'] / base['cpu']:.3f}), "
              f"peak RSS {med['rss'] / 2**20:.0f} MiB")


if __name__ == "__main__":
    main()
