//! The load generator against the emulator, both real processes talking
//! HTTP over loopback: timings, exact token counts, counted failures,
//! Ctrl-C, rate points, PD transfer time, and bad input.

mod common;

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::Duration;

use common::{kvprobe, signal, wait_for};
use serde_json::Value;

/// A running `kvprobe emulate`, ended (SIGTERM, then reaped) on drop.
struct Emu {
    child: Child,
    url: String,
}

impl Emu {
    fn start(args: &[&str]) -> Emu {
        let mut child = kvprobe()
            .args(["emulate", "--port", "0", "--host", "127.0.0.1"])
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start kvprobe emulate");
        let mut line = String::new();
        BufReader::new(child.stdout.take().expect("stdout")).read_line(&mut line).expect("read the address line");
        let Some(url) = line.trim().strip_prefix("listening on ").map(str::to_string) else {
            let _ = child.kill();
            let out = child.wait_with_output().map(|o| String::from_utf8_lossy(&o.stderr).into_owned());
            panic!("emulate did not start: {line:?} {out:?}")
        };
        Emu { url, child }
    }
}

impl Drop for Emu {
    fn drop(&mut self) {
        signal(self.child.id(), libc::SIGTERM);
        let _ = self.child.wait();
    }
}

fn point(dir: &Path, file: &str) -> Value {
    let text = std::fs::read_to_string(dir.join(file)).unwrap_or_else(|e| panic!("{file}: {e}"));
    serde_json::from_str(&text).expect("a point file is JSON")
}

fn within(got: f64, want: f64, tol: f64) -> bool {
    (got - want).abs() <= want * tol
}

fn bench(url: &str, out: &Path, extra: &[&str]) -> std::process::Output {
    kvprobe()
        .args(["bench", "--url", url, "--model", "emu-model", "-q", "--out"])
        .arg(out)
        .args(extra)
        .output()
        .expect("run kvprobe bench")
}

#[test]
fn bench_reads_the_fixed_emulator_within_five_percent_with_exact_token_counts() {
    let emu = Emu::start(&["--model", "emu-model", "--mode", "fixed", "--ttft-ms", "200", "--tpot-ms", "20"]);
    let dir = tempfile::tempdir().unwrap();
    let out =
        bench(&emu.url, dir.path(), &["--concurrency", "1,4", "--itl", "64", "--otl", "16", "--num-prompts", "8"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for (file, conc) in [("conc1.json", 1), ("conc4.json", 4)] {
        let p = point(dir.path(), file);
        assert_eq!(p["completed"], 8, "{file}");
        assert_eq!(p["failed"], 0);
        assert_eq!(p["max_concurrency"], conc);
        assert_eq!(p["request_rate"], "inf");
        // token counts are the server's usage, and exact
        assert_eq!(p["total_input_tokens"], 8 * 64);
        assert_eq!(p["total_output_tokens"], 8 * 16);
        assert_eq!(p["kvprobe"]["prompt_len_mismatch"], 0);
        assert_eq!(p["kvprobe"]["output_len_mismatch"], 0);
        assert_eq!(p["kvprobe"]["usage_missing"], 0);
        for k in ["mean_ttft_ms", "median_ttft_ms"] {
            let v = p[k].as_f64().unwrap();
            assert!(within(v, 200.0, 0.05), "{file} {k} = {v}, configured 200");
        }
        for k in ["mean_tpot_ms", "median_tpot_ms", "median_itl_ms"] {
            let v = p[k].as_f64().unwrap();
            assert!(within(v, 20.0, 0.05), "{file} {k} = {v}, configured 20");
        }
        // one request = 200 + 15 x 20 = 500 ms; conc N completes N per 0.5 s
        let rps = p["request_throughput"].as_f64().unwrap();
        assert!(rps > 0.8 * conc as f64 * 2.0 && rps < 1.05 * conc as f64 * 2.0, "{file}: {rps} req/s");
        assert!(p["p99_ttft_ms"].as_f64().unwrap() >= p["median_ttft_ms"].as_f64().unwrap());
    }
    let m = point(dir.path(), "manifest.json");
    assert_eq!(m["status"], "complete");
    assert_eq!(m["server"]["emulator"], true);
    assert_eq!(m["points"].as_array().unwrap().len(), 2);
    assert!(m["endpoint"].as_str().unwrap().ends_with("/v1/completions"));
}

#[test]
fn rate_points_are_keyed_by_rate_and_goodput_counts_slos() {
    let emu = Emu::start(&["--model", "emu-model", "--mode", "fixed", "--ttft-ms", "30", "--tpot-ms", "5"]);
    let dir = tempfile::tempdir().unwrap();
    let out = bench(
        &emu.url,
        dir.path(),
        &[
            "--request-rate",
            "20,40",
            "--itl",
            "16",
            "--otl",
            "4",
            "--num-prompts",
            "20",
            "--goodput",
            "ttft:1000 tpot:1000",
            "--percentiles",
            "50,90,99.9",
        ],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    for (file, rate) in [("rr20.json", 20.0), ("rr40.json", 40.0)] {
        let p = point(dir.path(), file);
        assert_eq!(p["request_rate"].as_f64(), Some(rate));
        assert_eq!(p["completed"], 20);
        assert!(p["max_concurrency"].is_null());
        assert!(p.get("p99.9_ttft_ms").is_some() && p.get("p90_tpot_ms").is_some(), "{p}");
        // every request meets a 1 s SLO: goodput = throughput
        assert_eq!(p["request_goodput"].as_f64(), p["request_throughput"].as_f64());
        // N requests span about N / rate seconds plus one request's time
        let d = p["duration"].as_f64().unwrap();
        assert!(d > 0.5 * 20.0 / rate && d < 20.0 / rate + 1.0, "{file}: duration {d}");
    }
}

#[test]
fn http_500s_and_cut_streams_are_counted_failures_not_a_crash() {
    // serials 1..12: 500 at 3, 6, 9, 12; cut after the first token at 4 and 8
    let emu = Emu::start(&[
        "--model",
        "emu-model",
        "--mode",
        "fixed",
        "--ttft-ms",
        "20",
        "--tpot-ms",
        "5",
        "--fault-500-every",
        "3",
        "--fault-drop-every",
        "4",
    ]);
    let dir = tempfile::tempdir().unwrap();
    let out = bench(
        &emu.url,
        dir.path(),
        &["--concurrency", "2", "--itl", "8", "--otl", "8", "--num-prompts", "12", "--warmup", "0"],
    );
    assert_eq!(out.status.code(), Some(1), "failed requests give exit 1: {}", String::from_utf8_lossy(&out.stderr));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("6 request(s) failed"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let p = point(dir.path(), "conc2.json");
    assert_eq!(p["completed"], 6);
    assert_eq!(p["failed"], 6);
    assert_eq!(p["total_output_tokens"], 6 * 8, "failed requests add no tokens");
    let errors = p["kvprobe"]["errors"].as_object().unwrap();
    let count =
        |needle: &str| errors.iter().filter(|(k, _)| k.contains(needle)).map(|(_, v)| v.as_u64().unwrap()).sum::<u64>();
    assert_eq!(count("HTTP 500"), 4, "{errors:?}");
    assert_eq!(count("cut"), 2, "{errors:?}");
    assert_eq!(point(dir.path(), "manifest.json")["status"], "complete");
}

#[test]
fn ctrl_c_keeps_finished_points_and_exits_130() {
    let emu = Emu::start(&["--model", "emu-model", "--mode", "fixed", "--ttft-ms", "10", "--tpot-ms", "10"]);
    let dir = tempfile::tempdir().unwrap();
    let child = kvprobe()
        .args(["bench", "--url", &emu.url, "--model", "emu-model", "-q", "--out"])
        .arg(dir.path())
        .args(["--concurrency", "2,1", "--itl", "8", "--otl", "10", "--num-prompts", "4", "--warmup", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // the first point takes ~0.2 s; the second (1 x 4 x 0.1 s) is cut
    let done = wait_for(Duration::from_secs(20), || dir.path().join("conc2.json").exists().then_some(()));
    assert!(done.is_some(), "the first point never finished");
    std::thread::sleep(Duration::from_millis(150));
    signal(child.id(), libc::SIGINT);
    let out = child.wait_with_output().unwrap();
    assert_eq!(out.status.code(), Some(130), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(point(dir.path(), "conc2.json")["completed"], 4);
    assert!(!dir.path().join("conc1.json").exists(), "an unfinished point is not written as a point");
    assert!(dir.path().join("conc1.json.partial").exists());
    let m = point(dir.path(), "manifest.json");
    assert_eq!(m["status"], "interrupted");
    assert_eq!(m["points"].as_array().unwrap().len(), 1);
}

#[test]
fn ctrl_c_stops_a_busy_point_promptly() {
    // completions every few ms: the stop must not wait for a quiet moment
    let emu = Emu::start(&["--model", "emu-model", "--mode", "fixed", "--ttft-ms", "1", "--tpot-ms", "1"]);
    let dir = tempfile::tempdir().unwrap();
    let child = kvprobe()
        .args(["bench", "--url", &emu.url, "--model", "emu-model", "-q", "--out"])
        .arg(dir.path())
        .args(["--concurrency", "8", "--itl", "8", "--otl", "2", "--num-prompts", "1000000", "--warmup", "0"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(800));
    let sent = std::time::Instant::now();
    signal(child.id(), libc::SIGINT);
    let out = child.wait_with_output().unwrap();
    assert!(sent.elapsed() < Duration::from_secs(3), "took {:?} to stop", sent.elapsed());
    assert_eq!(out.status.code(), Some(130), "{}", String::from_utf8_lossy(&out.stderr));
    let p = point(dir.path(), "conc8.json.partial");
    assert!(p["completed"].as_u64().unwrap() > 10, "{p}");
    assert_eq!(p["kvprobe"]["interrupted"], true);
}

#[test]
fn max_concurrency_caps_a_rate_point() {
    let emu = Emu::start(&["--model", "emu-model", "--mode", "fixed", "--ttft-ms", "30", "--tpot-ms", "5"]);
    let dir = tempfile::tempdir().unwrap();
    // 1000 req/s asked, at most 2 in flight: each request takes 30 + 3 x 5 = 45 ms
    let out = bench(
        &emu.url,
        dir.path(),
        &["--request-rate", "1000", "--max-concurrency", "2", "--itl", "8", "--otl", "4", "--num-prompts", "12"],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let p = point(dir.path(), "rr1000.json");
    assert_eq!(p["max_concurrency"], 2);
    assert_eq!(p["kvprobe"]["max_in_flight"], 2, "{p}");
    assert_eq!(p["completed"], 12);
    // 12 requests two at a time: 6 x 45 ms
    let d = p["duration"].as_f64().unwrap();
    assert!((0.25..0.45).contains(&d), "duration {d}");
    // a request's clock starts when it is sent, after it got its slot: TTFT stays 30 ms
    let ttft = p["median_ttft_ms"].as_f64().unwrap();
    assert!(within(ttft, 30.0, 0.1), "TTFT {ttft}");
}

#[test]
fn pd_emulation_adds_the_kv_transfer_to_ttft() {
    // Llama-3.1-8B: 128 KiB per token; 1024 tokens = 128 MiB = 134.2 ms at 1 GB/s;
    // TTFT = 20 ms prefill + 134.2 ms transfer + 20 ms first decode step
    let common_args = [
        "--model",
        "llama-3.1-8b",
        "--mode",
        "pd",
        "--prefill-base-ms",
        "20",
        "--prefill-per-token-us",
        "0",
        "--decode-base-ms",
        "20",
        "--decode-per-seq-us",
        "0",
    ];
    let emu = Emu::start(&[&common_args[..], &["--kv-gbps", "1"]].concat());
    let dir = tempfile::tempdir().unwrap();
    let args = ["--concurrency", "1", "--itl", "1024", "--otl", "4", "--num-prompts", "3"];
    let bench_it = |url: &str, d: &Path| {
        let out = kvprobe()
            .args(["bench", "--url", url, "--model", "llama-3.1-8b", "-q", "--out"])
            .arg(d)
            .args(args)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        point(d, "conc1.json")
    };
    let p = bench_it(&emu.url, dir.path());
    let want = 20.0 + (1024.0 * 131_072.0) / 1e9 * 1e3 + 20.0;
    let ttft = p["median_ttft_ms"].as_f64().unwrap();
    assert!(within(ttft, want, 0.05), "TTFT {ttft} ms, model {want:.1} ms");
    let tpot = p["median_tpot_ms"].as_f64().unwrap();
    assert!(within(tpot, 20.0, 0.05), "TPOT {tpot} ms, model 20 ms");
    drop(emu);
    // the rate from a sweep's results file: the fixture's NIXL READ at 16 MiB, 4.61 GB/s
    // (its raw UCX row, 9.08 GB/s, is not what vLLM's connector drives)
    let fixture = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/results-shm-16m.json");
    let emu = Emu::start(&[&common_args[..], &["--kv-bandwidth-from", fixture]].concat());
    let dir2 = tempfile::tempdir().unwrap();
    let p = bench_it(&emu.url, dir2.path());
    let want = 20.0 + (1024.0 * 131_072.0) / 4.612_405_2e9 * 1e3 + 20.0;
    let ttft = p["median_ttft_ms"].as_f64().unwrap();
    assert!(within(ttft, want, 0.05), "TTFT {ttft} ms, model {want:.1} ms");
    let m = point(dir2.path(), "manifest.json");
    let models = m["server"]["models"].to_string();
    assert!(models.contains("results-shm-16m.json") && models.contains("kvprobe-emulator"), "{models}");
}

#[test]
fn tp_alpha_scales_each_side_by_its_tp_and_says_so() {
    // costs given at TP 2, all parallel (alpha 1): the TP 4 prefill engine takes half
    // (20 -> 10 ms), the TP 1 decode engine twice (20 -> 40 ms); KV 134.2 ms as above
    let emu = Emu::start(&[
        "--model",
        "llama-3.1-8b",
        "--mode",
        "pd",
        "--kv-gbps",
        "1",
        "--prefill-base-ms",
        "20",
        "--prefill-per-token-us",
        "0",
        "--decode-base-ms",
        "20",
        "--decode-per-seq-us",
        "0",
        "--p-tp",
        "4",
        "--d-tp",
        "1",
        "--tp-alpha",
        "1",
        "--tp-ref",
        "2",
    ]);
    let dir = tempfile::tempdir().unwrap();
    let out = kvprobe()
        .args(["bench", "--url", &emu.url, "--model", "llama-3.1-8b", "-q", "--out"])
        .arg(dir.path())
        .args(["--concurrency", "1", "--itl", "1024", "--otl", "4", "--num-prompts", "3"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let p = point(dir.path(), "conc1.json");
    let want = 10.0 + (1024.0 * 131_072.0) / 1e9 * 1e3 + 40.0;
    let ttft = p["median_ttft_ms"].as_f64().unwrap();
    assert!(within(ttft, want, 0.05), "TTFT {ttft} ms, model {want:.1} ms");
    let tpot = p["median_tpot_ms"].as_f64().unwrap();
    assert!(within(tpot, 40.0, 0.05), "TPOT {tpot} ms, model 40 ms");
    // /v1/models reports each side's factor
    let models = point(dir.path(), "manifest.json")["server"]["models"].to_string();
    assert!(
        models.contains(
            r#""tp_factors":[{"engines":"prefill","factor":0.5,"tp":4},{"engines":"decode","factor":2.0,"tp":1}]"#
        ),
        "{models}"
    );
    assert!(models.contains(r#""tp_scaling":{"alpha":1.0,"tp_ref":2}"#), "{models}");
}

#[test]
fn smoke_prints_one_request() {
    let emu = Emu::start(&["--model", "emu-model", "--mode", "fixed", "--ttft-ms", "50", "--tpot-ms", "10"]);
    let out = kvprobe()
        .args(["bench", "--url", &emu.url, "--model", "emu-model", "--smoke", "--itl", "10", "--otl", "5"])
        .output()
        .unwrap();
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("TTFT") && text.contains("10 prompt, 5 output") && text.contains("4 gaps"), "{text}");
}

#[test]
fn bad_input_is_a_clear_error() {
    let emu = Emu::start(&["--model", "emu-model", "--mode", "fixed", "--ttft-ms", "5", "--tpot-ms", "5"]);
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        let out = kvprobe().args(args).current_dir(dir.path()).output().unwrap();
        (out.status.code(), String::from_utf8_lossy(&out.stderr).into_owned())
    };
    let (c, e) = run(&["bench", "--url", &emu.url, "--model", "emu-model"]);
    assert_eq!(c, Some(2), "{e}");
    assert!(e.contains("--concurrency LIST or --request-rate LIST"), "{e}");
    let (c, e) = run(&["bench", "--url", &emu.url, "--model", "other", "--concurrency", "1"]);
    assert_eq!(c, Some(2), "{e}");
    assert!(e.contains("does not serve model \"other\"") && e.contains("emu-model"), "{e}");
    let (c, e) = run(&["bench", "--url", &emu.url, "--model", "emu-model", "--concurrency", "1,x"]);
    assert_eq!(c, Some(2), "{e}");
    let (c, e) = run(&["bench", "--url", "https://127.0.0.1:1", "--model", "m", "--concurrency", "1"]);
    assert_eq!(c, Some(2), "{e}");
    assert!(e.contains("only http://"), "{e}");
    // nothing listens on port 1 of loopback
    let (c, e) = run(&["bench", "--url", "http://127.0.0.1:1", "--model", "m", "--concurrency", "1"]);
    assert_eq!(c, Some(1), "{e}");
    assert!(e.contains("cannot reach http://127.0.0.1:1/v1/models"), "{e}");
    let (c, e) = run(&["emulate", "--model", "llama-3.1-8b", "--mode", "pd", "--port", "0"]);
    assert_eq!(c, Some(2), "{e}");
    assert!(e.contains("--kv-gbps"), "{e}");
    let (c, e) = run(&["emulate", "--model", "no-such-model", "--mode", "pd", "--kv-gbps", "5", "--port", "0"]);
    assert_eq!(c, Some(2), "{e}");
    assert!(e.contains("--model-config") && e.contains("--kv-bytes-per-token"), "{e}");
    let (c, e) = run(&["emulate", "--model", "m", "--mode", "fixed", "--port", "0"]);
    assert_eq!(c, Some(2), "{e}");
    assert!(e.contains("--ttft-ms"), "{e}");
    let (c, e) = run(&["emulate", "--model", "m", "--mode", "pd", "--kv-gbps", "1", "--kv-bandwidth-from", "x.json"]);
    assert_eq!(c, Some(2), "{e}");
    // a wrong request to the emulator gets an OpenAI-style error, counted by bench as a failure
    let (c, e) = run(&[
        "bench",
        "--url",
        &emu.url,
        "--model",
        "emu-model",
        "--concurrency",
        "1",
        "--itl",
        "20000",
        "--otl",
        "1",
        "--warmup",
        "0",
        "--num-prompts",
        "1",
        "--out",
        "ctx",
    ]);
    assert_eq!(c, Some(1), "{e}");
    let p = point(&dir.path().join("ctx"), "conc1.json");
    assert_eq!(p["failed"], 1);
    let errors = p["kvprobe"]["errors"].to_string();
    assert!(errors.contains("HTTP 400") && errors.contains("maximum context length"), "{errors}");
    // values that would overflow a duration or a count are refused up front
    for bad in [["--timeout", "1e300"], ["--duration", "1e300"], ["--burstiness", "0"], ["--request-rate", "1e300"]] {
        let mut args = vec!["bench", "--url", &emu.url, "--model", "emu-model"];
        if bad[0] != "--request-rate" {
            args.extend(["--concurrency", "1"]);
        }
        args.extend(bad);
        let (c, e) = run(&args);
        assert_eq!(c, Some(2), "{bad:?}: {e}");
    }
    let (c, e) = run(&["emulate", "--model", "m", "--mode", "fixed", "--ttft-ms", "1e300", "--tpot-ms", "1"]);
    assert_eq!(c, Some(2), "{e}");
    // TP scaling: a fraction, a sane reference TP, and only where there are step costs
    for (bad, says) in [
        (&["--tp-alpha", "1.5"][..], "between 0 and 1"),
        (&["--tp-alpha", "NaN"], "between 0 and 1"),
        (&["--tp-alpha=-0.1"], "between 0 and 1"),
        (&["--tp-ref", "0"], "--tp-ref must be between 1 and 1024"),
        (&["--tp-ref", "5000"], "--tp-ref must be between 1 and 1024"),
        (&["--mode", "fixed", "--ttft-ms", "1", "--tpot-ms", "1", "--tp-alpha", "0.5"], "--mode fixed has none"),
    ] {
        let (c, e) = run(&[&["emulate", "--model", "m", "--port", "0"][..], bad].concat());
        assert_eq!(c, Some(2), "{bad:?}: {e}");
        assert!(e.contains(says) && !e.contains("panicked"), "{bad:?}: {e}");
    }
}

#[test]
fn duration_points_send_until_the_time_is_up() {
    let emu = Emu::start(&["--model", "emu-model", "--mode", "fixed", "--ttft-ms", "20", "--tpot-ms", "10"]);
    let dir = tempfile::tempdir().unwrap();
    // one request = 20 + 3 x 10 = 50 ms; 2 workers for 1 s send about 40
    let out = bench(
        &emu.url,
        dir.path(),
        &["--concurrency", "2", "--itl", "8", "--otl", "4", "--duration", "1", "--warmup", "0"],
    );
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let p = point(dir.path(), "conc2.json");
    let n = p["completed"].as_u64().unwrap();
    assert!((30..=42).contains(&n), "{n} requests in 1 s");
    assert_eq!(p["num_prompts"].as_u64(), Some(n), "every request sent is counted");
    // the last requests start before 1 s and finish after it
    let d = p["duration"].as_f64().unwrap();
    assert!((1.0..1.2).contains(&d), "duration {d}");
}
