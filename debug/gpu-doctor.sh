#!/usr/bin/env bash
# On the GPU test machine (no registry access): unpack the offline NIXL/UCX bundle, then run
# `kvprobe doctor` (screen and JSON, and once more with UCX_CUDA_IPC_ENABLE_GET_ZCOPY=y) and a
# short host-memory sweep with both backends. Results go to $OUT (or ./gpu-out).
#
# here:  ../shared/tools/nixl-offline-bundle.sh .bundle/nixl-cu13.tar.xz cu13 && cargo build --release
# there: debug/gpu-doctor.sh            (carry target/release/kvprobe and .bundle)
set -u
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out=${OUT:-$root/gpu-out}
mkdir -p "$out"
kv="$root/target/release/kvprobe"
bundle=${BUNDLE:-$root/.bundle/nixl-cu13.tar.xz}
[ -x "$kv" ] || { echo "no $kv: build it and carry it" >&2; exit 2; }
[ -f "$bundle" ] || { echo "no bundle at $bundle" >&2; exit 2; }
mkdir -p /opt/nixl && tar -xJf "$bundle" -C /opt/nixl
export KVPROBE_NIXL_LIB=/opt/nixl/nixl
{ nvidia-smi -L; nvidia-smi --query-gpu=name,driver_version,pci.bus_id --format=csv; nvidia-smi topo -m; uname -r; } >"$out/gpu.txt" 2>&1
"$kv" doctor >"$out/doctor.txt" 2>"$out/doctor.err"; echo "exit $?" >>"$out/doctor.txt"
"$kv" doctor --json >"$out/doctor.json" 2>>"$out/doctor.err"
UCX_CUDA_IPC_ENABLE_GET_ZCOPY=y "$kv" doctor >"$out/doctor-get-zcopy.txt" 2>&1; echo "exit $?" >>"$out/doctor-get-zcopy.txt"
"$kv" sweep -q --backend nixl,ucx --sizes 4K,1M,64M --duration 300ms --out "$out/sweep" >"$out/sweep.txt" 2>&1
echo "sweep exit $?" >>"$out/sweep.txt"
rm -f "$out/sweep/initiator.log" "$out/sweep/target.log" "$out/sweep/results.csv"
ls -la "$out" "$out/sweep"
