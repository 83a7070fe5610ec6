//! The command line: one file per subcommand; this file only dispatches.
//!
//! Exit codes: 0 success; 1 the measurement failed (data mismatch, transfer
//! error, lost peer); 2 bad input or setup (bad flag, NIXL not found);
//! 130 interrupted.

pub mod bench;
pub mod compare;
pub mod doctor;
pub mod emulate;
pub mod fabric_report;
pub mod info;
pub mod initiator;
pub mod kv_shape;
pub mod launch;
pub mod matrix;
pub mod serve;
pub mod sweep;
pub mod target;
pub mod tp;
pub mod viz;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// kvprobe: is the KV-cache transfer path of a prefill/decode cluster healthy and fast?
#[derive(Debug, Parser)]
#[command(name = "kvprobe", version = crate::version(), about, long_about = None, max_term_width = 100)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub cmd: Cmd,
}

/// Subcommands.
#[derive(Debug, Subcommand)]
pub enum Cmd {
    /// Measure NIXL transfer bandwidth and latency between two processes on this host, READ and WRITE, 4 KiB .. 256 MiB (the main job)
    Sweep(Box<sweep::SweepArgs>),
    /// One sweep per UCX_TLS value and placement, in fresh processes, side by side in one table and one plot
    Compare(Box<compare::CompareArgs>),
    /// Be the far end of sweeps run from another host: `kvprobe sweep --peer ADDR:PORT --token T` there
    Serve(serve::ServeArgs),
    /// Tell what will carry KV traffic on this host and what is wrong (exit 0 healthy, 1 warnings, 2 errors)
    Doctor(doctor::DoctorArgs),
    /// Print what one prefill->decode request moves for a model: bytes per token, regions, block length per rank, descriptors and bytes per request
    KvShape(kv_shape::KvShapeArgs),
    /// Load-test an OpenAI-compatible /v1/completions endpoint: concurrency or request-rate sweeps with vLLM bench's metrics and files
    Bench(Box<bench::BenchArgs>),
    /// Serve an OpenAI-compatible EMULATOR of a serving engine (collocated or prefill/decode timing model, KV transfer time from a sweep); no model runs
    Emulate(Box<emulate::EmulateArgs>),
    /// Deploy a Ray Serve LLM layout (collocated, PD packed on one node or spread over two, NixlConnector) on a Ray cluster and wait until it serves; --dry-run prints the checked config; --engine emulate starts it as the emulator
    Launch(Box<launch::LaunchArgs>),
    /// Measure every ordered pair of a Ray cluster's nodes (kvprobe serve + sweep --peer placed by Ray), in rounds with one transfer per node; matrix.json, heatmap, outlier links and nodes
    Matrix(Box<matrix::MatrixArgs>),
    /// Run a P_tp -> D_tp KV transfer as vLLM's concurrent rank pairs (one process per rank, every timed loop on one barrier): aggregate and per-pair GB/s, tp.json
    Tp(Box<tp::TpArgs>),
    /// Plot bench results (throughput per node vs latency with pareto frontiers, TPOT/TTFT vs load) and transport sweeps, PNG and SVG
    Viz(Box<viz::VizArgs>),
    /// Show where NIXL was found, its version, plugins and backend parameters
    Info(info::InfoArgs),
    /// (internal) what one libfabric offers, as JSON (doctor runs it in a child process)
    #[command(name = "__fabric-report", hide = true)]
    FabricReport(fabric_report::FabricReportArgs),
    /// (internal) serve one initiator session as the target process
    #[command(name = "__target", hide = true)]
    Target(target::TargetArgs),
    /// (internal) run a sweep plan read from stdin as the initiator process
    #[command(name = "__initiator", hide = true)]
    Initiator(initiator::InitiatorArgs),
}

/// The folder a command writes to: the one given, or
/// `results/<kind>-<UTC time of when>` (every command's default).
pub(crate) fn out_dir(given: Option<&std::path::Path>, kind: &str, when: std::time::SystemTime) -> std::path::PathBuf {
    given.map(std::path::Path::to_path_buf).unwrap_or_else(|| {
        std::path::PathBuf::from("results").join(format!("{kind}-{}", crate::hostinfo::stamp_utc(when)))
    })
}

/// An error with the exit code it should produce.
#[derive(Debug)]
pub struct CliError {
    /// Process exit code.
    pub code: u8,
    /// What went wrong (printed with its causes).
    pub error: anyhow::Error,
}

impl CliError {
    /// Bad input or setup: exit 2.
    pub fn usage(e: impl Into<anyhow::Error>) -> CliError {
        CliError { code: 2, error: e.into() }
    }

    /// The run failed: exit 1.
    pub fn failed(e: impl Into<anyhow::Error>) -> CliError {
        CliError { code: 1, error: e.into() }
    }
}

impl From<anyhow::Error> for CliError {
    fn from(e: anyhow::Error) -> Self {
        CliError::failed(e)
    }
}

/// Runs a parsed command line.
pub fn run(cli: Cli) -> Result<ExitCode, CliError> {
    match cli.cmd {
        Cmd::Sweep(a) => sweep::run(*a),
        Cmd::Serve(a) => serve::run(a),
        Cmd::Compare(a) => compare::run(*a),
        Cmd::Doctor(a) => doctor::run(a),
        Cmd::KvShape(a) => kv_shape::run(a),
        Cmd::Bench(a) => bench::run(*a),
        Cmd::Emulate(a) => emulate::run(*a),
        Cmd::Info(a) => info::run(a),
        Cmd::Launch(a) => launch::run(*a),
        Cmd::Matrix(a) => matrix::run(*a),
        Cmd::Tp(a) => tp::run(*a),
        Cmd::Viz(a) => viz::run(*a),
        Cmd::FabricReport(a) => fabric_report::run(a),
        Cmd::Target(a) => target::run(a),
        Cmd::Initiator(a) => initiator::run(a),
    }
}
