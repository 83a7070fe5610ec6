#!/usr/bin/env bash
# kvprobe vs NIXL's own Python API (../shared/tools/anchors) on this machine, back to back:
# shared memory ("shm,tcp") and TCP, READ and WRITE, the same sizes. Prints a markdown table.
#
# usage: debug/compare-anchor.sh [SIZES]        (default 4096,1048576,67108864)
# needs: network access to PyPI once (an anchor venv in /tmp/kvprobe-anchor-venv),
#        a release build (cargo build --release), debug/setup.sh done.
#
# Both tools run with UCX_NET_DEVICES=lo (TCP stays on loopback). The anchor reports
# size / median latency; kvprobe reports that too (size / lat p50) next to its
# wall-clock GB/s over the timed loop. GB/s = 1e9 bytes/s everywhere.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
anchors=${ANCHORS:-$root/../shared/tools/anchors}
sizes=${1:-4096,1048576,67108864}
venv=${ANCHOR_VENV:-/tmp/kvprobe-anchor-venv}
out=${OUT:-$(mktemp -d /tmp/kvprobe-compare.XXXXXX)}
mkdir -p "$out"
export UCX_NET_DEVICES=lo
[ -f "$anchors/measure-cpu.sh" ] || { echo "no anchor scripts at $anchors (set ANCHORS=/path/to/shared/tools/anchors)" >&2; exit 1; }
[ -x "$root/target/release/kvprobe" ] || { echo "build first: cargo build --release" >&2; exit 1; }

if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --no-deps nixl-cu12==1.5.1 libucx-cu12==1.22.0 numpy
fi

echo "anchor (NIXL Python API, ucx_perftest) ..." >&2
SIZES=$sizes bash "$anchors/measure-cpu.sh" "$venv" 2>"$out/anchor.log" | grep '^{' > "$out/anchor.jsonl" || true
[ -s "$out/anchor.jsonl" ] || { echo "the anchor produced no results; see $out/anchor.log" >&2; exit 1; }

for tls in "shm,tcp" "tcp"; do
  echo "kvprobe UCX_TLS=$tls ..." >&2
  "$root/target/release/kvprobe" sweep -q --sizes "$sizes" --ucx-tls "$tls" --out "$out/kvprobe-${tls//,/_}" >/dev/null
done

python3 - "$out" "$sizes" <<'PY'
import json, sys, os
out, sizes = sys.argv[1], [int(s) for s in sys.argv[2].split(",")]
anchor = [json.loads(l) for l in open(os.path.join(out, "anchor.jsonl"))]
def a(tool, tls, op, size):
    for r in anchor:
        if r.get("tool") == tool and r.get("tls") == tls and r.get("op") == op and r.get("size") == size:
            return r
def k(tls, op, size):
    d = json.load(open(os.path.join(out, "kvprobe-" + tls.replace(",", "_"), "results.json")))
    for r in d["rows"]:
        if r["op"] == op and r["size_bytes"] == size:
            return r
print("| UCX_TLS | op | size | NIXL Python GB/s (size/p50) | kvprobe GB/s (size/p50) | kvprobe / Python | kvprobe GB/s (wall clock) | Python p50 us | kvprobe p50 us | kvprobe p99 us | ucx_perftest put GB/s |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for tls in ["shm,tcp", "tcp"]:
    for op in ["READ", "WRITE"]:
        for s in sizes:
            ar, kr = a("nixl-python", tls, op, s), k(tls, op, s)
            pp = a("ucx_perftest", tls, "PUT", s) if op == "WRITE" else None
            kp50 = kr["latency_us"]["p50"]
            kg = s / kp50 / 1e3
            ag = ar["gbps"] if ar else float("nan")
            print(f"| {tls} | {op} | {s} | {ag:.3f} | {kg:.3f} | {kg/ag if ar and ag else float('nan'):.2f} | {kr['gbps']:.3f} | "
                  f"{ar['p50_us'] if ar else 'n/a'} | {kp50:.1f} | {kr['latency_us']['p99']:.1f} | {pp['gbps'] if pp else ''} |")
print(f"\nraw files: {out}")
PY
