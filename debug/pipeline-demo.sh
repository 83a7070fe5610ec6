#!/usr/bin/env bash
# The pipeline end to end on a machine with no GPU: emulate -> bench -> viz,
# three deployments of 8 emulated GPUs under the seeds' workload (ISL 5000,
# OSL 250):
#   colloc-2xtp4   collocated, 2 engines of TP4
#   pd-tuned       PD 1P-TP4 : 1D-TP4, KV rate = the H100's measured NIXL READ
#                  curve with UCX_CUDA_IPC_ENABLE_GET_ZCOPY=y (cuda_ipc, ~0.5-0.9 TB/s)
#   pd-default     the same PD deployment with the READ curve measured under
#                  default UCX settings (GPU READ emulated over TCP, ~0.5 GB/s)
# The emulator's step costs are its defaults (docs/EMULATOR.md: round numbers,
# not calibrated). Writes OUT (default results/pipeline-demo-<stamp>) with one
# bench folder per deployment, plots from viz, and the commands used.
#
# Usage: debug/pipeline-demo.sh [OUT]   (about 4 minutes; CONC and PROMPTS_PER_CONC override the load)
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out=${1:-$root/results/pipeline-demo-$(date -u +%Y%m%d-%H%M%S)}
conc=${CONC:-1,4,8,16}
per=${PROMPTS_PER_CONC:-3}
bin=${KVPROBE:-$root/target/release/kvprobe}
gpu=$root/docs/results/gpu-2026-11-24
mkdir -p "$out"
if [ ! -x "$bin" ]; then
  (cd "$root" && cargo build --release --quiet)
fi
say() { printf 'demo: %s\n' "$*" >&2; }

emu_pid=
stop_emu() {
  if [ -n "$emu_pid" ]; then
    kill "$emu_pid" 2>/dev/null || true
    wait "$emu_pid" 2>/dev/null || true
    emu_pid=
  fi
}
trap stop_emu EXIT

# run NAME EMULATE-ARGS... : starts the emulator, benches it, stops it
run() {
  local name=$1
  shift
  "$bin" emulate --port 0 --model gpt-oss-120b "$@" >"$out/$name.emulate.out" 2>"$out/$name.emulate.err" &
  emu_pid=$!
  local url=
  for _ in $(seq 100); do
    url=$(sed -n 's/^listening on //p' "$out/$name.emulate.out" 2>/dev/null | head -1)
    [ -n "$url" ] && break
    sleep 0.1
  done
  [ -n "$url" ] || { cat "$out/$name.emulate.err" >&2; exit 1; }
  "$bin" bench --url "$url" --model gpt-oss-120b --concurrency "$conc" --itl 5000 --otl 250 \
    --prompts-per-conc "$per" --label "$name" --out "$out/$name" -q >"$out/$name.bench.txt"
  stop_emu
  say "$name done"
}

printf '%s\n' "$0 $*" "$("$bin" --version)" "CONC=$conc PROMPTS_PER_CONC=$per" >"$out/commands.txt"
run colloc-2xtp4 --mode collocated --num-replicas 2 --tp 4
run pd-tuned --mode pd --p-num 1 --p-tp 4 --d-num 1 --d-tp 4 \
  --kv-bandwidth-from "$gpu/vram-tuned/results.json"
run pd-default --mode pd --p-num 1 --p-tp 4 --d-num 1 --d-tp 4 \
  --kv-bandwidth-from "$gpu/vram-default/results.json"
"$bin" viz "$out/colloc-2xtp4" "$out/pd-tuned" "$out/pd-default" --out "$out/plots" | tee "$out/viz.txt"
"$bin" viz "$out/colloc-2xtp4" "$out/pd-tuned" "$out/pd-default" --latency-mode first_token \
  --out "$out/plots-ttft" -q
"$bin" viz "$gpu/vram-tuned" "$gpu/vram-default" --out "$out/plots-transport" -q
say "results in $out"
