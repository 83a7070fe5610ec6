//! The experiment scripts end to end with the emulator and a small workload,
//! each read back from its summary.json:
//! - pack-vs-spread.sh on emulated hosts: real NIXL sweeps per placement
//!   (shared memory, veth, tc-shaped veth), emulated serving fed by them;
//! - tp-baselines.sh on loopback: collocated TP2 x 4 vs TP4 x 2 with the
//!   emulator's TP scaling;
//! - pd-ratio-sweep.sh on loopback: one real NIXL sweep of this host, then
//!   every P:D layout fed by it.

mod common;

use std::process::Command;
use std::sync::{Mutex, MutexGuard};

/// One experiment at a time: each is a whole-machine measurement (NIXL sweeps
/// spin on the CPU, the emulator's steps are timed sleeps), and on a 2-core
/// machine two at once would measure each other.
fn one_at_a_time() -> MutexGuard<'static, ()> {
    static LOCK: Mutex<()> = Mutex::new(());
    LOCK.lock().unwrap_or_else(|p| p.into_inner())
}

#[test]
fn pack_vs_spread_shows_the_bad_link_in_ttft_not_tpot() {
    if !common::can_make_hosts("pack_vs_spread_shows_the_bad_link_in_ttft_not_tpot") {
        return;
    }
    common::require_nixl();
    let _one = one_at_a_time();
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

/// Runs an experiment script with a small workload into `out`; its summary.json.
fn run_script(script: &str, out: &std::path::Path, envs: &[(&str, &str)]) -> serde_json::Value {
    let started = std::time::Instant::now();
    let run = Command::new(format!("{}/experiments/{script}", env!("CARGO_MANIFEST_DIR")))
        .arg(out)
        .env("KVPROBE", env!("CARGO_BIN_EXE_kvprobe"))
        .envs(envs.iter().copied())
        .output()
        .unwrap_or_else(|e| panic!("run experiments/{script}: {e}"));
    let text = format!("{}\n{}", String::from_utf8_lossy(&run.stdout), String::from_utf8_lossy(&run.stderr));
    eprintln!("{script}: {:.1} s\n{text}", started.elapsed().as_secs_f64());
    assert!(run.status.success(), "{text}");
    serde_json::from_str(&std::fs::read_to_string(out.join("summary.json")).expect("summary.json")).unwrap()
}

/// Every layout has every concurrency, each point served all its requests.
fn assert_all_served(s: &serde_json::Value, layouts: &[&str], concs: &[&str]) {
    let got = s["layouts"].as_object().unwrap();
    assert_eq!(got.len(), layouts.len(), "{:?}", got.keys().collect::<Vec<_>>());
    for l in layouts {
        for c in concs {
            let pt = &s["layouts"][l]["points"][c];
            assert_eq!(pt["failed"], 0, "{l} conc {c}: {pt}");
            assert!(pt["completed"].as_u64().is_some_and(|n| n > 0), "{l} conc {c}: {pt}");
        }
    }
}

#[test]
fn tp_baselines_tp4_steps_faster_by_the_model_s_factor() {
    // the seeds' workload shape scaled down (5000:250 -> 1000:40); OTL 40 so TPOT
    // averages enough steps. The script's own checks carry the margins: the TP2/TP4
    // TTFT and TPOT ratios at concurrency 1 within 25% of the model's 1.8 (a loaded
    // 2-core machine read a 10 ms step as 11.5 ms once: 15%), and TP4's TPOT at most
    // 1.25 x TP2's under load (concurrency 8: two requests per TP2 engine, four per
    // TP4 engine), where it read 0.51-0.57 x in five runs
    let _one = one_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("tpb");
    let s = run_script(
        "tp-baselines.sh",
        &out,
        &[
            ("ITL", "1000"),
            ("OTL", "40"),
            ("CONC", "1,8"),
            ("PROMPTS_PER_CONC", "2"),
            ("ALPHA", "0.8"),
            ("TP_REF", "4"),
        ],
    );
    assert_eq!(s["direction_ok"], true, "{s:#}");
    assert_all_served(&s, &["tp2", "tp4"], &["1", "8"]);
    let checks = s["checks"].as_array().unwrap();
    assert!(checks.len() == 5 && checks.iter().all(|c| c["ok"] == true), "{s:#}");
    // the emulator applied the factors the script expects: (1 - 0.8) + 0.8 x 4 / tp
    let factors = |l: &str| s["layouts"][l]["emulator_tp_factors"].to_string();
    assert!(factors("tp2").contains(r#""factor":1.8"#) && factors("tp4").contains(r#""factor":1.0"#), "{s:#}");
    assert_eq!(s["layouts"]["tp2"]["gpus"], 8);
    assert_eq!(s["layouts"]["tp4"]["gpus"], 8);
    for f in ["plots/ttft_vs_concurrency.png", "plots/tpot_vs_concurrency.svg", "plots/throughput_vs_tpot.png"] {
        assert!(out.join(f).metadata().is_ok_and(|m| m.len() > 5000), "{f} missing or tiny");
    }
}

#[test]
fn pd_ratio_sweep_measures_the_node_then_shows_each_ratio() {
    common::require_nixl();
    let _one = one_at_a_time();
    // ITL 1000 / OTL 40 and concurrency 8 keep every default layout to a few seconds
    // while loading a lone TP2 prefill engine to about 1.3x its capacity in the model
    // (the script checks the queueing only past 1.2x); there 1xtp2-3xtp2's TTFT read
    // 3.3-5.0x 3xtp2-1xtp2's, 1xtp2-1xtp4's 1.96-3.3x 2xtp2-1xtp4's, against the 1.25x
    // the checks ask. TPOT / f(D_TP) within 25% across layouts: the model's spread is
    // the 40 us per sequence of a 10 ms step (4% at 8 sequences), it read at most 4%.
    // P-TP2 vs P-TP4 at concurrency 1: the TTFT difference is the prefill step's
    // (0.8 x 75 = 60 ms; read 59-60), independent of the shared-memory rate, which
    // moved between 1.3 and 5.3 GB/s from run to run on a shared 2-core machine
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("pdr");
    let s = run_script(
        "pd-ratio-sweep.sh",
        &out,
        &[("ITL", "1000"), ("OTL", "40"), ("CONC", "1,8"), ("PROMPTS_PER_CONC", "2"), ("SIZES", "1M,16M")],
    );
    assert_eq!(s["direction_ok"], true, "{s:#}");
    let all = [
        "1xtp4-1xtp4",
        "1xtp2-1xtp4",
        "2xtp2-1xtp4",
        "3xtp2-1xtp2",
        "2xtp2-1xtp2",
        "1xtp2-1xtp2",
        "1xtp2-2xtp2",
        "1xtp2-3xtp2",
    ];
    assert_all_served(&s, &all, &["1", "8"]);
    // every check that needs load ran (none skipped into notes) and passed
    let checks = s["checks"].as_array().unwrap();
    assert!(checks.len() == 6 && checks.iter().all(|c| c["ok"] == true), "{s:#}");
    assert_eq!(s["notes"].as_array().map(Vec::len), Some(0), "{s:#}");
    // the transport row: measured on this host, shared memory, not TCP
    let t = &s["transport"];
    assert_eq!(t["largest_size"], 16 << 20, "{t}");
    assert!(t["gbps"].as_f64().is_some_and(|g| g > 0.0), "{t}");
    assert!(!t["carried_by"].to_string().contains("tcp"), "{t}");
    // each layout's decode factor follows its D TP: (1 - 0.8) + 0.8 x 4 / tp
    assert_eq!(s["layouts"]["3xtp2-1xtp2"]["decode_factor"].as_f64(), Some(1.8));
    assert_eq!(s["layouts"]["2xtp2-1xtp4"]["gpus"], 8);
    for f in [
        "plots-dtp2/ttft_vs_concurrency.png",
        "plots-dtp4/tpot_vs_concurrency.svg",
        "plots-transport/transport_gbps.png",
    ] {
        assert!(out.join(f).metadata().is_ok_and(|m| m.len() > 5000), "{f} missing or tiny");
    }
}
