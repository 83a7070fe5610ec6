//! `kvprobe viz`: plots of bench results (throughput per node or GPU vs
//! latency with pareto frontiers, TPOT and TTFT vs load) and of transport
//! sweeps (GB/s vs size), PNG and SVG, plus `viz.json` and a table.
//! The work is in [`crate::pipeline::viz`]; this file reads the flags,
//! writes the files and picks the exit code.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, anyhow};

use super::CliError;
use crate::pipeline::viz::{
    self, ExperimentEntry, Figure, FileEntry, Loaded, Normalize, Options, Throughput, TransportEntry, VizIndex, XAxis,
};
use crate::report::style::Style;

/// The latency on the throughput chart's x (`--latency-mode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LatencyMode {
    /// Median TPOT (ms).
    Token,
    /// Median TTFT (ms).
    #[value(name = "first_token", alias = "first-token")]
    FirstToken,
    /// (chunk size - 1) x median TPOT + median TTFT (ms).
    Chunk,
}

/// An image format (`--format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// PNG (bitmap).
    Png,
    /// SVG (vector).
    Svg,
}

impl Format {
    fn ext(self) -> &'static str {
        match self {
            Format::Png => "png",
            Format::Svg => "svg",
        }
    }
}

/// Arguments of `kvprobe viz`.
#[derive(Debug, clap::Args)]
#[command(after_help = "\
Writes into --out: throughput_vs_<tpot|ttft|chunk|interactivity>, tpot_vs_concurrency, ttft_vs_concurrency \
(tpot/ttft_vs_request_rate for rate sweeps), transport_gbps (transport inputs), each .png and .svg, and viz.json \
(the files, their series and the experiments; docs/SCHEMA.md). Plots need a TrueType font (DejaVu; or \
KVPROBE_FONT=/path/to/font.ttf).

GPU count per experiment: --gpus, else the manifest's `gpus`, else the folder name (NxtpM, or AxtpB-CxtpD for \
prefill-decode: A*B + C*D GPUs).

Exit codes: 0 plots written (skipped malformed files are warnings); 1 not everything could be drawn: no plot \
written at all (e.g. no font), or an experiment with an unknown GPU count left out of the throughput chart; \
2 bad input: a DIR missing or without readable results, a bad flag, an unwritable --out.")]
pub struct VizArgs {
    /// Inputs: bench results folders (manifest.json and conc<N>.json / rr<R>.json, or plain `vllm bench serve` JSONs), `kvprobe sweep` results (results.json or its folder), `kvprobe compare` folders, or folders of these
    #[arg(required = true, value_name = "DIR")]
    pub dirs: Vec<PathBuf>,
    /// Output folder
    #[arg(long, value_name = "DIR", default_value = "plots")]
    pub out: PathBuf,
    /// Normalise throughput per node (x gpus-per-node / GPUs) or per GPU (/ GPUs)
    #[arg(long, value_enum, default_value = "node")]
    pub normalize: Normalize,
    /// GPUs of a node, for --normalize node
    #[arg(long, value_name = "N", default_value_t = 8, value_parser = clap::value_parser!(u32).range(1..))]
    pub gpus_per_node: u32,
    /// GPUs behind every experiment's endpoint (overrides the manifest and the folder name)
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..))]
    pub gpus: Option<u32>,
    /// Latency on the throughput chart's x: median TPOT, median TTFT, or (chunk-size - 1) x TPOT + TTFT
    #[arg(long, value_enum, default_value = "token")]
    pub latency_mode: LatencyMode,
    /// Tokens per chunk for --latency-mode chunk
    #[arg(long, value_name = "N", default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..))]
    pub chunk_size: u32,
    /// x = interactivity, 1000 / median TPOT (tokens/s/user; higher is better) instead of a latency
    #[arg(long, conflicts_with = "latency_mode")]
    pub interactivity: bool,
    /// Throughput on y: output tokens/s, input (total_input_tokens / duration) or total (input + output)
    #[arg(long, value_enum, default_value = "output")]
    pub throughput: Throughput,
    /// Image formats, comma-separated
    #[arg(long, value_enum, value_delimiter = ',', default_value = "png,svg")]
    pub format: Vec<Format>,
    /// No table and no list of files on stdout (warnings and errors still go to stderr)
    #[arg(short, long)]
    pub quiet: bool,
}

impl VizArgs {
    /// The chart settings the flags ask for.
    pub fn options(&self) -> Options {
        let x = if self.interactivity {
            XAxis::Interactivity
        } else {
            match self.latency_mode {
                LatencyMode::Token => XAxis::Tpot,
                LatencyMode::FirstToken => XAxis::Ttft,
                LatencyMode::Chunk => XAxis::Chunk,
            }
        };
        Options {
            x,
            throughput: self.throughput,
            normalize: self.normalize,
            gpus_per_node: self.gpus_per_node,
            chunk_size: self.chunk_size,
        }
    }
}

/// Writes one figure in one format; the entry for viz.json.
fn write_one(out: &Path, fig: &Figure, format: Format) -> Result<FileEntry, String> {
    let file = format!("{}.{}", fig.stem(), format.ext());
    let path = out.join(&file);
    match format {
        Format::Svg => {
            let text = viz::svg(fig)?;
            crate::report::write_atomic(&path, text.as_bytes()).map_err(|e| format!("{}: {e}", path.display()))?;
        }
        Format::Png => {
            // drawn next to it, then renamed, so a reader never sees half a PNG
            let tmp = out.join(format!(".{}.tmp.png", fig.stem()));
            viz::write_png(fig, &tmp).inspect_err(|_| {
                let _ = std::fs::remove_file(&tmp);
            })?;
            std::fs::rename(&tmp, &path).map_err(|e| format!("{}: {e}", path.display()))?;
        }
    }
    Ok(FileEntry {
        file,
        path,
        format: format.ext().into(),
        chart: fig.kind(),
        title: fig.title().into(),
        width: viz::SIZE.0,
        height: viz::SIZE.1,
        series: fig.series(),
    })
}

/// Runs `viz`.
pub fn run(a: VizArgs) -> Result<ExitCode, CliError> {
    let errstyle =
        Style { color: std::io::IsTerminal::is_terminal(&std::io::stderr()) && std::env::var_os("NO_COLOR").is_none() };
    let o = a.options();
    let mut loaded = Loaded::default();
    for d in &a.dirs {
        let l = viz::load(d).map_err(CliError::usage)?;
        loaded.extend(l);
    }
    loaded.dedupe_names();
    for e in &mut loaded.experiments {
        e.override_gpus(a.gpus);
    }
    let mut warnings = std::mem::take(&mut loaded.warnings);
    let (figs, w, mut errors) = viz::figures(&loaded.experiments, &loaded.transports, &o);
    warnings.extend(w);
    std::fs::create_dir_all(&a.out)
        .with_context(|| format!("cannot create the output folder {}", a.out.display()))
        .map_err(CliError::usage)?;
    let mut formats: Vec<Format> = Vec::new();
    for f in &a.format {
        if !formats.contains(f) {
            formats.push(*f);
        }
    }
    let mut files = Vec::new();
    if figs.is_empty() {
        errors.push("nothing to plot: no point has the metrics a chart needs".into());
    } else if let Err(e) = crate::report::plot::font() {
        errors.push(format!("no plot written: {e}"));
    } else {
        for fig in &figs {
            for &f in &formats {
                match write_one(&a.out, fig, f) {
                    Ok(entry) => files.push(entry),
                    Err(e) => errors.push(format!("{}.{}: {e}", fig.stem(), f.ext())),
                }
            }
        }
        if files.is_empty() {
            errors.push("no plot could be written".into());
        }
    }
    let index = VizIndex {
        schema: viz::VIZ_SCHEMA.into(),
        kvprobe: crate::version().into(),
        inputs: a.dirs.clone(),
        options: o,
        experiments: loaded.experiments.iter().map(|e| ExperimentEntry::of(e, &o)).collect(),
        transports: loaded
            .transports
            .iter()
            .map(|t| TransportEntry { name: t.name.clone(), file: t.file.clone() })
            .collect(),
        files,
        warnings: warnings.clone(),
        errors: errors.clone(),
    };
    let index_path = a.out.join(viz::VIZ_FILE);
    let mut json = serde_json::to_vec_pretty(&index).map_err(|e| CliError::failed(anyhow!(e)))?;
    json.push(b'\n');
    crate::report::write_atomic(&index_path, &json)
        .with_context(|| format!("cannot write {}", index_path.display()))
        .map_err(CliError::failed)?;
    {
        let mut err = std::io::stderr().lock();
        for w in &warnings {
            let _ = writeln!(err, "{}", errstyle.warn(&format!("kvprobe viz: warning: {w}")));
        }
        for e in &errors {
            let _ = writeln!(err, "{}", errstyle.bad(&format!("kvprobe viz: error: {e}")));
        }
    }
    if !a.quiet {
        let mut text = String::new();
        if !loaded.experiments.is_empty() {
            text.push_str(&viz::table(&loaded.experiments, &o));
        }
        for t in &loaded.transports {
            text.push_str(&format!("transport sweep {:?}: {}\n", t.name, t.file.display()));
        }
        for f in &index.files {
            text.push_str(&format!("wrote {}\n", f.path.display()));
        }
        text.push_str(&format!("index: {}\n", index_path.display()));
        let _ = std::io::stdout().lock().write_all(text.as_bytes());
    }
    Ok(if errors.is_empty() { ExitCode::SUCCESS } else { ExitCode::from(1) })
}
