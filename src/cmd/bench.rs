//! `kvprobe bench`: concurrency and request-rate sweeps against an
//! OpenAI-compatible `/v1/completions` endpoint, with vLLM bench's metrics
//! and result files (one JSON per point plus a manifest).

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, anyhow};
use serde_json::Value;

use super::CliError;
use crate::pipeline::bench::{self, Client, Length, Load, Outcome, Workload};
use crate::pipeline::http::{self, BaseUrl};
use crate::pipeline::metrics::{self, Slo};
use crate::pipeline::result::{
    BenchStatus, Detailed, MANIFEST_FILE, MANIFEST_SCHEMA, Manifest, ManifestPoint, Mode, POINT_SCHEMA, PointInfo,
    PointKind, PointResult, ServerInfo, fmt_num,
};
use crate::report::style;

/// Arguments of `kvprobe bench`.
#[derive(Debug, clap::Args)]
pub struct BenchArgs {
    /// Base URL of the OpenAI-compatible server (plain http)
    #[arg(long, default_value = "http://127.0.0.1:8000")]
    pub url: String,
    /// Model name to send (as the server lists it in /v1/models)
    #[arg(long, value_name = "NAME")]
    pub model: String,
    /// Concurrency sweep: requests kept in flight per point, comma-separated (e.g. 4,8,16,32,48,64)
    #[arg(long, value_name = "N,N,...", conflicts_with = "request_rate")]
    pub concurrency: Option<String>,
    /// Request-rate sweep: requests/s per point, comma-separated (arrivals Poisson, or Gamma with --burstiness)
    #[arg(long, value_name = "R,R,...")]
    pub request_rate: Option<String>,
    /// Gamma shape of the arrival gaps: 1 = Poisson, below 1 burstier, above 1 more even
    #[arg(long, default_value_t = 1.0, value_name = "K")]
    pub burstiness: f64,
    /// Request-rate points: at most this many requests in flight
    #[arg(long, value_name = "N", conflicts_with = "concurrency")]
    pub max_concurrency: Option<u64>,
    /// Prompt tokens per request (exact: prompts are token ids)
    #[arg(long, default_value_t = 8000, value_name = "TOKENS")]
    pub itl: u64,
    /// Output tokens per request (max_tokens with ignore_eos)
    #[arg(long, default_value_t = 1000, value_name = "TOKENS")]
    pub otl: u64,
    /// Workload: mixed; prefill-only (one output token); decode-only (one shared prompt, so a prefix-caching engine skips prefill)
    #[arg(long, value_enum, default_value_t = Mode::Mixed)]
    pub mode: Mode,
    /// Requests per point [default: --prompts-per-conc x concurrency for concurrency points, 500 for rate points, as the seeds' run_bm.sh]
    #[arg(long, value_name = "N", conflicts_with = "duration")]
    pub num_prompts: Option<u64>,
    /// Concurrency points without --num-prompts send this many requests per unit of concurrency
    #[arg(long, default_value_t = 5, value_name = "K")]
    pub prompts_per_conc: u64,
    /// Run each point for this long instead (a rate point sends ceil(rate x SECS) requests)
    #[arg(long, value_name = "SECS")]
    pub duration: Option<f64>,
    /// Warm-up requests before the first point (not measured; a failing one stops the run)
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub warmup: u64,
    /// One request: print its TTFT and chunk gaps and exit (the seeds' query_completion.py)
    #[arg(long)]
    pub smoke: bool,
    /// Percentiles to report, comma-separated
    #[arg(long, default_value = "99", value_name = "P,P,...")]
    pub percentiles: String,
    /// Metrics that get mean/median/std/percentiles: ttft, tpot, itl, e2el
    #[arg(long, default_value = "ttft,tpot,itl", value_name = "M,M,...")]
    pub percentile_metrics: String,
    /// Service-level objectives for goodput, e.g. "ttft:500 tpot:50" (ms)
    #[arg(long, value_name = "SLOS")]
    pub goodput: Option<String>,
    /// Results folder [default: bench_results/<model>_itl<I>_otl<O>_<mode>[_<label>]]
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// A name for this experiment (stored in every file; viz uses it as the legend)
    #[arg(long)]
    pub label: Option<String>,
    /// GPUs behind the endpoint, for per-GPU/per-node plots [default: what the server reports, if it does]
    #[arg(long, value_name = "N")]
    pub gpus: Option<u32>,
    /// Seed of prompts and arrivals
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Token ids are drawn below this (keep it under the model's vocabulary size)
    #[arg(long, default_value_t = 32000, value_name = "N")]
    pub vocab: u32,
    /// Per-request limit, seconds
    #[arg(long, default_value_t = 600.0, value_name = "SECS")]
    pub timeout: f64,
    /// Wait up to this long for /v1/models to answer before starting, seconds
    #[arg(long, default_value_t = 0.0, value_name = "SECS")]
    pub ready_timeout: f64,
    /// Also store per-request arrays (input_lens, output_lens, ttfts, itls, latencies, start_times, errors)
    #[arg(long)]
    pub save_detailed: bool,
    /// No progress bar
    #[arg(short, long)]
    pub quiet: bool,
}

fn parse_list(s: &str, what: &str) -> Result<Vec<f64>, CliError> {
    let mut out = Vec::new();
    for item in s.split(',').map(str::trim).filter(|x| !x.is_empty()) {
        let v: f64 = item
            .parse()
            .ok()
            .filter(|v: &f64| v.is_finite() && *v > 0.0)
            .ok_or_else(|| CliError::usage(anyhow!("{what}: {item:?} is not a positive number")))?;
        out.push(v);
    }
    if out.is_empty() {
        return Err(CliError::usage(anyhow!("{what}: give at least one value")));
    }
    Ok(out)
}

fn sanitize(s: &str) -> String {
    s.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '.' { c } else { '_' }).collect()
}

/// The checked plan of a run.
#[derive(Debug)]
struct Plan {
    kind: PointKind,
    values: Vec<f64>,
    percentiles: Vec<f64>,
    metrics: Vec<&'static str>,
    goodput: Option<Slo>,
}

fn plan(a: &BenchArgs) -> Result<Plan, CliError> {
    let usage = |m: String| CliError::usage(anyhow!(m));
    let (kind, values) = match (&a.concurrency, &a.request_rate) {
        (Some(c), None) => {
            let v = parse_list(c, "--concurrency")?;
            if let Some(bad) = v.iter().find(|x| x.fract() != 0.0) {
                return Err(usage(format!("--concurrency: {bad} is not a whole number")));
            }
            (PointKind::Concurrency, v)
        }
        (None, Some(r)) => (PointKind::RequestRate, parse_list(r, "--request-rate")?),
        (None, None) if a.smoke => (PointKind::Concurrency, vec![1.0]),
        _ => return Err(usage("give --concurrency LIST or --request-rate LIST (or --smoke for one request)".into())),
    };
    let percentiles = parse_list(&a.percentiles, "--percentiles")?;
    if let Some(p) = percentiles.iter().find(|p| **p > 100.0) {
        return Err(usage(format!("--percentiles: {p} is above 100")));
    }
    let mut ms = Vec::new();
    for m in a.percentile_metrics.split(',').map(str::trim).filter(|m| !m.is_empty()) {
        let known = metrics::METRICS.iter().find(|k| **k == m).ok_or_else(|| {
            usage(format!("--percentile-metrics: {m:?} is not one of {}", metrics::METRICS.join(", ")))
        })?;
        ms.push(*known);
    }
    let goodput = a.goodput.as_deref().map(Slo::parse).transpose().map_err(usage)?;
    if a.itl == 0 || a.otl == 0 {
        return Err(usage("--itl and --otl must be at least 1".into()));
    }
    if !(1e-3..=1e3).contains(&a.burstiness) {
        return Err(usage(format!("--burstiness must be in 0.001 .. 1000 (got {}; 1 = Poisson)", a.burstiness)));
    }
    if a.duration.is_some_and(|d| !(d.is_finite() && d > 0.0)) {
        return Err(usage("--duration must be a positive number of seconds".into()));
    }
    if a.num_prompts == Some(0) || a.max_concurrency == Some(0) || a.prompts_per_conc == 0 {
        return Err(usage("--num-prompts, --prompts-per-conc and --max-concurrency must be at least 1".into()));
    }
    // bounds that keep every derived duration and count representable
    const DAY: f64 = 86_400.0;
    if !(a.timeout > 0.0 && a.timeout <= DAY && a.ready_timeout >= 0.0 && a.ready_timeout <= DAY) {
        return Err(usage(format!("--timeout must be in (0, {DAY}] s and --ready-timeout in [0, {DAY}] s")));
    }
    if a.duration.is_some_and(|d| d > 7.0 * DAY) {
        return Err(usage("--duration is limited to a week per point".into()));
    }
    const MAX_REQUESTS: f64 = 1e7;
    match kind {
        PointKind::Concurrency => {
            let most = values.iter().fold(0.0, |m: f64, v| m.max(*v));
            if most > 100_000.0 {
                return Err(usage(format!("--concurrency {most}: at most 100000 requests in flight")));
            }
            if a.num_prompts.is_none() && a.duration.is_none() && most * a.prompts_per_conc as f64 > MAX_REQUESTS {
                return Err(usage(format!("--prompts-per-conc x concurrency is above {MAX_REQUESTS} requests")));
            }
        }
        PointKind::RequestRate => {
            if let Some(r) = values.iter().find(|r| !(1e-3..=1e6).contains(*r)) {
                return Err(usage(format!("--request-rate {r}: use 0.001 .. 1000000 requests/s")));
            }
            let most = values.iter().fold(0.0, |m: f64, v| m.max(*v));
            if a.duration.is_some_and(|d| d * most > MAX_REQUESTS) {
                return Err(usage(format!("rate x --duration is above {MAX_REQUESTS} requests")));
            }
        }
    }
    if a.num_prompts.is_some_and(|n| n as f64 > MAX_REQUESTS) {
        return Err(usage(format!("--num-prompts is limited to {MAX_REQUESTS}")));
    }
    if a.vocab <= bench::VOCAB_LO {
        return Err(usage(format!("--vocab must be above {}", bench::VOCAB_LO)));
    }
    Ok(Plan { kind, values, percentiles, metrics: ms, goodput })
}

/// Asks the server what it is; fails when it cannot be reached or does not serve the model.
async fn probe_server(base: &BaseUrl, model: &str, ready_timeout: f64) -> Result<ServerInfo, CliError> {
    let deadline = Instant::now() + Duration::from_secs_f64(ready_timeout);
    let url = base.url("/v1/models");
    let (status, headers, body) = loop {
        match http::get(base, "/v1/models", Duration::from_secs(10)).await {
            Ok((200, h, b)) => break (200, h, b),
            Ok((s, _, b)) if Instant::now() >= deadline => {
                return Err(CliError::failed(anyhow!("{url} answered HTTP {s}: {}", bench::error_message(&b))));
            }
            Err(e) if Instant::now() >= deadline => {
                return Err(CliError::failed(anyhow!(
                    "cannot reach {url}: {e}; is the server up? (--ready-timeout SECS waits for it)"
                )));
            }
            _ => tokio::time::sleep(Duration::from_millis(500)).await,
        }
    };
    let _ = status;
    let models: Value =
        serde_json::from_slice(&body).map_err(|e| CliError::failed(anyhow!("{url} did not answer JSON: {e}")))?;
    let ids: Vec<&str> = models
        .get("data")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|m| m.get("id")?.as_str())
        .collect();
    if !ids.contains(&model) {
        return Err(CliError::usage(anyhow!(
            "the server does not serve model {model:?}; it lists: {}",
            if ids.is_empty() { "nothing".to_string() } else { ids.join(", ") }
        )));
    }
    let server_header = headers.iter().find(|(k, _)| k == "server").map(|(_, v)| v.clone());
    let emulator = headers.iter().any(|(k, _)| k == "x-kvprobe-emulator")
        || models.pointer("/data/0/owned_by").and_then(Value::as_str) == Some("kvprobe-emulator");
    let version = match http::get(base, "/version", Duration::from_secs(5)).await {
        Ok((200, _, b)) => serde_json::from_slice::<Value>(&b).ok(),
        _ => None,
    };
    Ok(ServerInfo { models, version, server_header, emulator })
}

/// Runs `kvprobe bench`.
pub fn run(a: BenchArgs) -> Result<ExitCode, CliError> {
    let p = plan(&a)?;
    let base = BaseUrl::parse(&a.url).map_err(CliError::usage)?;
    crate::child::install_interrupt_handler();
    let rt = crate::pipeline::runtime().context("cannot start the async runtime").map_err(CliError::failed)?;
    rt.block_on(run_async(a, p, base))
}

fn workload(a: &BenchArgs) -> Workload {
    Workload { model: a.model.clone(), mode: a.mode, itl: a.itl, otl: a.otl, seed: a.seed, vocab: a.vocab }
}

/// Runs `f` until it ends or SIGINT/SIGTERM arrives (None), polling the flag every 50 ms.
async fn stoppable<F: std::future::Future>(f: F) -> Option<F::Output> {
    let mut f = std::pin::pin!(f);
    loop {
        if crate::child::interrupted() {
            return None;
        }
        if let Ok(v) = tokio::time::timeout(Duration::from_millis(50), &mut f).await {
            return Some(v);
        }
    }
}

fn interrupted_before_measuring() -> Result<ExitCode, CliError> {
    eprintln!("kvprobe bench: interrupted before the first point; nothing was measured");
    Ok(ExitCode::from(130))
}

async fn run_async(a: BenchArgs, p: Plan, base: BaseUrl) -> Result<ExitCode, CliError> {
    let Some(server) = stoppable(probe_server(&base, &a.model, a.ready_timeout)).await else {
        return interrupted_before_measuring();
    };
    let server = server?;
    let client = Arc::new(Client::new(base.clone(), Duration::from_secs_f64(a.timeout)));
    let w = Arc::new(workload(&a));
    if a.smoke {
        return smoke(&client, &w, &server).await;
    }
    // warm-up: the point shape, short outputs, one at a time
    for i in 0..a.warmup {
        let body = w.body(u64::MAX >> 24, i, w.output_len().min(16));
        let Some(o) = stoppable(client.complete(&body, w.itl, Instant::now())).await else {
            return interrupted_before_measuring();
        };
        if !o.record.success {
            return Err(CliError::failed(anyhow!(
                "warm-up request {} of {} failed: {}; nothing was measured",
                i + 1,
                a.warmup,
                o.record.error
            )));
        }
    }
    let out_dir = a.out.clone().unwrap_or_else(|| {
        let mut name = format!("{}_itl{}_otl{}_{}", sanitize(&a.model), a.itl, a.otl, a.mode.name());
        if let Some(l) = &a.label {
            name.push('_');
            name.push_str(&sanitize(l));
        }
        PathBuf::from("bench_results").join(name)
    });
    std::fs::create_dir_all(&out_dir)
        .with_context(|| format!("cannot create {}", out_dir.display()))
        .map_err(CliError::usage)?;
    let gpus = a
        .gpus
        .or_else(|| server.models.pointer("/data/0/kvprobe_emulator/gpus").and_then(Value::as_u64).map(|g| g as u32));
    let started = SystemTime::now();
    let mut manifest = Manifest {
        schema: MANIFEST_SCHEMA.into(),
        kvprobe_version: crate::version().into(),
        command_line: std::env::args().collect(),
        started_at: crate::hostinfo::rfc3339_utc(started),
        finished_at: None,
        endpoint: base.url("/v1/completions"),
        model: a.model.clone(),
        label: a.label.clone(),
        gpus,
        server,
        mode: a.mode,
        itl: a.itl,
        otl: w.output_len(),
        kind: p.kind,
        values: p.values.clone(),
        points: Vec::new(),
        status: BenchStatus::Running,
        errors: Vec::new(),
    };
    write_json(&out_dir.join(MANIFEST_FILE), &manifest)?;
    if manifest.server.emulator {
        eprintln!(
            "kvprobe bench: the server is kvprobe's EMULATOR: latencies follow its timing model, not a real engine"
        );
    }
    let lengths: Vec<Length> = p
        .values
        .iter()
        .map(|v| match (a.num_prompts, a.duration, p.kind) {
            (Some(n), _, _) => Length::Prompts(n),
            (None, Some(s), _) => Length::Seconds(s),
            (None, None, PointKind::Concurrency) => Length::Prompts(a.prompts_per_conc * *v as u64),
            (None, None, PointKind::RequestRate) => Length::Prompts(500),
        })
        .collect();
    let total: u64 = lengths.iter().map(|l| if let Length::Prompts(n) = l { *n } else { 0 }).sum();
    let bar = crate::report::progress::bar(total, a.quiet);
    let mut results: Vec<PointResult> = Vec::new();
    let mut any_failed = false;
    for (idx, (&value, &length)) in p.values.iter().zip(&lengths).enumerate() {
        let load = match p.kind {
            PointKind::Concurrency => Load::Concurrency(value as u64),
            PointKind::RequestRate => Load::Rate { rate: value, burstiness: a.burstiness, cap: a.max_concurrency },
        };
        let name = p.kind.file_name(value);
        let label = format!("{} {}", if p.kind == PointKind::Concurrency { "conc" } else { "rate" }, fmt_num(value));
        bar.set_message(label.clone());
        let (ok, bad) = (std::sync::atomic::AtomicU64::new(0), std::sync::atomic::AtomicU64::new(0));
        let on_done = |o: &Outcome| {
            let c = if o.record.success { &ok } else { &bad };
            c.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            if matches!(length, Length::Seconds(_)) {
                bar.inc_length(1);
            }
            bar.inc(1);
            bar.set_message(format!(
                "{label}: {} ok, {} failed",
                ok.load(std::sync::atomic::Ordering::Relaxed),
                bad.load(std::sync::atomic::Ordering::Relaxed)
            ));
        };
        let date = crate::hostinfo::stamp_utc(SystemTime::now());
        let run = match bench::run_point(
            client.clone(),
            w.clone(),
            idx as u64,
            load,
            length,
            &on_done,
            &crate::child::interrupted,
        )
        .await
        {
            Ok(r) => r,
            Err(e) => {
                bar.finish_and_clear();
                return Err(fail_manifest(&out_dir, &mut manifest, CliError::usage(anyhow!("{label}: {e}"))));
            }
        };
        let result = point_result(&a, &p, &w, value, date, &run);
        if run.interrupted {
            let f = out_dir.join(format!("{name}.partial"));
            write_json(&f, &result)?;
            bar.finish_and_clear();
            manifest.status = BenchStatus::Interrupted;
            manifest.errors.push(format!(
                "interrupted during {label}: {} requests finished of {} sent, kept in {} (not a point file)",
                run.outcomes.len(),
                run.sent,
                f.display()
            ));
            manifest.finished_at = Some(crate::hostinfo::rfc3339_utc(SystemTime::now()));
            write_json(&out_dir.join(MANIFEST_FILE), &manifest)?;
            print_table(&results, &p);
            eprintln!("kvprobe bench: interrupted; {} finished point(s) kept in {}", results.len(), out_dir.display());
            return Ok(ExitCode::from(130));
        }
        if let Err(e) = write_json(&out_dir.join(&name), &result) {
            bar.finish_and_clear();
            return Err(fail_manifest(&out_dir, &mut manifest, e));
        }
        any_failed |= result.metrics.failed > 0;
        manifest.points.push(ManifestPoint {
            file: name,
            kind: p.kind,
            value,
            completed: result.metrics.completed,
            failed: result.metrics.failed,
        });
        write_json(&out_dir.join(MANIFEST_FILE), &manifest)?;
        results.push(result);
    }
    bar.finish_and_clear();
    manifest.status = BenchStatus::Complete;
    manifest.finished_at = Some(crate::hostinfo::rfc3339_utc(SystemTime::now()));
    write_json(&out_dir.join(MANIFEST_FILE), &manifest)?;
    print_table(&results, &p);
    println!("results: {}", out_dir.display());
    if any_failed {
        let n: u64 = results.iter().map(|r| r.metrics.failed).sum();
        eprintln!("kvprobe bench: {n} request(s) failed (counted in `failed`, reasons under kvprobe.errors); exit 1");
        return Ok(ExitCode::from(1));
    }
    Ok(ExitCode::SUCCESS)
}

/// Marks the manifest `failed` with the error (best effort: the error is
/// what the user sees either way) and passes the error on.
fn fail_manifest(dir: &Path, manifest: &mut Manifest, e: CliError) -> CliError {
    manifest.status = BenchStatus::Failed;
    manifest.errors.push(format!("{:#}", e.error));
    manifest.finished_at = Some(crate::hostinfo::rfc3339_utc(SystemTime::now()));
    let _ = write_json(&dir.join(MANIFEST_FILE), manifest);
    e
}

fn point_result(a: &BenchArgs, p: &Plan, w: &Workload, value: f64, date: String, run: &bench::PointRun) -> PointResult {
    let records: Vec<metrics::RequestRecord> = run.outcomes.iter().map(|o| o.record.clone()).collect();
    let m = metrics::calculate(&records, run.duration_s, &p.metrics, &p.percentiles, p.goodput.as_ref());
    let ok = || run.outcomes.iter().filter(|o| o.record.success);
    let info = PointInfo {
        schema: POINT_SCHEMA.into(),
        kind: p.kind,
        value,
        mode: a.mode,
        itl: a.itl,
        otl: w.output_len(),
        seed: a.seed,
        usage_missing: ok().filter(|o| o.usage_missing).count() as u64,
        prompt_len_mismatch: ok().filter(|o| !o.usage_missing && o.record.prompt_len != a.itl).count() as u64,
        output_len_mismatch: ok().filter(|o| o.record.output_tokens != w.output_len()).count() as u64,
        errors: bench::error_counts(&run.outcomes),
        max_in_flight: metrics::peak_in_flight(&records),
        interrupted: run.interrupted,
    };
    let detailed = a.save_detailed.then(|| Detailed {
        input_lens: records.iter().map(|r| r.prompt_len).collect(),
        output_lens: records.iter().map(|r| r.output_tokens).collect(),
        ttfts: records.iter().map(|r| r.ttft_s).collect(),
        itls: records.iter().map(|r| r.itl_s.clone()).collect(),
        latencies: records.iter().map(|r| r.latency_s).collect(),
        start_times: records.iter().map(|r| r.start_time_s).collect(),
        errors: records.iter().map(|r| r.error.clone()).collect(),
    });
    let (request_rate, max_concurrency) = match p.kind {
        PointKind::Concurrency => (Value::from("inf"), Some(value as u64)),
        PointKind::RequestRate => (Value::from(value), a.max_concurrency),
    };
    PointResult {
        date,
        endpoint_type: "openai".into(),
        backend: "kvprobe".into(),
        label: a.label.clone(),
        model_id: a.model.clone(),
        tokenizer_id: None,
        num_prompts: run.sent,
        request_rate,
        burstiness: a.burstiness,
        max_concurrency,
        metrics: m,
        kvprobe: info,
        detailed,
    }
}

fn write_json<T: serde::Serialize>(path: &Path, v: &T) -> Result<(), CliError> {
    let data = serde_json::to_vec_pretty(v).map_err(|e| CliError::failed(anyhow!(e)))?;
    crate::report::write_atomic(path, &data)
        .with_context(|| format!("cannot write {}", path.display()))
        .map_err(CliError::failed)
}

fn print_table(results: &[PointResult], p: &Plan) {
    if results.is_empty() {
        return;
    }
    let mut t = style::table();
    let header = [
        if p.kind == PointKind::Concurrency { "conc" } else { "req/s asked" },
        "ok",
        "failed",
        "req/s",
        "out tok/s",
        "TTFT med ms",
        "TTFT p99 ms",
        "TPOT med ms",
        "TPOT p99 ms",
        "ITL med ms",
    ];
    t.set_header(header);
    let g =
        |r: &PointResult, k: &str| r.metrics.latency_ms.get(k).map(|v| format!("{v:.2}")).unwrap_or_else(|| "-".into());
    for r in results {
        t.add_row(vec![
            fmt_num(r.kvprobe.value),
            r.metrics.completed.to_string(),
            r.metrics.failed.to_string(),
            format!("{:.2}", r.metrics.request_throughput),
            format!("{:.1}", r.metrics.output_throughput),
            g(r, "median_ttft_ms"),
            g(r, "p99_ttft_ms"),
            g(r, "median_tpot_ms"),
            g(r, "p99_tpot_ms"),
            g(r, "median_itl_ms"),
        ]);
    }
    style::align_numbers(&mut t, &header, &[]);
    println!("{t}");
}

async fn smoke(client: &Client, w: &Workload, server: &ServerInfo) -> Result<ExitCode, CliError> {
    let body = w.body(0, 0, w.output_len());
    let Some(o) = stoppable(client.complete(&body, w.itl, Instant::now())).await else {
        return interrupted_before_measuring();
    };
    let r = &o.record;
    if server.emulator {
        println!("(the server is kvprobe's emulator)");
    }
    if !r.success {
        println!("request failed: {}", r.error);
        return Ok(ExitCode::from(1));
    }
    let mut gaps: Vec<f64> = r.itl_s.iter().map(|x| x * 1e3).collect();
    gaps.sort_by(f64::total_cmp);
    let n = gaps.len().max(1) as f64;
    let mean = gaps.iter().sum::<f64>() / n;
    let std = (gaps.iter().map(|g| (g - mean).powi(2)).sum::<f64>() / n).sqrt();
    let tpot = if r.output_tokens > 1 { (r.latency_s - r.ttft_s) / (r.output_tokens - 1) as f64 * 1e3 } else { 0.0 };
    println!("TTFT            {:.2} ms", r.ttft_s * 1e3);
    println!("E2E latency     {:.2} ms", r.latency_s * 1e3);
    println!(
        "tokens          {} prompt, {} output{}",
        r.prompt_len,
        r.output_tokens,
        if o.usage_missing { " (counted as chunks: no usage)" } else { "" }
    );
    println!("TPOT            {tpot:.2} ms");
    println!(
        "chunk gaps      {} gaps: mean {mean:.2} ms, std {std:.2} ms, p99 {:.2} ms",
        gaps.len(),
        metrics::percentile(&gaps, 99.0)
    );
    Ok(ExitCode::SUCCESS)
}
