#!/usr/bin/env python3
"""The benchmark shard on a 2-executor Ballista cluster against the
single-machine job, both at the same --parts (docs/distributed.md).

    python3 scripts/bench-cluster.py [--input bench-out/data-2GiB/input] [--parts 2]

Runs, with target/release/tailor (built first):

  single        tailor run --parts K on 2 cores (the default memory limit)
  single_mem    the same without a limit that bites (--memory-limit 100GiB)
  cluster       a scheduler and two executors of one task slot each, each
                pinned to one core (taskset), and the client, as separate
                processes on 127.0.0.1; shuffle reads over the network

For each: wall time; CPU (user + sys) and peak RSS of every process (the
cluster's from /proc of the scheduler and executors, started fresh, and
/usr/bin/time of the client); bytes shuffled (the rows the part writers
received, in memory, and the largest the executors' work directories held
on disk during the run). Checks that the cluster's output has the run id
(and so the bytes) of the single-machine run. Writes JSON and Markdown
into --out.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import re
import shutil
import socket
import subprocess
import sys
import threading
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import bench  # noqa: E402  (scripts/bench.py: its timed())

ROOT = pathlib.Path(__file__).resolve().parent.parent
TAILOR = bench.TAILOR
TICK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def wait_port(port: int) -> None:
    for _ in range(300):
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise SystemExit(f"nothing listens on {port}")


def proc_cpu(pid: int) -> float:
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK


def proc_hwm(pid: int) -> int:
    m = re.search(r"VmHWM:\s+(\d+) kB", pathlib.Path(f"/proc/{pid}/status").read_text())
    return int(m.group(1)) * 1024


def du(path: pathlib.Path) -> int:
    total = 0
    for root, _, files in os.walk(path):
        for f in files:
            try:
                total += os.stat(os.path.join(root, f)).st_size
            except FileNotFoundError:
                pass
    return total


def timed(cmd: list[str], log: pathlib.Path) -> dict:
    """bench.py's measurement (one run): wall, CPU (user + sys), peak RSS."""
    r = bench.timed(cmd, log)
    return {k: r[k] for k in ("wall_s", "cpu_s", "peak_rss_bytes")}


def run_id(report: pathlib.Path) -> str:
    return json.loads(report.read_text())["output"]["run_id"]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--input", default=str(ROOT / "bench-out" / "data-2GiB" / "input"))
    ap.add_argument("--shard", default="org-mod-0")
    ap.add_argument("--shard-map", default=str(ROOT / "bench-out" / "one-shard.toml"))
    ap.add_argument("--parts", type=int, default=2)
    ap.add_argument("--out", default=str(ROOT / "bench-out" / "cluster"))
    args = ap.parse_args()
    subprocess.run(["cargo", "build", "--release", "--quiet"], cwd=ROOT, check=True)
    out = pathlib.Path(args.out)
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    common = ["run", "--input", args.input, "--shard", args.shard, "--shard-map", args.shard_map,
              "--parts", str(args.parts), "--target-partitions", "2"]
    results: dict = {"input": args.input, "parts": args.parts, "runs": {}}

    for name, extra in (("single", []), ("single_mem", ["--memory-limit", "100GiB"])):
        rep = out / f"{name}.json"
        r = timed([str(TAILOR), *common, "--output", str(out / f"{name}-out"), "--report", str(rep), *extra],
                  out / f"{name}.log")
        r["run_id"] = run_id(rep)
        results["runs"][name] = r
        shutil.rmtree(out / f"{name}-out", ignore_errors=True)
        print(name, r, flush=True)

    sched_port = free_port()
    procs = {}
    logs = []

    def start(name: str, cmd: list[str], cpu: str | None) -> subprocess.Popen:
        log = open(out / f"{name}.log", "w")
        logs.append(log)
        pre = ["taskset", "-c", cpu] if cpu is not None else []
        p = subprocess.Popen([*pre, *cmd], stdout=log, stderr=subprocess.STDOUT)
        procs[name] = p
        return p

    try:
        start("scheduler", [str(TAILOR), "scheduler", "--bind", f"127.0.0.1:{sched_port}"], None)
        wait_port(sched_port)
        work = []
        for i in (0, 1):
            flight, grpc = free_port(), free_port()
            w = out / f"work-{i}"
            work.append(w)
            start(f"executor-{i}", [str(TAILOR), "executor", "--scheduler", f"127.0.0.1:{sched_port}",
                                    "--flight-port", str(flight), "--grpc-port", str(grpc), "--slots", "1",
                                    "--work-dir", str(w)], str(i))
            wait_port(flight)
        time.sleep(2)
        before = {n: proc_cpu(p.pid) for n, p in procs.items()}
        peak_disk = [0]
        done = threading.Event()

        def sample() -> None:
            while not done.is_set():
                peak_disk[0] = max(peak_disk[0], sum(du(w) for w in work))
                time.sleep(0.25)

        t = threading.Thread(target=sample)
        t.start()
        rep = out / "cluster.json"
        r = timed([str(TAILOR), *common, "--output", str(out / "cluster-out"), "--report", str(rep),
                   "--engine", "ballista", "--scheduler", f"127.0.0.1:{sched_port}", "--shuffle-over-network"],
                  out / "cluster-client.log")
        done.set()
        t.join()
        report = json.loads(rep.read_text())
        r["run_id"] = report["output"]["run_id"]
        r["processes"] = {n: {"cpu_s": round(proc_cpu(p.pid) - before[n], 2), "peak_rss_bytes": proc_hwm(p.pid)}
                          for n, p in procs.items()}
        r["processes"]["client"] = {"cpu_s": r["cpu_s"], "peak_rss_bytes": r["peak_rss_bytes"]}
        r["cpu_s_all"] = round(sum(v["cpu_s"] for v in r["processes"].values()), 2)
        r["cluster"] = report.get("cluster")
        r["shuffle_disk_peak_bytes"] = peak_disk[0]
        results["runs"]["cluster"] = r
        print("cluster", r, flush=True)
    finally:
        for p in procs.values():
            p.kill()
        for log in logs:
            log.close()
    shutil.rmtree(out / "cluster-out", ignore_errors=True)

    runs = results["runs"]
    results["same_bytes"] = runs["cluster"]["run_id"] == runs["single"]["run_id"] == runs["single_mem"]["run_id"]
    results["ratios"] = {
        "cluster_wall_over_single": runs["cluster"]["wall_s"] / runs["single"]["wall_s"],
        "cluster_wall_over_single_mem": runs["cluster"]["wall_s"] / runs["single_mem"]["wall_s"],
        "cluster_cpu_over_single": runs["cluster"]["cpu_s_all"] / runs["single"]["cpu_s"],
        "cluster_cpu_over_single_mem": runs["cluster"]["cpu_s_all"] / runs["single_mem"]["cpu_s"],
    }
    (out / "results.json").write_text(json.dumps(results, indent=2))
    md = ["| run | wall s | CPU s | peak RSS MiB |", "|---|---|---|---|"]
    for n in ("single", "single_mem"):
        v = runs[n]
        md.append(f"| {n} | {v['wall_s']} | {v['cpu_s']} | {v['peak_rss_bytes'] / 2**20:.0f} |")
    c = runs["cluster"]
    md.append(f"| cluster (all processes) | {c['wall_s']} | {c['cpu_s_all']} | |")
    for n, v in c["processes"].items():
        md.append(f"| &nbsp; {n} | | {v['cpu_s']} | {v['peak_rss_bytes'] / 2**20:.0f} |")
    cl = c.get("cluster") or {}
    md.append("")
    md.append(f"shuffled: {cl.get('shuffled_rows', 0)} rows, {cl.get('shuffled_bytes', 0) / 2**20:.0f} MiB in memory "
              f"(Arrow), {c['shuffle_disk_peak_bytes'] / 2**20:.0f} MiB at most on the executors' disks; "
              f"same bytes as the single machine: {results['same_bytes']}")
    md.append("")
    md.extend(f"- {k}: {v:.3f}" for k, v in results["ratios"].items())
    (out / "results.md").write_text("\n".join(md) + "\n")
    print("\n".join(md))
    if not results["same_bytes"]:
        raise SystemExit("the cluster's output differs from the single machine's")


if __name__ == "__main__":
    main()
