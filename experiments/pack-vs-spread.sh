#!/usr/bin/env bash
# Pack vs spread, the seeds' third experiment, on two emulated hosts of this
# machine (debug/hosts.sh: network namespaces joined by a veth), with the
# engine emulator. For each placement kvprobe first measures the KV path for
# real (NIXL READ, the transport and the verdict), then serves the same PD
# layout with `kvprobe launch --engine emulate` whose KV transfer time comes
# from that measurement, then load-tests it from the other host:
#
#   pack          both ends of the transport sweep in host b (shared memory);
#   spread-good   host a reads from host b over the veth;
#   spread-bad    the same after `tc` shapes the link to RATE (default 1gbit):
#                 what a cluster gets when UCX falls back to a slow path.
#
# Then viz, and summary.json with median TTFT per placement and concurrency
# and the direction check: spread-bad's TTFT must be far above pack's while
# TPOT stays within 25% (the seeds' signature of a bad transport).
#
# usage: experiments/pack-vs-spread.sh [OUT]     (root; builds nothing: cargo build --release first)
#   MODEL=gpt-oss-120b ITL=5000 OTL=250 CONC=1,4,8 PROMPTS_PER_CONC=3 RATE=1gbit SIZES=1M,16M,64M
#   defaults take about 6 minutes; tests/experiments.rs runs it with a small workload.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out=${1:-$root/results/pack-vs-spread-$(date -u +%Y%m%d-%H%M%S)}
mkdir -p "$out"
out=$(cd "$out" && pwd)
export kv=${KVPROBE:-$root/target/release/kvprobe}
[ -x "$kv" ] || { echo "pack-vs-spread: $kv not found: cargo build --release first" >&2; exit 2; }
export MODEL=${MODEL:-gpt-oss-120b} ITL=${ITL:-5000} OTL=${OTL:-250} CONC=${CONC:-1,4,8}
export PER=${PROMPTS_PER_CONC:-3} RATE=${RATE:-1gbit} SIZES=${SIZES:-1M,16M,64M}
export hosts=$root/debug/hosts.sh out
name=${HOSTS_NAME:-pvs$$}
name=${name:0:10}
{
  echo "# $(date -u +%Y-%m-%dT%H:%M:%SZ) $0 $*"
  echo "$("$kv" --version)"
  echo "MODEL=$MODEL ITL=$ITL OTL=$OTL CONC=$CONC PROMPTS_PER_CONC=$PER RATE=$RATE SIZES=$SIZES hosts=$name"
} >"$out/commands.txt"

"$hosts" run "$name" bash -c '
  set -euo pipefail
  say() { printf "pack-vs-spread: %s\n" "$*" >&2; }
  in_a() { UCX_NET_DEVICES=$KVP_A_DEV "$hosts" exec "$KVP_HOSTS" a "$@"; }
  in_b() { UCX_NET_DEVICES=$KVP_B_DEV "$hosts" exec "$KVP_HOSTS" b "$@"; }
  pids=()
  cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done; }
  trap cleanup EXIT
  sweep_args=(--sizes "$SIZES" --ops READ --backend nixl --no-fail -q)

  say "1/3 transport per placement (NIXL READ; the verdict is in each sweep.txt)"
  mkdir -p "$out/transport"
  in_b "$kv" sweep "${sweep_args[@]}" --out "$out/transport/pack" >"$out/transport/pack.txt" 2>&1
  # exec all the way down, so $! is the serve process itself (ended by PID in cleanup)
  ( UCX_NET_DEVICES=$KVP_B_DEV exec "$hosts" exec "$KVP_HOSTS" b "$kv" serve --listen "$KVP_B_IP:7700" --json \
      --log-dir "$out/transport/serve-logs" >"$out/transport/serve.jsonl" 2>&1 ) &
  pids+=($!)
  for _ in $(seq 100); do grep -q token "$out/transport/serve.jsonl" 2>/dev/null && break; sleep 0.1; done
  grep -q token "$out/transport/serve.jsonl" 2>/dev/null || { say "kvprobe serve did not start:"; cat "$out/transport/serve.jsonl" >&2; exit 1; }
  token=$(python3 -c "import json,sys; print(json.loads(open(sys.argv[1]).readline())[\"token\"])" "$out/transport/serve.jsonl")
  in_a "$kv" sweep --peer "$KVP_B_IP:7700" --token "$token" "${sweep_args[@]}" --out "$out/transport/spread-good" \
    >"$out/transport/spread-good.txt" 2>&1
  "$hosts" shape "$KVP_HOSTS" --rate "$RATE"
  in_a "$kv" sweep --peer "$KVP_B_IP:7700" --token "$token" "${sweep_args[@]}" --out "$out/transport/spread-bad" \
    >"$out/transport/spread-bad.txt" 2>&1
  "$hosts" unshape "$KVP_HOSTS"
  cleanup
  pids=()

  say "2/3 serving: the same 1P-TP4:1D-TP4 layout per placement, emulated in host b, load from host a"
  port=8000
  for p in pack spread-good spread-bad; do
    mode=pd-spread
    [ "$p" = pack ] && mode=pd-pack
    "$kv" launch --engine emulate --mode "$mode" --model "$MODEL" --p-tp 4 --d-tp 4 \
      --kv-from "$out/transport/$p/results.json" --netns "$KVP_HOSTS-b" --listen "$KVP_B_IP" --port "$port" \
      --out "$out/$p" >"$out/$p.launch.txt" 2>"$out/$p.emulate.err" &
    lp=$!
    pids=("$lp")
    for _ in $(seq 100); do grep -q "^ready:" "$out/$p.launch.txt" 2>/dev/null && break; sleep 0.1; done
    grep -q "^ready:" "$out/$p.launch.txt" || { cat "$out/$p.emulate.err" >&2; exit 1; }
    in_a "$kv" bench --url "http://$KVP_B_IP:$port" --model "$MODEL" --concurrency "$CONC" --itl "$ITL" --otl "$OTL" \
      --prompts-per-conc "$PER" --label "$p" --out "$out/$p/bench" -q >"$out/$p.bench.txt"
    kill -INT "$lp"
    wait "$lp" || true
    pids=()
    say "$p done"
  done
'

echo "pack-vs-spread: 3/3 plots and summary" >&2
"$kv" viz "$out/pack/bench" "$out/spread-good/bench" "$out/spread-bad/bench" --out "$out/plots" >"$out/viz.txt"
"$kv" viz "$out/transport/pack" "$out/transport/spread-good" "$out/transport/spread-bad" --out "$out/plots-transport" -q
python3 - "$out" <<'PY'
import json, os, sys
out = sys.argv[1]
places = ["pack", "spread-good", "spread-bad"]
summary = {"placements": {}, "checks": []}
for p in places:
    d = os.path.join(out, p, "bench")
    pts = {}
    for f in sorted(os.listdir(d)):
        if f.startswith("conc") and f.endswith(".json"):
            j = json.load(open(os.path.join(d, f)))
            pts["%g" % j["kvprobe"]["value"]] = {k: j[k] for k in ("median_ttft_ms", "median_tpot_ms", "output_throughput", "completed", "failed")}
    t = json.load(open(os.path.join(out, "transport", p, "results.json")))
    rows = [r for r in t["rows"] if r["op"] == "READ"]
    big = max(rows, key=lambda r: r["size_bytes"]) if rows else None
    summary["placements"][p] = {
        "points": pts,
        "transport": {"largest_size": big and big["size_bytes"], "gbps": big and big["gbps"],
                      "carried_by": big and (big.get("transport") or {}).get("lanes"),
                      "verdict": (t.get("verdict") or {}).get("grade")},
    }
def ttft(p, c): return summary["placements"][p]["points"][c]["median_ttft_ms"]
def tpot(p, c): return summary["placements"][p]["points"][c]["median_tpot_ms"]
concs = sorted(set.intersection(*(set(summary["placements"][p]["points"]) for p in places)), key=float)
ok = bool(concs)
for c in concs:
    checks = [
        (f"conc {c}: spread-bad TTFT {ttft('spread-bad', c):.0f} ms > 2 x pack {ttft('pack', c):.0f} ms", ttft("spread-bad", c) > 2 * ttft("pack", c)),
        (f"conc {c}: spread-bad TTFT {ttft('spread-bad', c):.0f} ms > spread-good {ttft('spread-good', c):.0f} ms", ttft("spread-bad", c) > ttft("spread-good", c)),
        # TTFT moves by several times; TPOT must not. 25% leaves room for the
        # scheduling noise of a loaded 2-core machine (a 10 ms step read 11.5 ms once)
        (f"conc {c}: TPOT within 25% across placements ({tpot('pack', c):.2f} / {tpot('spread-good', c):.2f} / {tpot('spread-bad', c):.2f} ms)",
         max(tpot(p, c) for p in places) <= 1.25 * min(tpot(p, c) for p in places)),
    ]
    for text, good in checks:
        summary["checks"].append({"check": text, "ok": good})
        ok &= good
summary["direction_ok"] = ok
json.dump(summary, open(os.path.join(out, "summary.json"), "w"), indent=2)
for ch in summary["checks"]:
    print(("ok   " if ch["ok"] else "FAIL ") + ch["check"])
print("direction as the seeds found it" if ok else "direction NOT as expected", "->", os.path.join(out, "summary.json"))
sys.exit(0 if ok else 1)
PY
