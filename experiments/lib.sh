# Shared by the experiment scripts (sourced): one layout served and loaded.
#
#   serve_and_bench NAME LAUNCH_CMD...
#
# records LAUNCH_CMD in $out/commands.txt, starts it in the background (its
# PID in $lp, for the caller's cleanup trap), waits for its `ready: URL`
# line (10 s for the emulator; READY_TIMEOUT + 300 s with ENGINE=ray, as
# launch itself gives up after READY_TIMEOUT), runs kvprobe bench against it
# into $out/NAME/bench, then stops it with SIGINT (by its PID) and waits.
# Uses $kv, $out, $ENGINE, $READY_TIMEOUT, $SERVED, $CONC, $ITL, $OTL, $PER
# and the caller's say(); exits 1 when the layout never becomes ready.
serve_and_bench() {
  local name=$1 url wait_s
  shift
  echo "$*" >>"$out/commands.txt"
  "$@" >"$out/$name.launch.txt" 2>"$out/$name.emulate.err" &
  lp=$!
  wait_s=10
  [ "$ENGINE" = ray ] && wait_s=$((READY_TIMEOUT + 300))
  for _ in $(seq $((wait_s * 10))); do
    grep -q "^ready:" "$out/$name.launch.txt" 2>/dev/null && break
    kill -0 "$lp" 2>/dev/null || break # launch refused the layout or the emulator did not start
    sleep 0.1
  done
  grep -q "^ready:" "$out/$name.launch.txt" || { cat "$out/$name.emulate.err" >&2; exit 1; }
  url=$(sed -n 's/^ready: \([^ ]*\).*/\1/p' "$out/$name.launch.txt")
  local bench=("$kv" bench --url "$url" --model "$SERVED" --concurrency "$CONC" --itl "$ITL" --otl "$OTL"
    --prompts-per-conc "$PER" --label "$name" --out "$out/$name/bench" -q)
  echo "${bench[*]}" >>"$out/commands.txt"
  "${bench[@]}" >"$out/$name.bench.txt" || say "$name: bench exit $? (failed requests are counted in summary.json)"
  kill -INT "$lp"
  wait "$lp" || true
  lp=
}
