#!/usr/bin/env bash
# P:D ratio sweep, the seeds' second experiment, with the engine emulator on
# loopback: prefill and decode packed on one 8-GPU node (pd-pack) in
#
#   part 1, decode TP 4:     1xtp4-1xtp4  1xtp2-1xtp4  2xtp2-1xtp4
#   part 2, P TP 2, D TP 2:  3xtp2-1xtp2  2xtp2-1xtp2  1xtp2-1xtp2  1xtp2-2xtp2  1xtp2-3xtp2
#
# (<P>xtp<P_TP>-<D>xtp<D_TP>, the seeds' folder names; LAYOUTS overrides the
# list). The KV path of the node is measured for real first, once: a NIXL
# READ sweep on this host (shared memory, as pack), with its verdict. Every
# layout is then started with `kvprobe launch --engine emulate --kv-from
# <that sweep>` and TP scaling on (emulate --tp-alpha ALPHA --tp-ref TP_REF:
# every step cost of an engine of TP tp is multiplied by (1 - ALPHA) + ALPHA x
# TP_REF / tp, the emulator's assumption, not a hardware fact;
# docs/EMULATOR.md), loaded with `kvprobe bench`, and stopped with SIGINT.
# Then viz (one chart set per decode TP, and the transport), and
# summary.json with median TTFT, TPOT and output throughput per layout and
# concurrency and the checks that follow from the model:
#   - TPOT depends only on the decode engine's TP (a PD decode engine never
#     runs a prefill; a sequence costs 40 us of a 10 ms step): TPOT / f(D_TP)
#     within 25% across every layout, at every concurrency;
#   - a lone prefill engine queues the prompts once the load passes its
#     capacity: at the highest concurrency 1xtp2-3xtp2's TTFT above 1.25 x
#     3xtp2-1xtp2's, and 1xtp2-1xtp4's above 1.25 x 2xtp2-1xtp4's (checked
#     when the model puts the lone prefill engine over capacity there);
#   - at the lowest concurrency 1xtp2-1xtp4 and 1xtp4-1xtp4 differ only in the
#     prefill step: TTFT apart by (f(2) - f(4)) x one prompt's prefill step,
#     within 25% (checked when f(2)/f(4) >= 1.5).
# The script exits 1 when a check fails.
#
# usage: experiments/pd-ratio-sweep.sh [OUT]     (builds nothing: cargo build --release first)
#   MODEL=gpt-oss-120b ITL=5000 OTL=250 CONC=1,4,16 PROMPTS_PER_CONC=3 ALPHA=0.8 TP_REF=4
#   SIZES=1M,16M,64M PORT=0 LAYOUTS="1xtp4-1xtp4 1xtp2-1xtp4 ..."
#   (PORT 0: any free port on loopback). Defaults take about 8 minutes;
#   tests/experiments.rs runs it with a small workload.
#
# On a real Ray cluster: ENGINE=ray MODEL=<HF id or path> RAY_ARGS="--ray-address HEAD:6379"
#   (SERVED: the served name, default the last part of MODEL; READY_TIMEOUT=1800 s per layout).
#   Each layout is then deployed with `kvprobe launch --engine ray` (inventory, serve deploy,
#   wait for /v1/models, launch.json with the nodes' versions), loaded with the same bench and
#   shut down; summary.json (experiments/real-summary.py) records the numbers and versions: the
#   emulator's model checks do not apply to real engines.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out=${1:-$root/results/pd-ratio-sweep-$(date -u +%Y%m%d-%H%M%S)}
mkdir -p "$out"
out=$(cd "$out" && pwd)
kv=${KVPROBE:-$root/target/release/kvprobe}
[ -x "$kv" ] || { echo "pd-ratio-sweep: $kv not found: cargo build --release first" >&2; exit 2; }
MODEL=${MODEL:-gpt-oss-120b} ITL=${ITL:-5000} OTL=${OTL:-250} CONC=${CONC:-1,4,16}
PER=${PROMPTS_PER_CONC:-3} ALPHA=${ALPHA:-0.8} TP_REF=${TP_REF:-4} SIZES=${SIZES:-1M,16M,64M} PORT=${PORT:-0}
ENGINE=${ENGINE:-emulate} READY_TIMEOUT=${READY_TIMEOUT:-1800} SERVED=${SERVED:-$(basename "$MODEL")}
read -r -a ray_args <<<"${RAY_ARGS:-}"
[ "$ENGINE" = emulate ] || [ "$ENGINE" = ray ] || { echo "pd-ratio-sweep: ENGINE must be emulate or ray" >&2; exit 2; }
LAYOUTS=${LAYOUTS:-1xtp4-1xtp4 1xtp2-1xtp4 2xtp2-1xtp4 3xtp2-1xtp2 2xtp2-1xtp2 1xtp2-1xtp2 1xtp2-2xtp2 1xtp2-3xtp2}
read -r -a layouts <<<"${LAYOUTS//,/ }"
for l in "${layouts[@]}"; do
  [[ $l =~ ^[1-9][0-9]*xtp[1-9][0-9]*-[1-9][0-9]*xtp[1-9][0-9]*$ ]] ||
    { echo "pd-ratio-sweep: layout '$l' is not <P>xtp<P_TP>-<D>xtp<D_TP> (e.g. 2xtp2-1xtp4)" >&2; exit 2; }
done
{
  echo "# $(date -u +%Y-%m-%dT%H:%M:%SZ) $0 $*"
  echo "$("$kv" --version)"
  echo "MODEL=$MODEL ITL=$ITL OTL=$OTL CONC=$CONC PROMPTS_PER_CONC=$PER ALPHA=$ALPHA TP_REF=$TP_REF SIZES=$SIZES PORT=$PORT"
  echo "ENGINE=$ENGINE SERVED=$SERVED RAY_ARGS=${RAY_ARGS:-}"
  echo "LAYOUTS=${layouts[*]}"
} >"$out/commands.txt"
. "$root/experiments/lib.sh"
say() { printf "pd-ratio-sweep: %s\n" "$*" >&2; }
lp=
cleanup() { [ -z "$lp" ] || { kill "$lp" 2>/dev/null || true; wait "$lp" 2>/dev/null || true; }; }
trap cleanup EXIT
started=$(date +%s)

if [ "$ENGINE" = emulate ]; then
  say "1/3 transport of the node (NIXL READ on this host, shared memory; the verdict is in transport.txt)"
  cmd=("$kv" sweep --sizes "$SIZES" --ops READ --backend nixl --no-fail -q --out "$out/transport")
  echo "${cmd[*]}" >>"$out/commands.txt"
  "${cmd[@]}" >"$out/transport.txt" 2>&1 || { cat "$out/transport.txt" >&2; exit 1; }
else
  say "1/3 transport: real engines move KV themselves; measure the node first (docs/EXPERIMENTS.md, 'A real run')"
fi

say "2/3 serving: ${#layouts[@]} PD layouts packed on one 8-GPU node ($([ "$ENGINE" = ray ] && echo "Ray Serve LLM" || echo "emulated, --tp-alpha $ALPHA --tp-ref $TP_REF"))"
for name in "${layouts[@]}"; do
  IFS=x- read -r pn ptp dn dtp <<<"${name//tp/}"
  if [ "$ENGINE" = ray ]; then
    cmd=("$kv" launch --engine ray --mode pd-pack --p-num "$pn" --p-tp "$ptp" --d-num "$dn" --d-tp "$dtp"
      --model "$MODEL" --served-model-name "$SERVED" --ready-timeout "$READY_TIMEOUT" --out "$out/$name" "${ray_args[@]}")
  else
    cmd=("$kv" launch --engine emulate --mode pd-pack --p-num "$pn" --p-tp "$ptp" --d-num "$dn" --d-tp "$dtp"
      --model "$MODEL" --served-model-name "$SERVED" --kv-from "$out/transport/results.json" --port "$PORT"
      --out "$out/$name" -- --tp-alpha "$ALPHA" --tp-ref "$TP_REF")
  fi
  serve_and_bench "$name" "${cmd[@]}"
  say "$name done ($(($(date +%s) - started)) s)"
done

say "3/3 plots and summary"
for dtp in $(printf '%s\n' "${layouts[@]}" | sed 's/.*xtp//' | sort -un); do
  dirs=()
  for name in "${layouts[@]}"; do [ "${name##*xtp}" = "$dtp" ] && dirs+=("$out/$name/bench"); done
  "$kv" viz "${dirs[@]}" --out "$out/plots-dtp$dtp" >"$out/viz-dtp$dtp.txt"
done
if [ "$ENGINE" = ray ]; then
  exec python3 "$root/experiments/real-summary.py" "$out" "${layouts[@]}"
fi
"$kv" viz "$out/transport" --out "$out/plots-transport" -q
python3 - "$out" "$ALPHA" "$TP_REF" "${layouts[@]}" <<'PY'
import json, os, re, sys
out, alpha, tp_ref, names = sys.argv[1], float(sys.argv[2]), int(sys.argv[3]), sys.argv[4:]
def f(tp):  # the emulator's step-time factor (docs/EMULATOR.md)
    return (1 - alpha) + alpha * tp_ref / tp
t = json.load(open(os.path.join(out, "transport", "results.json")))
rows = [r for r in t["rows"] if r["op"] == "READ"]
big = max(rows, key=lambda r: r["size_bytes"]) if rows else None
summary = {"alpha": alpha, "tp_ref": tp_ref, "layouts": {}, "checks": [], "notes": [],
           "transport": {"largest_size": big and big["size_bytes"], "gbps": big and big["gbps"],
                         "carried_by": big and (big.get("transport") or {}).get("lanes"),
                         "verdict": (t.get("verdict") or {}).get("grade"),
                         "rows": [{"size_bytes": r["size_bytes"], "gbps": r["gbps"]} for r in rows]}}
timing = itl = otl = None
for n in names:
    pn, ptp, dn, dtp = map(int, re.match(r"(\d+)xtp(\d+)-(\d+)xtp(\d+)$", n).groups())
    d = os.path.join(out, n, "bench")
    pts = {}
    for fn in sorted(os.listdir(d)):
        if fn.startswith("conc") and fn.endswith(".json"):
            j = json.load(open(os.path.join(d, fn)))
            pts["%g" % j["kvprobe"]["value"]] = {k: j[k] for k in ("median_ttft_ms", "median_tpot_ms", "output_throughput", "completed", "failed")}
    m = json.load(open(os.path.join(d, "manifest.json")))
    emu = m["server"]["models"]["data"][0]["kvprobe_emulator"]
    timing, itl, otl = emu["config"]["topology"]["timing"], m["itl"], m["otl"]
    summary["layouts"][n] = {"p_num": pn, "p_tp": ptp, "d_num": dn, "d_tp": dtp, "gpus": emu["gpus"],
                             "prefill_factor": f(ptp), "decode_factor": f(dtp),
                             "emulator_tp_factors": emu.get("tp_factors"), "points": pts}
L = summary["layouts"]
def pt(n, c, k): return L[n]["points"][c][k]
concs = sorted(set.intersection(*(set(L[n]["points"]) for n in names)), key=float) if names else []
def check(text, good): summary["checks"].append({"check": text, "ok": bool(good)})
check(f"every request served ({sum(p['failed'] for n in names for p in L[n]['points'].values())} failed)",
      all(p["failed"] == 0 for n in names for p in L[n]["points"].values()))
for c in concs:
    # TPOT / f(D_TP): what the same decode engine at TP_REF would take; 25% leaves room
    # for the scheduling noise of a loaded 2-core machine (a 10 ms step read 11.5 ms once)
    norm = {n: pt(n, c, "median_tpot_ms") / L[n]["decode_factor"] for n in names}
    check(f"conc {c}: TPOT / f(D_TP) within 25% across layouts ({min(norm.values()):.2f}-{max(norm.values()):.2f} ms)",
          max(norm.values()) <= 1.25 * min(norm.values()))
if concs:
    lo, hi = concs[0], concs[-1]
    def load(n):
        # the model's load on each prefill engine of n at the highest concurrency, without
        # queueing: requests per prefill engine x the share of a request's time spent in
        # prefill (one prompt alone, chunking ignored; decode at one sequence per step)
        p = f(L[n]["p_tp"]) * (timing["prefill_base_ms"] + timing["prefill_per_token_us"] * itl / 1000)
        d = otl * f(L[n]["d_tp"]) * (timing["decode_base_ms"] + timing["decode_per_seq_us"] / 1000)
        return float(hi) / L[n]["p_num"] * p / (p + d)
    for few, many in (("1xtp2-3xtp2", "3xtp2-1xtp2"), ("1xtp2-1xtp4", "2xtp2-1xtp4")):
        if few in L and many in L:
            u = load(few)
            if u >= 1.2:
                check(f"conc {hi}: {few} TTFT {pt(few, hi, 'median_ttft_ms'):.0f} ms > 1.25 x {many}'s {pt(many, hi, 'median_ttft_ms'):.0f} ms (its prefill engine at {u:.1f}x capacity in the model)",
                      pt(few, hi, "median_ttft_ms") > 1.25 * pt(many, hi, "median_ttft_ms"))
            else:
                summary["notes"].append(f"{few} vs {many} not checked: conc {hi} puts {few}'s prefill engine at {u:.2f}x capacity in the model (< 1.2)")
    r = f(2) / f(4)
    if "1xtp2-1xtp4" in L and "1xtp4-1xtp4" in L:
        if r >= 1.5:
            # the same decode engine and KV path: only the prefill step differs, by
            # (f(2) - f(4)) x the step of one prompt; independent of the transport's rate
            want = (f(2) - f(4)) * (timing["prefill_base_ms"] + timing["prefill_per_token_us"] * itl / 1000)
            got = pt("1xtp2-1xtp4", lo, "median_ttft_ms") - pt("1xtp4-1xtp4", lo, "median_ttft_ms")
            check(f"conc {lo}: 1xtp2-1xtp4 TTFT {pt('1xtp2-1xtp4', lo, 'median_ttft_ms'):.0f} ms - 1xtp4-1xtp4's {pt('1xtp4-1xtp4', lo, 'median_ttft_ms'):.0f} ms = {got:.0f} ms, the model's slower TP2 prefill step {want:.0f} ms (within 25%)",
                  abs(got - want) <= 0.25 * want)
        else:
            summary["notes"].append(f"P-TP2 vs P-TP4 TTFT not checked: f(2)/f(4) = {r:.2f} < 1.5")
ok = bool(concs) and all(ch["ok"] for ch in summary["checks"])
summary["direction_ok"] = ok
json.dump(summary, open(os.path.join(out, "summary.json"), "w"), indent=2)
tr = summary["transport"]
print(f"transport: NIXL READ {tr['gbps']} GB/s at {tr['largest_size']} bytes over {tr['carried_by']}, verdict {tr['verdict']}")
for n in names:
    for c in concs:
        p = L[n]["points"][c]
        print(f"{n:12} conc {c:>3}: TTFT {p['median_ttft_ms']:9.1f} ms  TPOT {p['median_tpot_ms']:7.2f} ms  {p['output_throughput']:8.1f} tok/s  failed {p['failed']}")
for ch in summary["checks"]:
    print(("ok   " if ch["ok"] else "FAIL ") + ch["check"])
for note in summary["notes"]:
    print("note " + note)
print("direction as the model predicts" if ok else "direction NOT as expected", "->", os.path.join(out, "summary.json"))
sys.exit(0 if ok else 1)
PY
