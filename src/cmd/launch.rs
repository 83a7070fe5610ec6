//! `kvprobe launch`: a Ray Serve LLM deployment (collocated, PD packed on
//! one node, PD spread over two) checked against the cluster and the model
//! and written as a Serve config. So far `--dry-run` only (issue 8 is open):
//! the config is printed and, with `--out`, written with a manifest.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, anyhow};

use super::CliError;
use crate::kv::{Attention, Model};
use crate::pipeline::launch::{self, Engines, LaunchMode, LaunchSpec, NixlBackend};

/// Arguments of `kvprobe launch`.
#[derive(Debug, clap::Args)]
pub struct LaunchArgs {
    /// Deployment shape
    #[arg(long, value_enum)]
    pub mode: LaunchMode,
    /// Model to serve: a Hugging Face id or a local path (model_source); its KV heads are checked when it is a kvprobe preset
    #[arg(long, value_name = "SOURCE")]
    pub model: String,
    /// Name the endpoint serves [default: the last path part of --model]
    #[arg(long, value_name = "NAME")]
    pub served_model_name: Option<String>,
    /// The model's config.json, for its KV heads (TP must divide them)
    #[arg(long, value_name = "PATH")]
    pub model_config: Option<PathBuf>,
    /// collocated: TP per replica
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub tp: u32,
    /// collocated: replicas
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub num_replicas: u32,
    /// PD: prefill replicas
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub p_num: u32,
    /// PD: TP per prefill replica
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub p_tp: u32,
    /// PD: decode replicas
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub d_num: u32,
    /// PD: TP per decode replica
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub d_tp: u32,
    /// NIXL backend of vLLM's NixlConnector
    #[arg(long, value_enum, default_value_t = NixlBackend::Ucx)]
    pub backend: NixlBackend,
    /// UCX_TLS for the engines [default: all with --backend ucx, as the seeds' launcher]
    #[arg(long, value_name = "TLS")]
    pub ucx_tls: Option<String>,
    /// Extra environment for the engines, KEY=VALUE (repeatable; later wins)
    #[arg(long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// vLLM max_model_len
    #[arg(long, default_value_t = 16000, value_name = "TOKENS")]
    pub max_model_len: u64,
    /// Ingress replicas (the seeds fix 16 so comparisons are fair)
    #[arg(long, default_value_t = 16, value_name = "N")]
    pub ingress_replicas: u32,
    /// Allow prefill TP above decode TP (the seeds' NixlConnector, vLLM 0.11, refuses it)
    #[arg(long)]
    pub allow_p_tp_above_d_tp: bool,
    /// The cluster's GPU nodes, ADDRESS=GPUS,... (Ray's node addresses)
    #[arg(long, value_name = "ADDR=GPUS,...")]
    pub nodes: String,
    /// HTTP port of the Serve proxy
    #[arg(long, default_value_t = 8000)]
    pub port: u16,
    /// Print the Serve config and exit (nothing starts)
    #[arg(long)]
    pub dry_run: bool,
    /// Also write serve-config.yaml and launch.json here
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
}

fn kv_heads(a: &LaunchArgs) -> Result<(Option<u32>, String), CliError> {
    let model = match &a.model_config {
        Some(p) => Some(Model::from_config_file(p).map_err(CliError::usage)?),
        None => Model::preset(&a.model).ok(),
    };
    Ok(match model {
        Some(m) => match m.attention {
            Attention::Gqa { kv_heads, .. } => (Some(kv_heads), format!("{} KV heads ({})", kv_heads, m.source)),
            Attention::Mla { .. } => (None, "MLA: one latent per token, any TP".into()),
        },
        None => {
            (None, "unknown KV heads: not a kvprobe preset and no --model-config; TP not checked against them".into())
        }
    })
}

/// Runs `kvprobe launch`.
pub fn run(a: LaunchArgs) -> Result<ExitCode, CliError> {
    let usage = |m: String| CliError::usage(anyhow!(m));
    if !a.dry_run {
        return Err(usage(
            "only --dry-run is implemented so far: it prints the Serve config for `serve run` / `serve deploy`".into(),
        ));
    }
    let nodes = launch::parse_nodes(&a.nodes).map_err(CliError::usage)?;
    let (heads, heads_note) = kv_heads(&a)?;
    let mut env = Vec::new();
    for item in &a.env {
        let (k, v) = item.split_once('=').ok_or_else(|| usage(format!("--env {item:?} is not KEY=VALUE")))?;
        if k.is_empty() {
            return Err(usage(format!("--env {item:?} has no name")));
        }
        env.push((k.to_string(), v.to_string()));
    }
    let served = a
        .served_model_name
        .clone()
        .unwrap_or_else(|| a.model.trim_end_matches('/').rsplit('/').next().unwrap_or(&a.model).to_string());
    let spec = LaunchSpec {
        mode: a.mode,
        model_id: served,
        model_source: a.model.clone(),
        kv_heads: heads,
        collocated: Engines { num: a.num_replicas, tp: a.tp },
        prefill: Engines { num: a.p_num, tp: a.p_tp },
        decode: Engines { num: a.d_num, tp: a.d_tp },
        backend: a.backend,
        ucx_tls: a.ucx_tls.clone(),
        env,
        max_model_len: a.max_model_len,
        ingress_replicas: a.ingress_replicas,
        allow_p_tp_above_d_tp: a.allow_p_tp_above_d_tp,
    };
    let placement = launch::place(&spec, &nodes).map_err(CliError::usage)?;
    let config = launch::serve_config(&spec, &placement, a.port);
    let yaml = format!(
        "# kvprobe launch --dry-run ({}): {}\n# model: {heads_note}\n{}",
        crate::version(),
        describe(&spec, &placement),
        launch::to_yaml(&config)
    );
    if let Some(dir) = &a.out {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create {}", dir.display()))
            .map_err(CliError::usage)?;
        let write = |name: &str, data: &[u8]| {
            crate::report::write_atomic(&dir.join(name), data)
                .with_context(|| format!("cannot write {}", dir.join(name).display()))
                .map_err(CliError::failed)
        };
        write("serve-config.yaml", yaml.as_bytes())?;
        let record = serde_json::json!({
            "schema": "kvprobe.launch/1",
            "kvprobe_version": crate::version(),
            "command_line": std::env::args().collect::<Vec<_>>(),
            "dry_run": true,
            "spec": spec,
            "nodes": nodes,
            "placement": placement,
            "serve_config": config,
        });
        write("launch.json", &serde_json::to_vec_pretty(&record).map_err(|e| CliError::failed(anyhow!(e)))?)?;
    }
    print!("{yaml}");
    Ok(ExitCode::SUCCESS)
}

fn describe(s: &LaunchSpec, p: &launch::Placement) -> String {
    let at = |n: &Option<String>| n.as_deref().map(|n| format!("on {n}")).unwrap_or_else(|| "placed by Ray".into());
    match s.mode {
        LaunchMode::Collocated => {
            format!("collocated {}xTP{} {}", s.collocated.num, s.collocated.tp, at(&p.collocated))
        }
        _ => format!(
            "{}P x TP{} {}, {}D x TP{} {}, NIXL {}",
            s.prefill.num,
            s.prefill.tp,
            at(&p.prefill),
            s.decode.num,
            s.decode.tp,
            at(&p.decode),
            s.backend.vllm_name()
        ),
    }
}
