#!/usr/bin/env bash
# Two emulated hosts on this machine, for kvprobe's cross-host tests and demos.
#
# Each host is its own network namespace, and commands run in it also get
# their own UTS namespace (hostname NAME-a / NAME-b), IPC namespace and
# /dev/shm (a private tmpfs), so UCX sees two machines: no shared memory or
# cma between them, only the network. Each `exec` makes these anew: the
# processes one command starts share them (a sweep and its local target do),
# two separate `exec`s into the same host do not share /dev/shm. The hosts are joined by a veth pair
# (NAMEa in host a, NAMEb in host b) with addresses 10.M.N.1 and 10.M.N.2/24
# that exist only inside the namespaces. Nothing outside is touched.
#
#   debug/hosts.sh up NAME                  create hosts NAME-a and NAME-b
#   debug/hosts.sh exec NAME a|b CMD...     run CMD in host a or b (exec: same PID)
#   debug/hosts.sh shape NAME [--rate R] [--delay D] [--loss L]
#                                           shape both directions of the link: a rate alone
#                                           with tc tbf, delay/loss with tc netem (needs
#                                           sch_netem in the kernel); e.g. --rate 1gbit
#   debug/hosts.sh unshape NAME             remove the shaping
#   debug/hosts.sh info NAME                print the hosts' addresses and devices (KEY=VALUE)
#   debug/hosts.sh down NAME                remove both hosts (idempotent)
#   debug/hosts.sh run NAME CMD...          up, run CMD on this machine with KVP_HOSTS, KVP_A_IP,
#                                           KVP_B_IP, KVP_A_DEV, KVP_B_DEV set, then down, even
#                                           when CMD fails or the script is interrupted
#
# NAME: 1-10 letters/digits (it names namespaces and interfaces). Needs root,
# iproute2 (ip, tc) and util-linux (unshare).
set -euo pipefail

die() { echo "hosts.sh: $*" >&2; exit 2; }

check_name() {
  [[ "${1:-}" =~ ^[a-zA-Z0-9]{1,10}$ ]] || die "NAME must be 1-10 letters or digits, got '${1:-}'"
}

need_root() {
  [ "$(id -u)" -eq 0 ] || die "needs root (network namespaces)"
  command -v ip >/dev/null || die "ip not found: apt-get install iproute2"
  command -v unshare >/dev/null || die "unshare not found: apt-get install util-linux"
}

# A /24 inside 10.0.0.0/8 derived from the name, so hosts of different names
# (tests running in parallel) never share addresses.
subnet() {
  local h
  h=$(printf '%s' "$1" | cksum | cut -d' ' -f1)
  echo "10.$(( 100 + h % 100 )).$(( (h / 100) % 250 + 1 ))"
}

info() {
  local net
  net=$(subnet "$1")
  echo "KVP_HOSTS=$1"
  echo "KVP_A_NS=$1-a"
  echo "KVP_B_NS=$1-b"
  echo "KVP_A_IP=$net.1"
  echo "KVP_B_IP=$net.2"
  echo "KVP_A_DEV=${1}a"
  echo "KVP_B_DEV=${1}b"
}

up() {
  local name=$1 net
  net=$(subnet "$name")
  down "$name"
  ip netns add "$name-a"
  ip netns add "$name-b"
  ip link add "${name}a" type veth peer name "${name}b"
  ip link set "${name}a" netns "$name-a"
  ip link set "${name}b" netns "$name-b"
  ip -n "$name-a" addr add "$net.1/24" dev "${name}a"
  ip -n "$name-b" addr add "$net.2/24" dev "${name}b"
  for h in a b; do
    ip -n "$name-$h" link set lo up
    ip -n "$name-$h" link set "${name}$h" up
  done
}

down() {
  local name=$1
  for h in a b; do
    # Processes still running in a host (started through `exec`, so ours):
    # stop them by PID, then remove the namespace.
    local pids
    pids=$(ip netns pids "$name-$h" 2>/dev/null || true)
    if [ -n "$pids" ]; then
      kill $pids 2>/dev/null || true
      sleep 0.5
      pids=$(ip netns pids "$name-$h" 2>/dev/null || true)
      [ -n "$pids" ] && kill -9 $pids 2>/dev/null || true
    fi
    ip netns del "$name-$h" 2>/dev/null || true
  done
  # A veth end left in this namespace by an interrupted `up`.
  ip link del "${name}a" 2>/dev/null || true
}

shape() {
  local name=$1; shift
  local rate="" delay="" loss="" args=()
  while [ $# -gt 0 ]; do
    case $1 in
      --rate) rate=$2; shift 2 ;;
      --delay) delay=$2; shift 2 ;;
      --loss) loss=$2; shift 2 ;;
      *) die "shape: unknown option $1" ;;
    esac
  done
  [ -n "$rate$delay$loss" ] || die "shape: give --rate, --delay and/or --loss"
  if [ -z "$delay$loss" ]; then
    # Rate only: a token bucket (tbf), available on every kernel. The bucket
    # holds 4 ms of traffic (at least 256 KiB: a TSO segment is 64 KiB).
    local bits burst
    bits=$(rate_bits "$rate")
    burst=$(( bits / 8 / 250 )); [ "$burst" -lt 262144 ] && burst=262144
    for h in a b; do
      ip netns exec "$name-$h" tc qdisc replace dev "${name}$h" root tbf rate "$rate" burst "$burst" latency 100ms
    done
    return
  fi
  [ -n "$delay" ] && args+=(delay "$delay")
  [ -n "$loss" ] && args+=(loss "$loss")
  [ -n "$rate" ] && args+=(rate "$rate")
  for h in a b; do
    # a deep queue: netem's default of 1000 packets drops at high rates
    ip netns exec "$name-$h" tc qdisc replace dev "${name}$h" root netem limit 100000 "${args[@]}" 2>/dev/null ||
      die "shape: tc netem failed (this kernel may lack sch_netem); --delay and --loss need it, --rate alone uses tbf"
  done
}

# "1gbit", "500mbit", "100kbit", "1000000" (bit/s) -> bits per second
rate_bits() {
  local r=${1,,}
  case $r in
    *gbit) echo $(( ${r%gbit} * 1000000000 )) ;;
    *mbit) echo $(( ${r%mbit} * 1000000 )) ;;
    *kbit) echo $(( ${r%kbit} * 1000 )) ;;
    *bit) echo "${r%bit}" ;;
    *[!0-9]*) die "shape: cannot read rate '$1' (use e.g. 1gbit, 500mbit)" ;;
    *) echo "$r" ;;
  esac
}

unshape() {
  local name=$1
  for h in a b; do
    ip netns exec "$name-$h" tc qdisc del dev "${name}$h" root 2>/dev/null || true
  done
}

cmd=${1:-}
[ -n "$cmd" ] || die "usage: hosts.sh up|exec|shape|unshape|info|down|run NAME ..."
shift
name=${1:-}
check_name "$name"
shift
case $cmd in
  info) info "$name" ;;
  up) need_root; up "$name"; info "$name" ;;
  down) need_root; down "$name" ;;
  shape) need_root; shape "$name" "$@" ;;
  unshape) need_root; unshape "$name" ;;
  exec)
    need_root
    host=${1:-}
    [[ "$host" == a || "$host" == b ]] || die "exec: host must be a or b"
    shift
    [ $# -gt 0 ] || die "exec: no command"
    ip netns list | grep -q "^$name-$host\b" || die "host $name-$host does not exist (hosts.sh up $name)"
    # exec all the way down, so the caller's PID is the command's PID.
    exec ip netns exec "$name-$host" unshare --uts --ipc --mount --propagation private -- \
      sh -c 'mount -t tmpfs -o size=2g,mode=1777 tmpfs /dev/shm && hostname "$0" && exec "$@"' \
      "$name-$host" "$@"
    ;;
  run)
    need_root
    [ $# -gt 0 ] || die "run: no command"
    child=""
    # On an interrupt: stop the command (the one this script started, by
    # PID), then the EXIT trap removes the hosts.
    trap 'down "$name"' EXIT
    trap '[ -n "$child" ] && kill -- "-$child" 2>/dev/null; exit 130' INT TERM
    up "$name" >/dev/null
    eval "$(info "$name" | sed 's/^/export /')"
    # In the background, in a process group of its own (so an interrupt stops
    # all of it, by that group's id), and waited for, so a signal is handled
    # at once; `down` then stops whatever still runs inside the hosts.
    setsid "$@" &
    child=$!
    status=0
    wait "$child" || status=$?
    child=""
    exit "$status"
    ;;
  *) die "unknown command $cmd" ;;
esac
