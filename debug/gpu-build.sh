#!/usr/bin/env bash
# Builds what debug/gpu-sweep.sh runs on the GPU machine: the release binary and the GPU
# integration tests, stripped (the device tool carries at most 64 MiB), into .gpu/.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
cargo build --release
t=$(cargo test --release --test gpu --no-run --message-format=json 2>/dev/null |
  python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["name"] == "gpu": print(m["executable"])')
mkdir -p .gpu
strip -o .gpu/kvprobe target/release/kvprobe
strip -o .gpu/gpu-tests "$t"
# the GPU machine has no fonts: PNG plots use this one (KVPROBE_FONT)
cp /usr/share/fonts/truetype/dejavu/DejaVuSans.ttf .gpu/ 2>/dev/null || echo "no DejaVuSans.ttf here: GPU plots will be SVG only" >&2
ls -la .gpu
