//! `kvprobe emulate`: an OpenAI-compatible serving-engine emulator (no model
//! runs) with a documented timing model, collocated or prefill/decode, whose
//! KV transfer time can come from a kvprobe sweep. See docs/EMULATOR.md.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::{Context, anyhow};

use super::CliError;
use super::launch::LayoutArgs;
use crate::kv::{KvDtype, KvSpec, Layout, Model, SlidingBlocks};
use crate::pipeline::emulate::{Emulator, EmulatorConfig, Faults};
use crate::pipeline::model::{KvBytes, KvLink, StepTiming, Topology, TpScaling};
use crate::report::schema::SweepResults;

/// How the emulated deployment is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum EmuMode {
    /// Every request independent: first token after --ttft-ms, then one every --tpot-ms
    Fixed,
    /// --num-replicas engines, prefill and decode in the same batches
    Collocated,
    /// --p-num prefill and --d-num decode engines with a KV transfer between them
    Pd,
}

/// Which direction of a sweep gives the KV rate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum KvOp {
    /// READ rows (vLLM's NixlConnector: decode reads from prefill)
    Read,
    /// WRITE rows
    Write,
}

/// Arguments of `kvprobe emulate`.
#[derive(Debug, clap::Args)]
pub struct EmulateArgs {
    /// Address to listen on (loopback by default)
    #[arg(long, default_value = "127.0.0.1")]
    pub host: String,
    /// Port (0: any free port; the address is printed as `listening on http://...`)
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    /// Model name served; also the KV geometry preset for --mode pd (see `kvprobe kv-shape --help`)
    #[arg(long, value_name = "NAME")]
    pub model: String,
    /// KV geometry from a Hugging Face config.json instead of the --model preset
    #[arg(long, value_name = "PATH")]
    pub model_config: Option<PathBuf>,
    /// KV geometry preset when the served name is not one (e.g. --model gptoss --kv-model gpt-oss-120b)
    #[arg(long, value_name = "PRESET", conflicts_with = "model_config")]
    pub kv_model: Option<String>,
    /// Timing model
    #[arg(long, value_enum, default_value_t = EmuMode::Collocated)]
    pub mode: EmuMode,
    /// fixed: time to first token, ms
    #[arg(long, value_name = "MS")]
    pub ttft_ms: Option<f64>,
    /// fixed: time per later output token, ms
    #[arg(long, value_name = "MS")]
    pub tpot_ms: Option<f64>,
    /// Replicas and TP of the engines
    #[command(flatten)]
    pub layout: LayoutArgs,
    /// Fixed cost of a step that prefills, ms
    #[arg(long, default_value_t = 15.0, value_name = "MS")]
    pub prefill_base_ms: f64,
    /// Prefill cost per prompt token, microseconds
    #[arg(long, default_value_t = 60.0, value_name = "US")]
    pub prefill_per_token_us: f64,
    /// Fixed cost of a decode step, ms
    #[arg(long, default_value_t = 10.0, value_name = "MS")]
    pub decode_base_ms: f64,
    /// Decode cost per sequence in the batch, microseconds
    #[arg(long, default_value_t = 40.0, value_name = "US")]
    pub decode_per_seq_us: f64,
    /// TP scaling (Amdahl's parallel fraction, 0..1): every step cost of an engine of TP tp is multiplied by (1 - A) + A x tp-ref / tp; 0: TP changes no timing
    #[arg(long, default_value_t = 0.0, value_name = "A")]
    pub tp_alpha: f64,
    /// With --tp-alpha: the TP the step-cost flags were measured at
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub tp_ref: u32,
    /// Most sequences per batch (vLLM --max-num-seqs)
    #[arg(long, default_value_t = 256, value_name = "N")]
    pub max_num_seqs: u64,
    /// Token budget per step, prompt + decode (vLLM --max-num-batched-tokens)
    #[arg(long, default_value_t = 8192, value_name = "N")]
    pub max_batched_tokens: u64,
    /// pd: the KV path's rate, GB/s (1e9 bytes/s)
    #[arg(long, value_name = "GBPS", conflicts_with = "kv_bandwidth_from")]
    pub kv_gbps: Option<f64>,
    /// pd: take the KV rate per request size from a `kvprobe sweep` results.json (GB/s vs size, interpolated)
    #[arg(long, value_name = "RESULTS_JSON")]
    pub kv_bandwidth_from: Option<PathBuf>,
    /// pd: which rows of the results file to use
    #[arg(long, value_enum, default_value_t = KvOp::Read)]
    pub kv_op: KvOp,
    /// pd: which backend's rows of the results file to use: nixl-ucx (`nixl`: what vLLM's NixlConnector drives by default),
    /// nixl-libfabric or ucx; falls back to every row when there are none
    #[arg(long, default_value = "nixl", value_name = "NAME")]
    pub kv_backend: String,
    /// pd: fixed cost per KV transfer, microseconds
    #[arg(long, default_value_t = 0.0, value_name = "US")]
    pub kv_latency_us: f64,
    /// pd: KV bytes per prompt token, instead of the model's geometry
    #[arg(long, value_name = "BYTES")]
    pub kv_bytes_per_token: Option<u64>,
    /// KV cache dtype for the geometry: bf16, fp16, fp8
    #[arg(long, default_value = "bf16")]
    pub kv_dtype: String,
    /// Sliding-window layers move all blocks (as kv-shape defaults) or only the window's (vLLM's hybrid KV cache manager)
    #[arg(long, default_value = "all", value_name = "all|window")]
    pub sliding: String,
    /// Tokens per KV block for the geometry
    #[arg(long, default_value_t = 16, value_name = "TOKENS")]
    pub block_size: u32,
    /// Prompt + output tokens allowed per request
    #[arg(long, default_value_t = 16000, value_name = "TOKENS")]
    pub max_model_len: u64,
    /// Testing clients: answer every Nth completion with HTTP 500
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub fault_500_every: u64,
    /// Testing clients: cut every Nth completion stream after its first token
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub fault_drop_every: u64,
}

/// The KV link of a PD emulation, from the flags.
fn kv_link(a: &EmulateArgs) -> Result<KvLink, CliError> {
    let usage = |m: String| CliError::usage(anyhow!(m));
    let (bytes, geometry) = match a.kv_bytes_per_token {
        Some(0) => return Err(usage("--kv-bytes-per-token must be positive".into())),
        Some(b) => (KvBytes::PerToken(b), format!("{b} bytes per token (--kv-bytes-per-token)")),
        None => {
            let model = match &a.model_config {
                Some(p) => Model::from_config_file(p),
                None => Model::preset(a.kv_model.as_deref().unwrap_or(&a.model)),
            }
            .map_err(|e| {
                usage(format!(
                    "--mode pd needs the KV geometry of the model: {e}; give --model-config PATH (a config.json) or --kv-bytes-per-token N"
                ))
            })?;
            let dtype: KvDtype = a.kv_dtype.parse().map_err(CliError::usage)?;
            let layout: Layout = model.default_layout();
            let sliding: SlidingBlocks = a.sliding.parse().map_err(CliError::usage)?;
            let kinds = model.layer_kinds.clone();
            let name = model.name.clone();
            let spec =
                KvSpec { model, dtype, layout, block_tokens: a.block_size, p_tp: 1, d_tp: 1, d_rank: 0, sliding };
            let g = spec.geometry().map_err(CliError::usage)?;
            let bpt = g.bytes_per_token;
            (
                KvBytes::Geometry { geometry: Box::new(g), kinds, bytes_per_token: bpt },
                format!(
                    "{name}, {} KV, {}-token blocks, sliding layers move {} blocks, {bpt} bytes per token",
                    a.kv_dtype, a.block_size, a.sliding
                ),
            )
        }
    };
    let (curve, source) = match (&a.kv_gbps, &a.kv_bandwidth_from) {
        (Some(g), _) if !(1e-6..=1e6).contains(g) => {
            return Err(usage(format!("--kv-gbps must be between 1e-6 and 1e6 GB/s (got {g})")));
        }
        (Some(g), _) => (vec![(1u64, *g)], format!("{g} GB/s (--kv-gbps)")),
        (None, Some(p)) => curve_from(p, a.kv_op, &a.kv_backend)?,
        (None, None) => {
            return Err(usage(
                "--mode pd needs the KV path's rate: --kv-gbps N, or --kv-bandwidth-from results.json from `kvprobe sweep`".into(),
            ));
        }
    };
    if !(0.0..=3.6e9).contains(&a.kv_latency_us) {
        return Err(usage("--kv-latency-us must be between 0 and 3.6e9 (an hour)".into()));
    }
    Ok(KvLink { geometry, bytes, curve, source, latency_us: a.kv_latency_us })
}

/// (bytes, GB/s) of a sweep's rows for one direction, sorted; KV-shaped rows included.
fn curve_from(p: &std::path::Path, op: KvOp, backend: &str) -> Result<(Vec<(u64, f64)>, String), CliError> {
    let data = std::fs::read(p).with_context(|| format!("cannot read {}", p.display())).map_err(CliError::usage)?;
    let r: SweepResults = serde_json::from_slice(&data)
        .with_context(|| format!("{} is not a kvprobe sweep results file (results.json)", p.display()))
        .map_err(CliError::usage)?;
    let want = match op {
        KvOp::Read => crate::nixl::XferOp::Read,
        KvOp::Write => crate::nixl::XferOp::Write,
    };
    let usable = |row: &&crate::report::schema::Row| row.op == want && row.gbps > 0.0;
    // a backend as --backend names it (`nixl` is nixl-ucx, what vLLM's NixlConnector uses by
    // default); another name matches a row's engine or label as written
    let kind = backend.parse::<crate::peer::BackendKind>().ok();
    let of = |row: &&crate::report::schema::Row| match kind {
        Some(k) => row.label() == k.label(),
        None => row.backend == backend || row.label() == backend,
    };
    let of_backend = r.rows.iter().filter(usable).filter(of).count();
    let rows_used = if of_backend > 0 { format!("{backend} ") } else { String::new() };
    let mut curve: Vec<(u64, f64)> = r
        .rows
        .iter()
        .filter(usable)
        .filter(|row| of_backend == 0 || of(row))
        .map(|row| (row.size_bytes, row.gbps))
        .collect();
    if curve.is_empty() {
        return Err(CliError::usage(anyhow!(
            "{} has no {want:?} rows with a rate ({} rows in all); try --kv-op {}",
            p.display(),
            r.rows.len(),
            if want == crate::nixl::XferOp::Read { "write" } else { "read" }
        )));
    }
    curve.sort_by_key(|c| c.0);
    // several rows per size (backends, settings): keep the best, what a tuned deployment gets
    curve.dedup_by(|b, a| {
        if a.0 == b.0 {
            a.1 = a.1.max(b.1);
            true
        } else {
            false
        }
    });
    let source = format!("{} ({rows_used}{want:?} rows, {} sizes, best per size)", p.display(), curve.len());
    Ok((curve, source))
}

/// Runs `kvprobe emulate` until SIGINT/SIGTERM.
pub fn run(a: EmulateArgs) -> Result<ExitCode, CliError> {
    let usage = |m: String| CliError::usage(anyhow!(m));
    // every time flag is at most an hour (3.6e6 ms, 3.6e9 us): enough for any
    // emulation, and every derived duration stays representable
    let pos = |v: f64, name: &str| {
        let hour = if name.ends_with("-us") { 3.6e9 } else { 3.6e6 };
        if (0.0..=hour).contains(&v) {
            Ok(())
        } else {
            Err(usage(format!("{name} must be between 0 and {hour} (got {v})")))
        }
    };
    pos(a.prefill_base_ms, "--prefill-base-ms")?;
    pos(a.prefill_per_token_us, "--prefill-per-token-us")?;
    pos(a.decode_base_ms, "--decode-base-ms")?;
    pos(a.decode_per_seq_us, "--decode-per-seq-us")?;
    if a.max_num_seqs == 0 || a.max_batched_tokens == 0 {
        return Err(usage("--max-num-seqs and --max-batched-tokens must be at least 1".into()));
    }
    let timing = StepTiming {
        prefill_base_ms: a.prefill_base_ms,
        prefill_per_token_us: a.prefill_per_token_us,
        decode_base_ms: a.decode_base_ms,
        decode_per_seq_us: a.decode_per_seq_us,
        max_num_seqs: a.max_num_seqs,
        max_batched_tokens: a.max_batched_tokens,
    };
    if !(0.0..=1.0).contains(&a.tp_alpha) {
        return Err(usage(format!("--tp-alpha is a fraction: between 0 and 1 (got {})", a.tp_alpha)));
    }
    if !(1..=1024).contains(&a.tp_ref) {
        return Err(usage(format!("--tp-ref must be between 1 and 1024 (got {})", a.tp_ref)));
    }
    let tp_scaling = TpScaling { alpha: a.tp_alpha, tp_ref: a.tp_ref };
    let count = |v: u32, name: &str| if v == 0 { Err(usage(format!("{name} must be at least 1"))) } else { Ok(v) };
    let (topology, gpus) = match a.mode {
        EmuMode::Fixed => {
            let (Some(ttft), Some(tpot)) = (a.ttft_ms, a.tpot_ms) else {
                return Err(usage("--mode fixed needs --ttft-ms and --tpot-ms".into()));
            };
            if a.tp_alpha > 0.0 {
                return Err(usage(
                    "--tp-alpha scales the step costs of --mode collocated and pd; --mode fixed has none".into(),
                ));
            }
            pos(ttft, "--ttft-ms")?;
            pos(tpot, "--tpot-ms")?;
            (Topology::Fixed { ttft_ms: ttft, tpot_ms: tpot }, count(a.layout.tp, "--tp")?)
        }
        EmuMode::Collocated => {
            let (replicas, tp) = (count(a.layout.num_replicas, "--num-replicas")?, count(a.layout.tp, "--tp")?);
            (Topology::Collocated { replicas, tp, timing, tp_scaling }, replicas * tp)
        }
        EmuMode::Pd => {
            let kv = kv_link(&a)?;
            let (p, d) = (count(a.layout.p_num, "--p-num")?, count(a.layout.d_num, "--d-num")?);
            let (p_tp, d_tp) = (count(a.layout.p_tp, "--p-tp")?, count(a.layout.d_tp, "--d-tp")?);
            (Topology::Pd { p_num: p, p_tp, d_num: d, d_tp, timing, tp_scaling, kv }, p * p_tp + d * d_tp)
        }
    };
    if a.max_model_len < 2 {
        return Err(usage("--max-model-len must be at least 2".into()));
    }
    let cfg = EmulatorConfig {
        model: a.model.clone(),
        topology,
        max_model_len: a.max_model_len,
        gpus,
        faults: Faults { error_500_every: a.fault_500_every, drop_every: a.fault_drop_every },
    };
    crate::child::install_interrupt_handler();
    let rt = crate::pipeline::runtime().context("cannot start the async runtime").map_err(CliError::failed)?;
    rt.block_on(async move {
        let listener = listen(&a.host, a.port)
            .await
            .with_context(|| format!("cannot listen on {}:{}", a.host, a.port))
            .map_err(CliError::usage)?;
        let addr = listener.local_addr().map_err(|e| CliError::failed(anyhow!(e)))?;
        let emu =
            Arc::new(Emulator::new(cfg.clone()).context("cannot start the engine threads").map_err(CliError::failed)?);
        eprintln!("kvprobe emulate: an EMULATOR of a serving engine (no model runs; docs/EMULATOR.md)");
        eprintln!("  model {}  {}", cfg.model, describe(&cfg));
        if let Some(tp) = describe_tp(&cfg.topology) {
            eprintln!("  {tp}");
        }
        // the line tests and scripts wait for, on stdout
        println!("listening on http://{addr}");
        use std::io::Write;
        let _ = std::io::stdout().flush();
        let server = tokio::spawn(crate::pipeline::emulate::serve(listener, emu));
        while !crate::child::interrupted() {
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        server.abort();
        eprintln!("kvprobe emulate: stopped");
        Ok(ExitCode::SUCCESS)
    })
}

/// A listener with a deep accept queue: a concurrency point opens all its
/// connections at once, and an overflowing queue drops SYNs, which the
/// client retries only after a second (seen as 1 s TTFT outliers).
async fn listen(host: &str, port: u16) -> std::io::Result<tokio::net::TcpListener> {
    let addr = tokio::net::lookup_host((host, port))
        .await?
        .next()
        .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, "the host resolves to no address"))?;
    let s = if addr.is_ipv4() { tokio::net::TcpSocket::new_v4()? } else { tokio::net::TcpSocket::new_v6()? };
    s.set_reuseaddr(true)?;
    s.bind(addr)?;
    s.listen(4096)
}

fn describe(c: &EmulatorConfig) -> String {
    match &c.topology {
        Topology::Fixed { ttft_ms, tpot_ms } => format!("fixed: TTFT {ttft_ms} ms, TPOT {tpot_ms} ms"),
        Topology::Collocated { replicas, tp, timing, .. } => {
            format!("collocated: {replicas} engine(s) of TP {tp}, {}", steps(timing))
        }
        Topology::Pd { p_num, p_tp, d_num, d_tp, timing, kv, .. } => {
            format!(
                "pd: {p_num}P (TP {p_tp}):{d_num}D (TP {d_tp}), {}; KV {} at {}",
                steps(timing),
                kv.geometry,
                kv.source
            )
        }
    }
}

/// The TP scaling line: each kind of engine's step-time factor.
fn describe_tp(t: &Topology) -> Option<String> {
    let s = match t {
        Topology::Fixed { .. } => return None,
        Topology::Collocated { tp_scaling, .. } | Topology::Pd { tp_scaling, .. } => tp_scaling,
    };
    if s.alpha == 0.0 {
        return Some("TP changes no timing (--tp-alpha 0)".into());
    }
    let each: Vec<String> =
        t.tp_factors().iter().map(|f| format!("{} TP {} x{:.3}", f.engines, f.tp, f.factor)).collect();
    Some(format!(
        "TP scaling (a model: Amdahl, --tp-alpha {} --tp-ref {}): step costs {}",
        s.alpha,
        s.tp_ref,
        each.join(", ")
    ))
}

fn steps(t: &StepTiming) -> String {
    format!(
        "prefill {} ms + {} us/token, decode {} ms + {} us/seq, {} seqs, {} tokens/step",
        t.prefill_base_ms,
        t.prefill_per_token_us,
        t.decode_base_ms,
        t.decode_per_seq_us,
        t.max_num_seqs,
        t.max_batched_tokens
    )
}
