#!/usr/bin/env bash
# A real multi-node Ray cluster on this machine, for kvprobe's Ray tests and
# demos: the head in emulated host a, a worker in each of hosts b, c, ...
# (debug/hosts.sh: network namespaces joined by a veth, or by a bridge for
# more than two), each node with its own address, so Ray's per-node
# resources (`node:<address>`) tell them apart the way they do on a real
# cluster. Each node declares GPUS GPUs (GPUS_A, GPUS_B, ... per host):
# Ray's GPU resource is a count it schedules by, no GPU is needed for it (a
# deployment that really starts vLLM then fails, which is what the tests of
# the failure path want).
#
# Every Ray process of a node runs in a PID namespace of its own under
# `unshare --kill-child`: SIGKILL to that one process (by its PID) ends the
# whole node; `hosts.sh down` also stops whatever still runs in the hosts.
#
#   debug/ray-cluster.sh run NAME CMD...    hosts up, head + workers, run CMD on this machine with
#                                           KVP_RAY_ADDRESS (GCS host:port), KVP_RAY_DASHBOARD
#                                           (http://...), KVP_RAY_PIDS (a file of "HOST PID" lines:
#                                           SIGKILL to PID ends that node) and hosts.sh's KVP_*
#                                           set, then stop Ray and remove the hosts, also when
#                                           CMD fails
#
# CMD enters a host with `debug/hosts.sh exec "$KVP_HOSTS" a|b|... ...`.
# Environment: RAY_NODES=2 (2 to 8 nodes), PYTHON (a Python with ray[serve];
# default the project venv's), GPUS=8 (GPUS_A, GPUS_B, ... per host),
# RAY_LOGS (where the nodes' logs go; default a temp dir).
# Needs root (network namespaces); takes about 20 s to start 2 nodes on 2 cores.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
die() { echo "ray-cluster.sh: $*" >&2; exit 2; }
[ "${1:-}" = run ] || die "usage: ray-cluster.sh run NAME CMD..."
name=${2:-}
[ $# -ge 3 ] || die "usage: ray-cluster.sh run NAME CMD..."
shift 2
export PYTHON=${PYTHON:-$root/.venv/bin/python}
[ -x "$PYTHON" ] || die "$PYTHON not found: run debug/setup.sh (it installs ray[serve] into .venv) or set PYTHON"
"$PYTHON" -c "import ray" 2>/dev/null || die "$PYTHON cannot import ray: run debug/setup.sh (without KVPROBE_NO_RAY)"
export RAY_BIN
RAY_BIN=$(dirname "$PYTHON")/ray
[ -x "$RAY_BIN" ] || die "$RAY_BIN not found next to $PYTHON"
export GPUS=${GPUS:-8} RAY_NODES=${RAY_NODES:-2} HOSTS_SH=$root/debug/hosts.sh
# Ray's unix sockets live under the temp dir: keep its path short
export RAY_TMP
RAY_TMP=$(mktemp -d /tmp/kvray.XXXXXX)
export RAY_LOGS=${RAY_LOGS:-$RAY_TMP}
trap 'rm -rf "$RAY_TMP"' EXIT

"$root/debug/hosts.sh" run "$name" --hosts "$RAY_NODES" bash -c '
  set -euo pipefail
  say() { printf "ray-cluster: %s\n" "$*" >&2; }
  pids=()
  # SIGKILL: unshare --fork ignores SIGTERM while it waits; its death kills
  # the node'"'"'s first process (--kill-child), which ends the PID namespace
  cleanup() { for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done; }
  trap cleanup EXIT
  # one node: its own PID namespace; --kill-child ends it with the unshare process
  node() {
    local host=$1; shift
    local gv="GPUS_${host^^}"
    ( exec "$HOSTS_SH" exec "$KVP_HOSTS" "$host" unshare --pid --fork --kill-child --mount-proc \
        "$RAY_BIN" start --block --disable-usage-stats --num-cpus 2 --object-store-memory 100000000 \
        --num-gpus "${!gv:-$GPUS}" --temp-dir "$RAY_TMP/$host" "$@" >"$RAY_LOGS/ray-$host.log" 2>&1 ) &
    pids+=($!)
    echo "$host $!" >>"$RAY_TMP/pids"
  }
  export RAY_ADDRESS_GCS="$KVP_A_IP:6379"
  node a --head --node-ip-address "$KVP_A_IP" --port 6379 --dashboard-host "$KVP_A_IP" --dashboard-port 8265 \
    --include-dashboard true
  # wait for the head: its dashboard answers
  for _ in $(seq 120); do
    "$HOSTS_SH" exec "$KVP_HOSTS" a "$PYTHON" -c "import urllib.request as u; u.urlopen(\"http://$KVP_A_IP:8265/api/version\", timeout=2)" \
      2>/dev/null && break
    sleep 0.5
  done
  for h in ${KVP_HOST_LIST//,/ }; do
    [ "$h" = a ] && continue
    ipv="KVP_${h^^}_IP"
    node "$h" --address "$RAY_ADDRESS_GCS" --node-ip-address "${!ipv}"
  done
  # wait until every node is alive in the GCS
  ok=""
  for _ in $(seq $((30 + 15 * KVP_N))); do
    n=$("$HOSTS_SH" exec "$KVP_HOSTS" a "$PYTHON" - "$RAY_ADDRESS_GCS" <<"PY" 2>/dev/null || true
import sys, ray
ray.init(address=sys.argv[1], logging_level="ERROR", log_to_driver=False)
print(sum(1 for n in ray.nodes() if n["Alive"]))
PY
)
    [ "$n" = "$KVP_N" ] && { ok=1; break; }
    sleep 1
  done
  [ -n "$ok" ] || { say "the cluster did not come up; logs:"; tail -n 30 "$RAY_LOGS"/ray-*.log >&2; exit 1; }
  say "up: $KVP_N nodes (head $KVP_A_IP); dashboard http://$KVP_A_IP:8265"
  export KVP_RAY_ADDRESS="$RAY_ADDRESS_GCS" KVP_RAY_DASHBOARD="http://$KVP_A_IP:8265" KVP_RAY_PIDS="$RAY_TMP/pids"
  status=0
  "$@" || status=$?
  exit "$status"
' ray-cluster "$@"
