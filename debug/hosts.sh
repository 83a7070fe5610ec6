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
# More than two hosts (`--hosts N`, 3 to 8: hosts a, b, c, ...): each host's
# veth goes to a bridge in a namespace of its own (NAME-sw, the "switch"),
# host h has address 10.M.N.<index> (a=1, b=2, ...) and device NAMEh, and
# its link can be shaped alone (`shape NAME --host h`): a bad cable among
# good ones.
#
#   debug/hosts.sh up NAME [--hosts N]      create hosts NAME-a, NAME-b (, NAME-c, ...)
#   debug/hosts.sh exec NAME HOST CMD...    run CMD in host a, b, ... (exec: same PID)
#   debug/hosts.sh shape NAME [--host H] [--rate R] [--delay D] [--loss L]
#                                           shape both directions of the link (two hosts: the
#                                           veth; more: host H's link to the switch): a rate
#                                           alone with tc tbf, delay/loss with tc netem (needs
#                                           sch_netem in the kernel); e.g. --rate 1gbit
#   debug/hosts.sh unshape NAME [--host H]  remove the shaping
#   debug/hosts.sh info NAME [--hosts N]    print the hosts' addresses and devices (KEY=VALUE)
#   debug/hosts.sh down NAME                remove all the hosts (idempotent)
#   debug/hosts.sh run NAME [--hosts N] CMD...
#                                           up, run CMD on this machine with KVP_HOSTS, KVP_N,
#                                           KVP_HOST_LIST (a,b,...), KVP_<H>_IP, KVP_<H>_DEV
#                                           (KVP_A_IP, KVP_B_IP, ...) set, then down, even when
#                                           CMD fails or the script is interrupted
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

LETTERS=(a b c d e f g h)

# host letters of N hosts: "a b c"
host_list() {
  local n=$1
  [[ "$n" =~ ^[2-8]$ ]] || die "--hosts must be 2 to 8, got '$n'"
  echo "${LETTERS[@]:0:$n}"
}

info() {
  local name=$1 n=${2:-2} net i=1 h H
  net=$(subnet "$name")
  echo "KVP_HOSTS=$name"
  echo "KVP_N=$n"
  local list
  list=$(host_list "$n")
  echo "KVP_HOST_LIST=${list// /,}"
  for h in $(host_list "$n"); do
    H=${h^^}
    echo "KVP_${H}_NS=$name-$h"
    echo "KVP_${H}_IP=$net.$i"
    echo "KVP_${H}_DEV=${name}$h"
    i=$((i + 1))
  done
}

up() {
  local name=$1 n=${2:-2} net i=1 h
  net=$(subnet "$name")
  down "$name"
  local hosts
  hosts=$(host_list "$n")
  for h in $hosts; do ip netns add "$name-$h"; done
  if [ "$n" = 2 ]; then
    ip link add "${name}a" type veth peer name "${name}b"
    ip link set "${name}a" netns "$name-a"
    ip link set "${name}b" netns "$name-b"
  else
    # a switch: a bridge in its own namespace, one veth per host
    ip netns add "$name-sw"
    ip -n "$name-sw" link add br0 type bridge
    ip -n "$name-sw" link set br0 up
    ip -n "$name-sw" link set lo up
    for h in $hosts; do
      ip link add "${name}$h" type veth peer name "${name}${h}s"
      ip link set "${name}$h" netns "$name-$h"
      ip link set "${name}${h}s" netns "$name-sw"
      ip -n "$name-sw" link set "${name}${h}s" master br0
      ip -n "$name-sw" link set "${name}${h}s" up
    done
  fi
  for h in $hosts; do
    ip -n "$name-$h" addr add "$net.$i/24" dev "${name}$h"
    ip -n "$name-$h" link set lo up
    ip -n "$name-$h" link set "${name}$h" up
    i=$((i + 1))
  done
}

# the hosts of NAME that exist now (letters), and whether a switch does
existing_hosts() {
  ip netns list 2>/dev/null | awk '{print $1}' | sed -n "s/^$1-\([a-h]\)\$/\1/p" | sort
}

down() {
  local name=$1
  for h in $(existing_hosts "$name") sw; do
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
  for h in "${LETTERS[@]}"; do
    ip link del "${name}$h" 2>/dev/null || true
  done
}

# the (namespace, device) pairs carrying host H's traffic, both directions
link_ends() {
  local name=$1 host=$2
  if [ -z "$host" ]; then
    [ -z "$(ip netns list | awk '{print $1}' | grep -x "$name-sw")" ] ||
      die "these hosts share a switch: say which host's link (--host H)"
    echo "$name-a ${name}a"
    echo "$name-b ${name}b"
  else
    [[ "$host" =~ ^[a-h]$ ]] || die "--host must be a host letter, got '$host'"
    ip netns list | awk '{print $1}' | grep -qx "$name-$host" || die "host $name-$host does not exist"
    echo "$name-$host ${name}$host"
    if ip netns list | awk '{print $1}' | grep -qx "$name-sw"; then
      echo "$name-sw ${name}${host}s"
    else
      # two hosts: the veth's other end
      local other=a
      [ "$host" = a ] && other=b
      echo "$name-$other ${name}$other"
    fi
  fi
}

shape() {
  local name=$1; shift
  local rate="" delay="" loss="" host="" args=()
  while [ $# -gt 0 ]; do
    case $1 in
      --host) host=$2; shift 2 ;;
      --rate) rate=$2; shift 2 ;;
      --delay) delay=$2; shift 2 ;;
      --loss) loss=$2; shift 2 ;;
      *) die "shape: unknown option $1" ;;
    esac
  done
  [ -n "$rate$delay$loss" ] || die "shape: give --rate, --delay and/or --loss"
  local ends
  ends=$(link_ends "$name" "$host")
  if [ -z "$delay$loss" ]; then
    # Rate only: a token bucket (tbf), available on every kernel. The bucket
    # holds 4 ms of traffic (at least 256 KiB: a TSO segment is 64 KiB).
    local bits burst
    bits=$(rate_bits "$rate")
    burst=$(( bits / 8 / 250 )); [ "$burst" -lt 262144 ] && burst=262144
    while read -r ns dev; do
      ip netns exec "$ns" tc qdisc replace dev "$dev" root tbf rate "$rate" burst "$burst" latency 100ms
    done <<<"$ends"
    return
  fi
  [ -n "$delay" ] && args+=(delay "$delay")
  [ -n "$loss" ] && args+=(loss "$loss")
  [ -n "$rate" ] && args+=(rate "$rate")
  while read -r ns dev; do
    # a deep queue: netem's default of 1000 packets drops at high rates
    ip netns exec "$ns" tc qdisc replace dev "$dev" root netem limit 100000 "${args[@]}" 2>/dev/null ||
      die "shape: tc netem failed (this kernel may lack sch_netem); --delay and --loss need it, --rate alone uses tbf"
  done <<<"$ends"
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
  local name=$1 host=""
  [ "${2:-}" = --host ] && host=${3:-}
  local ends
  ends=$(link_ends "$name" "$host")
  while read -r ns dev; do
    ip netns exec "$ns" tc qdisc del dev "$dev" root 2>/dev/null || true
  done <<<"$ends"
}

# --hosts N at the front of the arguments: sets NHOSTS, says how many to shift
NHOSTS=2
hosts_opt() {
  if [ "${1:-}" = --hosts ]; then
    NHOSTS=${2:-}
    host_list "$NHOSTS" >/dev/null
    return 0
  fi
  return 1
}

cmd=${1:-}
[ -n "$cmd" ] || die "usage: hosts.sh up|exec|shape|unshape|info|down|run NAME ..."
shift
name=${1:-}
check_name "$name"
shift
case $cmd in
  info) hosts_opt "$@" && shift 2; info "$name" "$NHOSTS" ;;
  up) need_root; hosts_opt "$@" && shift 2; up "$name" "$NHOSTS"; info "$name" "$NHOSTS" ;;
  down) need_root; down "$name" ;;
  shape) need_root; shape "$name" "$@" ;;
  unshape) need_root; unshape "$name" "$@" ;;
  exec)
    need_root
    host=${1:-}
    [[ "$host" =~ ^[a-h]$ ]] || die "exec: host must be a host letter (a, b, ...)"
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
    hosts_opt "$@" && shift 2
    [ $# -gt 0 ] || die "run: no command"
    child=""
    # On an interrupt: stop the command (the one this script started, by
    # PID), then the EXIT trap removes the hosts.
    trap 'down "$name"' EXIT
    trap '[ -n "$child" ] && kill -- "-$child" 2>/dev/null; exit 130' INT TERM
    up "$name" "$NHOSTS" >/dev/null
    eval "$(info "$name" "$NHOSTS" | sed 's/^/export /')"
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
