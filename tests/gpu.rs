//! GPU memory: VRAM sweeps with both backends, checked on the GPU side.
//!
//! These run where the CUDA driver sees a GPU (the GPU test machine runs this
//! binary from `debug/gpu-sweep.sh`); elsewhere each prints why it is skipped,
//! and the one test that needs *no* GPU checks the error a user gets.

mod common;

use common::{kvprobe, require_nixl, results, sweep};

/// Why GPU tests cannot run here, or None when a GPU is present.
fn no_gpu() -> Option<String> {
    match kvprobe::cuda::gpu(0) {
        Ok(_) => None,
        Err(e) => Some(e.to_string()),
    }
}

macro_rules! need_gpu {
    () => {
        if let Some(why) = no_gpu() {
            eprintln!("skipped: no GPU here ({why}); GPU tests run on the GPU machine (debug/gpu-sweep.sh)");
            return;
        }
    };
}

fn rows(v: &serde_json::Value) -> Vec<serde_json::Value> {
    v["rows"].as_array().cloned().unwrap_or_default()
}

fn lanes(row: &serde_json::Value) -> String {
    row["transport"]["lanes"].to_string()
}

#[test]
fn vram_without_a_gpu_is_a_clear_error() {
    if no_gpu().is_none() {
        eprintln!("skipped: this host has a GPU, so the no-GPU error cannot be shown here");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = sweep(dir.path(), &["--sizes", "1M", "--src-mem", "vram", "--dst-mem", "vram"], &[]);
    assert_eq!(out.status.code(), Some(2), "a missing GPU is a setup error");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("libcuda.so.1") || err.contains("no GPU"), "{err}");
    assert!(err.contains("LD_LIBRARY_PATH") || err.contains("nvidia-smi"), "says how to fix it: {err}");
    assert!(!err.contains("panicked"), "{err}");
    // Mixed memories need one direction: a usage error before any GPU is touched.
    let out = sweep(dir.path(), &["--sizes", "1M", "--src-mem", "dram", "--dst-mem", "vram", "--no-pin"], &[]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("--ops"), "names the way out");
}

/// A GPU sweep (`args` split on spaces, `--no-fail` added) that must finish
/// with exit 0 and every row's data checked; its results.json.
fn clean_gpu_sweep(args: &str, envs: &[(&str, &str)]) -> serde_json::Value {
    require_nixl();
    let dir = tempfile::tempdir().unwrap();
    let mut a: Vec<&str> = args.split_whitespace().collect();
    a.push("--no-fail");
    let out = sweep(dir.path(), &a, envs);
    let v = results(dir.path());
    assert_eq!(out.status.code(), Some(0), "{}\n{:#}", String::from_utf8_lossy(&out.stderr), v["errors"]);
    let rows = rows(&v);
    assert!(!rows.is_empty(), "{v:#}");
    for row in &rows {
        assert_eq!(row["verified"], true, "{row:#}");
    }
    v
}

#[test]
fn vram_to_vram_both_backends_move_the_right_bytes() {
    need_gpu!();
    let v = clean_gpu_sweep(
        "--backend nixl,ucx --sizes 4K,1M,16M --src-mem vram --dst-mem vram",
        &[("UCX_CUDA_IPC_ENABLE_GET_ZCOPY", "y")],
    );
    let rows = rows(&v);
    assert_eq!(rows.len(), 12, "2 ops x 3 sizes x 2 backends");
    for row in &rows {
        assert!(row["checks"].as_array().unwrap().iter().all(|c| c["ok"] == true), "{row:#}");
        assert!(lanes(row).contains("cuda_ipc"), "GPU memory on one GPU goes over cuda_ipc: {row:#}");
    }
    assert_eq!(v["header"]["settings"]["src_mem"]["kind"], "vram");
    assert!(v["header"]["gpu_copy"]["dtod_gbps"].as_f64().unwrap() > 0.0, "the yardstick was measured");
    assert!(!v["header"]["gpus"].as_array().unwrap().is_empty());
}

#[test]
fn a_corrupted_gpu_byte_is_caught_on_the_gpu_side() {
    need_gpu!();
    require_nixl();
    for (op, side) in [("READ", "initiator"), ("WRITE", "target")] {
        let dir = tempfile::tempdir().unwrap();
        let out = sweep(
            dir.path(),
            &["--sizes", "64K", "--ops", op, "--src-mem", "vram", "--dst-mem", "vram", "--inject", "corrupt-first"],
            &[("UCX_CUDA_IPC_ENABLE_GET_ZCOPY", "y")],
        );
        assert_eq!(out.status.code(), Some(1), "{op}: a corrupted byte fails the run");
        let v = results(dir.path());
        let row = &rows(&v)[0];
        let bad = &row["checks"][0];
        assert_eq!(bad["ok"], false, "{row:#}");
        assert_eq!(bad["side"], side);
        assert_eq!(bad["mismatched_bytes"], 1);
        assert_eq!(bad["first_bad_offset"], 32 * 1024);
    }
}

#[test]
fn kv_shaped_requests_in_gpu_memory_are_checked_per_head() {
    need_gpu!();
    let v = clean_gpu_sweep(
        "--backend nixl,ucx --model Llama-3.1-8B --isl 512 --src-mem vram --dst-mem vram --ops WRITE",
        &[],
    );
    for row in rows(&v) {
        assert!(row["kv"].is_object() && row["descs"].as_u64().unwrap() > 1, "{row:#}");
    }
}

#[test]
fn host_to_gpu_goes_through_page_locked_memory() {
    need_gpu!();
    let v = clean_gpu_sweep("--backend nixl,ucx --sizes 1M,16M --src-mem dram --dst-mem vram --ops WRITE", &[]);
    assert_eq!(v["header"]["settings"]["src_mem"]["pin"], true, "host side page-locked");
    // The help names the memory flags.
    let help = kvprobe().args(["sweep", "--help"]).output().unwrap();
    assert!(String::from_utf8_lossy(&help.stdout).contains("--src-mem"));
}

/// `matrix --local --same-gpu`: every ordered pair of this host's GPUs and each
/// GPU with itself, GPU memory on both ends, over cuda_ipc; the matrix, its
/// NVLink topology (NVML) and the heatmap are written.
#[test]
fn local_gpu_matrix_measures_every_pair_over_cuda_ipc() {
    need_gpu!();
    require_nixl();
    let n = kvprobe::cuda::Cuda::open().and_then(|c| c.devices()).map(|d| d.len()).unwrap_or(0);
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("m");
    let out = kvprobe()
        .args([
            "matrix",
            "--local",
            "--same-gpu",
            "--sizes",
            "1M,16M",
            "--duration",
            "200ms",
            "--no-fail",
            "-q",
            "--out",
        ])
        .arg(&m)
        // READ through cuda_ipc needs GET zero-copy where there is no NVLink
        .env("UCX_CUDA_IPC_ENABLE_GET_ZCOPY", "y")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(m.join("matrix.json")).unwrap()).unwrap();
    assert_eq!(v["local"], true);
    assert_eq!(v["status"], "complete");
    assert_eq!(v["endpoints"].as_array().unwrap().len(), n);
    let pairs = v["pairs"].as_array().unwrap();
    assert_eq!(pairs.len(), n * (n - 1) + n, "every ordered pair and every GPU with itself");
    for p in pairs {
        assert_eq!(p["status"], "ok", "{p:#}");
        assert!(p["gbps"].as_f64().unwrap() > 0.0, "{p:#}");
        assert!(p["carried_by"].as_str().unwrap().contains("cuda_ipc"), "transport truth: {p:#}");
    }
    assert!(
        m.join("heatmap.svg").is_file(),
        "no heatmap (a host without fonts needs KVPROBE_FONT, as debug/gpu-tp.sh sets): {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.contains("NVLink (NVML)"), "the topology beside the matrix: {stdout}");
}

/// `kvprobe tp` in GPU memory: two prefill ranks and four decode ranks, every
/// rank on GPU 0 (a machine with one GPU: the ranks are processes, as vLLM's),
/// all over cuda_ipc, every rank's requests checked on the GPU side, the
/// four timed loops started on one barrier.
#[test]
fn tp_ranks_in_gpu_memory_read_over_cuda_ipc_at_once() {
    need_gpu!();
    require_nixl();
    let dir = tempfile::tempdir().unwrap();
    let out = kvprobe()
        .args(["tp", "-q", "--model", "Llama-3.1-8B", "--p-tp", "2", "--d-tp", "4", "--isl", "1000,5000"])
        .args(["--prefill-mem", "vram", "--decode-mem", "vram", "--prefill-gpus", "0,0", "--decode-gpus", "0,0,0,0"])
        .args(["--duration", "300ms", "--out"])
        .arg(dir.path())
        .env("UCX_CUDA_IPC_ENABLE_GET_ZCOPY", "y")
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    let v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.path().join("tp.json")).unwrap()).unwrap();
    assert_eq!(v["status"], "complete");
    assert_eq!(v["decode_gpus"], serde_json::json!([0, 0, 0, 0]));
    let round = &v["rounds"][0];
    for k in round["ranks"].as_array().unwrap() {
        assert_eq!(k["status"], "complete", "{k:#}");
        assert_eq!(k["bad_rows"], 0);
        assert!(k["lanes"].to_string().contains("cuda_ipc"), "transport truth: {k:#}");
    }
    for p in round["points"].as_array().unwrap() {
        assert_eq!(p["ranks"], 4);
        assert!(p["aggregate_gbps"].as_f64().unwrap() > 0.0);
    }
}

/// The KV checks in GPU memory go through strided batch copies: a request
/// that reads (or writes) every block one block off, with the decode rank's
/// slice in the middle of the prefill block (P_tp 1 -> D_tp 2, rank 1), is
/// caught on either side.
#[test]
fn a_misplaced_kv_slice_in_gpu_memory_is_caught_by_the_batched_checks() {
    need_gpu!();
    require_nixl();
    for (op, side) in [("READ", "initiator"), ("WRITE", "target")] {
        let dir = tempfile::tempdir().unwrap();
        let out = sweep(
            dir.path(),
            &[
                "--model",
                "Llama-3.1-8B",
                "--p-tp",
                "1",
                "--d-tp",
                "2",
                "--d-rank",
                "1",
                "--isl",
                "512",
                "--src-mem",
                "vram",
                "--dst-mem",
                "vram",
                "--ops",
                op,
                "--inject",
                "kv-misplaced",
            ],
            &[("UCX_CUDA_IPC_ENABLE_GET_ZCOPY", "y")],
        );
        assert_eq!(out.status.code(), Some(1), "{op}: {}", String::from_utf8_lossy(&out.stderr));
        let v = results(dir.path());
        let c = &rows(&v)[0]["checks"][0];
        assert_eq!(c["ok"], false, "{op}: {c:#}");
        assert_eq!(c["side"], side);
        assert!(c["mismatched_bytes"].as_u64().unwrap() > 0);
    }
}
