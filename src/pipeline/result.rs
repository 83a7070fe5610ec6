//! What `kvprobe bench` writes: one JSON per sweep point with vLLM bench's
//! key names at the top level (so tooling that reads `vllm bench serve
//! --save-result` files reads these), kvprobe's own facts under `kvprobe`,
//! and one `manifest.json` per run (documented in docs/SCHEMA.md).
//!
//! File names follow the seeds' `run_bm.sh`: `conc<N>.json` for a
//! concurrency point, `rr<R>.json` for a request-rate point, so points of a
//! rate sweep are keyed by their rate and never overwrite each other.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::metrics::BenchMetrics;

/// Schema of a point file's `kvprobe` block.
pub const POINT_SCHEMA: &str = "kvprobe.bench-point/1";
/// Schema of `manifest.json`.
pub const MANIFEST_SCHEMA: &str = "kvprobe.bench-manifest/1";
/// The manifest's file name inside a results folder.
pub const MANIFEST_FILE: &str = "manifest.json";

/// How a sweep point loads the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum PointKind {
    /// A fixed number of requests in flight (closed loop).
    Concurrency,
    /// Requests sent at a rate (open loop), Poisson or Gamma arrivals.
    RequestRate,
}

impl PointKind {
    /// The file name of a point: `conc8.json`, `rr2.5.json`.
    pub fn file_name(self, value: f64) -> String {
        match self {
            PointKind::Concurrency => format!("conc{}.json", value as u64),
            PointKind::RequestRate => format!("rr{}.json", fmt_num(value)),
        }
    }

    /// `concurrency` / `request rate` for tables and axes.
    pub fn words(self) -> &'static str {
        match self {
            PointKind::Concurrency => "concurrency",
            PointKind::RequestRate => "request rate (req/s)",
        }
    }
}

/// A number without a trailing `.0`: `2`, `2.5`.
pub fn fmt_num(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 1e15 { format!("{}", v as i64) } else { format!("{v}") }
}

/// The workload shape (`--mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum Mode {
    /// Random prompts of ITL tokens, OTL output tokens.
    Mixed,
    /// Random prompts of ITL tokens, one output token (TTFT is the whole request).
    PrefillOnly,
    /// Every prompt is the same ITL tokens (a prefix-caching engine prefills
    /// it once), OTL output tokens: an approximation of pure decode, as in
    /// the seeds' run_bm.sh.
    DecodeOnly,
}

impl Mode {
    /// The name used on the command line and in files.
    pub fn name(self) -> &'static str {
        match self {
            Mode::Mixed => "mixed",
            Mode::PrefillOnly => "prefill-only",
            Mode::DecodeOnly => "decode-only",
        }
    }
}

/// kvprobe's facts about one point (the `kvprobe` key of a point file).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PointInfo {
    /// Always [`POINT_SCHEMA`].
    pub schema: String,
    /// Concurrency or request rate.
    pub kind: PointKind,
    /// The concurrency (requests in flight) or the rate (requests/s).
    pub value: f64,
    /// Workload shape.
    pub mode: Mode,
    /// Prompt tokens per request.
    pub itl: u64,
    /// Output tokens asked per request (`max_tokens`, with `ignore_eos`).
    pub otl: u64,
    /// Seed of the prompts and arrivals.
    pub seed: u64,
    /// Requests whose stream ended without a `usage` chunk: their output
    /// tokens were counted as chunks instead.
    pub usage_missing: u64,
    /// Successful requests whose server-counted prompt tokens differ from `itl`.
    pub prompt_len_mismatch: u64,
    /// Successful requests whose server-counted output tokens differ from `otl`.
    pub output_len_mismatch: u64,
    /// Failed requests by reason (every failure is counted here and in `failed`).
    pub errors: BTreeMap<String, u64>,
    /// Most successful requests in flight at one instant (vLLM's
    /// `max_concurrent_requests` counts per one-second bucket instead).
    #[serde(default)]
    pub max_in_flight: u64,
    /// The point was cut short by Ctrl-C (then written as `<name>.json.partial`).
    #[serde(default)]
    pub interrupted: bool,
}

/// Per-request arrays, written with `--save-detailed` (vLLM's names; times in seconds).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Detailed {
    /// Prompt tokens per request.
    pub input_lens: Vec<u64>,
    /// Output tokens per request.
    pub output_lens: Vec<u64>,
    /// TTFT per request, seconds (0 for failures).
    pub ttfts: Vec<f64>,
    /// Chunk gaps per request, seconds.
    pub itls: Vec<Vec<f64>>,
    /// E2E latency per request, seconds.
    pub latencies: Vec<f64>,
    /// Send time per request, seconds since the point began.
    pub start_times: Vec<f64>,
    /// The error per request ("" on success).
    pub errors: Vec<String>,
}

/// One sweep point, as written to `conc<N>.json` / `rr<R>.json`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PointResult {
    /// When the point started, vLLM's `%Y%m%d-%H%M%S` (UTC).
    pub date: String,
    /// `openai` (the completions API).
    pub endpoint_type: String,
    /// The client: `kvprobe`.
    pub backend: String,
    /// `--label`, or null.
    pub label: Option<String>,
    /// The model name sent in requests.
    pub model_id: String,
    /// Always null: prompts are token ids, no tokenizer is used.
    pub tokenizer_id: Option<String>,
    /// Requests sent in the point.
    pub num_prompts: u64,
    /// Requests/s, or the string `"inf"` for a concurrency point (all at once, gated by concurrency).
    pub request_rate: serde_json::Value,
    /// Gamma shape of the arrivals (1 = Poisson).
    pub burstiness: f64,
    /// The cap on requests in flight, or null for none.
    pub max_concurrency: Option<u64>,
    /// The metrics, vLLM's keys.
    #[serde(flatten)]
    pub metrics: BenchMetrics,
    /// kvprobe's own facts.
    pub kvprobe: PointInfo,
    /// Per-request arrays (`--save-detailed`).
    #[serde(flatten, default, skip_serializing_if = "Option::is_none")]
    pub detailed: Option<Detailed>,
}

/// What the server said about itself.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ServerInfo {
    /// The `/v1/models` answer as sent.
    pub models: serde_json::Value,
    /// The `/version` answer (`{"version": ...}` on vLLM), when there is one.
    pub version: Option<serde_json::Value>,
    /// The HTTP `server` header.
    pub server_header: Option<String>,
    /// The server says it is kvprobe's emulator: its numbers are a model, not an engine.
    pub emulator: bool,
}

/// A point's entry in the manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ManifestPoint {
    /// File name inside the results folder.
    pub file: String,
    /// Concurrency or request rate.
    pub kind: PointKind,
    /// Its value.
    pub value: f64,
    /// Successful requests.
    pub completed: u64,
    /// Failed requests.
    pub failed: u64,
}

/// State of a bench run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BenchStatus {
    /// Still running (a manifest left like this means the process died).
    Running,
    /// Every point finished.
    Complete,
    /// Stopped by Ctrl-C / SIGTERM; the finished points are kept.
    Interrupted,
    /// Stopped by an error; the finished points are kept.
    Failed,
}

/// `manifest.json`: the run as a whole.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// Always [`MANIFEST_SCHEMA`].
    pub schema: String,
    /// kvprobe's version.
    pub kvprobe_version: String,
    /// The command line, one argument per element.
    pub command_line: Vec<String>,
    /// RFC 3339, UTC.
    pub started_at: String,
    /// RFC 3339, UTC (null while running).
    pub finished_at: Option<String>,
    /// The completions URL requests went to.
    pub endpoint: String,
    /// The model name sent.
    pub model: String,
    /// `--label`.
    pub label: Option<String>,
    /// GPUs behind the endpoint (`--gpus`, or what the emulator reports); viz normalises by it.
    pub gpus: Option<u32>,
    /// What the server reported.
    pub server: ServerInfo,
    /// Workload shape.
    pub mode: Mode,
    /// Prompt tokens per request.
    pub itl: u64,
    /// Output tokens per request.
    pub otl: u64,
    /// What the sweep varies.
    pub kind: PointKind,
    /// The values asked for, in order.
    pub values: Vec<f64>,
    /// Points finished and written.
    pub points: Vec<ManifestPoint>,
    /// Run state.
    pub status: BenchStatus,
    /// What stopped the run, when it did not complete.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn point_files_are_keyed_by_value() {
        assert_eq!(PointKind::Concurrency.file_name(8.0), "conc8.json");
        assert_eq!(PointKind::RequestRate.file_name(2.0), "rr2.json");
        assert_eq!(PointKind::RequestRate.file_name(2.5), "rr2.5.json");
    }

    #[test]
    fn point_json_has_vllm_keys_at_the_top() {
        let mut m = BenchMetrics { completed: 3, ..Default::default() };
        m.latency_ms.insert("median_tpot_ms".into(), 12.5);
        let p = PointResult {
            date: "20261124-120000".into(),
            endpoint_type: "openai".into(),
            backend: "kvprobe".into(),
            label: None,
            model_id: "m".into(),
            tokenizer_id: None,
            num_prompts: 3,
            request_rate: "inf".into(),
            burstiness: 1.0,
            max_concurrency: Some(4),
            metrics: m,
            kvprobe: PointInfo {
                schema: POINT_SCHEMA.into(),
                kind: PointKind::Concurrency,
                value: 4.0,
                mode: Mode::Mixed,
                itl: 10,
                otl: 5,
                seed: 0,
                usage_missing: 0,
                prompt_len_mismatch: 0,
                output_len_mismatch: 0,
                errors: BTreeMap::new(),
                max_in_flight: 4,
                interrupted: false,
            },
            detailed: None,
        };
        let v = serde_json::to_value(&p).unwrap();
        assert_eq!(v["median_tpot_ms"], 12.5);
        assert_eq!(v["completed"], 3);
        assert_eq!(v["max_concurrency"], 4);
        assert_eq!(v["request_rate"], "inf");
        assert_eq!(v["kvprobe"]["kind"], "concurrency");
        assert!(v.get("ttfts").is_none());
        let back: PointResult = serde_json::from_value(v).unwrap();
        assert_eq!(back, p);
    }
}
