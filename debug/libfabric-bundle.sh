#!/usr/bin/env bash
# Packs what NIXL's LIBFABRIC plugin needs on the GPU test machine (no registry access there) into
# .bundle/libfabric-cu13.tar.xz, for debug/libfabric-gpu.sh:
#   nixl/, ucx/   NIXL $NIXL_VERSION (cu13) from ../shared/tools/nixl-offline-bundle.sh, plus the
#                 LIBFABRIC plugin and the wheel libraries it needs
#   lf/debian13/  libfabric 2.1.0 and its libraries from Debian 13's packages (.deb, extracted):
#                 libfabric1, libibverbs1, librdmacm1t64, ibverbs-providers (libefa), libpsm2-2,
#                 libnl-3-200, libnl-route-3-200 (they need glibc >= 2.38)
#   lf/mpich/     libfabric 2.5.1 from the mpich 5.0.2 wheel on PyPI (manylinux_2_28)
#   lf/deps/      libcudart.so.13 (PyPI nvidia-cuda-runtime), libhwloc.so.15 (Debian 12's libhwloc15)
#   nixl/.nixl_cu13.mesonpy.libs/plugins-1.5.1/libplugin_LIBFABRIC.so   NIXL 1.5.1's plugin, for
#                 doctor's symbol-version check
# Why NIXL 1.5.0: the 1.5.1 wheels' plugin needs fi_getinfo@FABRIC_1.10, which no libfabric on
# Debian (1.17.0: versions up to FABRIC_1.6; 2.1.0: FABRIC_1.8) or PyPI (2.5.1: FABRIC_1.9) defines; 1.5.0's
# needs FABRIC_1.7 (docs/results/libfabric-gpu-2026-12-06.md).
#
# usage: debug/libfabric-bundle.sh [OUT.tar.xz]   (NIXL_VERSION, default 1.5.0)
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out=$(realpath -m "${1:-$root/.bundle/libfabric-cu13.tar.xz}")
nixl_ver=${NIXL_VERSION:-1.5.0}
work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
mkdir -p "$work/stage/lf/debian13" "$work/stage/lf/mpich" "$work/stage/lf/deps" "$(dirname "$out")"
say() { printf 'libfabric-bundle: %s\n' "$*" >&2; }

say "NIXL $nixl_ver (cu13) offline bundle"
NIXL_VERSION=$nixl_ver "$root/../shared/tools/nixl-offline-bundle.sh" "$work/nixl.tar.xz" cu13 >/dev/null
tar -xJf "$work/nixl.tar.xz" -C "$work/stage"

plat=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64)
pipdl() { python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp "${plat[@]}" -d "$work/whl" "$@"; }
say "wheels: nixl-cu13 $nixl_ver and 1.5.1, mpich 5.0.2, nvidia-cuda-runtime 13"
for w in "nixl-cu13==$nixl_ver" "nixl-cu13==1.5.1" "mpich==5.0.2" "nvidia-cuda-runtime==13.0.96"; do pipdl "$w"; done

# the LIBFABRIC plugin and what it needs from its wheel
mkdir -p "$work/x"
(cd "$work/x" && unzip -q -o "$work/whl/nixl_cu13-$nixl_ver-"*.whl)
libs="$work/x/.nixl_cu13.mesonpy.libs"; deps="$work/x/nixl_cu13.libs"
cp "$libs/plugins/libplugin_LIBFABRIC.so" "$work/stage/nixl/.nixl_cu13.mesonpy.libs/plugins/"
for n in $(readelf -d "$libs/plugins/libplugin_LIBFABRIC.so" | sed -n 's/.*(NEEDED).*\[\(.*\)\]/\1/p'); do
  for d in "$libs" "$deps"; do
    if [ -f "$d/$n" ] && [ ! -e "$work/stage/nixl/$(basename "$d")/$n" ]; then
      mkdir -p "$work/stage/nixl/$(basename "$d")"; cp "$d/$n" "$work/stage/nixl/$(basename "$d")/"
    fi
  done
done
mkdir -p "$work/y"
(cd "$work/y" && unzip -q -o "$work/whl/nixl_cu13-1.5.1-"*.whl '.nixl_cu13.mesonpy.libs/plugins/libplugin_LIBFABRIC.so')
# beside 1.5.0's plugins, so its RPATH ($ORIGIN/..) finds the same NIXL libraries
mkdir -p "$work/stage/nixl/.nixl_cu13.mesonpy.libs/plugins-1.5.1"
cp "$work/y/.nixl_cu13.mesonpy.libs/plugins/libplugin_LIBFABRIC.so" "$work/stage/nixl/.nixl_cu13.mesonpy.libs/plugins-1.5.1/"

# mpich's libfabric (and its provider folder)
mkdir -p "$work/m"
(cd "$work/m" && unzip -q -o "$work/whl/mpich-5.0.2-"*.whl 'mpich-5.0.2.data/data/lib/mpich/libfabric*')
cp -a "$work/m/mpich-5.0.2.data/data/lib/mpich/." "$work/stage/lf/mpich/"

# the CUDA 13 runtime
mkdir -p "$work/c"
(cd "$work/c" && unzip -q -o "$work/whl/nvidia_cuda_runtime-"*.whl)
cudart=$(find "$work/c" -name 'libcudart.so.13*' -type f | head -n 1)
[ -n "$cudart" ] || { say "no libcudart.so.13 in the nvidia-cuda-runtime wheel"; exit 1; }
cp "$cudart" "$work/stage/lf/deps/libcudart.so.13"

# Debian: hwloc from bookworm (apt), libfabric and rdma-core from trixie (by URL from the same mirror)
mkdir -p "$work/deb"
(cd "$work/deb" && apt-get download libhwloc15 >/dev/null 2>&1) || { say "apt-get download libhwloc15 failed"; exit 1; }
mirror=http://deb.debian.org/debian
curl -fsS -m 120 -o "$work/Packages.xz" "$mirror/dists/trixie/main/binary-amd64/Packages.xz"
xz -dc "$work/Packages.xz" >"$work/Packages"
for p in libfabric1 libibverbs1 librdmacm1t64 ibverbs-providers libpsm2-2 libnl-3-200 libnl-route-3-200; do
  f=$(awk -v p="$p" '$1=="Package:"{cur=$2} $1=="Filename:" && cur==p {print $2; exit}' "$work/Packages")
  [ -n "$f" ] || { say "trixie has no $p"; exit 1; }
  curl -fsS -m 120 -o "$work/deb/$(basename "$f")" "$mirror/$f"
done
for d in "$work"/deb/*.deb; do dpkg-deb -x "$d" "$work/debx"; done
cp -a "$work"/debx/usr/lib/x86_64-linux-gnu/libhwloc.so.15* "$work/stage/lf/deps/"
for n in libfabric.so.1 libibverbs.so.1 librdmacm.so.1 libefa.so.1 libpsm2.so.2 libnl-3.so.200 libnl-route-3.so.200; do
  cp -aL "$work/debx/usr/lib/x86_64-linux-gnu/$n" "$work/stage/lf/debian13/"
done
# libfabric dlopens rdma-core's providers only for verbs/efa; tcp needs none of them
ls "$work"/deb/*.deb | xargs -n1 basename >"$work/stage/lf/debian13/PACKAGES"
{ echo "nixl-cu13 $nixl_ver (+ LIBFABRIC plugin), libfabric: Debian 13 $(awk '$1=="Package:"{c=$2} c=="libfabric1" && $1=="Version:"{print $2; exit}' "$work/Packages"), mpich 5.0.2 wheel (2.5.1)"; } >>"$work/stage/VERSIONS"
tar -C "$work/stage" -cJf "$out" .
ls -la "$out"
