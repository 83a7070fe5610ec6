# Sourced by the GPU machine's scripts (debug/gpu-tp.sh, debug/libfabric-gpu.sh): the carried
# kvprobe, the NIXL bundle unpacked into /opt/nixl-lf, the output folder, timestamps, packing and
# the machine's facts.
#   in:  GPU_OUT (output folder, ./gpu-out), KVPROBE (binary), BUNDLE (.bundle/libfabric-cu13.tar.xz),
#        OUT (the device tool's folder: results are packed there at exit)
#   out: root, out, kv, opt, t0; KVPROBE_NIXL_LIB and (when carried) KVPROBE_FONT exported;
#        stamp MSG (a line with the seconds since start); pack_at_exit NAME ($OUT/NAME.tar.gz);
#        machine_facts [COMMAND...] (writes $out/machine.txt, then the commands' output)
set -u
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out=${GPU_OUT:-$root/gpu-out}
mkdir -p "$out"
kv=${KVPROBE:-$root/.gpu/kvprobe}
[ -x "$kv" ] || kv="$root/target/release/kvprobe"
bundle=${BUNDLE:-$root/.bundle/libfabric-cu13.tar.xz}
[ -x "$kv" ] || { echo "no kvprobe binary: run debug/gpu-build.sh and carry .gpu" >&2; exit 2; }
[ -f "$bundle" ] || { echo "no bundle at $bundle: run debug/libfabric-bundle.sh" >&2; exit 2; }
opt=/opt/nixl-lf
rm -rf "$opt" && mkdir -p "$opt" && tar -xJf "$bundle" -C "$opt"
export KVPROBE_NIXL_LIB=$opt/nixl
# the GPU machine has no fonts: PNG plots and heatmaps use the carried one
[ -f "$root/.gpu/DejaVuSans.ttf" ] && export KVPROBE_FONT="$root/.gpu/DejaVuSans.ttf"
t0=$(date +%s)
stamp() { echo "[$(( $(date +%s) - t0 ))s] $*"; }
pack_at_exit() {
  pack_name=$1
  pack() { if [ -n "${OUT:-}" ]; then tar -C "$out" -czf "$OUT/$pack_name.tar.gz" . 2>/dev/null; fi; }
  trap pack EXIT
}
machine_facts() {
  { cat /etc/os-release 2>/dev/null | head -3; ldd --version 2>&1 | head -1; uname -r; nproc
    nvidia-smi --query-gpu=name,driver_version,pci.bus_id --format=csv,noheader; cat "$opt/VERSIONS"
    for c in "$@"; do bash -c "$c" 2>&1; done; } >"$out/machine.txt" 2>&1
}
