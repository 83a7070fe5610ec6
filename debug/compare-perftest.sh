#!/usr/bin/env bash
# kvprobe's raw UCX backend vs ucx_perftest -t ucp_put_bw, same UCX build, same transport,
# same sizes, same UCX settings, in one run. Prints a markdown table (GB/s = 1e9 bytes/s;
# ucx_perftest's "MB/s" is MiB/s and is converted) and leaves raw outputs in $OUT.
#
# usage: debug/compare-perftest.sh [SIZES] [ROUNDS]    (default 1M,4M,16M,64M and 3)
#   TLS_LIST="default tcp"   UCX_TLS settings to compare ("default": unset, UCX picks)
#   POINTS=FILE              only print the table of an earlier run's points.jsonl
# needs: debug/setup.sh done (the libucx-cu12 wheel brings ucx_perftest), cargo build --release.
#
# Like for like:
#   - one UCX build: kvprobe runs with --ucx-lib pointing at the libucx wheel's libucp, the
#     library ucx_perftest links (NIXL's bundled UCX has no ucx_perftest);
#   - the same UCX settings in both: NIXL's defaults (what kvprobe's raw backend applies)
#     are exported for both tools, TCP pinned to loopback; peer error handling (-e),
#     as kvprobe's raw backend and NIXL use;
#   - one transfer in flight and the same completion: ucx_perftest -O 1 waits for each put's
#     local completion and flushes at the end; kvprobe --ucx-local-completion does the same.
#     kvprobe's default (a flush after every WRITE: the data is at the target, what NIXL
#     reports) and ucx_perftest's default window (32) are reported too;
#   - 4 KiB pages: ucx_perftest's buffers are not on huge pages, so kvprobe runs with
#     --no-hugepages; kvprobe's default (transparent huge pages) is reported as well.
# Rounds alternate the tools so drift on a shared machine hits both; the table shows medians.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
sizes=${1:-1M,4M,16M,64M}
rounds=${2:-3}
tls_list=${TLS_LIST:-default tcp}
out=${OUT:-$(mktemp -d /tmp/kvprobe-perftest.XXXXXX)}
mkdir -p "$out"
kv="$root/target/release/kvprobe"
[ -x "$kv" ] || { echo "build first: cargo build --release" >&2; exit 1; }
wheel=$(ls -d "$root"/.venv/lib/python3*/site-packages/libucx 2>/dev/null | head -1 || true)
[ -n "$wheel" ] && [ -x "$wheel/bin/ucx_perftest" ] || { echo "no libucx wheel in .venv: run debug/setup.sh" >&2; exit 1; }
perftest="$wheel/bin/ucx_perftest"
libucp="$wheel/lib/libucp.so.0"
port=${PERFTEST_PORT:-13377}

# the same UCX environment for every process of both tools
export UCX_NET_DEVICES=lo UCX_RNDV_THRESH=inf UCX_MAX_RMA_RAILS=2 UCX_IB_PCI_RELAXED_ORDERING=try \
  UCX_RC_FENCE=none UCX_MAX_HCA_PER_GPU=auto UCX_RNDV_PIPELINE_ERROR_HANDLING=y
unset UCX_TLS

server_pid=""
cleanup() { if [ -n "$server_pid" ]; then kill "$server_pid" 2>/dev/null || true; wait "$server_pid" 2>/dev/null || true; fi; }
trap cleanup EXIT
trap 'exit 130' INT TERM

bytes() { python3 - "$1" <<'EOF'
import sys
s = sys.argv[1].strip().upper(); m = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
print(int(s[:-1]) * m[s[-1]] if s[-1] in m else int(s))
EOF
}

# one ucx_perftest client/server pair; prints MiB/s (overall) of the Final line
perftest_run() { # size window log
  local size=$1 window=$2 log=$3 iters warm
  iters=$(( 2 * 1024 * 1024 * 1024 / size )); [ "$iters" -lt 40 ] && iters=40
  warm=$(( iters / 10 + 1 ))
  LD_LIBRARY_PATH="$wheel/lib" "$perftest" -p "$port" -e >"$log.server" 2>&1 &
  server_pid=$!
  sleep 0.3
  local args=(127.0.0.1 -p "$port" -t ucp_put_bw -s "$size" -n "$iters" -w "$warm" -e)
  [ "$window" != default ] && args+=(-O "$window")
  LD_LIBRARY_PATH="$wheel/lib" timeout 120 "$perftest" "${args[@]}" >"$log" 2>&1 || true
  wait "$server_pid" 2>/dev/null || true
  server_pid=""
  awk '/^Final:/ {print $7}' "$log"
}

points=${POINTS:-$out/points.jsonl}
[ -n "${POINTS:-}" ] && tls_list=""
for tls in $tls_list; do
  if [ "$tls" = default ]; then unset UCX_TLS; else export UCX_TLS=$tls; fi
  for r in $(seq 1 "$rounds"); do
    echo "UCX_TLS=$tls round $r/$rounds ..." >&2
    for s in ${sizes//,/ }; do
      b=$(bytes "$s")
      for w in 1 default; do
        v=$(perftest_run "$b" "$w" "$out/perftest-$tls-$b-O$w-r$r.log")
        echo "{\"tls\":\"$tls\",\"round\":$r,\"tool\":\"perftest-O$w\",\"size\":$b,\"mib_s\":${v:-null}}" >>"$out/points.jsonl"
      done
    done
    for hp in small local huge; do
      flag=()
      [ "$hp" = small ] && flag=(--no-hugepages)
      [ "$hp" = local ] && flag=(--no-hugepages --ucx-local-completion)
      # one size per run: the buffers are then exactly the transfer size, as ucx_perftest's are
      # (a 1 MiB transfer inside a 64 MiB buffer measured up to 2x faster: docs/results)
      for s in ${sizes//,/ }; do
      d="$out/kvprobe-$tls-$hp-$s-r$r"
      "$kv" sweep -q --backend ucx --ucx-lib "$libucp" --ops WRITE --sizes "$s" --duration 1s \
        "${flag[@]}" --out "$d" >"$d.log" 2>&1 || { echo "kvprobe failed: $d.log" >&2; exit 1; }
      python3 - "$d/results.json" "$tls" "$r" "$hp" >>"$out/points.jsonl" <<'EOF'
import json, sys
r = json.load(open(sys.argv[1]))
for row in r["rows"]:
    t = row.get("transport") or {}
    print(json.dumps({"tls": sys.argv[2], "round": int(sys.argv[3]), "tool": "kvprobe-" + sys.argv[4],
                      "size": row["size_bytes"], "gbps": row["gbps"],
                      "transport": " ".join(t.get("lanes", [])) + " " + t.get("protocol", ""),
                      "ucx": r["header"]["ucx"]["location"]["lib"]}))
EOF
      done
    done
  done
done

python3 - "$points" <<'EOF'
import json, random, statistics, sys
pts = [json.loads(l) for l in open(sys.argv[1])]
def gbps(p):
    if "gbps" in p: return p["gbps"]
    return None if p["mib_s"] is None else p["mib_s"] * 1048576 / 1e9
def label(b):
    for u, n in ((1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")):
        if b >= u and b % u == 0: return f"{b // u} {n}"
    return f"{b} B"
vals = {}
for p in pts:
    v = gbps(p)
    if v is not None: vals.setdefault((p["tls"], p["size"], p["tool"]), []).append(v)
transport = {(p["tls"], p["size"]): p["transport"].strip() for p in pts if p["tool"] == "kvprobe-small"}
rng = random.Random(1)
def ratio_interval(a, b):
    # 90% bootstrap interval of median(a) / median(b), rounds resampled per tool
    if len(a) < 2 or len(b) < 2: return "-"
    rs = sorted(statistics.median(rng.choices(a, k=len(a))) / statistics.median(rng.choices(b, k=len(b)))
                for _ in range(2000))
    return f"{rs[100]:.2f}-{rs[1899]:.2f}"
def cell(v):
    if not v: return "-"
    return f"{statistics.median(v):.2f} ({min(v):.2f}-{max(v):.2f})" if len(v) > 1 else f"{v[0]:.2f}"
print("| UCX_TLS | size | ucx_perftest -O 1 | kvprobe, local completion | ratio | 90% interval | kvprobe, flush per WRITE (default) | ratio | ucx_perftest window 32 | kvprobe, huge pages | transport (kvprobe) |")
print("|---|---|---|---|---|---|---|---|---|---|---|")
for tls in dict.fromkeys(p["tls"] for p in pts):
    for size in sorted({p["size"] for p in pts if p["tls"] == tls}):
        v = {t: x for (a, b, t), x in vals.items() if a == tls and b == size}
        m = {t: statistics.median(x) for t, x in v.items()}
        pt, loc, kv = m.get("perftest-O1"), m.get("kvprobe-local"), m.get("kvprobe-small")
        ratio = lambda x: f"{x / pt:.3f}" if pt and x else "-"
        print(f"| {tls} | {label(size)} | {cell(v.get('perftest-O1'))} | {cell(v.get('kvprobe-local'))} | {ratio(loc)} "
              f"| {ratio_interval(v.get('kvprobe-local', []), v.get('perftest-O1', []))} | {cell(v.get('kvprobe-small'))} "
              f"| {ratio(kv)} | {cell(v.get('perftest-Odefault'))} | {cell(v.get('kvprobe-huge'))} | {transport.get((tls, size), '')} |")
print()
print(f"GB/s = 1e9 bytes/s: median (min-max) of {max(p['round'] for p in pts)} rounds; ratio = median / median of ucx_perftest -O 1,")
print(f"with a 90% bootstrap interval (rounds resampled per tool); raw points: {sys.argv[1]}")
EOF
