//! `kvprobe viz`: bench results (and transport sweeps) as plots, a table and
//! an index, the seeds' `viz.py` redone (`../shared/reference/pipeline.md`
//! sections 0.3 and 5).
//!
//! - [`load`] reads one input: a bench results folder (`manifest.json`,
//!   optional, plus every `*.json` with numeric `completed` and `duration`:
//!   kvprobe's `conc<N>.json` / `rr<R>.json` and plain `vllm bench serve`
//!   files alike), a `kvprobe sweep` results file or folder, a `kvprobe
//!   compare` folder, or a folder of such folders. Point files are read as
//!   JSON values, so vLLM files without kvprobe's block or `failed` load.
//! - A point is keyed by (kind, value): kvprobe's block when present, else
//!   the request rate when it is a real rate, else `max_concurrency`. Rate
//!   and concurrency points never overwrite each other (`viz.py` keyed by
//!   `max_concurrency` only, so a rate sweep collapsed into one point).
//! - [`figures`] turns the loaded results into chart descriptions: throughput
//!   per node (or GPU) against a latency with each experiment's pareto
//!   frontier, TPOT and TTFT against concurrency / request rate, transport
//!   GB/s against size; [`svg`] and [`write_png`] draw them. [`table`]
//!   renders the per-point table. All of these are pure functions of the
//!   loaded results; only [`load`] and [`write_png`] touch files.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use plotters::coord::Shift;
use plotters::coord::ranged1d::{AsRangedCoord, ValueFormatter};
use plotters::prelude::*;
use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::result::{MANIFEST_FILE, PointKind, fmt_num};
use crate::report::plot::{self, PALETTE};
use crate::report::schema::{SCHEMA as SWEEP_SCHEMA, SweepResults};

/// Schema of `viz.json`.
pub const VIZ_SCHEMA: &str = "kvprobe.viz/1";
/// The index file `kvprobe viz` writes into its output folder.
pub const VIZ_FILE: &str = "viz.json";
/// Pixel size of every plot (PNG; the SVG has the same user units).
pub const SIZE: (u32, u32) = (1280, 640);
/// Width of the legend beside each chart, pixels.
const LEGEND_W: u32 = 430;
/// A request rate or concurrency at least this large means "no limit":
/// `run_bm.sh` passes `--request-rate 1e9` to concurrency sweeps and
/// `--max-concurrency 1e9` to rate sweeps.
pub const UNLIMITED: f64 = 1e6;

/// What went wrong reading an input.
#[derive(Debug, thiserror::Error)]
pub enum VizError {
    /// The path does not exist.
    #[error("{0}: no such file or folder")]
    NotFound(PathBuf),
    /// The path exists but could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// Nothing usable in it.
    #[error(
        "{0}: no readable results (expected bench point JSONs with numeric `completed` and `duration`, \
         a `kvprobe sweep` results.json, a `kvprobe compare` folder, or folders of those)"
    )]
    NoResults(PathBuf),
    /// A file given directly that is not a transport results file.
    #[error(
        "{path}: not a `kvprobe sweep` results file (schema {SWEEP_SCHEMA}): {why}; give bench results as their folder"
    )]
    NotResults {
        /// The file.
        path: PathBuf,
        /// Why.
        why: String,
    },
}

/// One bench point, the fields viz uses (vLLM's key names).
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    /// File name inside the experiment folder.
    pub file: String,
    /// Concurrency or request rate.
    pub kind: PointKind,
    /// The concurrency or the rate.
    pub value: f64,
    /// Successful requests.
    pub completed: u64,
    /// Failed requests (absent from older vLLM files).
    pub failed: Option<u64>,
    /// Wall time of the point, seconds.
    pub duration: f64,
    /// `median_tpot_ms`.
    pub median_tpot_ms: Option<f64>,
    /// `median_ttft_ms`.
    pub median_ttft_ms: Option<f64>,
    /// `output_throughput`, tokens/s.
    pub output_throughput: Option<f64>,
    /// `total_token_throughput`, tokens/s.
    pub total_token_throughput: Option<f64>,
    /// `total_input_tokens`.
    pub total_input_tokens: Option<f64>,
    /// `total_output_tokens`.
    pub total_output_tokens: Option<f64>,
    /// `request_throughput`, requests/s.
    pub request_throughput: Option<f64>,
}

fn num(v: &Value, key: &str) -> Option<f64> {
    v.get(key).and_then(Value::as_f64).filter(|x| x.is_finite())
}

/// A limit that really limits: a finite positive number below [`UNLIMITED`]
/// (a number or a numeric string; `"inf"` is no limit).
fn limit(v: Option<&Value>) -> Option<f64> {
    let x = match v? {
        Value::Number(n) => n.as_f64()?,
        Value::String(s) => s.trim().parse::<f64>().ok()?,
        _ => return None,
    };
    (x.is_finite() && x > 0.0 && x < UNLIMITED).then_some(x)
}

/// The (kind, value) of a point file: kvprobe's block when present; else
/// the request rate when it limits; else `max_concurrency` when it limits.
pub fn point_key(v: &Value) -> Option<(PointKind, f64)> {
    if let Some(k) = v.get("kvprobe") {
        let kind = match k.get("kind").and_then(Value::as_str) {
            Some("concurrency") => Some(PointKind::Concurrency),
            Some("request-rate") => Some(PointKind::RequestRate),
            _ => None,
        };
        if let (Some(kind), Some(value)) = (kind, num(k, "value")) {
            return Some((kind, value));
        }
    }
    if let Some(r) = limit(v.get("request_rate")) {
        return Some((PointKind::RequestRate, r));
    }
    limit(v.get("max_concurrency")).map(|c| (PointKind::Concurrency, c))
}

/// Whether a JSON value is a bench point: numeric `completed` and `duration` at the top.
pub fn is_point(v: &Value) -> bool {
    v.get("completed").is_some_and(Value::is_number) && v.get("duration").is_some_and(Value::is_number)
}

/// A point from a bench point JSON (kvprobe's or plain vLLM's). `Err` says
/// why a file that looks like a point cannot be keyed.
pub fn point_of(v: &Value, file: &str) -> Result<Point, String> {
    let (kind, value) = point_key(v).ok_or_else(|| {
        "neither a kvprobe block, a finite request_rate nor a max_concurrency to key the point by".to_string()
    })?;
    Ok(Point {
        file: file.to_string(),
        kind,
        value,
        completed: v.get("completed").and_then(Value::as_f64).unwrap_or(0.0).max(0.0) as u64,
        failed: v.get("failed").and_then(Value::as_u64),
        duration: num(v, "duration").unwrap_or(0.0),
        median_tpot_ms: num(v, "median_tpot_ms"),
        median_ttft_ms: num(v, "median_ttft_ms"),
        output_throughput: num(v, "output_throughput"),
        total_token_throughput: num(v, "total_token_throughput"),
        total_input_tokens: num(v, "total_input_tokens"),
        total_output_tokens: num(v, "total_output_tokens"),
        request_throughput: num(v, "request_throughput"),
    })
}

/// Which throughput is plotted (`--throughput`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Throughput {
    /// `output_throughput`: output tokens / duration.
    Output,
    /// `total_input_tokens / duration`.
    Input,
    /// `total_token_throughput`: (input + output tokens) / duration.
    Total,
}

impl Throughput {
    /// Its name on the command line and in files.
    pub fn name(self) -> &'static str {
        match self {
            Throughput::Output => "output",
            Throughput::Input => "input",
            Throughput::Total => "total",
        }
    }

    /// What it is, for axis labels.
    pub fn words(self) -> &'static str {
        match self {
            Throughput::Output => "output tokens/s",
            Throughput::Input => "input tokens/s (total_input_tokens / duration)",
            Throughput::Total => "total (input + output) tokens/s",
        }
    }
}

impl Point {
    /// The chosen throughput, tokens/s, not normalised.
    pub fn throughput(&self, which: Throughput) -> Option<f64> {
        let per = |x: Option<f64>| x.filter(|_| self.duration > 0.0).map(|x| x / self.duration);
        match which {
            Throughput::Output => self.output_throughput.or_else(|| per(self.total_output_tokens)),
            Throughput::Input => per(self.total_input_tokens),
            Throughput::Total => self
                .total_token_throughput
                .or_else(|| Some(per(self.total_input_tokens)? + per(self.total_output_tokens)?)),
        }
    }

    /// The x of the throughput chart; None when the point has no usable
    /// latency (a missing key, or 0 as in a one-token prefill-only point).
    pub fn x(&self, axis: XAxis, chunk_size: u32) -> Option<f64> {
        let tpot = self.median_tpot_ms.filter(|t| *t > 0.0);
        let ttft = self.median_ttft_ms.filter(|t| *t > 0.0);
        match axis {
            XAxis::Tpot => tpot,
            XAxis::Ttft => ttft,
            XAxis::Chunk => Some(f64::from(chunk_size.saturating_sub(1)) * tpot? + ttft?),
            XAxis::Interactivity => tpot.map(|t| 1000.0 / t),
        }
    }

    /// `c=8` / `r=2.5`: the label drawn next to the point.
    pub fn tag(&self) -> String {
        match self.kind {
            PointKind::Concurrency => format!("c={}", fmt_num(self.value)),
            PointKind::RequestRate => format!("r={}", fmt_num(self.value)),
        }
    }
}

/// Where an experiment's GPU count came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum GpuSource {
    /// `--gpus`.
    Flag,
    /// The manifest's `gpus`.
    Manifest,
    /// The folder name (`NxtpM` / `NxtpM-NxtpM`, as the seeds' viz.py).
    FolderName,
}

/// One bench results folder.
#[derive(Debug, Clone, PartialEq)]
pub struct Experiment {
    /// Manifest `label`, else the folder name (made unique among the inputs).
    pub name: String,
    /// The folder.
    pub dir: PathBuf,
    /// GPUs behind the endpoint, when known.
    pub gpus: Option<u32>,
    /// Where `gpus` came from.
    pub gpus_from: Option<GpuSource>,
    /// The points, sorted by (kind, value).
    pub points: Vec<Point>,
}

impl Experiment {
    /// Applies `--gpus`.
    pub fn override_gpus(&mut self, gpus: Option<u32>) {
        if let Some(g) = gpus {
            self.gpus = Some(g);
            self.gpus_from = Some(GpuSource::Flag);
        }
    }
}

/// A transport sweep among the inputs.
#[derive(Debug, Clone)]
pub struct Transport {
    /// Series prefix: the folder name, or the compare setting's label.
    pub name: String,
    /// The results.json read.
    pub file: PathBuf,
    /// Its contents.
    pub results: SweepResults,
}

/// What one input held.
#[derive(Debug, Clone, Default)]
pub struct Loaded {
    /// Bench results folders.
    pub experiments: Vec<Experiment>,
    /// Transport sweeps.
    pub transports: Vec<Transport>,
    /// Files skipped and why (malformed JSON, unkeyable points...).
    pub warnings: Vec<String>,
}

impl Loaded {
    /// Appends another input's contents.
    pub fn extend(&mut self, other: Loaded) {
        self.experiments.extend(other.experiments);
        self.transports.extend(other.transports);
        self.warnings.extend(other.warnings);
    }

    /// Makes experiment and transport names unique (`name (2)`, ...) so
    /// every series of a chart has its own legend entry.
    pub fn dedupe_names(&mut self) {
        let mut seen: BTreeMap<String, usize> = BTreeMap::new();
        let mut unique = |name: &mut String| {
            let n = seen.entry(name.clone()).or_insert(0);
            *n += 1;
            if *n > 1 {
                *name = format!("{name} ({n})");
            }
        };
        for e in &mut self.experiments {
            unique(&mut e.name);
        }
        for t in &mut self.transports {
            unique(&mut t.name);
        }
    }

    fn is_empty(&self) -> bool {
        self.experiments.is_empty() && self.transports.is_empty()
    }
}

/// GPUs of a layout written into a folder name the way the seeds name
/// experiments: `AxtpB-CxtpD` (prefill-decode: A*B + C*D GPUs, tried first)
/// or `NxtpM` (collocated: N*M), `tpep` in place of `tp` allowed; the first
/// match from the left, as Python's `re.search` with the seeds' regexes.
pub fn gpus_from_name(name: &str) -> Option<u32> {
    let b = name.as_bytes();
    let pd = (0..b.len()).find_map(|i| {
        let (r1, t1, end) = unit_at(b, i)?;
        if b.get(end) != Some(&b'-') {
            return None;
        }
        let (r2, t2, _) = unit_at(b, end + 1)?;
        r1.checked_mul(t1)?.checked_add(r2.checked_mul(t2)?)
    });
    pd.or_else(|| (0..b.len()).find_map(|i| unit_at(b, i).and_then(|(r, t, _)| r.checked_mul(t))))
}

/// `(\d+)x(tp|tpep)(\d+)` at `i`: (replicas, tp, end).
fn unit_at(b: &[u8], i: usize) -> Option<(u32, u32, usize)> {
    // A match never starts inside a run of digits: where the run's first
    // digit fails, so does every later one (same text after them).
    if i > 0 && b[i - 1].is_ascii_digit() {
        return None;
    }
    let (replicas, j) = digits(b, i)?;
    if b.get(j) != Some(&b'x') {
        return None;
    }
    let j = j + 1;
    let digit_at = |k: usize| b.get(k).is_some_and(u8::is_ascii_digit);
    let k = if b[j..].starts_with(b"tp") && digit_at(j + 2) {
        j + 2
    } else if b[j..].starts_with(b"tpep") && digit_at(j + 4) {
        j + 4
    } else {
        return None;
    };
    let (tp, end) = digits(b, k)?;
    Some((replicas, tp, end))
}

fn digits(b: &[u8], i: usize) -> Option<(u32, usize)> {
    let n = b[i.min(b.len())..].iter().take_while(|c| c.is_ascii_digit()).count();
    if n == 0 {
        return None;
    }
    std::str::from_utf8(&b[i..i + n]).ok()?.parse().ok().map(|v| (v, i + n))
}

fn read_json(path: &Path) -> Result<Value, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
    serde_json::from_str(&text).map_err(|e| format!("{}: malformed JSON: {e}", path.display()))
}

fn folder_name(dir: &Path) -> String {
    let canon = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    canon
        .file_name()
        .or_else(|| dir.file_name())
        .map_or_else(|| dir.display().to_string(), |n| n.to_string_lossy().into())
}

/// A transport results file (`schema` = kvprobe.sweep/1); Err says why not.
fn transport_of(path: &Path, name: String) -> Result<Transport, String> {
    let v = read_json(path)?;
    match v.get("schema").and_then(Value::as_str) {
        Some(SWEEP_SCHEMA) => {}
        Some(other) => return Err(format!("{}: schema {other:?}, not {SWEEP_SCHEMA}", path.display())),
        None => return Err(format!("{}: no `schema` key", path.display())),
    }
    let results: SweepResults =
        serde_json::from_value(v).map_err(|e| format!("{}: not a {SWEEP_SCHEMA} file: {e}", path.display()))?;
    Ok(Transport { name, file: path.to_path_buf(), results })
}

/// Reads one input (see the module docs). Errors when the path is missing,
/// unreadable or holds no results; files that cannot be used are skipped
/// with a warning in [`Loaded::warnings`].
pub fn load(path: &Path) -> Result<Loaded, VizError> {
    let meta = std::fs::metadata(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => VizError::NotFound(path.to_path_buf()),
        _ => VizError::Io { path: path.to_path_buf(), source: e },
    })?;
    if meta.is_file() {
        let name = path
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .map_or_else(|| folder_name(Path::new(".")), folder_name);
        let t = transport_of(path, name).map_err(|why| VizError::NotResults { path: path.to_path_buf(), why })?;
        return Ok(Loaded { transports: vec![t], ..Default::default() });
    }
    let mut out = load_folder(path, None)?;
    if out.is_empty() {
        // A folder of results folders: a `kvprobe compare` output, or bm_results/.
        let labels = compare_labels(path, &mut out.warnings);
        let mut subs: Vec<PathBuf> = list(path)?.into_iter().filter(|p| p.is_dir()).collect();
        subs.sort();
        for sub in subs {
            let label = sub.file_name().and_then(|n| labels.get(&n.to_string_lossy().to_string())).cloned();
            match load_folder(&sub, label) {
                Ok(l) => out.extend(l),
                Err(e) => out.warnings.push(e.to_string()),
            }
        }
    }
    if out.is_empty() {
        return Err(VizError::NoResults(path.to_path_buf()));
    }
    Ok(out)
}

/// `compare.json`'s setting labels by sub-folder name.
fn compare_labels(dir: &Path, warnings: &mut Vec<String>) -> BTreeMap<String, String> {
    let f = dir.join("compare.json");
    let mut out = BTreeMap::new();
    if !f.exists() {
        return out;
    }
    match read_json(&f) {
        Ok(v) => {
            for s in v.get("settings").and_then(Value::as_array).into_iter().flatten() {
                let label = s.get("label").and_then(Value::as_str);
                let dir = s.get("dir").and_then(Value::as_str).and_then(|d| Path::new(d).file_name());
                if let (Some(l), Some(d)) = (label, dir) {
                    out.insert(d.to_string_lossy().to_string(), l.to_string());
                }
            }
        }
        Err(e) => warnings.push(format!("skipped {e}")),
    }
    out
}

fn list(dir: &Path) -> Result<Vec<PathBuf>, VizError> {
    let io = |e| VizError::Io { path: dir.to_path_buf(), source: e };
    let mut v = Vec::new();
    for e in std::fs::read_dir(dir).map_err(io)? {
        v.push(e.map_err(io)?.path());
    }
    Ok(v)
}

/// One folder, not descending: its results.json and its point files.
fn load_folder(dir: &Path, label: Option<String>) -> Result<Loaded, VizError> {
    let mut out = Loaded::default();
    let name = label.unwrap_or_else(|| folder_name(dir));
    let results = dir.join("results.json");
    if results.is_file() {
        match transport_of(&results, name.clone()) {
            Ok(t) => out.transports.push(t),
            Err(e) => out.warnings.push(format!("skipped {e}")),
        }
    }
    let (mut manifest_label, mut manifest_gpus) = (None, None);
    let manifest = dir.join(MANIFEST_FILE);
    if manifest.is_file() {
        match read_json(&manifest) {
            Ok(v) => {
                manifest_label = v.get("label").and_then(Value::as_str).map(str::to_string);
                manifest_gpus =
                    v.get("gpus").and_then(Value::as_u64).and_then(|g| u32::try_from(g).ok()).filter(|g| *g > 0);
            }
            Err(e) => out.warnings.push(format!("skipped {e}")),
        }
    }
    let mut files: Vec<PathBuf> = list(dir)?
        .into_iter()
        .filter(|p| p.is_file() && p.extension().is_some_and(|x| x == "json"))
        .filter(|p| {
            let n = p.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
            !matches!(n.as_str(), MANIFEST_FILE | "results.json" | "compare.json" | VIZ_FILE)
        })
        .collect();
    files.sort();
    let mut points: Vec<Point> = Vec::new();
    for f in files {
        let file = f.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
        let v = match read_json(&f) {
            Ok(v) => v,
            Err(e) => {
                out.warnings.push(format!("skipped {e}"));
                continue;
            }
        };
        if !is_point(&v) {
            continue;
        }
        match point_of(&v, &file) {
            Ok(p) => {
                if let Some(q) = points.iter().find(|q| q.kind == p.kind && q.value == p.value) {
                    out.warnings.push(format!(
                        "{}: {} and {} are both {} {}; both are plotted",
                        dir.display(),
                        q.file,
                        p.file,
                        p.kind.words(),
                        fmt_num(p.value)
                    ));
                }
                points.push(p);
            }
            Err(e) => out.warnings.push(format!("skipped {}: {e}", f.display())),
        }
    }
    if !points.is_empty() {
        points.sort_by(|a, b| (a.kind as u8).cmp(&(b.kind as u8)).then(a.value.total_cmp(&b.value)));
        let folder = folder_name(dir);
        let (gpus, gpus_from) = match (manifest_gpus, gpus_from_name(&folder)) {
            (Some(g), _) => (Some(g), Some(GpuSource::Manifest)),
            (None, Some(g)) => (Some(g), Some(GpuSource::FolderName)),
            (None, None) => (None, None),
        };
        out.experiments.push(Experiment {
            name: manifest_label.unwrap_or(name),
            dir: dir.to_path_buf(),
            gpus,
            gpus_from,
            points,
        });
    }
    Ok(out)
}

/// Per node or per GPU (`--normalize`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Normalize {
    /// Per node of `--gpus-per-node` GPUs: metric * gpus_per_node / gpus (viz.py's).
    Node,
    /// Per GPU: metric / gpus.
    Gpu,
}

/// The x of the throughput chart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum XAxis {
    /// Median TPOT, ms.
    Tpot,
    /// Median TTFT, ms.
    Ttft,
    /// (chunk size - 1) * median TPOT + median TTFT, ms.
    Chunk,
    /// 1000 / median TPOT, tokens/s/user.
    Interactivity,
}

impl XAxis {
    /// Its name in file names: `tpot`, `ttft`, `chunk`, `interactivity`.
    pub fn name(self) -> &'static str {
        match self {
            XAxis::Tpot => "tpot",
            XAxis::Ttft => "ttft",
            XAxis::Chunk => "chunk",
            XAxis::Interactivity => "interactivity",
        }
    }

    /// Whether a larger x is better (the pareto direction).
    pub fn higher_is_better(self) -> bool {
        self == XAxis::Interactivity
    }

    fn desc(self, chunk_size: u32) -> String {
        match self {
            XAxis::Tpot => "median TPOT (ms, log scale)".into(),
            XAxis::Ttft => "median TTFT (ms, log scale)".into(),
            XAxis::Chunk => format!(
                "chunk latency: {} x median TPOT + median TTFT (ms, chunk of {chunk_size} tokens, log scale)",
                chunk_size.saturating_sub(1)
            ),
            XAxis::Interactivity => "interactivity: 1000 / median TPOT (tokens/s/user, log scale)".into(),
        }
    }
}

/// Everything the charts depend on besides the results.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Options {
    /// The x of the throughput chart.
    pub x: XAxis,
    /// The throughput on its y.
    pub throughput: Throughput,
    /// Per node or per GPU.
    pub normalize: Normalize,
    /// GPUs of a node (`--gpus-per-node`).
    pub gpus_per_node: u32,
    /// Tokens per chunk of the chunk latency.
    pub chunk_size: u32,
}

impl Options {
    /// The factor a metric of a `gpus`-GPU experiment is multiplied by:
    /// gpus_per_node / gpus (node) or 1 / gpus (gpu); None for 0 GPUs.
    pub fn factor(&self, gpus: u32) -> Option<f64> {
        if gpus == 0 {
            return None;
        }
        Some(match self.normalize {
            Normalize::Node => f64::from(self.gpus_per_node) / f64::from(gpus),
            Normalize::Gpu => 1.0 / f64::from(gpus),
        })
    }

    /// `per node (8 GPUs)` / `per GPU`.
    pub fn per(&self) -> String {
        match self.normalize {
            Normalize::Node => format!("per node ({} GPUs)", self.gpus_per_node),
            Normalize::Gpu => "per GPU".into(),
        }
    }

    /// `tok/s/node` / `tok/s/GPU`, short, for table headers.
    pub fn unit(&self) -> &'static str {
        match self.normalize {
            Normalize::Node => "tok/s/node",
            Normalize::Gpu => "tok/s/GPU",
        }
    }
}

/// The pareto frontier as vLLM's `plot_pareto` draws it: sort by x, best
/// x first (ascending when lower is better, descending when higher is
/// better; ties by y, best first) and keep each point whose y exceeds every
/// y before it. Points with a non-finite coordinate are ignored.
pub fn pareto(points: &[(f64, f64)], higher_x_is_better: bool) -> Vec<(f64, f64)> {
    let mut v: Vec<(f64, f64)> = points.iter().copied().filter(|p| p.0.is_finite() && p.1.is_finite()).collect();
    v.sort_by(|a, b| {
        let by_x = if higher_x_is_better { b.0.total_cmp(&a.0) } else { a.0.total_cmp(&b.0) };
        by_x.then(b.1.total_cmp(&a.1))
    });
    let mut best = f64::NEG_INFINITY;
    v.into_iter()
        .filter(|p| {
            let keep = p.1 > best;
            best = best.max(p.1);
            keep
        })
        .collect()
}

/// What a chart shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChartKind {
    /// Normalised throughput vs a latency, with pareto frontiers.
    ThroughputVsLatency,
    /// Median TPOT vs concurrency.
    TpotVsConcurrency,
    /// Median TTFT vs concurrency.
    TtftVsConcurrency,
    /// Median TPOT vs request rate.
    TpotVsRequestRate,
    /// Median TTFT vs request rate.
    TtftVsRequestRate,
    /// Transport GB/s vs transfer size.
    TransportGbps,
}

/// How a series is drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Measured points, a solid line with markers.
    Data,
    /// A pareto frontier, dashed, in its experiment's colour.
    Frontier,
    /// An expected rate (transport charts), dashed.
    Reference,
}

/// One line of a chart.
#[derive(Debug, Clone, PartialEq)]
pub struct ChartSeries {
    /// Legend text.
    pub name: String,
    /// Index into the palette.
    pub color: usize,
    /// How it is drawn.
    pub role: Role,
    /// (x, y), in drawing order.
    pub points: Vec<(f64, f64)>,
    /// Text beside each point (empty: none).
    pub tags: Vec<String>,
}

/// A chart of bench results.
#[derive(Debug, Clone, PartialEq)]
pub struct Chart {
    /// File name without extension.
    pub stem: String,
    /// What it shows.
    pub kind: ChartKind,
    /// Title.
    pub title: String,
    /// x axis text.
    pub x_desc: String,
    /// y axis text.
    pub y_desc: String,
    /// Log-scale x.
    pub x_log: bool,
    /// Log-scale y.
    pub y_log: bool,
    /// The lines.
    pub series: Vec<ChartSeries>,
}

/// Something to draw: a bench chart, or the transport plot of report/plot.rs.
#[derive(Debug, Clone, PartialEq)]
pub enum Figure {
    /// Bench results.
    Chart(Chart),
    /// Transport sweeps: GB/s vs size.
    Transport(plot::Plot),
}

/// A series as `viz.json` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SeriesEntry {
    /// Legend text.
    pub name: String,
    /// data, frontier or reference.
    pub role: Role,
    /// Points drawn.
    pub points: usize,
}

impl Figure {
    /// File name without extension.
    pub fn stem(&self) -> &str {
        match self {
            Figure::Chart(c) => &c.stem,
            Figure::Transport(_) => "transport_gbps",
        }
    }

    /// What it shows.
    pub fn kind(&self) -> ChartKind {
        match self {
            Figure::Chart(c) => c.kind,
            Figure::Transport(_) => ChartKind::TransportGbps,
        }
    }

    /// Title.
    pub fn title(&self) -> &str {
        match self {
            Figure::Chart(c) => &c.title,
            Figure::Transport(p) => &p.title,
        }
    }

    /// The series drawn, as the index lists them.
    pub fn series(&self) -> Vec<SeriesEntry> {
        match self {
            Figure::Chart(c) => c
                .series
                .iter()
                .map(|s| SeriesEntry { name: s.name.clone(), role: s.role, points: s.points.len() })
                .collect(),
            Figure::Transport(p) => p
                .series
                .iter()
                .map(|s| SeriesEntry { name: s.label.clone(), role: Role::Data, points: s.points.len() })
                .chain(p.references.iter().map(|r| SeriesEntry { name: r.1.clone(), role: Role::Reference, points: 1 }))
                .collect(),
        }
    }
}

/// The frontier series' name for an experiment.
pub fn frontier_name(experiment: &str) -> String {
    format!("{experiment} pareto")
}

/// The charts of the loaded results, in the order they are written:
/// throughput vs latency (experiments with a GPU count), TPOT and TTFT vs
/// concurrency and vs request rate (kinds present only), transport GB/s.
/// Charts without a single drawable point are left out with a warning.
/// Returns (figures, warnings, errors); an error names an experiment left
/// out of the throughput chart because its GPU count is unknown.
pub fn figures(
    experiments: &[Experiment],
    transports: &[Transport],
    o: &Options,
) -> (Vec<Figure>, Vec<String>, Vec<String>) {
    let (mut figs, mut warnings, mut errors) = (Vec::new(), Vec::new(), Vec::new());
    // 1. throughput vs latency with frontiers
    let mut series = Vec::new();
    for (i, e) in experiments.iter().enumerate() {
        let Some(f) = e.gpus.and_then(|g| o.factor(g)) else {
            errors.push(format!(
                "experiment {:?} ({}): GPU count unknown (no manifest `gpus`, and the folder name has no \
                 NxtpM or NxtpM-NxtpM layout); left out of the throughput chart; pass --gpus N",
                e.name,
                e.dir.display()
            ));
            continue;
        };
        let mut pts: Vec<(f64, f64, String)> = e
            .points
            .iter()
            .filter_map(|p| Some((p.x(o.x, o.chunk_size)?, p.throughput(o.throughput)? * f, p.tag())))
            .filter(|p| p.0 > 0.0 && p.1.is_finite())
            .collect();
        if pts.is_empty() {
            warnings.push(format!("experiment {:?}: no point has a usable {} and throughput", e.name, o.x.name()));
            continue;
        }
        pts.sort_by(|a, b| a.0.total_cmp(&b.0));
        let xy: Vec<(f64, f64)> = pts.iter().map(|p| (p.0, p.1)).collect();
        let front = pareto(&xy, o.x.higher_is_better());
        series.push(ChartSeries {
            name: e.name.clone(),
            color: i,
            role: Role::Data,
            points: xy,
            tags: pts.into_iter().map(|p| p.2).collect(),
        });
        series.push(ChartSeries {
            name: frontier_name(&e.name),
            color: i,
            role: Role::Frontier,
            points: front,
            tags: vec![],
        });
    }
    let stem = format!("throughput_vs_{}", o.x.name());
    if !series.is_empty() {
        let what = match o.x {
            XAxis::Tpot => "median TPOT",
            XAxis::Ttft => "median TTFT",
            XAxis::Chunk => "chunk latency",
            XAxis::Interactivity => "interactivity",
        };
        figs.push(Figure::Chart(Chart {
            stem,
            kind: ChartKind::ThroughputVsLatency,
            title: format!("{} tokens/s {} vs {what} (dashed: pareto frontier)", o.throughput.name(), o.per()),
            x_desc: o.x.desc(o.chunk_size),
            y_desc: format!("{} {}", o.throughput.words(), o.per()),
            x_log: true,
            y_log: false,
            series,
        }));
    } else if !experiments.is_empty() {
        warnings.push(format!("{stem}: nothing to draw"));
    }
    // 2. latencies vs load
    for kind in [PointKind::Concurrency, PointKind::RequestRate] {
        if !experiments.iter().any(|e| e.points.iter().any(|p| p.kind == kind)) {
            continue;
        }
        let (load, stem_load, x_desc) = match kind {
            PointKind::Concurrency => ("concurrency", "concurrency", "concurrency (requests in flight)"),
            PointKind::RequestRate => ("request rate", "request_rate", "request rate (requests/s)"),
        };
        for (metric, y_log) in [("tpot", false), ("ttft", true)] {
            let series: Vec<ChartSeries> = experiments
                .iter()
                .enumerate()
                .filter_map(|(i, e)| {
                    let points: Vec<(f64, f64)> = e
                        .points
                        .iter()
                        .filter(|p| p.kind == kind)
                        .filter_map(|p| {
                            let y = if metric == "tpot" { p.median_tpot_ms } else { p.median_ttft_ms };
                            Some((p.value, y.filter(|y| *y > 0.0)?))
                        })
                        .collect();
                    (!points.is_empty()).then(|| ChartSeries {
                        name: e.name.clone(),
                        color: i,
                        role: Role::Data,
                        points,
                        tags: vec![],
                    })
                })
                .collect();
            let stem = format!("{metric}_vs_{stem_load}");
            if series.is_empty() {
                warnings.push(format!("{stem}: no {load} point has a median {}", metric.to_uppercase()));
                continue;
            }
            let kind = match (metric, kind) {
                ("tpot", PointKind::Concurrency) => ChartKind::TpotVsConcurrency,
                ("tpot", PointKind::RequestRate) => ChartKind::TpotVsRequestRate,
                (_, PointKind::Concurrency) => ChartKind::TtftVsConcurrency,
                (_, PointKind::RequestRate) => ChartKind::TtftVsRequestRate,
            };
            let m = metric.to_uppercase();
            figs.push(Figure::Chart(Chart {
                stem,
                kind,
                title: format!("median {m} vs {load}"),
                x_desc: x_desc.into(),
                y_desc: format!("median {m} (ms{})", if y_log { ", log scale" } else { "" }),
                x_log: false,
                y_log,
                series,
            }));
        }
    }
    // 3. transports
    let mut series = Vec::new();
    let mut refs: Vec<(f64, String)> = Vec::new();
    for t in transports {
        let prefix = format!("{} ", t.name);
        let s = plot::of_results(&t.results, &prefix);
        if s.is_empty() {
            warnings.push(format!("{}: no transfer rows to plot", t.file.display()));
        }
        series.extend(s);
        for (g, l) in plot::references_of(&t.results, &prefix) {
            if !refs.iter().any(|(x, _)| (x - g).abs() < 1e-9) {
                refs.push((g, l));
            }
        }
    }
    if !series.is_empty() {
        figs.push(Figure::Transport(plot::Plot { title: "kvprobe transport sweeps".into(), series, references: refs }));
    }
    (figs, warnings, errors)
}

type DrawResult = Result<(), String>;

fn err(x: impl std::fmt::Display) -> String {
    x.to_string()
}

/// A tick label with a few significant digits: `2.5`, `40`, `12000`.
fn tick(v: f64) -> String {
    let a = v.abs();
    let s = if a == 0.0 {
        return "0".into();
    } else if a >= 100.0 {
        format!("{v:.0}")
    } else if a >= 1.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.3}")
    };
    if s.contains('.') { s.trim_end_matches('0').trim_end_matches('.').to_string() } else { s }
}

/// The value range of one axis: padded, positive for log axes.
fn range(values: impl Iterator<Item = f64> + Clone, log: bool, from_zero: bool) -> (f64, f64) {
    let lo = values.clone().fold(f64::INFINITY, f64::min);
    let hi = values.fold(f64::NEG_INFINITY, f64::max);
    if log {
        let (lo, hi) = (lo / 1.3, hi * 1.3);
        if hi / lo < 4.0 { (lo / 1.5, hi * 1.5) } else { (lo, hi) }
    } else {
        let span = (hi - lo).max(hi.abs() * 0.1).max(1e-9);
        let lo = if from_zero && lo >= 0.0 { 0.0 } else { lo - span * 0.08 };
        (lo, hi + span * 0.12)
    }
}

/// Tick values of a log axis over `lo..hi`: the coarsest of 1-per-decade,
/// 1-2-5, 1-2-3-5-7 and 1..9 steps that gives at least four labels (bold),
/// and every 1..9 step as grid lines (light).
fn log_ticks(lo: f64, hi: f64) -> (Vec<f64>, Vec<f64>) {
    if !(lo > 0.0 && hi > lo && hi.is_finite()) {
        return (vec![], vec![]);
    }
    let (k0, k1) = (lo.log10().floor() as i32, hi.log10().ceil() as i32);
    let within = |steps: &[f64]| -> Vec<f64> {
        (k0..=k1).flat_map(|k| steps.iter().map(move |m| m * 10f64.powi(k))).filter(|v| *v >= lo && *v <= hi).collect()
    };
    const STEPS: [&[f64]; 4] =
        [&[1.0], &[1.0, 2.0, 5.0], &[1.0, 2.0, 3.0, 5.0, 7.0], &[1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0]];
    let bold = STEPS.iter().map(|s| within(s)).find(|v| v.len() >= 4).unwrap_or_else(|| within(STEPS[3]));
    let light = if k1 - k0 <= 8 { within(&[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0]) } else { within(&[1.0]) };
    (bold, light)
}

fn draw_chart<DB: DrawingBackend>(root: DrawingArea<DB, Shift>, c: &Chart) -> DrawResult
where
    DB::ErrorType: 'static,
{
    root.fill(&WHITE).map_err(err)?;
    let (w, _) = root.dim_in_pixel();
    let (chart_area, legend_area) = root.split_horizontally(w.saturating_sub(LEGEND_W).max(200));
    let ok = |p: &(f64, f64)| p.0.is_finite() && p.1.is_finite() && (!c.x_log || p.0 > 0.0) && (!c.y_log || p.1 > 0.0);
    let pts: Vec<(f64, f64)> = c.series.iter().flat_map(|s| s.points.iter().copied()).filter(ok).collect();
    if pts.is_empty() {
        return Err("nothing to plot".into());
    }
    let (x0, x1) = range(pts.iter().map(|p| p.0), c.x_log, true);
    let (y0, y1) = range(pts.iter().map(|p| p.1), c.y_log, true);
    // Log axes get their ticks at 1-2-5 steps (plotters' own put none
    // between powers of ten, so a 4..20 ms axis had two labels).
    let logx = || {
        let (bold, light) = log_ticks(x0, x1);
        (x0..x1).log_scale().with_key_points(bold).with_light_points(light)
    };
    let logy = || {
        let (bold, light) = log_ticks(y0, y1);
        (y0..y1).log_scale().with_key_points(bold).with_light_points(light)
    };
    match (c.x_log, c.y_log) {
        (true, true) => plot_on(&chart_area, c, logx(), logy(), &ok)?,
        (true, false) => plot_on(&chart_area, c, logx(), y0..y1, &ok)?,
        (false, true) => plot_on(&chart_area, c, x0..x1, logy(), &ok)?,
        (false, false) => plot_on(&chart_area, c, x0..x1, y0..y1, &ok)?,
    }
    legend(&legend_area, c)?;
    root.present().map_err(err)
}

fn plot_on<DB, XR, YR>(
    area: &DrawingArea<DB, Shift>,
    c: &Chart,
    x: XR,
    y: YR,
    ok: &dyn Fn(&(f64, f64)) -> bool,
) -> DrawResult
where
    DB: DrawingBackend,
    DB::ErrorType: 'static,
    XR: AsRangedCoord<Value = f64>,
    YR: AsRangedCoord<Value = f64>,
    XR::CoordDescType: ValueFormatter<f64>,
    YR::CoordDescType: ValueFormatter<f64>,
{
    let mut chart = ChartBuilder::on(area)
        .caption(&c.title, ("sans-serif", 19))
        .margin(14)
        .x_label_area_size(48)
        .y_label_area_size(78)
        .build_cartesian_2d(x, y)
        .map_err(err)?;
    chart
        .configure_mesh()
        .x_desc(&c.x_desc)
        .y_desc(&c.y_desc)
        .label_style(("sans-serif", 14))
        .axis_desc_style(("sans-serif", 14))
        .x_label_formatter(&|v| tick(*v))
        .y_label_formatter(&|v| tick(*v))
        .bold_line_style(RGBColor(215, 215, 215))
        .light_line_style(RGBColor(242, 242, 242))
        .draw()
        .map_err(err)?;
    // frontiers first, so the data lines and markers stay on top
    let order =
        c.series.iter().filter(|s| s.role != Role::Data).chain(c.series.iter().filter(|s| s.role == Role::Data));
    for s in order {
        let color = PALETTE[s.color % PALETTE.len()];
        let pts: Vec<(f64, f64)> = s.points.iter().copied().filter(|p| ok(p)).collect();
        match s.role {
            Role::Data => {
                chart.draw_series(LineSeries::new(pts.clone(), color.stroke_width(2))).map_err(err)?;
                chart.draw_series(pts.iter().map(|&p| Circle::new(p, 4, color.filled()))).map_err(err)?;
                if !s.tags.is_empty() {
                    let tagged = s.points.iter().zip(&s.tags).filter(|(p, _)| ok(p));
                    chart
                        .draw_series(tagged.map(|(&p, t)| {
                            EmptyElement::at(p)
                                + Text::new(t.clone(), (5, -15), ("sans-serif", 11).into_font().color(&color))
                        }))
                        .map_err(err)?;
                }
            }
            Role::Frontier | Role::Reference => {
                if pts.len() > 1 {
                    // wide and translucent: visible where it runs along its data line
                    let style = color.mix(0.55).stroke_width(5);
                    chart.draw_series(DashedLineSeries::new(pts, 10, 7, style)).map_err(err)?;
                } else {
                    chart.draw_series(pts.iter().map(|&p| Cross::new(p, 7, color.stroke_width(2)))).map_err(err)?;
                }
            }
        }
    }
    Ok(())
}

fn legend<DB: DrawingBackend>(area: &DrawingArea<DB, Shift>, c: &Chart) -> DrawResult
where
    DB::ErrorType: 'static,
{
    let mut y = 50;
    area.draw(&Text::new("legend", (10, y - 25), ("sans-serif", 16).into_font())).map_err(err)?;
    let (_, h) = area.dim_in_pixel();
    let room = ((h as i32 - 60) / 22).max(1) as usize;
    let shown = c.series.len().min(room.saturating_sub(1).max(1));
    for s in c.series.iter().take(shown) {
        let color = PALETTE[s.color % PALETTE.len()];
        match s.role {
            Role::Data => {
                area.draw(&PathElement::new(vec![(10, y), (40, y)], color.stroke_width(3))).map_err(err)?;
                area.draw(&Circle::new((25, y), 4, color.filled())).map_err(err)?;
            }
            Role::Frontier | Role::Reference => {
                for k in 0..3 {
                    area.draw(&PathElement::new(vec![(10 + 11 * k, y), (16 + 11 * k, y)], color.stroke_width(3)))
                        .map_err(err)?;
                }
            }
        }
        area.draw(&Text::new(s.name.clone(), (48, y - 7), ("sans-serif", 13).into_font())).map_err(err)?;
        y += 22;
    }
    if shown < c.series.len() {
        let more = format!("... {} more series (colours repeat; see viz.json)", c.series.len() - shown);
        area.draw(&Text::new(more, (10, y - 7), ("sans-serif", 12).into_font())).map_err(err)?;
    }
    Ok(())
}

fn draw<DB: DrawingBackend>(root: DrawingArea<DB, Shift>, f: &Figure) -> DrawResult
where
    DB::ErrorType: 'static,
{
    match f {
        Figure::Chart(c) => draw_chart(root, c),
        Figure::Transport(p) => plot::draw(root, p),
    }
}

/// The figure as SVG text ([`SIZE`]). Needs a TrueType font for text
/// layout (see `report::plot`); Err says which were searched.
pub fn svg(f: &Figure) -> Result<String, String> {
    plot::font()?;
    let mut s = String::new();
    {
        let root = SVGBackend::with_string(&mut s, SIZE).into_drawing_area();
        draw(root, f)?;
    }
    Ok(s)
}

/// Draws the figure into a PNG file ([`SIZE`]); `path` must end in `.png`.
pub fn write_png(f: &Figure, path: &Path) -> Result<(), String> {
    plot::font()?;
    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    draw(root, f)
}

/// The per-point table: experiment, GPUs, kind, value, completed, failed,
/// median TPOT and TTFT, normalised throughput, request throughput.
pub fn table(experiments: &[Experiment], o: &Options) -> String {
    use crate::report::style;
    let mut t = style::table();
    let thr = format!("{} {}", o.throughput.name(), o.unit());
    let header = [
        "experiment",
        "GPUs",
        "kind",
        "value",
        "completed",
        "failed",
        "TPOT p50 ms",
        "TTFT p50 ms",
        thr.as_str(),
        "req/s",
    ];
    t.set_header(header);
    let opt = |x: Option<f64>, f: &dyn Fn(f64) -> String| x.map_or_else(|| "-".to_string(), f);
    for e in experiments {
        let factor = e.gpus.and_then(|g| o.factor(g));
        for p in &e.points {
            let kind = match p.kind {
                PointKind::Concurrency => "concurrency",
                PointKind::RequestRate => "request-rate",
            };
            t.add_row(vec![
                e.name.clone(),
                e.gpus.map_or_else(|| "?".into(), |g| g.to_string()),
                kind.into(),
                fmt_num(p.value),
                p.completed.to_string(),
                p.failed.map_or_else(|| "-".into(), |f| f.to_string()),
                opt(p.median_tpot_ms, &|x| format!("{x:.2}")),
                opt(p.median_ttft_ms, &|x| format!("{x:.1}")),
                opt(factor.and_then(|f| Some(p.throughput(o.throughput)? * f)), &|x| format!("{x:.1}")),
                opt(p.request_throughput, &|x| format!("{x:.3}")),
            ]);
        }
    }
    style::align_numbers(&mut t, &header, &["experiment", "kind"]);
    let mut s = String::new();
    let unknown = if experiments.iter().any(|e| e.gpus.is_none()) { " (GPUs '?': unknown, pass --gpus)" } else { "" };
    let _ = writeln!(
        s,
        "kvprobe viz: {} experiment(s); {} normalised {}{unknown}",
        experiments.len(),
        o.throughput.words(),
        o.per()
    );
    let _ = writeln!(s, "{t}");
    s
}

/// An experiment as `viz.json` lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ExperimentEntry {
    /// Its name (the legend text).
    pub name: String,
    /// Its folder.
    pub dir: PathBuf,
    /// GPUs, when known.
    pub gpus: Option<u32>,
    /// Where the count came from.
    pub gpus_from: Option<GpuSource>,
    /// What its metrics were multiplied by (None: unknown GPUs, not normalised).
    pub factor: Option<f64>,
    /// Concurrency points.
    pub concurrency_points: usize,
    /// Request-rate points.
    pub request_rate_points: usize,
}

impl ExperimentEntry {
    /// The entry of an experiment.
    pub fn of(e: &Experiment, o: &Options) -> ExperimentEntry {
        let count = |k: PointKind| e.points.iter().filter(|p| p.kind == k).count();
        ExperimentEntry {
            name: e.name.clone(),
            dir: e.dir.clone(),
            gpus: e.gpus,
            gpus_from: e.gpus_from,
            factor: e.gpus.and_then(|g| o.factor(g)),
            concurrency_points: count(PointKind::Concurrency),
            request_rate_points: count(PointKind::RequestRate),
        }
    }
}

/// A transport input as `viz.json` lists it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransportEntry {
    /// Series prefix.
    pub name: String,
    /// The results.json read.
    pub file: PathBuf,
}

/// A file written.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// File name inside the output folder.
    pub file: String,
    /// The path as written (output folder joined with the name).
    pub path: PathBuf,
    /// `png` or `svg`.
    pub format: String,
    /// What the chart shows.
    pub chart: ChartKind,
    /// Its title.
    pub title: String,
    /// Pixels (PNG) or user units (SVG).
    pub width: u32,
    /// Pixels (PNG) or user units (SVG).
    pub height: u32,
    /// The series drawn.
    pub series: Vec<SeriesEntry>,
}

/// `viz.json`: what `kvprobe viz` read and wrote (docs/SCHEMA.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VizIndex {
    /// Always [`VIZ_SCHEMA`].
    pub schema: String,
    /// kvprobe's version.
    pub kvprobe: String,
    /// The inputs as given.
    pub inputs: Vec<PathBuf>,
    /// The chart settings.
    pub options: Options,
    /// Bench experiments, in legend order.
    pub experiments: Vec<ExperimentEntry>,
    /// Transport sweeps.
    pub transports: Vec<TransportEntry>,
    /// Files written (viz.json itself not listed).
    pub files: Vec<FileEntry>,
    /// Skipped files and charts.
    pub warnings: Vec<String>,
    /// What was asked for and not drawn.
    pub errors: Vec<String>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn pareto_lower_x_is_better() {
        // (TPOT ms, tok/s): the frontier rises with x; dominated points go.
        let pts = [(20.0, 300.0), (10.0, 100.0), (15.0, 90.0), (30.0, 250.0), (12.0, 200.0), (40.0, 400.0)];
        assert_eq!(pareto(&pts, false), vec![(10.0, 100.0), (12.0, 200.0), (20.0, 300.0), (40.0, 400.0)]);
    }

    #[test]
    fn pareto_higher_x_is_better() {
        // (tok/s/user, tok/s/GPU): sorted by x descending, y must rise.
        let pts = [(100.0, 50.0), (80.0, 40.0), (60.0, 90.0), (50.0, 80.0), (20.0, 120.0)];
        assert_eq!(pareto(&pts, true), vec![(100.0, 50.0), (60.0, 90.0), (20.0, 120.0)]);
    }

    #[test]
    fn pareto_ties_keep_the_best_and_skips_non_finite() {
        let pts = [(10.0, 1.0), (10.0, 5.0), (f64::NAN, 9.0), (11.0, 5.0), (12.0, f64::INFINITY)];
        assert_eq!(pareto(&pts, false), vec![(10.0, 5.0)]);
        assert!(pareto(&[], true).is_empty());
    }

    #[test]
    fn gpu_counts_from_folder_names() {
        for (name, want) in [
            ("gptoss_itl5000_otl250_1xtp4-1xtp4-pack", Some(8)),
            ("gptoss_itl5000_otl250_mixed_2xtp4", Some(8)),
            ("gptoss_itl5000_otl250_mixed_1xtpep4-1xtpep4", Some(8)),
            ("gptoss_itl5000_otl250_mixed_2xtp2-1xtp4", Some(8)),
            ("gptoss_itl5000_otl250_mixed_6xtp1-1xtp2", Some(8)),
            ("gptoss_itl5000_otl250_mixed_1xtp4-3xtp4-ucx120", Some(16)),
            ("gptoss_itl5000_otl250_mixed_1xtp4-1xtpep4", Some(8)),
            ("qwen32b_itl5000_otl250_8xtp1", Some(8)),
            ("x_10xtp1", Some(10)),
            ("a_2xtp2_then_1xtp4-1xtp4", Some(8)), // PD is tried first, anywhere
            ("gptoss_itl10000_otl500_4ptp1-2dtp2-packed-ucx", None),
            ("llama8b_itl8000_otl100_decode-only-conc", None),
            ("1xtpx4", None),
            ("1xtp", None),
            ("99999999999xtp1", None), // overflows u32: no count rather than a wrong one
            ("", None),
        ] {
            assert_eq!(gpus_from_name(name), want, "{name}");
        }
    }

    #[test]
    fn points_are_keyed_by_kind_and_value() {
        // kvprobe's block wins
        let v = json!({"completed": 3, "duration": 1.0, "request_rate": "inf", "max_concurrency": 4,
                       "kvprobe": {"kind": "concurrency", "value": 4.0}});
        assert_eq!(point_key(&v), Some((PointKind::Concurrency, 4.0)));
        // run_bm.sh concurrency sweep: request_rate 1e9 is no rate
        let v = json!({"completed": 3, "duration": 1.0, "request_rate": 1e9, "max_concurrency": 32});
        assert_eq!(point_key(&v), Some((PointKind::Concurrency, 32.0)));
        let v = json!({"completed": 3, "duration": 1.0, "request_rate": "inf", "max_concurrency": 8});
        assert_eq!(point_key(&v), Some((PointKind::Concurrency, 8.0)));
        // neither limits: not keyable
        let v = json!({"completed": 3, "duration": 1.0, "request_rate": "inf", "max_concurrency": null});
        assert_eq!(point_key(&v), None);
        assert!(point_of(&v, "x.json").is_err());
    }

    #[test]
    fn a_rate_sweep_keeps_every_point() {
        // max_concurrency null (kvprobe / vLLM default) or 1e9 (run_bm.sh):
        // keyed by the rate, so no two collapse (viz.py's pitfall).
        let mut keys = Vec::new();
        for (r, mc) in [(1.0, json!(null)), (2.0, json!(1_000_000_000u64)), (2.5, json!(null)), (4.0, json!(1e9))] {
            let v = json!({"completed": 10, "duration": 2.0, "request_rate": r, "max_concurrency": mc});
            let p = point_of(&v, "rr.json").unwrap();
            assert_eq!(p.kind, PointKind::RequestRate);
            keys.push(p.value);
        }
        assert_eq!(keys, vec![1.0, 2.0, 2.5, 4.0]);
    }

    #[test]
    fn plain_vllm_points_load_without_kvprobe_keys() {
        let v = json!({"completed": 160, "duration": 16.0, "request_rate": 1e9, "max_concurrency": 32,
                       "total_input_tokens": 800000, "total_output_tokens": 40000,
                       "output_throughput": 2500.0, "median_tpot_ms": 10.0, "median_ttft_ms": 340.0});
        assert!(is_point(&v));
        let p = point_of(&v, "conc32.json").unwrap();
        assert_eq!((p.failed, p.completed), (None, 160));
        assert_eq!(p.throughput(Throughput::Output), Some(2500.0));
        assert_eq!(p.throughput(Throughput::Input), Some(50000.0));
        // no total_token_throughput key: (input + output) / duration
        assert_eq!(p.throughput(Throughput::Total), Some(52500.0));
        assert_eq!(p.x(XAxis::Tpot, 16), Some(10.0));
        assert_eq!(p.x(XAxis::Ttft, 16), Some(340.0));
        assert_eq!(p.x(XAxis::Chunk, 16), Some(15.0 * 10.0 + 340.0));
        assert_eq!(p.x(XAxis::Interactivity, 16), Some(100.0));
        assert!(!is_point(&json!({"schema": "kvprobe.bench-manifest/1"})));
    }

    #[test]
    fn normalisation_arithmetic() {
        let o = Options {
            x: XAxis::Tpot,
            throughput: Throughput::Output,
            normalize: Normalize::Node,
            gpus_per_node: 8,
            chunk_size: 16,
        };
        // viz.py: metric * 8 / num_gpus
        assert_eq!(o.factor(16), Some(0.5));
        assert_eq!(o.factor(4), Some(2.0));
        assert_eq!(o.factor(0), None);
        let o4 = Options { gpus_per_node: 4, ..o };
        assert_eq!(o4.factor(8), Some(0.5));
        let g = Options { normalize: Normalize::Gpu, ..o };
        assert_eq!(g.factor(8), Some(0.125));
        // through figures(): 16 GPUs at 4000 tok/s is 2000 tok/s/node
        let e = Experiment {
            name: "e".into(),
            dir: "e".into(),
            gpus: Some(16),
            gpus_from: Some(GpuSource::Manifest),
            points: vec![point_of(
                &json!({"completed": 1, "duration": 1.0, "max_concurrency": 8, "request_rate": "inf",
                        "output_throughput": 4000.0, "total_input_tokens": 8000, "median_tpot_ms": 12.0, "median_ttft_ms": 100.0}),
                "conc8.json",
            )
            .unwrap()],
        };
        let (figs, _, errors) = figures(std::slice::from_ref(&e), &[], &o);
        assert!(errors.is_empty());
        let Figure::Chart(c) = &figs[0] else { panic!("{figs:?}") };
        assert_eq!(c.stem, "throughput_vs_tpot");
        assert_eq!(c.series[0].points, vec![(12.0, 2000.0)]);
        assert_eq!(c.series[0].tags, vec!["c=8".to_string()]);
        let (figs, _, _) = figures(std::slice::from_ref(&e), &[], &g);
        let Figure::Chart(c) = &figs[0] else { panic!() };
        assert_eq!(c.series[0].points, vec![(12.0, 250.0)]);
        assert!(c.y_desc.contains("per GPU"), "{}", c.y_desc);
        // the axis says which throughput
        let i = Options { throughput: Throughput::Input, ..o };
        let (figs, _, _) = figures(std::slice::from_ref(&e), &[], &i);
        let Figure::Chart(c) = &figs[0] else { panic!() };
        assert_eq!(c.y_desc, "input tokens/s (total_input_tokens / duration) per node (8 GPUs)");
        assert_eq!(c.series[0].points, vec![(12.0, 4000.0)]); // 8000 input tokens in 1 s, 16 GPUs
    }

    #[test]
    fn an_experiment_without_gpus_is_an_error_for_the_throughput_chart_only() {
        let o = Options {
            x: XAxis::Interactivity,
            throughput: Throughput::Output,
            normalize: Normalize::Node,
            gpus_per_node: 8,
            chunk_size: 16,
        };
        let p = point_of(
            &json!({"completed": 1, "duration": 1.0, "request_rate": 2.0, "median_tpot_ms": 10.0, "median_ttft_ms": 50.0,
                    "output_throughput": 10.0}),
            "rr2.json",
        )
        .unwrap();
        let e = Experiment {
            name: "mystery".into(),
            dir: "runs/mystery".into(),
            gpus: None,
            gpus_from: None,
            points: vec![p],
        };
        let (figs, _, errors) = figures(std::slice::from_ref(&e), &[], &o);
        assert_eq!(errors.len(), 1);
        assert!(errors[0].contains("runs/mystery") && errors[0].contains("--gpus"), "{}", errors[0]);
        let stems: Vec<&str> = figs.iter().map(Figure::stem).collect();
        assert_eq!(stems, vec!["tpot_vs_request_rate", "ttft_vs_request_rate"]);
    }

    #[test]
    fn charts_draw_to_svg_with_their_legend() {
        if plot::font().is_err() {
            return; // the integration test insists on a font; here only the drawing matters
        }
        let c = Chart {
            stem: "t".into(),
            kind: ChartKind::ThroughputVsLatency,
            title: "a title".into(),
            x_desc: "median TPOT (ms, log scale)".into(),
            y_desc: "y".into(),
            x_log: true,
            y_log: false,
            series: vec![
                ChartSeries {
                    name: "exp A".into(),
                    color: 0,
                    role: Role::Data,
                    points: vec![(10.0, 100.0), (20.0, 300.0)],
                    tags: vec!["c=4".into(), "c=8".into()],
                },
                ChartSeries {
                    name: "exp A pareto".into(),
                    color: 0,
                    role: Role::Frontier,
                    points: vec![(10.0, 100.0), (20.0, 300.0)],
                    tags: vec![],
                },
            ],
        };
        let s = svg(&Figure::Chart(c.clone())).unwrap();
        for want in ["a title", "exp A", "exp A pareto", "c=8", "median TPOT"] {
            assert!(s.contains(want), "{want} missing");
        }
        let empty = Chart { series: vec![], ..c };
        assert!(svg(&Figure::Chart(empty)).is_err());
    }

    #[test]
    fn log_axes_get_enough_ticks() {
        let (bold, light) = log_ticks(4.0, 20.0);
        assert_eq!(bold, vec![5.0, 7.0, 10.0, 20.0]);
        assert!(light.contains(&4.0) && light.contains(&20.0));
        assert_eq!(log_ticks(1.0, 5000.0).0, vec![1.0, 10.0, 100.0, 1000.0]);
        assert_eq!(log_ticks(3.0, 300.0).0, vec![5.0, 10.0, 20.0, 50.0, 100.0, 200.0]);
        assert_eq!(log_ticks(0.0, 1.0), (vec![], vec![]));
    }

    #[test]
    fn ticks_are_short() {
        assert_eq!(tick(2.5), "2.5");
        assert_eq!(tick(40.0), "40");
        assert_eq!(tick(12000.0), "12000");
        assert_eq!(tick(0.25), "0.25");
        assert_eq!(tick(0.0), "0");
    }
}
