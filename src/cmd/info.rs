//! `kvprobe info`: where NIXL is, which version, what it can load.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use serde::Serialize;

use super::CliError;
use crate::locate::{self, Inputs, NixlLocation};
use crate::nixl::{Agent, AgentConfig, Nixl, PluginInfo};

/// Arguments of `kvprobe info`.
#[derive(Debug, clap::Args)]
pub struct InfoArgs {
    /// NIXL C API library (libnixl_capi.so) or a folder holding it [env: KVPROBE_NIXL_LIB]
    #[arg(long, value_name = "PATH")]
    pub nixl_lib: Option<PathBuf>,
    /// Print JSON
    #[arg(long)]
    pub json: bool,
}

/// What `info` reports.
#[derive(Debug, Serialize)]
pub struct Info {
    /// kvprobe version.
    pub kvprobe: String,
    /// Where NIXL was found.
    pub location: NixlLocation,
    /// Version the library reports (releases after 1.5.1).
    pub library_version: Option<String>,
    /// Optional C API symbols present.
    pub optional_symbols: Vec<String>,
    /// Backend plugins NIXL can load, with their memory types and default parameters.
    pub plugins: BTreeMap<String, Result<PluginInfo, String>>,
}

/// Runs `info`.
pub fn run(a: InfoArgs) -> Result<ExitCode, CliError> {
    let loc = locate::locate(&Inputs::from_env(a.nixl_lib.clone())).map_err(CliError::usage)?;
    let nixl = Nixl::open(&loc.lib).map_err(CliError::usage)?;
    let agent = Agent::new(
        &nixl,
        &format!("kvprobe-info-{}", std::process::id()),
        &AgentConfig { progress_thread: false, ..AgentConfig::default() },
    )
    .map_err(CliError::usage)?;
    let mut plugins = BTreeMap::new();
    for p in agent.available_plugins().map_err(CliError::usage)? {
        let info = agent.plugin_params(&p).map_err(|e| e.to_string());
        plugins.insert(p, info);
    }
    let info = Info {
        kvprobe: crate::version().into(),
        location: loc,
        library_version: nixl.version(),
        optional_symbols: nixl.optional_symbols().iter().map(|s| s.to_string()).collect(),
        plugins,
    };
    let mut out = std::io::stdout().lock();
    if a.json {
        let _ = writeln!(out, "{}", serde_json::to_string_pretty(&info).unwrap_or_default());
        return Ok(ExitCode::SUCCESS);
    }
    let l = &info.location;
    let _ = writeln!(out, "NIXL C API : {}", l.lib.display());
    let _ = writeln!(out, "found by   : {}", l.found_by);
    let _ = writeln!(
        out,
        "version    : {}",
        info.library_version.clone().or_else(|| l.version.clone()).unwrap_or_else(|| "unknown".into())
    );
    if let Some(src) = &l.version_source {
        let _ = writeln!(out, "  (from {src})");
    }
    let _ = writeln!(
        out,
        "plugin dir : {}{}",
        l.plugin_dir.as_ref().map(|p| p.display().to_string()).unwrap_or_else(|| "(NIXL default)".into()),
        if l.plugin_dir_from_env { "  (NIXL_PLUGIN_DIR, set by you)" } else { "" }
    );
    let _ = writeln!(out, "searched   :");
    for (i, s) in l.searched.iter().enumerate() {
        let _ = writeln!(out, "  {}. {}: {}", i + 1, s.place, s.outcome);
    }
    let _ = writeln!(out, "plugins    :");
    for (name, p) in &info.plugins {
        match p {
            Ok(p) => {
                let mems: Vec<String> = p.mem_types.iter().map(|m| m.to_string()).collect();
                let params: Vec<String> = p.params.iter().map(|(k, v)| format!("{k}={v}")).collect();
                let _ = writeln!(out, "  {name:<12} mem: {:<16} params: {}", mems.join(","), params.join(" "));
            }
            Err(e) => {
                let _ = writeln!(out, "  {name:<12} cannot be loaded: {e}");
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}
