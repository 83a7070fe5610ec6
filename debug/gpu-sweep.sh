#!/usr/bin/env bash
# The GPU issue's full run on a GPU machine without registry access: GPU memory sweeps with two
# processes on the GPU (sizes and KV-shaped, READ and WRITE, both backends, UCX's defaults and tuned
# settings, host<->GPU), kvprobe's raw UCX vs ucx_perftest -m cuda on the same sizes with the same
# UCX build, and the GPU integration tests. Results go to ./gpu-out (GPU_OUT
# to change); with $OUT set (the device tool), also packed into $OUT/gpu-results.tar.gz.
#
# here:  ../shared/tools/nixl-offline-bundle.sh .bundle/nixl-cu13.tar.xz cu13
#        debug/gpu-build.sh            (release binary + GPU test binary, stripped, in .gpu/)
# there: debug/gpu-sweep.sh           (carry .gpu and .bundle)
#   QUICK=1    fewer sizes and no KV rows (a smoke run)
#   ONLY="kv-random perftest"   only these steps, space-separated (doctor and gpu.txt always run):
#     vram-default vram-tuned h2d-write d2h-read kv-default kv-tuned kv-random kv-random-inflight4
#     vram-progress-thread vram-no-progress-thread perftest tests
set -u
steps=" vram-default vram-tuned h2d-write d2h-read kv-default kv-tuned kv-random kv-random-inflight4 vram-progress-thread vram-no-progress-thread perftest tests "
for s in ${ONLY:-}; do
  [[ "$steps" == *" $s "* ]] || { echo "ONLY: unknown step '$s' (steps:$steps)" >&2; exit 2; }
done
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out=${GPU_OUT:-$root/gpu-out}
mkdir -p "$out"
kv=${KVPROBE:-$root/.gpu/kvprobe}
[ -x "$kv" ] || kv="$root/target/release/kvprobe"
bundle=${BUNDLE:-$root/.bundle/nixl-cu13.tar.xz}
[ -x "$kv" ] || { echo "no kvprobe binary: run debug/gpu-build.sh and carry .gpu" >&2; exit 2; }
[ -f "$bundle" ] || { echo "no bundle at $bundle" >&2; exit 2; }
mkdir -p /opt/nixl && tar -xJf "$bundle" -C /opt/nixl
export KVPROBE_NIXL_LIB=/opt/nixl/nixl
[ -f "$root/.gpu/DejaVuSans.ttf" ] && export KVPROBE_FONT="$root/.gpu/DejaVuSans.ttf"
perftest=/opt/nixl/ucx/bin/ucx_perftest
libucp=/opt/nixl/ucx/lib/libucp.so.0
t0=$(date +%s)
# whatever happens (a step that hangs until the device tool's limit included), what was measured
# is packed for the device tool
pack() { if [ -n "${OUT:-}" ]; then tar -C "$out" -czf "$OUT/gpu-results.tar.gz" . 2>/dev/null; fi; }
trap pack EXIT
stamp() { echo "[$(( $(date +%s) - t0 ))s] $*"; }

{ nvidia-smi -L; nvidia-smi --query-gpu=name,driver_version,pci.bus_id,memory.total --format=csv
  nvidia-smi topo -m; uname -r; cat /opt/nixl/VERSIONS; nproc; } >"$out/gpu.txt" 2>&1
"$kv" doctor >"$out/doctor.txt" 2>"$out/doctor.err"; echo "exit $?" >>"$out/doctor.txt"
"$kv" doctor --json >"$out/doctor.json" 2>>"$out/doctor.err"
stamp "doctor done"

sizes=4K,64K,1M,16M,64M,256M
[ -n "${QUICK:-}" ] && sizes=64K,16M,256M
common=(sweep -q --duration 300ms --no-fail)
want() { [ -z "${ONLY:-}" ] || [[ " $ONLY " == *" $1 "* ]]; }
run() { # name args...: one sweep into $out/name, its screen in $out/name.txt
  local name=$1; shift
  want "$name" || return 0
  "$kv" "${common[@]}" --out "$out/$name" "$@" >"$out/$name.txt" 2>&1
  echo "exit $?" >>"$out/$name.txt"
  stamp "$name: $(tail -1 "$out/$name.txt")"
  pack
}
run vram-default --backend nixl,ucx --src-mem vram --dst-mem vram --sizes "$sizes"
UCX_CUDA_IPC_ENABLE_GET_ZCOPY=y run vram-tuned --backend nixl,ucx --src-mem vram --dst-mem vram --sizes "$sizes" \
  --backend-param ucx_error_handling_mode=none
run h2d-write --backend nixl,ucx --src-mem dram --dst-mem vram --ops WRITE --sizes 1M,16M,256M
run d2h-read --backend nixl,ucx --src-mem vram --dst-mem dram --ops READ --sizes 1M,16M,256M
if [ -z "${QUICK:-}" ]; then
  run kv-default --backend nixl,ucx --src-mem vram --dst-mem vram --model Llama-3.1-8B --isl 1000,8000
  UCX_CUDA_IPC_ENABLE_GET_ZCOPY=y run kv-tuned --backend nixl,ucx --src-mem vram --dst-mem vram \
    --model Llama-3.1-8B --isl 1000,8000 --backend-param ucx_error_handling_mode=none
  # a long-running cache hands out scattered block ids: NIXL cannot merge neighbours
  UCX_CUDA_IPC_ENABLE_GET_ZCOPY=y run kv-random --backend nixl,ucx --src-mem vram --dst-mem vram \
    --model Llama-3.1-8B --isl 1000,8000 --ops READ --block-pattern random --backend-param ucx_error_handling_mode=none
  UCX_CUDA_IPC_ENABLE_GET_ZCOPY=y run kv-random-inflight4 --backend nixl --src-mem vram --dst-mem vram \
    --model Llama-3.1-8B --isl 1000,8000 --ops READ --block-pattern random --inflight 4 \
    --backend-param ucx_error_handling_mode=none
fi
# NIXL's large-transfer gap to raw UCX: with and without NIXL's progress thread
UCX_CUDA_IPC_ENABLE_GET_ZCOPY=y run vram-progress-thread --backend nixl --src-mem vram --dst-mem vram --ops WRITE \
  --sizes 16M,64M,256M --backend-param ucx_error_handling_mode=none
UCX_CUDA_IPC_ENABLE_GET_ZCOPY=y run vram-no-progress-thread --backend nixl --src-mem vram --dst-mem vram --ops WRITE \
  --sizes 16M,64M,256M --backend-param ucx_error_handling_mode=none --no-progress-thread

# kvprobe's raw UCX vs ucx_perftest -t ucp_put_bw -m cuda: the libucx wheel's UCX for both (NIXL's
# bundled UCX ships no ucx_perftest), NIXL's UCX settings exported for both, one put in flight and
# local completion (-O 1 / --ucx-local-completion), one size per kvprobe run.
want perftest && (
  # the libucx wheel's own dependencies (libcudart, libgomp) sit in libucx_cu13.libs
  export LD_LIBRARY_PATH=/opt/nixl/ucx/lib:/opt/nixl/ucx/libucx_cu13.libs${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
  export UCX_NET_DEVICES=lo UCX_RNDV_THRESH=inf UCX_MAX_RMA_RAILS=2 UCX_IB_PCI_RELAXED_ORDERING=try \
    UCX_RC_FENCE=none UCX_MAX_HCA_PER_GPU=auto UCX_RNDV_PIPELINE_ERROR_HANDLING=y
  port=13377
  for r in 1 2 3; do
    for s in 1M 16M 64M 256M; do
      b=$(( ${s%M} << 20 ))
      n=$(( (32 << 30) / b )); [ "$n" -lt 200 ] && n=200
      for w in 1 default; do
        log="$out/perftest/perftest-$s-O$w-r$r.log"; mkdir -p "$out/perftest"
        timeout 90 "$perftest" -p $port -m cuda >"$log.server" 2>&1 &
        spid=$!
        sleep 0.5
        args=(127.0.0.1 -p $port -t ucp_put_bw -m cuda -s "$b" -n "$n" -w $(( n / 10 + 1 )))
        [ "$w" != default ] && args+=(-O "$w")
        timeout 60 "$perftest" "${args[@]}" >"$log" 2>&1
        # a server whose client never came (started too late, killed) is ended, not waited for
        sleep 0.2; kill "$spid" 2>/dev/null; wait "$spid" 2>/dev/null
        port=$(( port + 1 ))
      done
      d="$out/perftest/kvprobe-$s-r$r"
      "$kv" sweep -q --backend ucx --ucx-lib "$libucp" --ops WRITE --sizes "$s" --duration 1s \
        --src-mem vram --dst-mem vram --ucx-local-completion --no-fail --out "$d" >"$d.txt" 2>&1
    done
  done
)
want perftest && stamp "perftest comparison done"
want perftest && python3 - "$out/perftest" >"$out/perftest.md" <<'EOF'
import glob, json, os, re, statistics, sys
d = sys.argv[1]
rows = {}
for f in glob.glob(d + "/perftest-*.log"):
    m = re.match(r"perftest-(\d+)M-O(\w+)-r(\d)\.log$", os.path.basename(f))
    if not m: continue
    fin = [l for l in open(f, errors="replace") if l.startswith("Final:")]
    if fin:
        mib = float(fin[-1].split()[6])  # overall MB/s column: MiB/s
        rows.setdefault((int(m[1]), "perftest-O" + m[2]), []).append(mib * 1048576 / 1e9)
for f in glob.glob(d + "/kvprobe-*/results.json"):
    m = re.match(r"kvprobe-(\d+)M-r(\d)$", os.path.basename(os.path.dirname(f)))
    r = json.load(open(f))
    for row in r["rows"]:
        rows.setdefault((int(m[1]), "kvprobe"), []).append(row["gbps"])
        rows.setdefault((int(m[1]), "transport"), []).append(" ".join((row.get("transport") or {}).get("lanes", [])) + " " + (row.get("transport") or {}).get("protocol", ""))
print("| size | ucx_perftest -O 1 (GB/s) | kvprobe raw UCX, local completion (GB/s) | ratio | ucx_perftest window 32 | kvprobe transport |")
print("|---|---|---|---|---|---|")
for s in sorted({k[0] for k in rows}):
    med = lambda t: statistics.median(rows[(s, t)]) if rows.get((s, t)) else None
    p, k, w = med("perftest-O1"), med("kvprobe"), med("perftest-Odefault")
    fmt = lambda v: "-" if v is None else f"{v:.1f}"
    ratio = "-" if not (p and k) else f"{k / p:.2f}"
    tr = (rows.get((s, "transport")) or ["-"])[0]
    print(f"| {s} MiB | {fmt(p)} | {fmt(k)} | {ratio} | {fmt(w)} | {tr} |")
print()
print("medians of 3 rounds; GB/s = 1e9 bytes/s (ucx_perftest's MB/s is MiB/s, converted)")
EOF
want perftest && cat "$out/perftest.md"

# The GPU integration tests (the same binary CI runs, where they skip).
if want tests && [ -x "$root/.gpu/gpu-tests" ]; then
  KVPROBE_BIN="$kv" "$root/.gpu/gpu-tests" --test-threads=1 --nocapture >"$out/gpu-tests.txt" 2>&1
  echo "exit $?" >>"$out/gpu-tests.txt"
  stamp "tests: $(grep -E '^test result' "$out/gpu-tests.txt")"
fi
# keep what documents the run; the helpers' logs only when something failed
for d in "$out"/*/ "$out"/perftest/*/; do
  [ -f "$d/results.json" ] || continue
  if grep -q '"status": "complete"' "$d/results.json"; then rm -f "$d/initiator.log" "$d/target.log"; fi
  rm -f "$d/results.csv"
done
du -sh "$out"
pack; [ -n "${OUT:-}" ] && ls -la "$OUT"
