#!/usr/bin/env bash
# kvprobe tp on the GPU test machine (issue 10, point 2), in one go: TP-sharded KV transfers in GPU
# memory as concurrent rank pairs, a GPU per rank where the machine has enough, else every rank a
# process on GPU 0, over
# cuda_ipc; 1->1 (one pair alone), 2->2, 4->4 and 2->4 (decode reads half a prefill rank's heads),
# READ with UCX's cuda_ipc GET zero-copy on, 2->4 WRITE, and 2->4 READ without GET zero-copy (what
# the verdict says when the bytes fall back to TCP). Then the GPU integration test of tp. Results go
# to ./gpu-out (GPU_OUT to change) and, with $OUT set (the device tool), $OUT/tp-results.tar.gz.
# SKIP_TESTS=1: the tp runs only. TP_LIMIT: seconds per tp run (150). ONLY_ALONE=1: the single-pair
# baselines and the TCP-fallback run instead of the tp runs (then the tests).
#
# here:  debug/libfabric-bundle.sh  (.bundle/libfabric-cu13.tar.xz: NIXL 1.5.0 cu13 with UCX)
#        debug/gpu-build.sh         (.gpu/kvprobe, .gpu/gpu-tests)
# there: debug/gpu-tp.sh            (carry .gpu and .bundle)
. "$(dirname "${BASH_SOURCE[0]}")/gpu-env.sh"
# multi-GPU machines: NVLink multicast stays off (kvprobe never calls cuMulticastCreate)
export NCCL_NVLS_ENABLE=0
pack_at_exit tp-results
machine_facts

ngpu=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU')
tp() { # name, P, D, extra args...
  local name=$1 p=$2 d=$3; shift 3
  local pg dg
  if [ "$ngpu" -ge $((p + d)) ]; then
    # a GPU per rank, as vLLM places them: prefill 0..P-1, decode P..P+D-1
    pg=$(seq -s, 0 $((p - 1))); dg=$(seq -s, "$p" $((p + d - 1)))
  else
    # fewer GPUs than ranks: every rank on GPU 0 (checks function, not a layout's bandwidth)
    pg=$(printf '0%.0s,' $(seq "$p")); pg=${pg%,}
    dg=$(printf '0%.0s,' $(seq "$d")); dg=${dg%,}
  fi
  timeout -s INT "${TP_LIMIT:-150}" "$kv" tp --model Llama-3.1-8B --p-tp "$p" --d-tp "$d" --prefill-mem vram --decode-mem vram \
    --prefill-gpus "$pg" --decode-gpus "$dg" --no-fail --duration "${DUR:-500ms}" --out "$out/$name" "$@" >"$out/$name.txt" 2>&1
  echo "exit $?" >>"$out/$name.txt"
  stamp "$name: $(grep -E '^verdict' "$out/$name.txt")"
}
export UCX_CUDA_IPC_ENABLE_GET_ZCOPY=y
alone() { # name, sweep args...: one rank pair alone, the baseline for a TP run's pairs
  local name=$1; shift
  timeout -s INT 120 "$kv" sweep --model Llama-3.1-8B --src-mem vram --dst-mem vram --ops read --isl 1000 \
    --duration 500ms --no-fail --out "$out/$name" "$@" >"$out/$name.txt" 2>&1
  echo "exit $?" >>"$out/$name.txt"
  stamp "$name: $(grep -E '^verdict|READ' "$out/$name.txt" | head -3 | tr -s ' ')"
}
if [ -n "${ONLY_ALONE:-}" ]; then
  # why 2->4 is slow: its rank 1 alone (8 KiB half-block slices, never merged), and 1->1 with
  # NIXL's descriptor merge off (32 KiB whole blocks, one by one)
  alone alone-2to4-rank1 --p-tp 2 --d-tp 4 --d-rank 1
  alone alone-1to1-no-merge --no-desc-merge
  alone alone-2to4-rank1-inflight4 --p-tp 2 --d-tp 4 --d-rank 1 --inflight 4
  unset UCX_CUDA_IPC_ENABLE_GET_ZCOPY
  TP_LIMIT=90 DUR=300ms tp read-2to4-no-get-zcopy 2 4 --isl 1000
  export UCX_CUDA_IPC_ENABLE_GET_ZCOPY=y
  SKIP_RUNS=1
fi
if [ -z "${SKIP_RUNS:-}" ]; then
tp read-1to1 1 1 --isl 1000,5000,20000
tp read-2to4 2 4 --isl 1000,5000,20000
tp read-4to4 4 4 --isl 1000,5000,20000
tp read-2to2 2 2 --isl 1000,5000,20000
tp write-2to4 2 4 --isl 1000,5000,20000 --ops write
unset UCX_CUDA_IPC_ENABLE_GET_ZCOPY
TP_LIMIT=90 DUR=300ms tp read-2to4-no-get-zcopy 2 4 --isl 1000
export UCX_CUDA_IPC_ENABLE_GET_ZCOPY=y
fi
if [ -z "${SKIP_TESTS:-}" ] && [ -x "$root/.gpu/gpu-tests" ]; then
  KVPROBE_BIN="$kv" timeout 240 "$root/.gpu/gpu-tests" --test-threads 1 >"$out/gpu-tests.txt" 2>&1
  stamp "gpu tests: $(grep 'test result' "$out/gpu-tests.txt")"
fi
stamp done
