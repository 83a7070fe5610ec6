//! `kvprobe tp`: a P_tp -> D_tp KV transfer as concurrent rank pairs, with
//! real NIXL in host memory (one process per rank: a shared target per
//! prefill rank, a sweep per decode rank, one barrier per timed loop).

mod common;

use std::path::Path;

use serde_json::Value;

/// `kvprobe tp` on Llama-3.1-8B (unless `extra` names a model), short loops.
fn tp(dir: &Path, extra: &[&str]) -> std::process::Output {
    let model: &[&str] = if extra.contains(&"--model") { &[] } else { &["--model", "Llama-3.1-8B"] };
    common::kvprobe()
        .args(["tp", "-q", "--duration", "300ms", "--warmup", "20ms", "--min-iters", "3"])
        .args(model)
        .arg("--out")
        .arg(dir)
        .args(extra)
        .output()
        .expect("run kvprobe tp")
}

fn json(p: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap_or_else(|e| panic!("{}: {e}", p.display())))
        .unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"))
}

#[test]
fn two_prefill_ranks_feed_four_decode_ranks_at_once() {
    common::require_nixl();
    let dir = tempfile::tempdir().unwrap();
    let out = tp(dir.path(), &["--p-tp", "2", "--d-tp", "4", "--isl", "1000,3000"]);
    let say = format!("{}\n{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    let r = json(&dir.path().join("tp.json"));
    assert_eq!(out.status.code(), Some(0), "{say}\n{r:#}");
    assert_eq!(r["schema"], "kvprobe.tp/1");
    assert_eq!(r["status"], "complete", "{say}");
    // vLLM's mapping: decode rank d reads prefill rank d / 2, its own two of the eight heads
    let pairs: Vec<(u64, u64, u64)> = r["pairs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| (p["d_rank"].as_u64().unwrap(), p["p_rank"].as_u64().unwrap(), p["heads"][0].as_u64().unwrap()))
        .collect();
    assert_eq!(pairs, vec![(0, 0, 0), (1, 0, 2), (2, 1, 4), (3, 1, 6)]);
    let round = &r["rounds"][0];
    assert_eq!(round["backend"], "nixl-ucx");
    // two points x (the contiguous reference + the KV request loop)
    assert_eq!(round["barriers"], 4, "{round:#}");

    // every rank's own sweep: its rows checked, its loops stamped, its prefill
    // rank's target one process shared with its sibling
    let mut target_pid = Vec::new();
    let mut rows_of = Vec::new();
    for d in 0..4u64 {
        let res = json(&dir.path().join(round["ranks"][d as usize]["results"].as_str().unwrap()).join("results.json"));
        assert_eq!(res["status"], "complete", "rank {d}: {res:#}");
        let rows = res["rows"].as_array().unwrap().clone();
        assert_eq!(rows.len(), 2, "rank {d}");
        for row in &rows {
            assert_eq!(row["verified"], true, "rank {d}: {row:#}");
            assert_eq!(row["notifs_received"], row["notifs_expected"]);
            assert_eq!(row["kv"]["geometry"]["d_rank"], d);
            assert_eq!(row["kv"]["geometry"]["p_rank"], d / 2);
            let w = row["window_ns"].as_array().expect("a TP rank's row has its loop's window");
            assert!(w[0].as_u64().unwrap() < w[1].as_u64().unwrap());
        }
        target_pid.push(res["header"]["target"]["pid"].as_u64().unwrap());
        rows_of.push(rows);
    }
    assert_eq!(target_pid[0], target_pid[1], "decode ranks 0 and 1 read one prefill process");
    assert_eq!(target_pid[2], target_pid[3]);
    assert_ne!(target_pid[0], target_pid[2], "one process per prefill rank");

    // the aggregate is every rank's bytes over the span of their loops,
    // recomputed here from the ranks' own rows; the loops ran together
    let points = round["points"].as_array().unwrap();
    assert_eq!(points.len(), 2);
    for (i, p) in points.iter().enumerate() {
        assert_eq!(p["ranks"], 4);
        let rows: Vec<&Value> = rows_of.iter().map(|r| &r[i]).collect();
        assert!(rows.iter().all(|x| x["kv"]["isl"] == p["isl"]));
        let start = rows.iter().map(|x| x["window_ns"][0].as_u64().unwrap()).min().unwrap();
        let end = rows.iter().map(|x| x["window_ns"][1].as_u64().unwrap()).max().unwrap();
        let all_in = rows.iter().map(|x| x["window_ns"][0].as_u64().unwrap()).max().unwrap();
        let first_out = rows.iter().map(|x| x["window_ns"][1].as_u64().unwrap()).min().unwrap();
        let bytes: f64 = rows
            .iter()
            .map(|x| x["size_bytes"].as_u64().unwrap() as f64 * x["iterations"].as_u64().unwrap() as f64)
            .sum();
        let want = bytes / (end - start) as f64;
        assert!((f(&p["aggregate_gbps"]) - want).abs() <= 1e-9 * want, "{p:#}");
        assert!(all_in < first_out, "the four timed loops overlapped: {p:#}");
        let sum: f64 = rows.iter().map(|x| f(&x["gbps"])).sum();
        assert!((f(&p["sum_gbps"]) - sum).abs() < 1e-9 * sum);
        // a rank moves a quarter of the model's KV: the request is all four
        let per_rank = rows[0]["size_bytes"].as_u64().unwrap();
        assert_eq!(p["request_bytes"].as_u64().unwrap(), 4 * per_rank);
    }
    // the table says the same
    let table = String::from_utf8_lossy(&out.stdout);
    assert!(table.contains("d3 <- p1") && table.contains("aggregate GB/s"), "{table}");
}

#[test]
fn decode_ranks_writing_into_one_prefill_rank_each_check_their_own_heads() {
    common::require_nixl();
    let dir = tempfile::tempdir().unwrap();
    let out = tp(dir.path(), &["--p-tp", "1", "--d-tp", "2", "--isl", "1000", "--ops", "write"]);
    let r = json(&dir.path().join("tp.json"));
    assert_eq!(out.status.code(), Some(0), "{}\n{r:#}", String::from_utf8_lossy(&out.stderr));
    let round = &r["rounds"][0];
    for k in round["ranks"].as_array().unwrap() {
        assert_eq!(k["status"], "complete");
        assert_eq!(k["bad_rows"], 0, "{k:#}");
    }
    let p = &round["points"][0];
    assert_eq!(p["op"], "WRITE");
    assert_eq!(p["ranks"], 2);
}

/// MLA with D_tp > P_tp: both decode ranks read the whole latent of the one
/// prefill rank, the same bytes at once (their checked requests each in an
/// area of the cache of their own).
#[test]
fn two_decode_ranks_read_one_mla_latent_at_once() {
    common::require_nixl();
    let dir = tempfile::tempdir().unwrap();
    let out = tp(dir.path(), &["--model", "DeepSeek-V3", "--p-tp", "1", "--d-tp", "2", "--isl", "1000"]);
    let r = json(&dir.path().join("tp.json"));
    assert_eq!(out.status.code(), Some(0), "{}\n{r:#}", String::from_utf8_lossy(&out.stderr));
    let round = &r["rounds"][0];
    assert_eq!(round["pairs"][1]["p_rank"], 0);
    assert_eq!(round["pairs"][0]["heads"], round["pairs"][1]["heads"], "the same latent");
    for k in round["ranks"].as_array().unwrap() {
        assert_eq!(k["status"], "complete", "{k:#}");
        assert_eq!(k["bad_rows"], 0);
    }
    assert_eq!(round["points"][0]["ranks"], 2);
}

#[test]
fn a_rank_that_dies_stops_the_others_and_what_was_measured_stays() {
    common::require_nixl();
    let dir = tempfile::tempdir().unwrap();
    // rank 2 is SIGKILLed once the second point's first loop has started
    let out = tp(dir.path(), &["--p-tp", "2", "--d-tp", "4", "--isl", "1000,3000", "--kill-rank", "2"]);
    let r = json(&dir.path().join("tp.json"));
    assert_eq!(out.status.code(), Some(1), "{r:#}");
    assert_eq!(r["status"], "failed");
    let round = &r["rounds"][0];
    assert!(round["error"].as_str().unwrap().contains("decode rank 2's sweep killed by signal 9"), "{round:#}");
    // the first point was measured by all four, and is kept
    let points = round["points"].as_array().unwrap();
    assert_eq!(points.len(), 1, "{round:#}");
    assert_eq!(points[0]["ranks"], 4);
    assert_eq!(r["verdict"]["grade"], "FAIL");
    // the others were stopped by the run, their first rows on disk
    for d in [0usize, 1, 3] {
        let res = json(&dir.path().join(round["ranks"][d]["results"].as_str().unwrap()).join("results.json"));
        assert_eq!(res["status"], "failed");
        assert!(res["errors"][0].as_str().unwrap().contains("the TP run stopped"), "{res:#}");
        assert_eq!(res["rows"].as_array().unwrap().len(), 1);
    }
    // no process of the run is left
    let ps = std::process::Command::new("pgrep").args(["-f", dir.path().to_str().unwrap()]).output().unwrap();
    assert!(ps.stdout.is_empty(), "left behind: {}", String::from_utf8_lossy(&ps.stdout));
}

#[test]
fn layouts_kvprobe_tp_cannot_run_are_refused_before_anything_starts() {
    let dir = tempfile::tempdir().unwrap();
    let cases: &[(&[&str], &str)] = &[
        (&["--p-tp", "4", "--d-tp", "2"], "NixlConnector"),
        (&["--p-tp", "2", "--d-tp", "3"], "cannot be split"),
        (&["--p-tp", "1", "--d-tp", "2", "--d-rank", "1"], "every decode rank"),
        (&["--p-tp", "1", "--d-tp", "2", "--backend", "ucx"], "NIXL's backends"),
        (&["--p-tp", "1", "--d-tp", "2", "--decode-gpus", "0,1"], "vram"),
        (&["--p-tp", "1", "--d-tp", "2", "--prefill-mem", "vram", "--decode-gpus", "0"], "lists 1 GPUs for 2 ranks"),
        (&["--p-tp", "1", "--d-tp", "2", "--isl", "0"], "--isl"),
        (&["--p-tp", "0", "--d-tp", "2"], "TP sizes"),
        (&["--p-tp", "1", "--d-tp", "2", "--backend-param", "nokey"], "KEY=VALUE"),
    ];
    for (args, want) in cases {
        let out = tp(dir.path(), args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: expected {want:?} in: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
    assert!(!dir.path().join("tp.json").exists(), "nothing started");
}
