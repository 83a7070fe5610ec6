//! experiments/pack-vs-spread.sh end to end on emulated hosts with the
//! emulator, a small workload: real NIXL sweeps per placement (shared
//! memory, veth, tc-shaped veth), emulated serving fed by them, and the
//! seeds' direction read from its summary.json.

mod common;

use std::process::Command;

#[test]
fn pack_vs_spread_shows_the_bad_link_in_ttft_not_tpot() {
    if !common::can_make_hosts("pack_vs_spread_shows_the_bad_link_in_ttft_not_tpot") {
        return;
    }
    common::require_nixl();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("pvs");
    let run = Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/experiments/pack-vs-spread.sh"))
        .arg(&out)
        .env("KVPROBE", env!("CARGO_BIN_EXE_kvprobe"))
        .env("HOSTS_NAME", format!("pvt{}", std::process::id() % 100_000))
        .envs([("ITL", "1000"), ("OTL", "40"), ("CONC", "1,4"), ("PROMPTS_PER_CONC", "2"), ("SIZES", "1M,16M,64M")])
        .output()
        .expect("run experiments/pack-vs-spread.sh");
    let text = format!("{}\n{}", String::from_utf8_lossy(&run.stdout), String::from_utf8_lossy(&run.stderr));
    assert!(run.status.success(), "{text}");
    let s: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).expect("summary.json")).unwrap();
    assert_eq!(s["direction_ok"], true, "{s:#}");
    let place = |p: &str| &s["placements"][p];
    // the transports are what each placement should get
    let lanes = |p: &str| place(p)["transport"]["carried_by"].to_string();
    assert!(!lanes("pack").contains("tcp"), "pack moved KV over {}", lanes("pack"));
    assert!(lanes("spread-good").contains("tcp") && lanes("spread-bad").contains("tcp"));
    let gbps = |p: &str| place(p)["transport"]["gbps"].as_f64().unwrap();
    assert!(gbps("spread-bad") < 0.2, "a 1 Gbit/s link read at {} GB/s", gbps("spread-bad"));
    assert!(gbps("spread-bad") < gbps("spread-good") && gbps("spread-good") < gbps("pack"));
    // every point served everything
    for p in ["pack", "spread-good", "spread-bad"] {
        for c in ["1", "4"] {
            let pt = &place(p)["points"][c];
            assert_eq!(pt["failed"], 0, "{p} conc {c}: {pt}");
            assert!(pt["completed"].as_u64().unwrap() > 0);
        }
    }
    // TTFT grows with the transfer time; at concurrency 1 by about the modelled transfer
    let ttft = |p: &str, c: &str| place(p)["points"][c]["median_ttft_ms"].as_f64().unwrap();
    assert!(ttft("spread-bad", "1") > ttft("spread-good", "1") && ttft("spread-good", "1") > ttft("pack", "1"));
    for f in ["plots/ttft_vs_concurrency.png", "plots/throughput_vs_tpot.svg", "plots-transport/transport_gbps.png"] {
        assert!(out.join(f).metadata().is_ok_and(|m| m.len() > 5000), "{f} missing or tiny");
    }
}
