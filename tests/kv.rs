//! KV-shaped transfers end to end: `kv-shape` for presets and a config file,
//! and `sweep --model` between two real processes over real NIXL and UCX,
//! with every head chunk of the checked requests verified.

mod common;

use std::path::PathBuf;

use common::*;

fn fixture() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/tiny-config.json")
}

fn kv_shape(args: &[&str]) -> std::process::Output {
    kvprobe().arg("kv-shape").args(args).output().unwrap()
}

#[test]
fn kv_shape_worked_example_gpt_oss_120b_tp4_isl_5000() {
    let out = kv_shape(&["--model", "gpt-oss-120b", "--tp", "4", "--isl", "5000", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let g = &v["geometry"];
    assert_eq!(g["bytes_per_token"], 73_728);
    assert_eq!(g["d_bytes_per_token"], 18_432);
    assert_eq!(g["p_block_bytes"], 4096);
    assert_eq!(g["registered_regions"], 72);
    let r = &v["requests"][0];
    assert_eq!(r["blocks"], 313);
    assert_eq!(r["descs"], 22_536);
    assert_eq!(r["bytes"], 92_307_456u64);
    // the screen says the same
    let out = kv_shape(&["--model", "gpt-oss-120b", "--tp", "4", "--isl", "5000"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("22536") && text.contains("92307456 B") && text.contains("4 KiB"), "{text}");
}

#[test]
fn kv_shape_reads_a_config_file_and_refuses_bad_geometry() {
    let f = fixture();
    let out = kv_shape(&["--model-config", f.to_str().unwrap(), "--tp", "2", "--isl", "100", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    // 4 layers x 2 x 4 heads x 32 x 2 B
    assert_eq!(v["geometry"]["bytes_per_token"], 4 * 2 * 4 * 32 * 2);
    assert_eq!(v["geometry"]["sliding_layers"], 2);
    assert_eq!(v["requests"][0]["descs"], 8 * 7); // ceil(100/16) = 7 blocks, 8 regions

    for (args, want) in [
        (vec!["--model", "Llama-3.1-8B", "--tp", "3"], "cannot be split across prefill TP 3"),
        (vec!["--model", "Llama-3.1-8B", "--p-tp", "4", "--d-tp", "2"], "prefill TP 4 > decode TP 2"),
        (vec!["--model", "Llama-3.1-8B", "--kv-dtype", "int4"], "unknown KV dtype"),
        (vec!["--model", "llama-9"], "unknown model"),
        (vec!["--model", "Llama-3.1-8B", "--block-size", "0"], "block size"),
        (vec!["--model-config", "/nonexistent/config.json"], "/nonexistent/config.json"),
        (vec!["--model", "Llama-3.1-70B", "--isl", "18446744073709551615"], "outside 1..="),
    ] {
        let out = kv_shape(&args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    // MLA: prefill TP above decode TP is fine (replicated latent)
    let out = kv_shape(&["--model", "DeepSeek-R1", "--p-tp", "8", "--d-tp", "2", "--json"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
}

/// A small heterogeneous-TP KV sweep: prefill TP1 (4 heads per block) to
/// decode TP2, rank 1 (heads 2..4: a slice at half a block), with sliding
/// layers moving only their window.
fn kv_sweep(dir: &std::path::Path, extra: &[&str]) -> std::process::Output {
    let f = fixture();
    let mut args = vec![
        "--model-config",
        f.to_str().unwrap(),
        "--p-tp",
        "1",
        "--d-tp",
        "2",
        "--d-rank",
        "1",
        "--sliding",
        "window",
        "--isl",
        "100,1000",
    ];
    args.extend_from_slice(extra);
    sweep(dir, &args, &[])
}

#[test]
fn kv_sweep_moves_head_slices_on_both_backends_and_verifies_them() {
    require_nixl();
    let dir = tempfile::tempdir().unwrap();
    let out = kv_sweep(dir.path(), &["--backend", "nixl,ucx", "--block-pattern", "random", "--inflight", "2"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let v = results(dir.path());
    assert_eq!(v["status"], "complete");
    let rows = v["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 2 * 2 * 2, "backends x ops x ISLs");
    for row in rows {
        let kv = &row["kv"];
        assert_eq!(row["verified"], true, "{row:#}");
        assert_eq!(row["checks"].as_array().unwrap().len(), 2);
        let g = &kv["geometry"];
        assert_eq!(g["p_block_bytes"], 16 * 4 * 32 * 2);
        assert_eq!(g["d_block_bytes"], 16 * 2 * 32 * 2);
        assert_eq!(g["slice_offset_bytes"], 16 * 2 * 32 * 2);
        let isl = kv["isl"].as_u64().unwrap();
        let blocks = isl.div_ceil(16);
        // sliding layers: the blocks holding the last 31 tokens (what the next token attends to)
        let first = (isl - 31) / 16;
        let sliding = blocks - first;
        assert_eq!(kv["blocks"], blocks);
        assert_eq!(kv["sliding_blocks"], sliding);
        assert_eq!(row["descs"], 4 * blocks + 4 * sliding, "4 full and 4 sliding K/V regions");
        assert_eq!(row["size_bytes"].as_u64().unwrap(), row["descs"].as_u64().unwrap() * 2048);
        assert!(kv["requests"].as_u64().unwrap() >= 3);
        assert!(kv["effective_gbps"].as_f64().unwrap() > 0.0);
        assert!(kv["contiguous_gbps"].as_f64().unwrap() > 0.0);
        let eff = kv["layout_efficiency"].as_f64().unwrap();
        let want = kv["effective_gbps"].as_f64().unwrap() / kv["contiguous_gbps"].as_f64().unwrap();
        assert!((eff - want).abs() < 1e-9);
        assert_eq!(kv["pattern"], "random");
        assert_eq!(kv["inflight"], 2);
        assert!(row["transport"].is_object(), "every KV row names its transport: {row:#}");
        if row["backend"] == "nixl" {
            // one notification per request: warm-up, timed and the two checked ones
            let n = row["iterations"].as_u64().unwrap() + row["warmup_iterations"].as_u64().unwrap() + 2;
            assert_eq!(row["notifs_expected"].as_u64().unwrap(), n);
            assert_eq!(row["notifs_received"], row["notifs_expected"]);
        }
    }
    assert!(stdout.contains("layout eff") && stdout.contains("req p50 ms"), "{stdout}");
    let csv = read(&dir.path().join("results.csv"));
    assert!(csv.lines().next().unwrap().contains("kv_layout_efficiency"));
}

#[test]
fn a_misplaced_block_is_caught() {
    require_nixl();
    for (backend, op, side) in [("nixl", "READ", "initiator"), ("ucx", "WRITE", "target")] {
        let dir = tempfile::tempdir().unwrap();
        let out = kv_sweep(dir.path(), &["--backend", backend, "--ops", op, "--inject", "kv-misplaced"]);
        assert_eq!(out.status.code(), Some(1), "{backend} {op}: a misplaced block must fail the run");
        let v = results(dir.path());
        assert_eq!(v["status"], "failed");
        let rows = v["rows"].as_array().unwrap();
        assert_eq!(rows.len(), 1, "the run stops at the bad row");
        let c = &rows[0]["checks"][0];
        assert_eq!(c["ok"], false, "{backend} {op}");
        assert_eq!(c["side"], side);
        assert!(c["mismatched_bytes"].as_u64().unwrap() > 0);
        assert!(v["errors"].to_string().contains("verification failed"));
    }
}

#[test]
fn kv_sweep_input_errors_are_clear() {
    let dir = tempfile::tempdir().unwrap();
    for (args, want) in [
        (vec!["--model", "Llama-3.1-8B", "--p-tp", "2", "--d-tp", "1"], "prefill TP 2 > decode TP 1"),
        (vec!["--model", "Llama-3.1-8B", "--isl", "0"], "--isl"),
        (vec!["--model", "Llama-3.1-8B", "--inflight", "0"], "--inflight"),
        (vec!["--model", "Llama-3.1-8B", "--block-pattern", "zigzag"], "unknown block pattern"),
        (vec!["--model", "Llama-3.1-70B", "--isl", "100000"], "memory"),
        (vec!["--model", "Llama-3.1-70B", "--isl", "10000000"], "descriptors per request"),
        (vec!["--model", "Llama-3.1-8B", "--inject", "corrupt-first"], "applies to size sweeps"),
        (vec!["--model", "Llama-3.1-8B", "--sizes", "4K"], "cannot be used with"),
    ] {
        let out = sweep(dir.path(), &args, &[]);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(want), "{args:?}: {err}");
    }
}

#[test]
fn flashinfer_and_mla_layouts_move_verified_data() {
    require_nixl();
    let f = fixture();
    let cases: [Vec<&str>; 2] = [
        // one joint K|V region per layer: K and V blocks interleave
        // (and NIXL told not to merge adjacent descriptors)
        vec![
            "--model-config",
            f.to_str().unwrap(),
            "--layout",
            "flashinfer",
            "--d-tp",
            "2",
            "--backend",
            "nixl,ucx",
            "--no-desc-merge",
        ],
        // MLA: replicated latent, prefill TP above decode TP is allowed
        vec!["--model", "DeepSeek-V3", "--p-tp", "2", "--d-tp", "1", "--backend", "nixl"],
    ];
    for args in cases {
        let dir = tempfile::tempdir().unwrap();
        let mut a = args.clone();
        a.extend(["--isl", "100", "--ops", "READ,WRITE"]);
        let out = sweep(dir.path(), &a, &[]);
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        let v = results(dir.path());
        assert_eq!(v["header"]["settings"]["kv"]["no_desc_merge"], args.contains(&"--no-desc-merge"));
        assert_eq!(v["rows"].as_array().unwrap().len(), if args.contains(&"nixl,ucx") { 4 } else { 2 });
        for row in v["rows"].as_array().unwrap() {
            assert_eq!(row["verified"], true, "{args:?}: {row:#}");
            let g = &row["kv"]["geometry"];
            if args.contains(&"flashinfer") {
                assert_eq!(g["registered_regions"], 4);
                assert_eq!(g["desc_regions"], 8);
            } else {
                assert_eq!(g["attention"], "mla");
                assert_eq!(g["d_block_bytes"], 16 * 576 * 2);
                assert_eq!(row["descs"], 61 * 7);
            }
        }
    }
}
