#!/usr/bin/env python3
"""Median and range over several debug/compare-anchor.sh runs (their raw folders).

usage: debug/compare-summary.py DIR [DIR ...]
Each DIR holds anchor.jsonl and kvprobe-<tls>/results.json. GB/s = 1e9 bytes/s.
"""
import json, os, statistics, sys

dirs = sys.argv[1:]
if not dirs:
    sys.exit(__doc__)

def anchor(d):
    return [json.loads(l) for l in open(os.path.join(d, "anchor.jsonl")) if l.startswith("{")]

def kv(d, tls):
    return json.load(open(os.path.join(d, "kvprobe-" + tls.replace(",", "_"), "results.json")))["rows"]

table = {}
for d in dirs:
    a = anchor(d)
    for tls in ["shm,tcp", "tcp"]:
        for r in kv(d, tls):
            key = (tls, r["op"], r["size_bytes"])
            py = next((x for x in a if x.get("tool") == "nixl-python" and x["tls"] == tls and x["op"] == r["op"] and x["size"] == r["size_bytes"]), None)
            perf = next((x for x in a if x.get("tool") == "ucx_perftest" and x["tls"] == tls and x["size"] == r["size_bytes"]), None)
            e = table.setdefault(key, {"py": [], "kv50": [], "kvwall": [], "p99": [], "perf": []})
            if py:
                e["py"].append(py["gbps"])
            e["kv50"].append(r["size_bytes"] / r["latency_us"]["p50"] / 1e3)
            e["kvwall"].append(r["gbps"])
            e["p99"].append(r["latency_us"]["p99"])
            if perf and r["op"] == "WRITE":
                e["perf"].append(perf["gbps"])

def rng(v, f="{:.3g}"):
    return f"{f.format(statistics.median(v))} ({f.format(min(v))}-{f.format(max(v))})" if v else "n/a"

print(f"{len(dirs)} runs; median (min-max). Python and kvprobe p50 columns are size / median latency.\n")
print("| UCX_TLS | op | size | NIXL Python GB/s | kvprobe GB/s (p50) | kvprobe/Python (median of per-run ratios) | kvprobe GB/s (wall clock) | kvprobe p99 us | ucx_perftest put GB/s |")
print("|---|---|---|---|---|---|---|---|---|")
for (tls, op, size), e in sorted(table.items(), key=lambda kv: (kv[0][0] != "shm,tcp", kv[0][1], kv[0][2])):
    ratios = [k / p for k, p in zip(e["kv50"], e["py"])]
    print(f"| {tls} | {op} | {size} | {rng(e['py'])} | {rng(e['kv50'])} | {rng(ratios, '{:.2f}')} | {rng(e['kvwall'])} | {rng(e['p99'], '{:.0f}')} | {rng(e['perf'])} |")
