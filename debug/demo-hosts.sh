#!/usr/bin/env bash
# The three-command cluster check (docs/CLUSTER.md) on two emulated hosts of
# this machine (debug/hosts.sh): doctor on each host, serve + sweep across
# them, and compare pack (both ends on host a) with spread (a -> b).
#
# usage: debug/demo-hosts.sh [OUT_DIR]       (root; about 2 minutes)
#   SIZES=4K,64K,1M,16M,64M  RATE=<tc rate, e.g. 1gbit, to shape the link>
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out=${1:-$(mktemp -d /tmp/kvprobe-demo.XXXXXX)}
mkdir -p "$out"
out=$(cd "$out" && pwd)
kv="$root/target/release/kvprobe"
[ -x "$kv" ] || { echo "build first: cargo build --release" >&2; exit 1; }
sizes=${SIZES:-4K,64K,1M,16M,64M}
hosts="$root/debug/hosts.sh"

# Everything below runs inside `hosts.sh run`, which removes the hosts at the end.
export kv out sizes hosts
"$hosts" run kvdemo bash -c '
  set -euo pipefail
  [ -n "${RATE:-}" ] && "$hosts" shape kvdemo --rate "$RATE"
  in_a() { UCX_NET_DEVICES=$KVP_A_DEV "$hosts" exec kvdemo a "$@"; }
  in_b() { UCX_NET_DEVICES=$KVP_B_DEV "$hosts" exec kvdemo b "$@"; }
  echo "== 1. kvprobe doctor on each host" >&2
  in_a "$kv" doctor > "$out/doctor-a.txt" 2>&1 || true
  in_b "$kv" doctor > "$out/doctor-b.txt" 2>&1 || true
  echo "== 2. kvprobe serve on host b, kvprobe sweep --peer on host a" >&2
  in_b "$kv" serve --listen "$KVP_B_IP:7700" --json --log-dir "$out/serve-logs" > "$out/serve.jsonl" 2>&1 &
  serve_pid=$!
  trap "kill $serve_pid 2>/dev/null || true; wait $serve_pid 2>/dev/null || true" EXIT
  for _ in $(seq 50); do grep -q listening "$out/serve.jsonl" 2>/dev/null && break; sleep 0.1; done
  token=$(python3 -c "import json,sys; print(json.loads(open(sys.argv[1]).readline())[\"token\"])" "$out/serve.jsonl")
  in_a "$kv" sweep --peer "$KVP_B_IP:7700" --token "$token" --sizes "$sizes" --backend nixl,ucx \
    --out "$out/sweep-spread" > "$out/sweep-spread.txt" 2>&1 || echo "sweep exit $?" >> "$out/sweep-spread.txt"
  echo "== 3. kvprobe compare: pack (host a alone) vs spread (a -> b)" >&2
  in_a "$kv" compare --placement pack --placement spread --peer "$KVP_B_IP:7700" --token "$token" --no-fail \
    --out "$out/compare" -- --sizes "$sizes" --backend nixl,ucx > "$out/compare.txt" 2>&1 || echo "compare exit $?" >> "$out/compare.txt"
'
echo "outputs in $out" >&2
