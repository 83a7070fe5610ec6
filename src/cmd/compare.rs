//! `kvprobe compare`: one sweep per setting (UCX_TLS value x placement),
//! each in fresh processes (UCX reads its environment once), then one
//! side-by-side table and one plot.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};
use std::time::SystemTime;

use anyhow::{Context, anyhow};
use comfy_table::CellAlignment;
use serde::{Deserialize, Serialize};

use super::CliError;
use crate::report::schema::{RunStatus, SweepResults};
use crate::report::style::Style;
use crate::report::{self, plot};
use crate::units::{Bytes, fmt_gbps};
use crate::verdict::Grade;

/// Arguments of `kvprobe compare`.
#[derive(Debug, clap::Args)]
pub struct CompareArgs {
    /// A UCX_TLS value to measure, repeatable ("default": leave UCX_TLS unset) [default: default]
    #[arg(long = "tls", value_name = "LIST")]
    pub tls: Vec<String>,
    /// Placement, repeatable: pack (target on this host) or spread (the `kvprobe serve` at --peer) [default: spread with --peer, else pack]
    #[arg(long = "placement", value_name = "pack|spread")]
    pub placements: Vec<String>,
    /// A backend to measure, repeatable, each in its own sweep and column (nixl-ucx, nixl-libfabric, ucx)
    /// [default: the sweep's --backend, from the sweep arguments]
    #[arg(long = "backend", value_name = "BACKEND")]
    pub backends: Vec<crate::peer::BackendKind>,
    /// `kvprobe serve` on another host (needed for spread)
    #[arg(long, value_name = "HOST:PORT")]
    pub peer: Option<String>,
    /// The token `kvprobe serve` printed [env: KVPROBE_TOKEN]
    #[arg(long, value_name = "TOKEN", requires = "peer")]
    pub token: Option<String>,
    /// Output folder: one sub-folder per setting, compare.json, compare.svg/png [default: results/compare-<UTC time>]
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Exit 0 even when a setting's verdict is FAIL (default: exit 3)
    #[arg(long)]
    pub no_fail: bool,
    /// Print compare.json on stdout instead of the table
    #[arg(long)]
    pub json: bool,
    /// Arguments for every sweep, after `--` (e.g. -- --sizes 4K,1M,64M --backend nixl,ucx)
    #[arg(last = true, value_name = "SWEEP ARGS")]
    pub sweep_args: Vec<String>,
}

/// One setting and what its sweep gave.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Setting {
    /// `pack/default`, `spread/tcp`, ...
    pub label: String,
    /// UCX_TLS (None: unset).
    pub tls: Option<String>,
    /// `pack` or `spread`.
    pub placement: String,
    /// The backend measured (None: the sweep arguments chose).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backend: Option<String>,
    /// The sweep's folder.
    pub dir: PathBuf,
    /// The sweep's exit code.
    pub exit_code: Option<i32>,
    /// Its status (`complete`, `failed`...), when results.json exists.
    pub status: Option<RunStatus>,
    /// Its verdict grade.
    pub grade: Option<Grade>,
}

/// `compare.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CompareResults {
    /// kvprobe version.
    pub kvprobe: String,
    /// Command line.
    pub command_line: Vec<String>,
    /// Start time (UTC).
    pub started_at: String,
    /// The settings, in the order measured.
    pub settings: Vec<Setting>,
}

/// Runs `compare`.
pub fn run(a: CompareArgs) -> Result<ExitCode, CliError> {
    let started = SystemTime::now();
    let tls: Vec<Option<String>> = if a.tls.is_empty() {
        vec![None]
    } else {
        a.tls.iter().map(|t| if t == "default" || t.is_empty() { None } else { Some(t.clone()) }).collect()
    };
    let placements: Vec<String> = if a.placements.is_empty() {
        vec![if a.peer.is_some() { "spread".into() } else { "pack".into() }]
    } else {
        a.placements.clone()
    };
    for p in &placements {
        match p.as_str() {
            "pack" => {}
            "spread" if a.peer.is_some() => {}
            "spread" => {
                return Err(CliError::usage(anyhow!(
                    "--placement spread needs --peer (a `kvprobe serve` on another host)"
                )));
            }
            other => return Err(CliError::usage(anyhow!("unknown placement '{other}' (pack, spread)"))),
        }
    }
    let mut backends: Vec<Option<crate::peer::BackendKind>> = Vec::new();
    for b in &a.backends {
        if !backends.contains(&Some(*b)) {
            backends.push(Some(*b));
        }
    }
    if backends.is_empty() {
        backends.push(None);
    } else if a.sweep_args.iter().any(|x| x == "--backend" || x.starts_with("--backend=")) {
        return Err(CliError::usage(anyhow!(
            "--backend is given to compare (one column each); leave it out of the sweep arguments"
        )));
    }
    for forbidden in ["--out", "--ucx-tls", "--peer", "--token", "--json"] {
        if a.sweep_args.iter().any(|x| x == forbidden || x.starts_with(&format!("{forbidden}="))) {
            return Err(CliError::usage(anyhow!(
                "{forbidden} is set by compare itself; leave it out of the sweep arguments"
            )));
        }
    }
    let out = super::out_dir(a.out.as_deref(), "compare", started);
    std::fs::create_dir_all(&out)
        .with_context(|| format!("cannot create the output folder {}", out.display()))
        .map_err(CliError::usage)?;
    crate::child::install_interrupt_handler();
    let exe = std::env::current_exe().context("own executable").map_err(CliError::usage)?;
    let mut cr = CompareResults {
        kvprobe: crate::version().into(),
        command_line: crate::hostinfo::redacted_args(),
        started_at: crate::hostinfo::rfc3339_utc(started),
        settings: Vec::new(),
    };
    let mut runs: Vec<(Setting, Option<SweepResults>)> = Vec::new();
    let mut warned_tls = false;
    let mut settings: Vec<(&String, &Option<String>, Option<crate::peer::BackendKind>)> = Vec::new();
    for p in &placements {
        for t in &tls {
            settings.extend(backends.iter().map(|b| (p, t, *b)));
        }
    }
    for (p, t, backend) in settings {
        if crate::child::interrupted() {
            break;
        }
        let mut label = format!("{p}/{}", t.as_deref().unwrap_or("default"));
        if let Some(b) = backend {
            label.push('/');
            label.push_str(b.label());
        }
        // numbered, so settings that differ only in punctuation never share a folder
        let dir = out.join(format!("{}-{}", runs.len() + 1, label.replace(['/', ',', '^', ' '], "_")));
        let _ = std::fs::remove_file(dir.join("results.json"));
        eprintln!("compare: {label} ...");
        if p == "spread" && runs.iter().any(|(s, _)| s.placement == "spread") {
            // serve frees its slot once the previous session's target is reaped
            std::thread::sleep(std::time::Duration::from_secs(1));
        }
        if p == "spread" && t.is_some() && !warned_tls {
            warned_tls = true;
            eprintln!(
                "compare: note: --tls sets UCX_TLS for this host's process; the far end uses the UCX_TLS of `kvprobe serve`'s environment (each row's transport says what carried it)"
            );
        }
        let mut c = Command::new(&exe);
        c.args(["sweep", "-q", "--no-fail", "--out"]).arg(&dir);
        if let Some(t) = t {
            c.args(["--ucx-tls", t]);
        }
        if let Some(b) = backend {
            c.args(["--backend", b.label()]);
        }
        if p == "spread" {
            c.args(["--peer", a.peer.as_deref().unwrap_or_default()]);
            if let Some(tok) = &a.token {
                c.args(["--token", tok]);
            }
        }
        c.args(&a.sweep_args).stdout(Stdio::null()).stderr(Stdio::inherit());
        let status = c.status().with_context(|| format!("cannot run the sweep for {label}"))?;
        let results: Option<SweepResults> =
            std::fs::read_to_string(dir.join("results.json")).ok().and_then(|s| serde_json::from_str(&s).ok());
        let s = Setting {
            label,
            tls: t.clone(),
            placement: p.clone(),
            backend: backend.map(|b| b.label().to_string()),
            dir: dir.clone(),
            exit_code: status.code(),
            status: results.as_ref().map(|r| r.status),
            grade: results.as_ref().and_then(|r| r.verdict.as_ref()).map(|v| v.grade),
        };
        cr.settings.push(s.clone());
        report::write_atomic(&out.join("compare.json"), &serde_json::to_vec_pretty(&cr).unwrap_or_default())
            .context("writing compare.json")?;
        runs.push((s, results));
    }
    let mut warnings = Vec::new();
    let mut series = Vec::new();
    let mut refs: Vec<(f64, String)> = Vec::new();
    for (s, r) in &runs {
        if let Some(r) = r {
            series.extend(plot::of_results(r, &format!("{} ", s.label)));
            for (g, l) in plot::references_of(r, &format!("{} ", s.label)) {
                if !refs.iter().any(|(x, _)| (x - g).abs() < 1e-9) {
                    refs.push((g, l));
                }
            }
        }
    }
    if !series.is_empty() {
        let p = plot::Plot { title: "kvprobe compare".into(), series, references: refs };
        if let (_, Some(w)) = plot::write(&out, "compare", &p) {
            warnings.push(w);
        }
    }
    let text = if a.json {
        serde_json::to_string_pretty(&cr).unwrap_or_default() + "\n"
    } else {
        render(&runs, &out, &warnings, Style::for_stdout())
    };
    let _ = std::io::stdout().lock().write_all(text.as_bytes());
    if crate::child::interrupted() {
        return Ok(ExitCode::from(130));
    }
    if runs.iter().any(|(s, _)| s.status != Some(RunStatus::Complete)) {
        return Ok(ExitCode::from(1));
    }
    if !a.no_fail && runs.iter().any(|(s, _)| s.grade == Some(Grade::Fail)) {
        return Ok(ExitCode::from(3));
    }
    Ok(ExitCode::SUCCESS)
}

/// The side-by-side table: a row per (backend, op, size), a column per
/// setting (GB/s and the transport that carried it), then the verdicts.
pub fn render(runs: &[(Setting, Option<SweepResults>)], out: &Path, warnings: &[String], style: Style) -> String {
    let mut keys: Vec<(String, String, u64)> = Vec::new();
    let mut cells: BTreeMap<(String, String, u64, usize), String> = BTreeMap::new();
    // with a backend per column, rows are (op, size) and the column names the backend
    let per_column = runs.iter().any(|(s, _)| s.backend.is_some());
    for (i, (_, r)) in runs.iter().enumerate() {
        let Some(r) = r else { continue };
        for row in r.rows.iter().filter(|x| x.kv.is_none()) {
            let b = if per_column { String::new() } else { row.label() };
            let k = (b, row.op.to_string(), row.size_bytes);
            if !keys.contains(&k) {
                keys.push(k.clone());
            }
            let t = row.transport.as_ref().map_or("?".to_string(), |t| {
                let lanes: Vec<&str> = t.lanes.iter().map(|l| crate::transport::lane_transport(l)).collect();
                let mut s = lanes.join("+");
                if t.protocol.contains("emulation") {
                    s.push_str(" emul");
                }
                s
            });
            let v = if row.verified { format!("{} {t}", fmt_gbps(row.gbps)) } else { style.bad("FAIL") };
            cells.insert((k.0, k.1, k.2, i), v);
        }
    }
    keys.sort_by_key(|k| (k.1.clone(), k.2, k.0.clone()));
    let mut t = crate::report::style::table();
    let mut header = if per_column { vec![] } else { vec!["backend".to_string()] };
    header.extend(["op".to_string(), "size".into()]);
    header.extend(runs.iter().map(|(s, _)| s.label.clone()));
    t.set_header(header);
    for (b, op, size) in &keys {
        let mut row = if per_column { vec![] } else { vec![b.clone()] };
        row.extend([op.clone(), Bytes(*size).to_string()]);
        for i in 0..runs.len() {
            row.push(cells.get(&(b.clone(), op.clone(), *size, i)).cloned().unwrap_or_else(|| "-".into()));
        }
        t.add_row(row);
    }
    if let Some(c) = t.column_mut(if per_column { 1 } else { 2 }) {
        c.set_cell_alignment(CellAlignment::Right);
    }
    let mut out_s =
        format!("kvprobe compare: {} settings, GB/s (1e9 bytes/s) and the transport used per row\n", runs.len());
    out_s.push_str(&t.to_string());
    out_s.push('\n');
    let width = runs.iter().map(|(s, _)| s.label.len()).max().unwrap_or(0).max(24);
    for (s, r) in runs {
        let line = match (r, s.grade) {
            (Some(r), Some(g)) => {
                let why: Vec<String> = r
                    .verdict
                    .iter()
                    .flat_map(|v| v.paths.iter())
                    .flat_map(|p| {
                        p.reasons.iter().filter(|x| x.grade == g && g != Grade::Pass).map(|x| x.check.clone())
                    })
                    .collect::<std::collections::BTreeSet<_>>()
                    .into_iter()
                    .collect();
                let g_s = style.grade(g);
                format!("{g_s}{}", if why.is_empty() { String::new() } else { format!(" ({})", why.join(", ")) })
            }
            (Some(r), None) => format!("{:?}, no verdict", r.status),
            (None, _) => style.bad(&format!("no results (sweep exit code {:?})", s.exit_code)),
        };
        out_s.push_str(&format!("  {:<width$} {line}   {}\n", s.label, s.dir.display()));
    }
    for w in warnings {
        out_s.push_str(&style.warn(&format!("warning: {w}\n")));
    }
    out_s.push_str(&format!("results: {}\n", out.join("compare.json").display()));
    out_s
}
