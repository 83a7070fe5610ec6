//! `kvprobe launch`: a Ray Serve LLM deployment (collocated, PD packed on
//! one node, PD spread over two) checked against the cluster and the model
//! and written as a Serve config (`--engine ray`; so far `--dry-run` only,
//! issue 8 is open), or the same layout started as `kvprobe emulate`
//! (`--engine emulate`), optionally inside an emulated host (`--netns`), so
//! the pipeline runs without GPUs.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, anyhow};

use super::CliError;
use crate::kv::{Attention, Model};
use crate::pipeline::launch::{self, Engines, LaunchMode, LaunchSpec, NixlBackend};

/// What serves the layout.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Engine {
    /// Ray Serve LLM with vLLM (writes the Serve config)
    Ray,
    /// kvprobe's emulator with the same layout (no GPU)
    Emulate,
}

/// Replicas and TP of a layout, shared by `launch` and `emulate` (for the
/// emulator TP changes the GPU count it reports, and its timing only with
/// `emulate --tp-alpha`).
#[derive(Debug, Clone, clap::Args)]
pub struct LayoutArgs {
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
}

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
    /// Replicas and TP of the engines
    #[command(flatten)]
    pub layout: LayoutArgs,
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
    /// The cluster's GPU nodes, ADDRESS=GPUS,... (Ray's node addresses) [emulate default: two emulated nodes of 8 GPUs]
    #[arg(long, value_name = "ADDR=GPUS,...")]
    pub nodes: Option<String>,
    /// What serves the layout
    #[arg(long, value_enum, default_value_t = Engine::Ray)]
    pub engine: Engine,
    /// emulate, PD: the KV path's GB/s-vs-size from this `kvprobe sweep` results.json (measure the placement first)
    #[arg(long, value_name = "RESULTS_JSON")]
    pub kv_from: Option<PathBuf>,
    /// emulate, PD: a fixed KV rate instead, GB/s
    #[arg(long, value_name = "GBPS", conflicts_with = "kv_from")]
    pub kv_gbps: Option<f64>,
    /// emulate: run the emulator inside this network namespace (an emulated host, debug/hosts.sh)
    #[arg(long, value_name = "NS")]
    pub netns: Option<String>,
    /// emulate: address the emulator listens on
    #[arg(long, default_value = "127.0.0.1", value_name = "ADDR")]
    pub listen: String,
    /// emulate: more `kvprobe emulate` flags (timings), after `--`
    #[arg(last = true, value_name = "EMULATE_ARGS")]
    pub emulate_args: Vec<String>,
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
    if !a.dry_run && a.engine == Engine::Ray {
        return Err(usage(
            "--engine ray: only --dry-run is implemented so far (it prints the Serve config for `serve run` / `serve deploy`); --engine emulate starts the emulator".into(),
        ));
    }
    let nodes = match (&a.nodes, a.engine) {
        (Some(n), _) => launch::parse_nodes(n).map_err(CliError::usage)?,
        (None, Engine::Emulate) => launch::parse_nodes("emulated-a=8,emulated-b=8").map_err(CliError::usage)?,
        (None, Engine::Ray) => return Err(usage("--nodes ADDR=GPUS,... is required with --engine ray".into())),
    };
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
        collocated: Engines { num: a.layout.num_replicas, tp: a.layout.tp },
        prefill: Engines { num: a.layout.p_num, tp: a.layout.p_tp },
        decode: Engines { num: a.layout.d_num, tp: a.layout.d_tp },
        backend: a.backend,
        ucx_tls: a.ucx_tls.clone(),
        env,
        max_model_len: a.max_model_len,
        ingress_replicas: a.ingress_replicas,
        allow_p_tp_above_d_tp: a.allow_p_tp_above_d_tp,
    };
    let placement = launch::place(&spec, &nodes).map_err(CliError::usage)?;
    if a.engine == Engine::Emulate {
        return run_emulator(&a, &spec, &placement);
    }
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

/// The `kvprobe emulate` arguments that stand for a layout.
fn emulate_args(a: &LaunchArgs, s: &LaunchSpec) -> Result<Vec<String>, CliError> {
    let mut v: Vec<String> = vec![
        "emulate".into(),
        "--host".into(),
        a.listen.clone(),
        "--port".into(),
        a.port.to_string(),
        "--model".into(),
        s.model_id.clone(),
        "--max-model-len".into(),
        s.max_model_len.to_string(),
    ];
    match (&a.model_config, Model::preset(&a.model)) {
        (Some(p), _) => v.extend(["--model-config".into(), p.display().to_string()]),
        (None, Ok(_)) => v.extend(["--kv-model".into(), a.model.clone()]),
        (None, Err(_)) => {}
    }
    match s.mode {
        LaunchMode::Collocated => v.extend([
            "--mode".into(),
            "collocated".into(),
            "--num-replicas".into(),
            s.collocated.num.to_string(),
            "--tp".into(),
            s.collocated.tp.to_string(),
        ]),
        LaunchMode::PdPack | LaunchMode::PdSpread => {
            v.extend(["--mode".into(), "pd".into()]);
            for (k, e) in [("p", s.prefill), ("d", s.decode)] {
                v.extend([format!("--{k}-num"), e.num.to_string(), format!("--{k}-tp"), e.tp.to_string()]);
            }
            match (&a.kv_from, a.kv_gbps) {
                (Some(p), _) => v.extend(["--kv-bandwidth-from".into(), p.display().to_string()]),
                (None, Some(g)) => v.extend(["--kv-gbps".into(), g.to_string()]),
                (None, None) => {
                    return Err(CliError::usage(anyhow!(
                        "--engine emulate with a PD mode needs the KV path's rate: --kv-from results.json (a `kvprobe sweep` of this placement) or --kv-gbps N"
                    )));
                }
            }
        }
    }
    v.extend(a.emulate_args.iter().cloned());
    Ok(v)
}

/// Starts the emulator for the layout (in `--netns` when given), waits until
/// it answers, records it, and stays in the foreground until SIGINT/SIGTERM,
/// then ends it (by PID) and exits.
fn run_emulator(a: &LaunchArgs, s: &LaunchSpec, p: &launch::Placement) -> Result<ExitCode, CliError> {
    let exe = std::env::current_exe().context("cannot find the kvprobe binary").map_err(CliError::failed)?;
    let mut argv: Vec<String> = Vec::new();
    if let Some(ns) = &a.netns {
        argv.extend(["ip".into(), "netns".into(), "exec".into(), ns.clone()]);
    }
    argv.push(exe.display().to_string());
    argv.extend(emulate_args(a, s)?);
    if a.dry_run {
        println!("{}", argv.iter().map(|x| shell_word(x)).collect::<Vec<_>>().join(" "));
        return Ok(ExitCode::SUCCESS);
    }
    crate::child::install_interrupt_handler();
    // spawn_exe: its own process group (a terminal's Ctrl-C reaches only this
    // process, which then stops the emulator) and a parent-death signal (a
    // SIGKILLed launch takes the emulator along; `ip netns exec` execs in place)
    let (exe0, rest) = argv.split_first().ok_or_else(|| CliError::failed(anyhow!("empty command")))?;
    let mut child = crate::child::spawn_exe(std::path::Path::new(exe0), "emulator", rest, &[], false, None, None)
        .with_context(|| format!("cannot start {exe0}"))
        .map_err(CliError::failed)?;
    let lines = child.stdout_lines().ok_or_else(|| CliError::failed(anyhow!("no stdout from the emulator")))?;
    let started = std::time::Instant::now();
    let url = loop {
        if crate::child::interrupted() {
            child.kill();
            return Ok(ExitCode::from(130));
        }
        match lines.recv_timeout(std::time::Duration::from_millis(100)) {
            Ok(l) => match l.trim().strip_prefix("listening on ") {
                Some(u) => break u.to_string(),
                None => continue,
            },
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) if started.elapsed().as_secs() < 60 => {}
            Err(_) => {
                let status = child.kill().map(crate::child::describe).unwrap_or_default();
                return Err(CliError::failed(anyhow!(
                    "the emulator did not start listening ({status}); its messages are above"
                )));
            }
        }
    };
    // keep draining its stdout, so a later line never meets a closed pipe
    std::thread::spawn(move || while lines.recv().is_ok() {});
    if let Some(dir) = &a.out {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("cannot create {}", dir.display()))
            .map_err(CliError::usage)?;
        let record = serde_json::json!({
            "schema": "kvprobe.launch/1",
            "kvprobe_version": crate::version(),
            "command_line": std::env::args().collect::<Vec<_>>(),
            "engine": "emulate",
            "spec": s,
            "placement": p,
            "emulator": {"command": argv, "pid": child.pid(), "url": url, "netns": a.netns},
        });
        let data = serde_json::to_vec_pretty(&record).map_err(|e| CliError::failed(anyhow!(e)))?;
        crate::report::write_atomic(&dir.join("launch.json"), &data)
            .with_context(|| format!("cannot write {}", dir.join("launch.json").display()))
            .map_err(CliError::failed)?;
    }
    println!("ready: {url} (kvprobe emulate listening, pid {}; an emulator, no model runs)", child.pid());
    use std::io::Write;
    let _ = std::io::stdout().flush();
    loop {
        // the interrupt first: an emulator that ends because of it is a clean stop
        if crate::child::interrupted() {
            // SAFETY: kill has no memory-safety preconditions; the PID is our own child's.
            unsafe { libc::kill(child.pid() as i32, libc::SIGTERM) };
            if child.wait_timeout(std::time::Duration::from_secs(5)).is_none() {
                child.kill();
            }
            return Ok(ExitCode::SUCCESS);
        }
        if let Some(status) = child.try_status() {
            return Err(CliError::failed(anyhow!("the emulator stopped: {}", crate::child::describe(status))));
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

fn shell_word(s: &str) -> String {
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "-_./=:,@".contains(c)) {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', "'\\''"))
    }
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
