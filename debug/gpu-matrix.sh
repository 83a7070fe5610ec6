#!/usr/bin/env bash
# `kvprobe matrix --gpus-per-node` for real on a GPU machine: a real Ray
# cluster of two nodes on one host (head on 127.0.0.3, a worker on
# 127.0.0.2, each with its own raylet and temp dir, both seeing the host's
# GPUs), then five matrices through it:
#   gpu          --gpus-per-node <the GPUs nvidia-smi lists>: GPU memory on both ends, READ, UCX's defaults
#   gpu-getzcopy the same with UCX_CUDA_IPC_ENABLE_GET_ZCOPY=y (the fix doctor names for READ without NVLink)
#   gpu-write    the same with --ops write
#   gpu-x2       --gpus-per-node <one more than there are>: the missing GPU reported, the rest measured
#   node         one endpoint per node, host memory (the default matrix)
# Both "nodes" are one host, so UCX carries the bytes over shared memory and
# cuda_ipc, not a network: this checks the per-GPU path end to end (Ray
# placement, one serve per GPU, --gpu per pair, VRAM registration, the
# doctor's GPU count), not a network's speed.
#
# The GPU machine has no registry: Ray travels as a stripped tarball.
#   here:  cargo build --release && debug/gpu-matrix.sh pack
#            Ray 2.60 for CPython 3.12 and kvprobe, xz-packed, into .gpu-mx/ (about 27 MB:
#            with the NIXL bundle and the repo it stays under the device tool's 64 MiB)
#   there: debug/gpu-matrix.sh run      (carry .bundle and .gpu-mx)
# Results go to gpu-out/matrix (GPU_OUT to change); with $OUT set (the device
# tool) also packed into $OUT/gpu-matrix.tar.gz. PYTHON picks the Python
# (default python3); where it already imports ray, .gpu-mx is not needed.
set -u
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
mx=$root/.gpu-mx
ray_version=2.60.0
die() { echo "gpu-matrix: $*" >&2; exit 2; }

pack() {
  local py=$root/.venv/bin/python tmp
  [ -x "$py" ] || die "no $py: run debug/setup.sh"
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' RETURN
  "$py" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux2014_x86_64 --platform manylinux_2_17_x86_64 -d "$tmp" \
    "ray==$ray_version" jsonschema==4.26.0 jsonschema-specifications==2025.9.1 referencing==0.37.0 rpds-py==2026.9.1 ||
    die "pip download failed"
  rm -rf "$mx" && mkdir -p "$mx/x"
  # Ray core only: the libraries kvprobe does not use, the dashboard's web
  # client and the Java jars go; the three big binaries lose their symbols
  (cd "$mx/x" && unzip -q "$tmp"/ray-*.whl &&
    rm -rf ray/jars ray/rllib ray/data ray/serve ray/train ray/tune ray/llm ray/dashboard/client &&
    strip --strip-unneeded ray/_raylet.so ray/core/src/ray/gcs/gcs_server ray/core/src/ray/raylet/raylet &&
    tar cf - . | xz -T0 -6 >"$mx/ray.tar.xz") || die "packing Ray failed"
  rm -rf "$mx/x" "$tmp"/ray-*.whl
  mv "$tmp"/*.whl "$mx/"
  [ -x "$root/target/release/kvprobe" ] || die "no target/release/kvprobe: cargo build --release"
  strip -o "$tmp/kvprobe" "$root/target/release/kvprobe" && xz -T0 -9 -c "$tmp/kvprobe" >"$mx/kvprobe.xz"
  # the GPU machine has no fonts: the heatmaps' PNG and SVG text use this one (KVPROBE_FONT)
  cp /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf "$mx/" 2>/dev/null || echo "no DejaVuSans.ttf here: no heatmaps there" >&2
  du -sh "$mx"
}

run() {
  local out=${GPU_OUT:-$root/gpu-out/matrix} kv=${KVPROBE:-$root/.gpu/kvprobe} py=${PYTHON:-python3}
  if [ ! -x "$kv" ] && [ -f "$mx/kvprobe.xz" ]; then
    xz -dc "$mx/kvprobe.xz" >/tmp/kvprobe-mx && chmod +x /tmp/kvprobe-mx && kv=/tmp/kvprobe-mx
  fi
  [ -x "$kv" ] || kv=$root/target/release/kvprobe
  [ -x "$kv" ] || die "no kvprobe binary: debug/gpu-matrix.sh pack (here), and carry .gpu-mx"
  mkdir -p "$out"
  # global: the EXIT trap uses them
  pids=() tmp=$(mktemp -d /tmp/kvmx.XXXXXX) res=$out
  stop() {
    for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null; done
    for p in "${pids[@]}"; do
      for _ in $(seq 40); do kill -0 "$p" 2>/dev/null || break; sleep 0.25; done
      kill -KILL "$p" 2>/dev/null; wait "$p" 2>/dev/null
    done
    pids=()
    for n in a b; do cp "$tmp/$n"/session_latest/logs/raylet.out "$res/raylet-$n.out" 2>/dev/null; done
  }
  trap 'stop; [ -n "${OUT:-}" ] && tar -C "$res" -czf "$OUT/gpu-matrix.tar.gz" . 2>/dev/null; rm -rf "$tmp"' EXIT
  export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
  [ -z "${KVPROBE_FONT:-}" ] && [ -f "$mx/DejaVuSans.ttf" ] && export KVPROBE_FONT=$mx/DejaVuSans.ttf
  if [ -z "${KVPROBE_NIXL_LIB:-}" ] && [ -f "$root/.bundle/nixl-cu13.tar.xz" ]; then
    mkdir -p /opt/nixl && tar -xJf "$root/.bundle/nixl-cu13.tar.xz" -C /opt/nixl && export KVPROBE_NIXL_LIB=/opt/nixl/nixl
  fi
  if ! "$py" -c "import ray" 2>/dev/null; then
    [ -f "$mx/ray.tar.xz" ] || die "$py has no ray and there is no $mx/ray.tar.xz (debug/gpu-matrix.sh pack, here)"
    local site=/tmp/kvp-raysite
    mkdir -p "$site" && tar -xJf "$mx/ray.tar.xz" -C "$site" &&
      "$py" -m pip install -q --no-index --no-deps --no-compile --target "$site" "$mx"/*.whl || die "installing Ray failed"
    export PYTHONPATH=$site${PYTHONPATH:+:$PYTHONPATH}
  fi
  "$py" -c "import ray; print('ray', ray.__version__)" | tee "$out/ray-version.txt" || die "$py cannot import ray"
  local gpus
  gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU')
  { nvidia-smi -L; nvidia-smi --query-gpu=name,driver_version,pci.bus_id --format=csv; "$py" -V; nproc; } >"$out/machine.txt" 2>&1
  [ "${gpus:-0}" -ge 1 ] || echo "gpu-matrix: no GPU listed by nvidia-smi; the per-GPU matrices will report them missing" >&2
  [ "${gpus:-0}" -ge 1 ] || gpus=1
  # `ray start --block` in the background: each node is one process to end
  node() {
    local name=$1; shift
    "$py" -c 'import sys; from ray.scripts.scripts import main; sys.argv[0] = "ray"; sys.exit(main())' \
      start --block --disable-usage-stats --num-cpus 4 --num-gpus "$gpus" --object-store-memory 200000000 \
      --temp-dir "$tmp/$name" "$@" >"$out/ray-$name.log" 2>&1 &
    pids+=($!)
  }
  local t0=$SECONDS
  node a --head --node-ip-address 127.0.0.3 --port 6390 --include-dashboard false
  sleep 5
  node b --address 127.0.0.3:6390 --node-ip-address 127.0.0.2 --dashboard-agent-listen-port 52366
  local up=""
  for _ in $(seq 90); do
    n=$("$py" -c 'import ray; ray.init(address="127.0.0.3:6390", logging_level="ERROR", log_to_driver=False); print(sum(1 for n in ray.nodes() if n["Alive"]))' 2>/dev/null)
    [ "$n" = 2 ] && { up=1; break; }
    sleep 1
  done
  [ -n "$up" ] || { tail -n 40 "$out"/ray-*.log >&2; die "the two Ray nodes did not come up"; }
  echo "gpu-matrix: 2 Ray nodes up in $((SECONDS - t0)) s, $gpus GPU(s) each"
  "$kv" doctor >"$out/doctor.txt" 2>&1
  local common=(matrix --ray-address 127.0.0.3:6390 --python "$py" --duration 0.5s --line-rate-at 0 --no-fail)
  local sizes=1M,16M,64M,256M
  for m in gpu gpu-getzcopy gpu-write gpu-x2 node; do
    local env=()
    case $m in
      gpu) args=(--gpus-per-node "$gpus" --sizes $sizes) ;;
      gpu-getzcopy) args=(--gpus-per-node "$gpus" --sizes $sizes) env=(UCX_CUDA_IPC_ENABLE_GET_ZCOPY=y) ;;
      gpu-write) args=(--gpus-per-node "$gpus" --sizes $sizes --ops write) ;;
      gpu-x2) args=(--gpus-per-node $((gpus + 1)) --sizes 16M) ;;
      node) args=(--sizes $sizes) ;;
    esac
    local s=$SECONDS
    env "${env[@]}" "$kv" "${common[@]}" "${args[@]}" --out "$out/$m" >"$out/$m.txt" 2>"$out/$m.err"
    echo "exit $? after $((SECONDS - s)) s" >>"$out/$m.txt"
    echo "gpu-matrix: $m: $(tail -1 "$out/$m.txt")"
    cat "$out/$m.txt"
  done
}

case ${1:-} in
  pack) pack ;;
  run) run ;;
  *) die "usage: debug/gpu-matrix.sh pack|run" ;;
esac
