#!/usr/bin/env bash
# How much the load generator itself adds: kvprobe bench against the emulator's
# fixed timings (TTFT 100 ms, TPOT 10 ms, no batching), at rising concurrency,
# both processes on this machine. Whatever bench reads above 100 / 10 ms is the
# two processes' own cost (HTTP, JSON, scheduling), not a model's.
# Usage: debug/bench-overhead.sh [OUT]   (about a minute)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out=${1:-$root/results/bench-overhead-$(date -u +%Y%m%d-%H%M%S)}
bin=${KVPROBE:-$root/target/release/kvprobe}
conc=${CONC:-1,16,64,128,256}
mkdir -p "$out"
[ -x "$bin" ] || (cd "$root" && cargo build --release --quiet)
"$bin" emulate --port 0 --model emu --mode fixed --ttft-ms 100 --tpot-ms 10 >"$out/emulate.out" 2>"$out/emulate.err" &
pid=$!
trap 'kill $pid 2>/dev/null || true; wait $pid 2>/dev/null || true' EXIT
url=
for _ in $(seq 100); do
  url=$(sed -n 's/^listening on //p' "$out/emulate.out" | head -1)
  [ -n "$url" ] && break
  sleep 0.1
done
[ -n "$url" ] || { cat "$out/emulate.err" >&2; exit 1; }
cmd=("$bin" bench --url "$url" --model emu --concurrency "$conc" --itl 1000 --otl 100
  --prompts-per-conc 4 --percentiles 50,99 --out "$out/bench" -q)
printf '%q ' "${cmd[@]}" >"$out/command.txt"
echo >>"$out/command.txt"
"${cmd[@]}" | tee "$out/table.txt"
nproc >"$out/nproc.txt"
