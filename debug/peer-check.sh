#!/usr/bin/env bash
# Peer check (issue 7 point 5): kvprobe's load generator against vLLM's own client,
# `vllm bench serve`, on the same `kvprobe emulate` server and the same workload.
#
# usage: debug/peer-check.sh            (writes docs/results/peer-check-2026-11-24/)
#   OUT=DIR          results folder instead
#   PEER_VENV=DIR    throwaway venv for the peer client (default /tmp/kvprobe-peer-venv;
#                    never the project's .venv)
#   WIRE=auto|1|0    also time every request on the wire with tcpdump on loopback
#                    (auto: when tcpdump runs, installing Debian's tcpdump first if root)
#   DROP_VENV=1      delete the venv at the end (default: kept in /tmp and reused by the
#                    next run when it holds the pinned vllm)
#
# NOT part of CI: too heavy. What it installs, and how long it takes on the project's
# machine (2 cores, no GPU, PyPI reachable, no Hugging Face hub):
#   - a venv with vllm==0.33.0 from PyPI (its CUDA wheel and everything it pulls:
#     torch, transformers, tokenizers, aiohttp...): about 9.5 GB on disk, about 5 minutes;
#     only vllm's client (`vllm bench serve`) is used: no engine starts, no GPU is needed.
#   - tcpdump (Debian) when WIRE is not 0 and it is missing and we are root.
#   - nothing from any model hub: the tokenizer is made here (see below).
# The runs themselves take about 4.5 minutes (every `vllm bench serve` call spends ~15 s
# importing torch before it sends anything). Results: docs/results/peer-check-2026-11-24.md.
#
# What it does:
#   1. the venv (above) and target/release/kvprobe (copied to a temp dir so a rebuild
#      during the run cannot change it; build it first with `cargo build --release`);
#   2. a local tokenizer: WordLevel over the words w1..w31999 (+ [UNK]) with a whitespace
#      pre-tokenizer, saved as a transformers-loadable folder. vLLM's random dataset draws
#      token ids, decodes them to text and checks the text re-encodes to the same length;
#      with this tokenizer the text of N tokens is N whitespace-separated words, which is
#      exactly how the emulator counts a text prompt, so both clients send 256-token prompts
#      (kvprobe sends token-id arrays). The emulator's usage.prompt_tokens, which both
#      clients store as total_input_tokens, confirms it;
#   3. for each emulator set-up it starts `kvprobe emulate --port 0` itself (its PID is
#      kept and only that PID is ended, also on exit), then for each point runs
#      `kvprobe bench` and then `vllm bench serve` with the same shape (ITL 256, OTL 64,
#      ignore_eos, the same number of prompts, one unmeasured warm-up request each:
#      kvprobe's --warmup 1, vLLM's --num-warmups 1 (vLLM 0.33 sends no "initial test run"
#      unless --ready-check-timeout-sec is set)), tcpdump capturing each client's run when
#      WIRE allows;
#   4. writes the raw JSON of both clients (per-request arrays included), the wire
#      summaries, versions, logs, and comparison.md / comparison.json.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out=${OUT:-$root/docs/results/peer-check-2026-11-24}
venv=${PEER_VENV:-/tmp/kvprobe-peer-venv}
vllm_version=0.33.0
wire=${WIRE:-auto}
itl=256
otl=64
pcts=50,99
metrics=ttft,tpot,itl,e2el
req_prefix=peer-   # vLLM's x-request-id is this + the request's index: the wire matches it

case "$venv" in "$root/.venv"|"$root/.venv/"*) echo "PEER_VENV must not be the project's .venv" >&2; exit 2 ;; esac
[ -x "$root/target/release/kvprobe" ] || { echo "build first: cargo build --release" >&2; exit 1; }

work=$(mktemp -d /tmp/kvprobe-peer.XXXXXX)
emu_pid=
td_pid=
cleanup() {
  # only the processes this script started, by PID
  if [ -n "$td_pid" ]; then kill "$td_pid" 2>/dev/null || true; wait "$td_pid" 2>/dev/null || true; fi
  if [ -n "$emu_pid" ]; then kill "$emu_pid" 2>/dev/null || true; wait "$emu_pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

t_start=$(date +%s)
log() { printf '[peer-check %4ds] %s\n' "$(( $(date +%s) - t_start ))" "$*"; }

# ---- 1. the peer client's venv ------------------------------------------------------
have_vllm() { [ -x "$venv/bin/python" ] && "$venv/bin/python" - "$vllm_version" <<'EOF' 2>/dev/null
import sys
from importlib.metadata import version
sys.exit(0 if version("vllm") == sys.argv[1] else 1)
EOF
}
if ! have_vllm; then
  log "installing vllm==$vllm_version into $venv (about 9.5 GB, about 5 minutes)"
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --upgrade pip
  "$venv/bin/pip" install -q --progress-bar off "vllm==$vllm_version"
  have_vllm || { echo "vllm==$vllm_version did not install" >&2; exit 1; }
fi
py="$venv/bin/python"
vllm="$venv/bin/vllm"
# nothing may try a model hub
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_HUB_DISABLE_TELEMETRY=1 DO_NOT_TRACK=1
export VLLM_NO_USAGE_STATS=1 TOKENIZERS_PARALLELISM=false

# ---- tcpdump on loopback (optional) -------------------------------------------------
if [ "$wire" != 0 ] && ! command -v tcpdump >/dev/null; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    log "installing tcpdump (Debian) for the wire timings"
    { apt-get install -y -qq tcpdump >/dev/null 2>&1 || { apt-get update -qq && apt-get install -y -qq tcpdump; }; } >/dev/null 2>&1 || true
  fi
fi
can_capture() { # tcpdump runs and may capture on lo: it waits for a packet (timeout 124), not refused (1)
  command -v tcpdump >/dev/null || return 1
  local rc=0
  timeout 2 tcpdump -i lo -c 1 -w /dev/null 'tcp port 1' >/dev/null 2>&1 || rc=$?
  [ "$rc" -eq 124 ]
}
if [ "$wire" != 0 ] && can_capture; then
  wire=1
elif [ "$wire" = 1 ]; then
  echo "WIRE=1 but tcpdump cannot capture on lo here" >&2; exit 1
else
  wire=0
  log "no tcpdump capture on lo: wire timings skipped"
fi

# ---- 2. the binary and the tokenizer ------------------------------------------------
cp "$root/target/release/kvprobe" "$work/kvprobe"
kv="$work/kvprobe"
mkdir -p "$out"
# a rerun replaces what this script wrote there, nothing else
rm -rf "$out/fixed" "$out/collocated" "$out/comparison.md" "$out/comparison.json" "$out/versions.txt" "$out/pip-freeze.txt"
tok="$work/tokenizer"
"$py" - "$tok" <<'EOF'
import os, sys
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast
out = sys.argv[1]
vocab = {"[UNK]": 0, **{f"w{i}": i for i in range(1, 32000)}}
t = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
t.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
# no post-processor: no BOS/EOS added, so a 256-token prompt is 256 words
PreTrainedTokenizerFast(tokenizer_object=t, unk_token="[UNK]", model_max_length=1 << 20).save_pretrained(out)
r = PreTrainedTokenizerFast.from_pretrained(out)
ids = [5, 17, 31999, 1000]
text = r.decode(ids)
assert text.split() == ["w5", "w17", "w31999", "w1000"], text
assert r(text, add_special_tokens=False).input_ids == ids
assert r.num_special_tokens_to_add() == 0
EOF

# ---- versions -------------------------------------------------------------------------
{
  echo "date_utc: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
  echo "kvprobe: $("$kv" --version)"
  echo "kvprobe_commit: $(git -C "$root" rev-parse HEAD 2>/dev/null || echo unknown)"
  echo "kvprobe_source_modified_vs_commit: $(git -C "$root" status --porcelain --untracked-files=no -- src Cargo.toml Cargo.lock build.rs 2>/dev/null | wc -l | tr -d ' ') files"
  echo "kvprobe_binary_mtime_utc: $(date -u -r "$root/target/release/kvprobe" +%Y-%m-%dT%H:%M:%SZ)"
  echo "kvprobe_src_newer_than_binary: $(find "$root/src" -newer "$root/target/release/kvprobe" -type f | wc -l | tr -d ' ') files"
  "$py" - <<'EOF'
import platform
from importlib.metadata import version
for p in ("vllm", "aiohttp", "torch", "transformers", "tokenizers", "numpy"):
    print(f"{p}: {version(p)}")
print(f"python: {platform.python_version()}")
EOF
  echo "tcpdump: $( [ "$wire" = 1 ] && tcpdump --version 2>&1 | head -1 || echo 'not used')"
  echo "kernel: $(uname -sr)"
  echo "cpus: $(nproc)"
  echo "cpu_model: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ //')"
  echo "memory: $(free -g | awk '/^Mem:/{print $2" GiB"}')"
  echo "gpu: none"
} > "$out/versions.txt"
"$venv/bin/pip" freeze > "$out/pip-freeze.txt" 2>/dev/null
cat "$out/versions.txt"

# ---- the wire summariser: per request, POST on the wire -> first token on the wire, and
# first token -> last token (TPOT) ---------------------------------------------------------
cat > "$work/wire.py" <<'EOF'
"""Time one client's run from a loopback pcap (Ethernet framing, IPv4/TCP), server side.

Per HTTP request on /v1/completions: post = the client's packet starting the POST,
first = the server packet carrying the first token (text " tok1"), last = the packet
with finish_reason "length" (the last token; its token number gives the output count).
The client's warm-up request is left out: kvprobe's is the first of its capture (--warmup 1),
vLLM's is the one without an x-request-id (its measured requests carry PREFIX+index)."""
import argparse, collections, json, re, struct

ap = argparse.ArgumentParser()
ap.add_argument("pcap"); ap.add_argument("port", type=int); ap.add_argument("dst")
ap.add_argument("--tcpdump-log")
ap.add_argument("--concurrency", type=int, help="closed loop: also time the client's turnaround")
ap.add_argument("--vllm-result", help="vLLM's result JSON (with --save-detailed) to split its TTFT")
ap.add_argument("--clock-offset", type=float, help="time.time() - time.monotonic() beside vLLM's run")
ap.add_argument("--id-prefix")
a = ap.parse_args()

def packets(path):
    with open(path, "rb") as f:
        gh = f.read(24)
        nano = struct.unpack("<I", gh[:4])[0] == 0xA1B23C4D
        while True:
            h = f.read(16)
            if len(h) < 16:
                return
            ts, frac, incl, _ = struct.unpack("<IIII", h)
            data = f.read(incl)
            ip = data[14:]
            if not ip or ip[0] >> 4 != 4:
                continue
            tcp = ip[(ip[0] & 15) * 4:]
            sport, dport = struct.unpack("!HH", tcp[:4])
            payload = tcp[(tcp[12] >> 4) * 4:]
            if payload:
                yield ts + frac / (1e9 if nano else 1e6), sport, dport, payload

conns = collections.defaultdict(list)
for t, sp, dp, pl in packets(a.pcap):
    if dp == a.port:
        conns[sp].append((t, "c", pl))
    elif sp == a.port:
        conns[dp].append((t, "s", pl))
reqs = []
for evs in conns.values():
    cur = None
    for t, who, pl in evs:
        if who == "c" and pl.startswith(b"POST /v1/completions"):
            m = re.search(rb"\r\nx-request-id: *([^\r]+)", pl, re.I)
            cur = {"post": t, "first": None, "id": m.group(1).decode() if m else None}
        elif who == "s" and cur is not None:
            if cur["first"] is None and b'" tok1"' in pl:
                cur["first"] = t
            if b'"finish_reason":"length"' in pl and cur["first"] is not None:
                cur["last"] = t
                cur["n"] = max(int(x) for x in re.findall(rb'" tok(\d+)"', pl))
                reqs.append(cur)
                cur = None
reqs.sort(key=lambda r: r["post"])
if a.id_prefix:
    reqs = [r for r in reqs if r["id"] and r["id"].startswith(a.id_prefix)]
else:
    reqs = reqs[1:]

def pct(v, p):
    v = sorted(v)
    k = (len(v) - 1) * p / 100
    lo = int(k)
    hi = min(lo + 1, len(v) - 1)
    return v[lo] + (v[hi] - v[lo]) * (k - lo)
def summ(v):
    return {"mean": sum(v) / len(v), "median": pct(v, 50), "p99": pct(v, 99), "n": len(v)} if v else None

ttft = [(r["first"] - r["post"]) * 1e3 for r in reqs]
tpot = [(r["last"] - r["first"]) * 1e3 / (r["n"] - 1) for r in reqs if r["n"] > 1]
res = {"requests": len(reqs), "ttft_ms": summ(ttft), "tpot_ms": summ(tpot),
       "span_s": (max(r["last"] for r in reqs) - min(r["post"] for r in reqs)) if reqs else None,
       "note": "server side, from loopback packets: TTFT = POST packet -> first-token packet; "
               "TPOT = (last - first token packet) / (tokens - 1); span = first POST -> last token"}
if a.tcpdump_log:
    res["tcpdump"] = [l.strip() for l in open(a.tcpdump_log) if "packets" in l]
if a.concurrency and len(reqs) > a.concurrency:
    # closed loop: each finish lets the client send one more request, so the (C+k)-th POST
    # answers the k-th finish (both in time order): the gap is the client's turnaround
    fins = sorted(r["last"] for r in reqs)
    posts = sorted(r["post"] for r in reqs)
    gaps = [(p - f) * 1e3 for f, p in zip(fins, posts[a.concurrency:])]
    res["turnaround_ms"] = summ(gaps)
if a.vllm_result:
    # vLLM's TTFT split into (its timestamp -> POST on the wire), the wire, and (first token
    # on the wire -> its timestamp). Its start_times are time.perf_counter() = CLOCK_MONOTONIC.
    v = json.load(open(a.vllm_result))
    by_id = {r["id"]: r for r in reqs}
    pre, post = [], []
    for i, (st, tt) in enumerate(zip(v.get("start_times") or [], v.get("ttfts") or [])):
        r = by_id.get(f"{a.id_prefix}{i}")
        if r and tt:
            pre.append((r["post"] - (st + a.clock_offset)) * 1e3)
            post.append(((st + tt + a.clock_offset) - r["first"]) * 1e3)
    res["vllm_split"] = {"matched": len(pre), "clock_offset_s": a.clock_offset,
                         "client_timestamp_to_post_on_wire_ms": summ(pre),
                         "first_token_on_wire_to_client_timestamp_ms": summ(post)}
json.dump(res, open(a.dst, "w"), indent=1)
EOF

capture_start() { # $1 pcap file, $2 port
  [ "$wire" = 1 ] || return 0
  # --immediate-mode: without it libpcap hands packets over in blocks (up to 1 s late)
  # and the last block is lost when tcpdump is stopped, with the run's last requests
  tcpdump -i lo -s 4096 -B 32768 --immediate-mode -U -w "$1" "tcp port $2" 2> "$1.log" &
  td_pid=$!
  for _ in $(seq 50); do grep -q listening "$1.log" 2>/dev/null && return 0; sleep 0.1; done
  echo "tcpdump did not start: $(cat "$1.log")" >&2; exit 1
}
capture_stop() { # $1 pcap file, $2 port, $3 summary json, then wire.py's flags
  [ "$wire" = 1 ] || return 0
  local pcap=$1 p=$2 dst=$3; shift 3
  sleep 0.3
  kill "$td_pid" 2>/dev/null || true
  wait "$td_pid" 2>/dev/null || true
  td_pid=
  python3 "$work/wire.py" "$pcap" "$p" "$dst" --tcpdump-log "$pcap.log" "$@"
  rm -f "$pcap" "$pcap.log"
}

start_emulator() { # $1 set name, rest: emulate flags
  local set=$1; shift
  "$kv" emulate --model emu --port 0 "$@" > "$work/emu.out" 2> "$out/$set/emulator.log" &
  emu_pid=$!
  port=
  for _ in $(seq 100); do
    port=$(sed -n 's#^listening on http://127\.0\.0\.1:\([0-9][0-9]*\).*#\1#p' "$work/emu.out" | head -1)
    [ -n "$port" ] && break
    kill -0 "$emu_pid" 2>/dev/null || { echo "the emulator exited: $(cat "$out/$set/emulator.log")" >&2; exit 1; }
    sleep 0.1
  done
  [ -n "$port" ] || { echo "the emulator printed no address" >&2; exit 1; }
  echo "kvprobe emulate --model emu --port 0 $*" > "$out/$set/emulator.cmd"
  log "$set: emulator PID $emu_pid on port $port ($*)"
}
stop_emulator() {
  kill "$emu_pid" 2>/dev/null || true
  wait "$emu_pid" 2>/dev/null || true
  emu_pid=
}

# run_point SET NAME N LOAD...   LOAD: "conc C" or "rate R"
run_point() {
  local set=$1 name=$2 n=$3 kind=$4 val=$5
  local kargs vargs wargs
  if [ "$kind" = conc ]; then
    kargs=(--concurrency "$val"); vargs=(--max-concurrency "$val" --request-rate inf)
    wargs=(--concurrency "$val")
  else
    kargs=(--request-rate "$val"); vargs=(--request-rate "$val"); wargs=()
  fi
  local d="$out/$set"
  echo "$name load_before_kvprobe $(cut -d' ' -f1-3 /proc/loadavg)" >> "$d/loadavg.txt"
  log "$set $name: kvprobe bench ($n prompts)"
  capture_start "$work/k.pcap" "$port"
  "$kv" bench --url "http://127.0.0.1:$port" --model emu "${kargs[@]}" --itl "$itl" --otl "$otl" \
    --num-prompts "$n" --warmup 1 --seed 0 --percentiles "$pcts" --percentile-metrics "$metrics" \
    --save-detailed --out "$work/kv-$set-$name" -q > "$d/logs/kvprobe-$name.log" 2>&1
  capture_stop "$work/k.pcap" "$port" "$d/wire/kvprobe-$name.json" "${wargs[@]}"
  cp "$work/kv-$set-$name/$name.json" "$d/kvprobe/$name.json"
  cp "$work/kv-$set-$name/manifest.json" "$d/kvprobe/$name.manifest.json"
  echo "$name load_before_vllm $(cut -d' ' -f1-3 /proc/loadavg)" >> "$d/loadavg.txt"
  log "$set $name: vllm bench serve ($n prompts)"
  local off
  off=$(python3 -c 'import time; print(repr(time.time() - time.monotonic()))')
  capture_start "$work/v.pcap" "$port"
  "$vllm" bench serve --backend vllm --base-url "http://127.0.0.1:$port" --model emu \
    --tokenizer "$tok" --dataset-name random --random-input-len "$itl" --random-output-len "$otl" \
    --random-range-ratio 0 --random-prefix-len 0 --ignore-eos --num-prompts "$n" "${vargs[@]}" \
    --seed 0 --percentile-metrics "$metrics" --metric-percentiles "$pcts" --disable-tqdm \
    --num-warmups 1 --request-id-prefix "$req_prefix" \
    --save-result --save-detailed --result-dir "$d/vllm" --result-filename "$name.json" \
    > "$d/logs/vllm-$name.log" 2>&1
  capture_stop "$work/v.pcap" "$port" "$d/wire/vllm-$name.json" "${wargs[@]}" \
    --vllm-result "$d/vllm/$name.json" --clock-offset "$off" --id-prefix "$req_prefix"
}

# ---- 3. the runs ------------------------------------------------------------------------
for set in fixed collocated; do mkdir -p "$out/$set"/{kvprobe,vllm,wire,logs}; done

start_emulator fixed --mode fixed --ttft-ms 150 --tpot-ms 15
run_point fixed conc1 20 conc 1
run_point fixed conc8 48 conc 8
run_point fixed conc32 128 conc 32
run_point fixed rr8 120 rate 8
stop_emulator

start_emulator collocated --mode collocated
run_point collocated conc1 20 conc 1
run_point collocated conc16 96 conc 16
stop_emulator
[ "$wire" = 1 ] || rm -rf "$out"/*/wire

# ---- 4. the comparison ------------------------------------------------------------------
log "comparison"
python3 - "$out" "$otl" <<'EOF'
import json, os, sys
out, otl = sys.argv[1], int(sys.argv[2])
# tolerances, relative and absolute (a difference passes when within either);
# see docs/results/peer-check-2026-11-24.md for why
TOL = {"tpot": (0.03, 0.0), "itl": (0.03, 0.0), "thr": (0.03, 0.0), "ttft": (0.03, 3.0), "p99": (0.10, 5.0)}
def tol_text(tc):
    r, a = TOL[tc]
    return f"±{r*100:.0f}%" + (f" or ±{a:g} ms" if a else "")
ROWS = [  # key, label, tolerance class (None: shown, not judged)
    ("mean_ttft_ms", "TTFT mean ms", "ttft"), ("median_ttft_ms", "TTFT median ms", "ttft"),
    ("p99_ttft_ms", "TTFT p99 ms", "p99"),
    ("mean_tpot_ms", "TPOT mean ms", "tpot"), ("median_tpot_ms", "TPOT median ms", "tpot"),
    ("p99_tpot_ms", "TPOT p99 ms", "p99"),
    ("median_itl_ms", "ITL median ms", "itl"), ("p99_itl_ms", "ITL p99 ms", None),
    ("output_throughput", "output tok/s", "thr"), ("duration", "duration s", None),
    ("completed", "completed", "count"), ("failed", "failed", "count"),
    ("total_input_tokens", "input tokens (server's count)", "count"),
    ("total_output_tokens", "output tokens", "count"),
]
points = [("fixed", "conc1"), ("fixed", "conc8"), ("fixed", "conc32"), ("fixed", "rr8"),
          ("collocated", "conc1"), ("collocated", "conc16")]
def load(p):
    return json.load(open(p)) if os.path.exists(p) else None
def f(x):
    if x is None: return "–"
    if isinstance(x, int): return str(x)
    return f"{x:.1f}" if abs(x) >= 100 else f"{x:.2f}"
def span(d):
    s = d.get("start_times") or []
    return (max(s) - min(s)) if len(s) > 1 else None
md, js = [], []
md.append("| point | metric | kvprobe | vLLM | kvprobe/vLLM | tolerance | wire (kvprobe's run) | wire (vLLM's run) |")
md.append("|---|---|---:|---:|---:|---|---:|---:|")
for s, p in points:
    k = load(f"{out}/{s}/kvprobe/{p}.json"); v = load(f"{out}/{s}/vllm/{p}.json")
    wk = load(f"{out}/{s}/wire/kvprobe-{p}.json"); wv = load(f"{out}/{s}/wire/vllm-{p}.json")
    if not k or not v:
        md.append(f"| {s} {p} | missing | | | | | | |"); continue
    rate = p.startswith("rr")
    for key, label, tc in ROWS:
        a, b = k.get(key), v.get(key)
        ratio = (a / b) if isinstance(a, (int, float)) and isinstance(b, (int, float)) and b else None
        if tc == "count":
            ok = (a == b) if key != "failed" else (a == 0 and b == 0)
            tol = "equal" if key != "failed" else "0"
        elif tc is None:
            ok, tol = None, "shown"
        else:
            r, ab = TOL[tc]
            ok = ratio is not None and (abs(ratio - 1) <= r or abs(a - b) <= ab); tol = tol_text(tc)
        wcol = ["", ""]
        for i, w in enumerate((wk, wv)):
            m = key.split("_")[0] if key.endswith("_ms") else None
            met = key.split("_")[1] if m else None
            if w and met in ("ttft", "tpot") and w.get(f"{met}_ms"):
                wcol[i] = f(w[f"{met}_ms"][m])
        verdict = "" if ok is None else (" ✓" if ok else " ✗")
        md.append(f"| {s} {p} | {label} | {f(a)} | {f(b)} | {'' if ratio is None else f'{ratio:.3f}'}{verdict} | {tol} | {wcol[0]} | {wcol[1]} |")
        js.append({"set": s, "point": p, "metric": key, "kvprobe": a, "vllm": b, "ratio": ratio,
                   "within_tolerance": ok, "tolerance": tol, "wire_kvprobe_run": wcol[0] or None,
                   "wire_vllm_run": wcol[1] or None})
    lens = lambda d: sorted(set(d.get("input_lens") or []))
    lk, lv = lens(k), lens(v)
    md.append(f"| {s} {p} | prompt tokens per request (server's count), distinct values | {lk} | {lv} | | equal | | |")
    js.append({"set": s, "point": p, "metric": "input_lens_distinct", "kvprobe": lk, "vllm": lv, "within_tolerance": lk == lv})
    if rate:
        sa, sb = span(k), span(v)
        md.append(f"| {s} {p} | arrival span s (first to last send) | {f(sa)} | {f(sb)} | {'' if not (sa and sb) else f'{sa/sb:.3f}'} | shown | | |")
        js.append({"set": s, "point": p, "metric": "arrival_span_s", "kvprobe": sa, "vllm": sb})
# client overhead on TTFT: client's mean TTFT minus the wire's, same run; vLLM's split
ov, sp = [], []
for s, p in points:
    k = load(f"{out}/{s}/kvprobe/{p}.json"); v = load(f"{out}/{s}/vllm/{p}.json")
    wk = load(f"{out}/{s}/wire/kvprobe-{p}.json"); wv = load(f"{out}/{s}/wire/vllm-{p}.json")
    if k and v and wk and wv and wk.get("ttft_ms") and wv.get("ttft_ms"):
        ta = lambda w: f"{w['turnaround_ms']['mean']:.2f}" if w.get("turnaround_ms") else "–"
        ov.append(f"| {s} {p} | {k['mean_ttft_ms'] - wk['ttft_ms']['mean']:.2f} | {v['mean_ttft_ms'] - wv['ttft_ms']['mean']:.2f} "
                  f"| {wk['ttft_ms']['mean']:.2f} | {wv['ttft_ms']['mean']:.2f} | {ta(wk)} | {ta(wv)} "
                  f"| {wk['requests']} / {wv['requests']} of {k['completed']} / {v['completed']} |")
        x = wv.get("vllm_split")
        if x and x["matched"]:
            a, b = x["client_timestamp_to_post_on_wire_ms"], x["first_token_on_wire_to_client_timestamp_ms"]
            sp.append(f"| {s} {p} | {x['matched']} | {a['mean']:.2f} | {a['median']:.2f} | {a['p99']:.2f} | {b['mean']:.2f} | {b['p99']:.2f} |")
with open(f"{out}/comparison.md", "w") as fh:
    fh.write("# kvprobe bench vs vllm bench serve on kvprobe emulate (raw files beside this one)\n\n")
    fh.write("Ratios are kvprobe/vLLM; ✓ within the tolerance, ✗ outside. Wire columns: the same metric timed "
             "from loopback packets (tcpdump) during that client's run: the POST leaving the client to the first token "
             "leaving the server, and first to last token packet / (tokens − 1).\n\n")
    fh.write("\n".join(md) + "\n")
    if ov:
        fh.write("\n## Client-side share of TTFT (client's mean TTFT − wire mean TTFT of the same run), ms\n\n")
        fh.write("Turnaround (closed-loop points): a request's last token leaving the server to the client's next POST "
                 "leaving the client, mean ms: how long the client takes to put a freed slot back to work.\n\n")
        fh.write("| point | kvprobe | vLLM | wire TTFT, kvprobe's run | wire TTFT, vLLM's run | turnaround, kvprobe | turnaround, vLLM | requests on the wire (k / v) |\n|---|---:|---:|---:|---:|---:|---:|---|\n")
        fh.write("\n".join(ov) + "\n")
    if sp:
        fh.write("\n## Where vLLM's extra TTFT is spent, per request matched by x-request-id, ms\n\n")
        fh.write("| point | requests | vLLM timestamp → POST on the wire: mean | median | p99 | first token on the wire → vLLM timestamp: mean | p99 |\n|---|---:|---:|---:|---:|---:|---:|\n")
        fh.write("\n".join(sp) + "\n")
json.dump(js, open(f"{out}/comparison.json", "w"), indent=1)
print(open(f"{out}/comparison.md").read())
EOF
[ "${DROP_VENV:-0}" = 1 ] && rm -rf "$venv"
log "done: $out"
