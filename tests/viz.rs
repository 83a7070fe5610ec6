//! `kvprobe viz` end to end: fixture results in a temporary folder, the real
//! binary, then the files read back (viz.json, PNG headers, SVG text).
//! Needs no NIXL, but needs a TrueType font (DejaVu) to draw.

mod common;

use std::path::Path;

use common::kvprobe;
use serde_json::{Value, json};

const DEJAVU: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

/// The plots need a font; without one the test must fail, not pass on no plots.
fn require_font() {
    let own = std::env::var_os("KVPROBE_FONT").filter(|f| Path::new(f).is_file());
    assert!(
        own.is_some() || Path::new(DEJAVU).is_file(),
        "no TrueType font: {DEJAVU} is missing and KVPROBE_FONT is unset; install fonts-dejavu-core \
         (debug/setup.sh does) or set KVPROBE_FONT=/path/to/font.ttf"
    );
}

fn write(p: &Path, v: &Value) {
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(p, serde_json::to_vec_pretty(v).unwrap()).unwrap();
}

/// A `vllm bench serve` result (vLLM 0.11 keys: no `failed`).
fn vllm_point(rate: Value, max_conc: Value, tpot: f64, ttft: f64, out_tps: f64) -> Value {
    json!({
        "date": "20251012-142040", "endpoint_type": "vllm", "backend": "vllm", "label": null,
        "model_id": "openai/gpt-oss-120b", "tokenizer_id": "openai/gpt-oss-120b", "num_prompts": 100,
        "request_rate": rate, "burstiness": 1.0, "max_concurrency": max_conc,
        "duration": 10.0, "completed": 100, "total_input_tokens": 500000,
        "total_output_tokens": (out_tps * 10.0) as u64, "request_throughput": 10.0, "request_goodput": null,
        "output_throughput": out_tps, "total_token_throughput": out_tps + 50000.0,
        "max_output_tokens_per_s": out_tps * 1.5, "max_concurrent_requests": 64,
        "mean_ttft_ms": ttft, "median_ttft_ms": ttft, "std_ttft_ms": 1.0, "p99_ttft_ms": ttft * 2.0,
        "mean_tpot_ms": tpot, "median_tpot_ms": tpot, "std_tpot_ms": 0.1, "p99_tpot_ms": tpot * 1.5,
    })
}

const CONC: &str = "collocated 2xTP4";
const PD: &str = "gptoss_itl5000_otl250_1xtp4-1xtp4-pack";
const RATE: &str = "gptoss_itl5000_otl250_mixed_2xtp2";

/// Three experiments and two transport inputs:
/// - `kvp-conc`: kvprobe bench concurrency sweep, manifest label and `gpus: 8`;
/// - `gptoss_itl5000_otl250_1xtp4-1xtp4-pack`: plain vLLM concurrency sweep, no
///   manifest (8 GPUs from the name), run_bm.sh's `request_rate` 1e9;
/// - `gptoss_itl5000_otl250_mixed_2xtp2`: plain vLLM rate sweep (4 GPUs from
///   the name), run_bm.sh's `max_concurrency` 1e9, plus a malformed file;
/// - `shm`: a `kvprobe sweep` folder; `cmp`: a `kvprobe compare` folder.
fn fixtures(root: &Path) {
    let conc = root.join("kvp-conc");
    write(
        &conc.join("manifest.json"),
        &json!({"schema": "kvprobe.bench-manifest/1", "label": CONC, "gpus": 8, "kind": "concurrency"}),
    );
    for (c, tpot, ttft, out) in [
        (4, 6.0, 120.0, 900.0),
        (8, 7.0, 150.0, 1600.0),
        (16, 9.0, 200.0, 2600.0),
        (32, 12.0, 300.0, 3600.0),
        (64, 16.0, 600.0, 3500.0),
    ] {
        let mut v = vllm_point(json!("inf"), json!(c), tpot, ttft, out);
        v["backend"] = json!("kvprobe");
        v["failed"] = json!(0);
        v["kvprobe"] = json!({"schema": "kvprobe.bench-point/1", "kind": "concurrency", "value": c as f64});
        write(&conc.join(format!("conc{c}.json")), &v);
    }
    let pd = root.join(PD);
    for (c, tpot, ttft, out) in [
        (4, 5.5, 110.0, 1000.0),
        (8, 6.5, 140.0, 1800.0),
        (16, 8.0, 190.0, 3000.0),
        (32, 11.0, 280.0, 4200.0),
        (64, 15.0, 550.0, 4500.0),
    ] {
        write(&pd.join(format!("conc{c}.json")), &vllm_point(json!(1e9), json!(c), tpot, ttft, out));
    }
    let rate = root.join(RATE);
    for (r, tpot, ttft, out) in
        [(1.0, 5.0, 100.0, 250.0), (2.0, 5.5, 110.0, 500.0), (4.0, 7.0, 150.0, 1000.0), (8.0, 12.0, 900.0, 1800.0)]
    {
        write(&rate.join(format!("rr{r}.json")), &vllm_point(json!(r), json!(1_000_000_000u64), tpot, ttft, out));
    }
    std::fs::write(rate.join("broken.json"), "{ \"completed\": 3, ").unwrap();
    let fixture = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/results-shm-16m.json");
    std::fs::create_dir_all(root.join("shm")).unwrap();
    std::fs::copy(&fixture, root.join("shm/results.json")).unwrap();
    let cmp = root.join("cmp");
    for sub in ["1-pack_default", "2-pack_tcp"] {
        std::fs::create_dir_all(cmp.join(sub)).unwrap();
        std::fs::copy(&fixture, cmp.join(sub).join("results.json")).unwrap();
    }
    write(
        &cmp.join("compare.json"),
        &json!({"kvprobe": "0.1.0", "command_line": [], "started_at": "2026-11-24T20:00:00Z", "settings": [
            {"label": "pack/default", "tls": null, "placement": "pack", "dir": "results/cmp/1-pack_default",
             "exit_code": 0, "status": "complete", "grade": "pass"},
            {"label": "pack/tcp", "tls": "tcp", "placement": "pack", "dir": "results/cmp/2-pack_tcp",
             "exit_code": 0, "status": "complete", "grade": "pass"}]}),
    );
}

fn index(out: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(out.join("viz.json")).expect("viz.json written"))
        .expect("viz.json parses")
}

fn file<'a>(idx: &'a Value, name: &str) -> &'a Value {
    idx["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["file"] == name)
        .unwrap_or_else(|| panic!("{name} not in {idx:#}"))
}

fn series_names(f: &Value, role: &str) -> Vec<String> {
    f["series"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["role"] == role)
        .map(|s| s["name"].as_str().unwrap().to_string())
        .collect()
}

/// Every file viz.json lists exists and is what it says: a PNG of the
/// recorded size (IHDR), an SVG naming every series and the title.
fn check_files(out: &Path, idx: &Value) {
    for f in idx["files"].as_array().unwrap() {
        let path = out.join(f["file"].as_str().unwrap());
        let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        match f["format"].as_str().unwrap() {
            "png" => {
                assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "{} is not a PNG", path.display());
                assert!(bytes.len() > 5000, "{}: only {} bytes", path.display(), bytes.len());
                assert_eq!(&bytes[12..16], b"IHDR");
                let w = u32::from_be_bytes(bytes[16..20].try_into().unwrap());
                let h = u32::from_be_bytes(bytes[20..24].try_into().unwrap());
                assert_eq!((w, h), (f["width"].as_u64().unwrap() as u32, f["height"].as_u64().unwrap() as u32));
                assert_eq!((w, h), (1280, 640));
            }
            "svg" => {
                let text = String::from_utf8(bytes).unwrap();
                assert!(text.starts_with("<svg"), "{}", path.display());
                assert!(text.contains("width=\"1280\"") && text.contains("height=\"640\""), "{}", path.display());
                // plotters writes each text element's content on a line of its own
                let element = |t: &str| text.contains(&format!("\n{t}\n</text>"));
                assert!(element(f["title"].as_str().unwrap()), "{}: title missing", path.display());
                for s in f["series"].as_array().unwrap() {
                    let name = s["name"].as_str().unwrap();
                    assert!(element(name), "{}: legend entry {name:?} missing", path.display());
                }
            }
            other => panic!("format {other}"),
        }
    }
}

#[test]
fn viz_plots_bench_and_transport_results() {
    require_font();
    let tmp = tempfile::tempdir().unwrap();
    fixtures(tmp.path());
    let out = tmp.path().join("plots");
    let o = kvprobe()
        .current_dir(tmp.path())
        .args(["viz", "kvp-conc", PD, RATE, "shm", "cmp", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert_eq!(o.status.code(), Some(0), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    // the malformed file is named, with serde's reason, and skipped
    assert!(stderr.contains("broken.json") && stderr.contains("malformed JSON"), "{stderr}");

    let idx = index(&out);
    assert_eq!(idx["schema"], "kvprobe.viz/1");
    assert!(idx["warnings"].as_array().unwrap().iter().any(|w| w.as_str().unwrap().contains("broken.json")));
    assert_eq!(idx["errors"], json!([]));
    assert_eq!(idx["options"]["normalize"], "node");
    assert_eq!(idx["options"]["gpus_per_node"], 8);

    // experiments: names, GPU counts and where they came from, the factor
    let exps = idx["experiments"].as_array().unwrap();
    let got: Vec<(String, u64, String, f64, u64, u64)> = exps
        .iter()
        .map(|e| {
            (
                e["name"].as_str().unwrap().into(),
                e["gpus"].as_u64().unwrap(),
                e["gpus_from"].as_str().unwrap().into(),
                e["factor"].as_f64().unwrap(),
                e["concurrency_points"].as_u64().unwrap(),
                e["request_rate_points"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        got,
        vec![
            (CONC.into(), 8, "manifest".into(), 1.0, 5, 0),
            (PD.into(), 8, "folder-name".into(), 1.0, 5, 0),
            // four rate points stay four, although max_concurrency is the same 1e9 in all
            (RATE.into(), 4, "folder-name".into(), 2.0, 0, 4),
        ]
    );

    // the files: each chart in both formats, nothing else
    let mut names: Vec<String> =
        idx["files"].as_array().unwrap().iter().map(|f| f["file"].as_str().unwrap().into()).collect();
    names.sort();
    let mut want: Vec<String> = [
        "throughput_vs_tpot",
        "tpot_vs_concurrency",
        "ttft_vs_concurrency",
        "tpot_vs_request_rate",
        "ttft_vs_request_rate",
        "transport_gbps",
    ]
    .iter()
    .flat_map(|s| [format!("{s}.png"), format!("{s}.svg")])
    .collect();
    want.sort();
    assert_eq!(names, want);

    // throughput vs TPOT: one data series and one frontier per experiment
    let t = file(&idx, "throughput_vs_tpot.png");
    assert_eq!(t["chart"], "throughput_vs_latency");
    assert_eq!(series_names(t, "data"), vec![CONC, PD, RATE]);
    assert_eq!(
        series_names(t, "frontier"),
        vec![format!("{CONC} pareto"), format!("{PD} pareto"), format!("{RATE} pareto")]
    );
    let counts: Vec<u64> = t["series"].as_array().unwrap().iter().map(|s| s["points"].as_u64().unwrap()).collect();
    // conc 64 of the first experiment has a higher TPOT and a lower throughput than conc 32: off the frontier
    assert_eq!(counts, vec![5, 4, 5, 5, 4, 4]);
    // latency vs load: only experiments with points of that kind
    assert_eq!(series_names(file(&idx, "tpot_vs_concurrency.svg"), "data"), vec![CONC, PD]);
    assert_eq!(series_names(file(&idx, "ttft_vs_concurrency.svg"), "data"), vec![CONC, PD]);
    assert_eq!(series_names(file(&idx, "tpot_vs_request_rate.svg"), "data"), vec![RATE]);
    assert_eq!(file(&idx, "ttft_vs_request_rate.png")["chart"], "ttft_vs_request_rate");
    // transport: one series per (input, backend as --backend names it, op); compare settings by their labels
    assert_eq!(
        series_names(file(&idx, "transport_gbps.svg"), "data"),
        vec![
            "shm nixl-ucx READ",
            "shm ucx READ",
            "pack/default nixl-ucx READ",
            "pack/default ucx READ",
            "pack/tcp nixl-ucx READ",
            "pack/tcp ucx READ"
        ]
    );
    check_files(&out, &idx);
    let svg = std::fs::read_to_string(out.join("throughput_vs_tpot.svg")).unwrap();
    assert!(svg.contains("output tokens/s per node (8 GPUs)"), "y axis says which throughput and how normalised");
    assert!(svg.contains("median TPOT (ms, log scale)"));
    assert!(svg.contains("c=32") && svg.contains("r=8"), "points are labelled with their load");
    let gbps = std::fs::read_to_string(out.join("transport_gbps.svg")).unwrap();
    assert!(gbps.contains("GB/s (1e9 bytes/s"));

    // the table: per point, normalised (4 GPUs at 1800 tok/s = 3600 tok/s/node)
    assert!(stdout.contains("output tok/s/node"), "{stdout}");
    let row = stdout.lines().find(|l| l.contains(RATE) && l.contains("request-rate") && l.contains(" 8 ")).unwrap();
    assert!(row.contains("3600.0") && row.contains("12.00") && row.contains("900.0"), "{row}");
    let pd_row = stdout.lines().find(|l| l.contains(PD) && l.contains(" 64 ")).unwrap();
    assert!(pd_row.contains(" - "), "a vLLM file without `failed` shows '-': {pd_row}");
}

#[test]
fn viz_interactivity_per_gpu_svg_only() {
    require_font();
    let tmp = tempfile::tempdir().unwrap();
    fixtures(tmp.path());
    let out = tmp.path().join("o");
    let o = kvprobe()
        .current_dir(tmp.path())
        .args(["viz", "kvp-conc", PD, "--interactivity", "--normalize", "gpu", "--throughput", "total"])
        .args(["--format", "svg", "-q", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{stderr}");
    assert!(o.stdout.is_empty(), "--quiet prints nothing on stdout");
    let idx = index(&out);
    let names: Vec<&str> = idx["files"].as_array().unwrap().iter().map(|f| f["file"].as_str().unwrap()).collect();
    assert_eq!(names, vec!["throughput_vs_interactivity.svg", "tpot_vs_concurrency.svg", "ttft_vs_concurrency.svg"]);
    assert_eq!(idx["options"]["x"], "interactivity");
    assert_eq!(idx["experiments"][0]["factor"], 0.125);
    check_files(&out, &idx);
    let svg = std::fs::read_to_string(out.join("throughput_vs_interactivity.svg")).unwrap();
    assert!(svg.contains("total (input + output) tokens/s per GPU"), "y axis names the throughput");
    assert!(svg.contains("1000 / median TPOT (tokens/s/user"));
    // higher interactivity is better: walking from the most interactive point, the
    // frontier keeps each point that adds throughput (all but the first experiment's
    // conc 64, which is slower and has less throughput than its conc 32)
    let t = file(&idx, "throughput_vs_interactivity.svg");
    let frontier: Vec<u64> = t["series"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|s| s["role"] == "frontier")
        .map(|s| s["points"].as_u64().unwrap())
        .collect();
    assert_eq!(frontier, vec![4, 5]);
}

#[test]
fn an_experiment_without_a_gpu_count_says_how_to_fix_it() {
    require_font();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("mystery-run");
    write(&dir.join("conc8.json"), &vllm_point(json!("inf"), json!(8), 10.0, 200.0, 1000.0));
    let out = tmp.path().join("o");
    let o = kvprobe().arg("viz").arg(&dir).arg("--out").arg(&out).output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("mystery-run") && stderr.contains("--gpus"), "{stderr}");
    // the latency charts are still drawn, the throughput chart is not
    let idx = index(&out);
    let names: Vec<&str> = idx["files"].as_array().unwrap().iter().map(|f| f["file"].as_str().unwrap()).collect();
    assert!(
        names.contains(&"tpot_vs_concurrency.png") && !names.iter().any(|n| n.starts_with("throughput")),
        "{names:?}"
    );
    assert_eq!(idx["experiments"][0]["gpus"], Value::Null);
    // --gpus fixes it
    let o = kvprobe().arg("viz").arg(&dir).args(["--gpus", "2", "--out"]).arg(&out).output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", String::from_utf8_lossy(&o.stderr));
    let idx = index(&out);
    assert_eq!(idx["experiments"][0]["gpus_from"], "flag");
    assert_eq!(idx["experiments"][0]["factor"], 4.0);
}

#[test]
fn bad_inputs_exit_2_with_the_path_named() {
    let tmp = tempfile::tempdir().unwrap();
    let missing = tmp.path().join("no-such-results");
    let o = kvprobe().arg("viz").arg(&missing).arg("--out").arg(tmp.path().join("o")).output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("no-such-results") && stderr.contains("no such file"), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");

    let empty = tmp.path().join("empty-run");
    std::fs::create_dir_all(&empty).unwrap();
    std::fs::write(empty.join("notes.json"), "{\"hello\": 1}").unwrap();
    let o = kvprobe().arg("viz").arg(&empty).arg("--out").arg(tmp.path().join("o")).output().unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("empty-run") && stderr.contains("no readable results"), "{stderr}");

    let o = kvprobe().args(["viz", ".", "--interactivity", "--latency-mode", "chunk"]).output().unwrap();
    assert_eq!(o.status.code(), Some(2));
}
