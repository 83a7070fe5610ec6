#!/usr/bin/env python3
"""summary.json for an experiment run on real engines (ENGINE=ray).

usage: experiments/real-summary.py OUT LAYOUT...

Reads OUT/<LAYOUT>/bench (kvprobe bench points and manifest) and
OUT/<LAYOUT>/launch.json (kvprobe launch --engine ray: the cluster's
versions and nodes) and writes OUT/summary.json: median TTFT, TPOT and
output throughput per layout and concurrency, the served model, and the Ray,
vLLM, NIXL and UCX versions per node. The emulator's model checks do not
apply to real engines; the only check is that every request was served.
Exits 1 when a request failed or a layout has no points.
"""
import json
import os
import sys


def main(out, names):
    summary = {"engine": "ray", "layouts": {}, "checks": [], "notes": [
        "real engines: the emulator's model checks do not apply; compare the layouts in the plots"]}
    bad = 0
    for n in names:
        d = os.path.join(out, n, "bench")
        pts = {}
        if os.path.isdir(d):
            for fn in sorted(os.listdir(d)):
                if fn.startswith(("conc", "rr")) and fn.endswith(".json"):
                    j = json.load(open(os.path.join(d, fn)))
                    pts["%g" % j["kvprobe"]["value"]] = {k: j.get(k) for k in (
                        "median_ttft_ms", "median_tpot_ms", "output_throughput", "completed", "failed")}
        launch = {}
        try:
            launch = json.load(open(os.path.join(out, n, "launch.json")))
        except (OSError, ValueError):
            pass
        nodes = [{"address": x.get("address"), "gpus": x.get("gpus"),
                  "versions": (x.get("probe") or {}).get("dists"),
                  "ucx": ((x.get("probe") or {}).get("ucx") or {}).get("version"),
                  "gpu_names": sorted({g["name"] for g in ((x.get("probe") or {}).get("gpu_query") or {}).get("gpus", [])})}
                 for x in (launch.get("cluster") or {}).get("nodes", [])]
        summary["layouts"][n] = {"points": pts, "placement": launch.get("placement"),
                                 "ready_seconds": launch.get("ready_seconds"), "nodes": nodes}
        failed = sum((p["failed"] or 0) for p in pts.values())
        good = bool(pts) and failed == 0
        bad += not good
        summary["checks"].append({"check": f"{n}: {len(pts)} points, every request served ({failed} failed)", "ok": good})
    summary["direction_ok"] = None
    summary["all_served"] = bad == 0
    json.dump(summary, open(os.path.join(out, "summary.json"), "w"), indent=2)
    for n, l in summary["layouts"].items():
        for c, p in sorted(l["points"].items(), key=lambda x: float(x[0])):
            print(f"{n} {c:>5}: TTFT {p['median_ttft_ms']:9.1f} ms  TPOT {p['median_tpot_ms']:7.2f} ms  "
                  f"{p['output_throughput']:8.1f} tok/s  failed {p['failed']}")
    for ch in summary["checks"]:
        print(("ok   " if ch["ok"] else "FAIL ") + ch["check"])
    return 0 if bad == 0 else 1


if __name__ == "__main__":
    if len(sys.argv) < 3:
        print(__doc__.strip(), file=sys.stderr)
        sys.exit(2)
    sys.exit(main(sys.argv[1], sys.argv[2:]))
