#!/usr/bin/env bash
# NIXL's LIBFABRIC plugin beside UCX on the GPU test machine, in one go (issue 11, point 4):
# doctor's view of the plugin with each libfabric carried; host and GPU memory sweeps with both
# NIXL backends and every transfer checked (--verify all); a zeroed-blocks injection on LIBFABRIC;
# KV-shaped rows; compare with one column per backend; FI_PROVIDER=shm. Results go to ./gpu-out
# (GPU_OUT to change) and, with $OUT set (the device tool), into $OUT/libfabric-results.tar.gz.
#
# here:  debug/libfabric-bundle.sh     (.bundle/libfabric-cu13.tar.xz: NIXL 1.5.0 + plugin, libfabrics)
#        debug/gpu-build.sh            (.gpu/kvprobe)
# there: debug/libfabric-gpu.sh        (carry .gpu and .bundle)
#   ONLY="vram-both compare"   only these steps (doctor always runs): dram-both dram-both-blocks
#     vram-both zero-blocks-libfabric kv-both fi-provider-shm dram-libfabric-<second> compare
. "$(dirname "${BASH_SOURCE[0]}")/gpu-env.sh"
# the plugin's CUDA runtime and hwloc; libcuda.so.1 is the driver's
export LD_LIBRARY_PATH=$opt/lf/deps${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
pack_at_exit libfabric-results
machine_facts "ls /opt/amazon/efa/lib | head -3" "ls /sys/class/infiniband"

# how each libfabric carried is used: Debian's needs its rdma-core libraries on the loader path;
# mpich's has none (its efa/verbs providers are modules beside it)
lfenv() {
  case $1 in
    debian13) echo "KVPROBE_LIBFABRIC_LIB=$opt/lf/debian13 LD_LIBRARY_PATH=$opt/lf/debian13:$LD_LIBRARY_PATH" ;;
    mpich) echo "KVPROBE_LIBFABRIC_LIB=$opt/lf/mpich" ;;
  esac
}
doc() { # name, env...: doctor screen and JSON
  local name=$1; shift
  env "$@" "$kv" doctor >"$out/doctor-$name.txt" 2>&1; echo "exit $?" >>"$out/doctor-$name.txt"
  env "$@" "$kv" doctor --json >"$out/doctor-$name.json" 2>/dev/null
}
doc none
doc debian13 $(lfenv debian13)
doc mpich $(lfenv mpich)
doc plugin-1.5.1 $(lfenv mpich) NIXL_PLUGIN_DIR=$opt/nixl/.nixl_cu13.mesonpy.libs/plugins-1.5.1
stamp "doctor done"
# the libfabrics the plugin loads with, Debian's first (the issue asks for Debian's packages)
lfs=()
for l in debian13 mpich; do
  grep -q "plugins that load:.*LIBFABRIC" "$out/doctor-$l.txt" && lfs+=("$l")
done
stamp "LIBFABRIC loads with: ${lfs[*]:-none}"
[ ${#lfs[@]} -gt 0 ] || exit 1
main=(env $(lfenv "${lfs[0]}"))
echo "main libfabric: ${lfs[0]}" >>"$out/machine.txt"

common=(sweep -q --duration 300ms --no-fail --xfer-timeout 20s --peer-timeout 60s)
run() { # name envwrapper... -- args...: one sweep into $out/name, its screen in $out/name.txt
  local name=$1; shift
  if [ -n "${ONLY:-}" ] && [[ " $ONLY " != *" $name "* ]]; then return 0; fi
  local pre=()
  while [ "$1" != "--" ]; do pre+=("$1"); shift; done
  shift
  "${pre[@]}" "$kv" "${common[@]}" --out "$out/$name" "$@" >"$out/$name.txt" 2>&1
  echo "exit $?" >>"$out/$name.txt"
  stamp "$name: $(tail -1 "$out/$name.txt")"
  pack
}
sizes=4K,64K,1M,16M,64M
run dram-both "${main[@]}" -- --backend nixl-ucx,nixl-libfabric,ucx --verify all --sizes $sizes
run dram-both-blocks "${main[@]}" -- --backend nixl-ucx,nixl-libfabric --verify all --sizes 1M,16M --block-size 16K
run vram-both "${main[@]}" UCX_CUDA_IPC_ENABLE_GET_ZCOPY=y -- --backend nixl-ucx,nixl-libfabric --verify all \
  --src-mem vram --dst-mem vram --sizes $sizes
run zero-blocks-libfabric "${main[@]}" -- --backend nixl-libfabric --verify all --inject zero-blocks \
  --sizes 1M --block-size 16K --ops READ
run kv-both "${main[@]}" -- --backend nixl-ucx,nixl-libfabric --model Llama-3.1-8B --isl 1000,8000 --ops READ
run fi-provider-shm "${main[@]}" FI_PROVIDER=shm -- --backend nixl-libfabric --sizes 64K
if [ ${#lfs[@]} -gt 1 ]; then
  run "dram-libfabric-${lfs[1]}" env $(lfenv "${lfs[1]}") -- --backend nixl-libfabric --verify all --sizes $sizes
fi
if [ -z "${ONLY:-}" ] || [[ " $ONLY " == *" compare "* ]]; then
"${main[@]}" "$kv" compare --no-fail --out "$out/compare" --backend nixl-ucx --backend nixl-libfabric \
  -- --sizes 64K,16M --duration 300ms >"$out/compare.txt" 2>&1; echo "exit $?" >>"$out/compare.txt"
stamp "compare: $(tail -1 "$out/compare.txt")"
fi
stamp "done"
