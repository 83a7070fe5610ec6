#!/usr/bin/env bash
# How long `kvprobe matrix` takes as the node count grows: for each N in
# NODES (default "2 3 4 5") a fresh Ray cluster of N emulated hosts
# (debug/ray-cluster.sh) and one matrix run with the same settings; prints
# and writes OUT/scaling.json (nodes, pairs, rounds, seconds, seconds per
# round, median pair seconds) and keeps each run's matrix folder.
#
# usage: debug/matrix-scaling.sh [OUT]   (root; cargo build --release first)
#   NODES="2 3 4 5" SIZES=1M,16M DURATION=0.3s CONTENTION= (set to 1 for --contention)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out=${1:-$root/results/matrix-scaling-$(date -u +%Y%m%d-%H%M%S)}
mkdir -p "$out"
out=$(cd "$out" && pwd)
export KV=${KVPROBE:-$root/target/release/kvprobe} SIZES=${SIZES:-1M,16M} DURATION=${DURATION:-0.3s} ROOT=$root OUT=$out
export CONTENTION=${CONTENTION:-}
[ -x "$KV" ] || { echo "matrix-scaling: $KV not found: cargo build --release first" >&2; exit 2; }
{
  echo "# $(date -u +%Y-%m-%dT%H:%M:%SZ) $0 $*"
  "$KV" --version
  echo "NODES=${NODES:-2 3 4 5} SIZES=$SIZES DURATION=$DURATION CONTENTION=$CONTENTION nproc=$(nproc)"
} >"$out/commands.txt"
for n in ${NODES:-2 3 4 5}; do
  echo "matrix-scaling: $n nodes" >&2
  export N=$n
  RAY_NODES=$n RAY_LOGS=$out "$root/debug/ray-cluster.sh" run "msc$n$$" bash -c '
    extra=()
    [ -n "$CONTENTION" ] && extra+=(--contention)
    start=$(date +%s.%N)
    "$ROOT/debug/hosts.sh" exec "$KVP_HOSTS" a "$KV" matrix --ray-address "$KVP_RAY_ADDRESS" --sizes "$SIZES" \
      --duration "$DURATION" --line-rate-at 0 --no-fail "${extra[@]}" --out "$OUT/n$N" >"$OUT/n$N.txt" 2>&1
    echo "$start $(date +%s.%N)" >"$OUT/n$N.wall"
  '
done
python3 - "$out" <<'PY'
import json, os, statistics, sys
out = sys.argv[1]
rows = []
for d in sorted(x for x in os.listdir(out) if x.startswith("n") and os.path.isdir(os.path.join(out, x))):
    m = json.load(open(os.path.join(out, d, "matrix.json")))
    a, b = map(float, open(os.path.join(out, d + ".wall")).read().split())
    pairs = [p for p in m["pairs"] if p["status"] == "ok"]
    rows.append({
        "nodes": len(m["nodes"]), "pairs": len(m["pairs"]), "ok_pairs": len(pairs), "rounds": len(m["rounds"]),
        "matrix_seconds": m["seconds"], "command_seconds": round(b - a, 1),
        "round_seconds_median": round(statistics.median(m["round_seconds"]), 2) if m["round_seconds"] else None,
        "pair_seconds_median": round(statistics.median(p["seconds"] for p in pairs), 2) if pairs else None,
        "median_gbps": m["verdict"]["median_gbps"], "grade": m["verdict"]["grade"],
    })
json.dump(rows, open(os.path.join(out, "scaling.json"), "w"), indent=2)
print("nodes pairs rounds  command_s  matrix_s  s/round  s/pair  GB/s(ref)  grade")
for r in rows:
    print("%5d %5d %6d %10.1f %9.1f %8s %7s %10.3f  %s" % (r["nodes"], r["pairs"], r["rounds"], r["command_seconds"],
          r["matrix_seconds"], r["round_seconds_median"], r["pair_seconds_median"], r["median_gbps"] or 0, r["grade"]))
PY
