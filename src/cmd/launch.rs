//! `kvprobe launch`: a Ray Serve LLM deployment (collocated, PD packed on
//! one node, PD spread over two) checked against the cluster and the model,
//! written as a Serve config and deployed with Ray's CLI (`--engine ray`:
//! inventory, `serve deploy`, wait for `/v1/models`, manifest; `--dry-run`
//! prints the config only), or the same layout started as `kvprobe emulate`
//! (`--engine emulate`), optionally inside an emulated host (`--netns`), so
//! the pipeline runs without GPUs.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, anyhow};

use super::CliError;
use crate::kv::{Attention, Model};
use crate::pipeline::http::BaseUrl;
use crate::pipeline::launch::{self, Engines, LaunchMode, LaunchSpec, NixlBackend};
use crate::pipeline::ray::{self, AppPhase, Inventory, LaunchRecord, RayPython};

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
    /// The cluster's GPU nodes, ADDRESS=GPUS,... (Ray's node addresses) [ray: taken from the cluster and checked against it; emulate: two emulated nodes of 8 GPUs]
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
    /// Print the Serve config and exit (nothing starts; the cluster is asked for its nodes only when --nodes is not given)
    #[arg(long)]
    pub dry_run: bool,
    /// Write serve-config.yaml and launch.json here [ray default: launch_results/<app>-<UTC time>]
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// ray: the cluster's GCS address, HOST:PORT [default: $RAY_ADDRESS, else auto (a cluster started on this machine)]
    #[arg(long, value_name = "ADDR")]
    pub ray_address: Option<String>,
    /// ray: the Ray dashboard `serve` talks to [default: the one the cluster reports]
    #[arg(long, value_name = "URL")]
    pub dashboard: Option<String>,
    /// ray: the Python with Ray [default: $KVPROBE_PYTHON, $VIRTUAL_ENV, the project's .venv, python3]
    #[arg(long, value_name = "PATH")]
    pub python: Option<PathBuf>,
    /// ray: the OpenAI endpoint to wait for [default: http://<head node>:<--port>]
    #[arg(long, value_name = "URL")]
    pub url: Option<String>,
    /// ray: wait this long for /v1/models after `serve deploy`, seconds (loading a large model takes minutes)
    #[arg(long, default_value_t = 1800.0, value_name = "S")]
    pub ready_timeout: f64,
    /// ray: exit once ready and leave the application running (default: stay until SIGINT/SIGTERM, then shut it down)
    #[arg(long)]
    pub detach: bool,
    /// ray: leave a failed or timed-out application deployed for inspection (default: shut it down)
    #[arg(long)]
    pub keep_on_failure: bool,
    /// ray: deploy even though Serve runs other applications (`serve deploy` replaces every one of them)
    #[arg(long)]
    pub replace_apps: bool,
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
    if !(a.ready_timeout > 0.0 && a.ready_timeout <= 7.0 * 86_400.0) {
        return Err(usage(format!("--ready-timeout must be between 0 and 7 days of seconds, got {}", a.ready_timeout)));
    }
    // --engine ray asks the cluster (its nodes and versions) unless this is
    // a dry run with the nodes given
    let mut ray_side: Option<(RayPython, Inventory, ray::CommandRecord)> = None;
    if a.engine == Engine::Ray && (!a.dry_run || a.nodes.is_none()) {
        crate::child::install_interrupt_handler();
        let py = ray::find_python(a.python.as_deref()).map_err(CliError::failed)?;
        let address = ray_address(&a);
        eprintln!(
            "launch: taking the inventory of the Ray cluster at {address} (Ray {}, {})",
            py.ray_version,
            py.python.display()
        );
        let (inv, rec) = ray::inventory(&py, &address, Duration::from_secs(120)).map_err(CliError::failed)?;
        eprint!("{}", inv.describe());
        ray_side = Some((py, inv, rec));
    }
    let nodes = match (&a.nodes, a.engine, &ray_side) {
        (Some(n), _, _) => {
            let n = launch::parse_nodes(n).map_err(CliError::usage)?;
            if let Some((_, inv, _)) = &ray_side {
                inv.check(&n).map_err(CliError::usage)?;
            }
            n
        }
        (None, Engine::Emulate, _) => launch::parse_nodes("emulated-a=8,emulated-b=8").map_err(CliError::usage)?,
        (None, Engine::Ray, Some((_, inv, _))) => {
            let n = inv.gpu_nodes();
            if n.is_empty() {
                return Err(usage(format!(
                    "the Ray cluster at {} has no alive node with a GPU resource: start its nodes with GPUs (`ray start --num-gpus N` if Ray does not detect them)",
                    inv.address
                )));
            }
            n
        }
        (None, Engine::Ray, None) => return Err(usage("internal: no cluster inventory".into())),
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
    if served.trim().is_empty() {
        return Err(usage(
            "the served model name is empty: give --served-model-name NAME (or a --model without a trailing slash)"
                .into(),
        ));
    }
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
        "# kvprobe launch ({}): {}\n# model: {heads_note}\n{}",
        crate::version(),
        describe(&spec, &placement),
        launch::to_yaml(&config)
    );
    if !a.dry_run {
        let Some((py, inv, inv_rec)) = ray_side else {
            return Err(usage("internal: no cluster inventory".into()));
        };
        return run_ray(
            &a,
            RayRun { spec: &spec, placement: &placement, config: &config, yaml: &yaml, nodes_given: a.nodes.is_some() },
            py,
            inv,
            inv_rec,
        );
    }
    if let Some(dir) = &a.out {
        make_dir(dir)?;
        write_file(&dir.join("serve-config.yaml"), yaml.as_bytes())?;
        let record = serde_json::json!({
            "schema": "kvprobe.launch/1",
            "kvprobe_version": crate::version(),
            "command_line": std::env::args().collect::<Vec<_>>(),
            "engine": "ray",
            "dry_run": true,
            "spec": spec,
            "nodes": nodes,
            "cluster": ray_side.as_ref().map(|(_, inv, _)| inv),
            "placement": placement,
            "serve_config": config,
        });
        write_file(
            &dir.join("launch.json"),
            &serde_json::to_vec_pretty(&record).map_err(|e| CliError::failed(anyhow!(e)))?,
        )?;
    }
    print!("{yaml}");
    Ok(ExitCode::SUCCESS)
}

fn ray_address(a: &LaunchArgs) -> String {
    a.ray_address
        .clone()
        .or_else(|| std::env::var("RAY_ADDRESS").ok().filter(|s| !s.is_empty()))
        .unwrap_or_else(|| "auto".into())
}

fn make_dir(dir: &Path) -> Result<(), CliError> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display())).map_err(CliError::usage)
}

fn write_file(path: &Path, data: &[u8]) -> Result<(), CliError> {
    crate::report::write_atomic(path, data)
        .with_context(|| format!("cannot write {}", path.display()))
        .map_err(CliError::failed)
}

/// The layout a Ray launch deploys.
struct RayRun<'a> {
    spec: &'a LaunchSpec,
    placement: &'a launch::Placement,
    config: &'a serde_json::Value,
    yaml: &'a str,
    nodes_given: bool,
}

/// The state of one Ray launch: its record, saved at every change.
struct RayLaunch {
    record: LaunchRecord,
    path: PathBuf,
    serve: PathBuf,
    python: PathBuf,
    gcs: String,
    dashboard: String,
    t0: Instant,
}

impl RayLaunch {
    fn save(&mut self) {
        self.record.updated_at = crate::hostinfo::rfc3339_utc(SystemTime::now());
        match serde_json::to_vec_pretty(&self.record) {
            Ok(data) => {
                if let Err(e) = crate::report::write_atomic(&self.path, &data) {
                    eprintln!("launch: cannot write {}: {e}", self.path.display());
                }
            }
            Err(e) => eprintln!("launch: cannot encode launch.json: {e}"),
        }
    }

    fn status(&mut self, s: &str) {
        self.record.status = s.into();
        self.save();
    }

    /// Runs a `serve` subcommand against the dashboard, recorded.
    fn serve(&mut self, args: &[&str], limit: Duration, stoppable: bool) -> ray::CommandRecord {
        let mut argv = vec![self.serve.display().to_string()];
        argv.extend(args.iter().map(|s| s.to_string()));
        argv.extend(["--address".into(), self.dashboard.clone()]);
        let rec = ray::run_captured(&argv, &argv, limit, stoppable)
            .unwrap_or_else(|e| ray::CommandRecord::not_started(argv.clone(), e.to_string()));
        self.record.commands.push(rec.clone());
        self.save();
        rec
    }

    fn note(&mut self, line: String) {
        let t = self.t0.elapsed().as_secs_f64();
        eprintln!("launch: [{t:6.1} s] {line}");
        self.record.timeline.push(((t * 10.0).round() / 10.0, line));
    }

    /// `serve status` into serve-status.txt, for the failure report.
    fn capture_status(&mut self, dir: &Path) {
        let r = self.serve(&["status"], Duration::from_secs(60), false);
        let _ = crate::report::write_atomic(&dir.join("serve-status.txt"), r.stdout.as_bytes());
    }

    /// Removes what this launch deployed, and only that: `serve.delete(app)`
    /// through the cluster's Python (Serve's CLI can only shut everything
    /// down), which returns once the application is gone. True when it is.
    fn teardown(&mut self, app: &str) -> bool {
        eprintln!("launch: deleting {app} (serve.delete; other applications are left alone)");
        let code = "import sys, ray\nfrom ray import serve\nray.init(address=sys.argv[1], logging_level='ERROR', log_to_driver=False)\nserve.delete(sys.argv[2])\nprint('deleted', sys.argv[2])";
        let argv = vec![
            self.python.display().to_string(),
            "-c".to_string(),
            code.to_string(),
            self.gcs.clone(),
            app.to_string(),
        ];
        let rec = ray::run_captured(&argv, &argv, Duration::from_secs(300), false)
            .unwrap_or_else(|e| ray::CommandRecord::not_started(argv.clone(), e.to_string()));
        let ok = rec.ok();
        if !ok {
            eprintln!("launch: could not delete {app}: {}", rec.failure());
        }
        self.record.commands.push(rec);
        self.save();
        ok
    }

    /// Whether Serve has `app` now (None: its state cannot be read).
    fn exists(&self, app: &str) -> Option<bool> {
        let d = BaseUrl::parse(&self.dashboard).ok()?;
        ray::serve_details(&d).ok().map(|d| ray::phase(&d, app) != AppPhase::Missing)
    }

    /// The end of a launch: delete the application unless `keep`, and record
    /// `status` when it is gone, `left-running` otherwise.
    fn finish(&mut self, app: &str, keep: bool, status: &str) {
        let gone = if keep { false } else { self.teardown(app) };
        if gone || self.exists(app) == Some(false) {
            self.status(status);
        } else {
            eprintln!(
                "launch: {app} may still be deployed; remove it with serve.delete(\"{app}\") or `serve shutdown`"
            );
            self.record.failure.get_or_insert_with(|| format!("{app} was left running"));
            self.status(if status == "stopped" { "left-running" } else { status });
        }
    }
}

/// Deploys on the Ray cluster: `serve deploy`, then waits for `/v1/models`
/// (Serve's state read every 2 s from the dashboard: a failed deployment
/// ends the wait at once with Serve's own messages), writes launch.json, and
/// stays until SIGINT/SIGTERM (or exits at once with `--detach`).
fn run_ray(
    a: &LaunchArgs,
    r: RayRun,
    py: RayPython,
    inv: Inventory,
    inv_rec: ray::CommandRecord,
) -> Result<ExitCode, CliError> {
    let app = r.config["applications"][0]["name"].as_str().unwrap_or("kvprobe").to_string();
    let out = a.out.clone().unwrap_or_else(|| {
        PathBuf::from("launch_results").join(format!("{app}-{}", crate::hostinfo::stamp_utc(SystemTime::now())))
    });
    make_dir(&out)?;
    let config_path = out.join("serve-config.yaml");
    write_file(&config_path, r.yaml.as_bytes())?;
    let dashboard = match (&a.dashboard, &inv.dashboard_url) {
        (Some(d), _) => d.clone(),
        (None, Some(d)) if d.starts_with("http") => d.clone(),
        (None, Some(d)) => format!("http://{d}"),
        (None, None) => {
            return Err(CliError::usage(anyhow!(
                "the cluster reports no dashboard (was it started with --include-dashboard false?): `serve deploy` needs one; pass --dashboard URL"
            )));
        }
    };
    let dash = BaseUrl::parse(&dashboard).map_err(|e| CliError::usage(anyhow!("--dashboard {dashboard:?}: {e}")))?;
    let head = inv.head().map(|n| n.address.clone());
    let now = crate::hostinfo::rfc3339_utc(SystemTime::now());
    let mut l = RayLaunch {
        record: LaunchRecord {
            schema: "kvprobe.launch/1",
            kvprobe_version: crate::version().to_string(),
            engine: "ray",
            command_line: crate::hostinfo::redacted_args(),
            status: "inventory".into(),
            failure: None,
            started_at: now.clone(),
            updated_at: now,
            python: py.clone(),
            ray_address: ray_address(a),
            dashboard: Some(dashboard.clone()),
            nodes_from: if r.nodes_given { "--nodes" } else { "cluster" },
            cluster: inv,
            spec: serde_json::to_value(r.spec).unwrap_or_default(),
            placement: serde_json::to_value(r.placement).unwrap_or_default(),
            app_name: app.clone(),
            serve_config_path: config_path.display().to_string(),
            commands: vec![inv_rec],
            timeline: vec![],
            url: None,
            ready_seconds: None,
            models: None,
            serve_app: None,
        },
        path: out.join("launch.json"),
        serve: py.serve_cli().map_err(CliError::failed)?.to_path_buf(),
        python: py.python.clone(),
        gcs: String::new(),
        dashboard: dashboard.clone(),
        t0: Instant::now(),
    };
    l.gcs = l.record.cluster.gcs_address.clone().unwrap_or_else(|| ray_address(a));
    l.save();
    let fail = |l: &mut RayLaunch, status: &str, why: String| -> Result<ExitCode, CliError> {
        l.record.failure = Some(why.clone());
        l.status(status);
        Err(CliError::failed(anyhow!("{why}\n  everything kvprobe saw is in {}", l.path.display())))
    };

    // `serve deploy` replaces every application: never someone else's unasked
    let details = match ray::serve_details(&dash) {
        Ok(d) => d,
        Err(e) => return fail(&mut l, "failed", format!("before deploying: {e}")),
    };
    let others: Vec<String> = ray::app_names(&details);
    if !others.is_empty() && !a.replace_apps {
        l.record.failure = Some(format!("Serve runs other applications: {}", others.join(", ")));
        l.status("refused");
        return Err(CliError::usage(anyhow!(
            "Serve on this cluster already runs {}: `serve deploy` would replace them with this config; pass --replace-apps to do that, or remove them first (`serve shutdown`)",
            others.join(", ")
        )));
    }
    if crate::child::interrupted() {
        l.status("interrupted");
        return Ok(ExitCode::from(130));
    }
    // the engines import vLLM and NIXL where they are placed: say so before
    // a deploy that cannot start (a runtime_env could still install them)
    let mut hints = Vec::new();
    for (dist, what) in [("vllm", "vLLM"), ("nixl", "NIXL")] {
        let missing = l.record.cluster.missing(dist);
        if !missing.is_empty() {
            hints.push(format!(
                "{what} is not installed on {} (the inventory's probe found no `{dist}` distribution)",
                missing.join(", ")
            ));
        }
    }
    for h in &hints {
        eprintln!("launch: warning: {h}");
    }
    let hint = if hints.is_empty() { String::new() } else { format!("\n  hint: {}", hints.join("; ")) };
    l.status("deploying");
    l.t0 = Instant::now();
    let path = config_path.display().to_string();
    let dep = l.serve(&["deploy", &path], Duration::from_secs(180), true);
    if dep.interrupted || !dep.ok() {
        // the dashboard may have taken the request before the CLI ended: never leave it behind
        if l.exists(&app) != Some(false) {
            l.finish(&app, false, if dep.interrupted { "interrupted" } else { "failed" });
        }
        if dep.interrupted {
            l.status("interrupted");
            return Ok(ExitCode::from(130));
        }
        return fail(&mut l, "failed", format!("serve deploy failed: {}", dep.failure()));
    }
    let url = a.url.clone().unwrap_or_else(|| format!("http://{}:{}", head.as_deref().unwrap_or("127.0.0.1"), a.port));
    let base = BaseUrl::parse(&url).map_err(|e| CliError::usage(anyhow!("--url {url:?}: {e}")))?;
    l.record.url = Some(url.clone());
    l.note(format!("deployed {app} from {path}; waiting up to {:.0} s for {url}/v1/models", a.ready_timeout));
    let deadline = Instant::now() + Duration::from_secs_f64(a.ready_timeout);
    let rt = crate::pipeline::runtime().context("cannot start the I/O runtime").map_err(CliError::failed)?;
    let mut last = String::new();
    let mut last_err = String::new();
    loop {
        if crate::child::interrupted() {
            l.note("interrupted while waiting: deleting what was deployed".into());
            l.finish(&app, false, "interrupted");
            return Ok(ExitCode::from(130));
        }
        match ray::serve_details(&dash) {
            Ok(d) => {
                let line = ray::progress(&d, &app);
                if line != last {
                    l.note(line.clone());
                    last = line;
                }
                l.record.serve_app = Some(d["applications"][&app].clone());
                match ray::phase(&d, &app) {
                    AppPhase::Failed => {
                        let report = ray::failure_report(&d, &app);
                        l.capture_status(&out);
                        l.finish(&app, a.keep_on_failure, "failed");
                        return fail(&mut l, "failed", format!("the deployment failed:\n{report}{hint}"));
                    }
                    AppPhase::Running => {
                        let got = rt.block_on(crate::pipeline::http::get(&base, "/v1/models", Duration::from_secs(10)));
                        match got {
                            Ok((200, _, body)) => {
                                let models: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                                if ray::lists_model(&models, &r.spec.model_id) {
                                    l.record.models = Some(models);
                                    break;
                                }
                                last_err = format!("/v1/models does not list {} yet", r.spec.model_id);
                            }
                            Ok((code, _, _)) => last_err = format!("/v1/models answered HTTP {code}"),
                            Err(e) => last_err = format!("{url}/v1/models: {e}"),
                        }
                    }
                    _ => {}
                }
            }
            Err(e) => last_err = e.to_string(),
        }
        if Instant::now() > deadline {
            let report = match ray::serve_details(&dash) {
                Ok(d) => ray::failure_report(&d, &app),
                Err(e) => e.to_string(),
            };
            l.capture_status(&out);
            l.finish(&app, a.keep_on_failure, "timeout");
            let why = format!(
                "not ready within {:.0} s (--ready-timeout); last: {last}{}\n{report}{hint}",
                a.ready_timeout,
                if last_err.is_empty() { String::new() } else { format!("; {last_err}") }
            );
            return fail(&mut l, "timeout", why);
        }
        std::thread::sleep(Duration::from_secs(2));
    }
    let secs = l.t0.elapsed().as_secs_f64();
    l.record.ready_seconds = Some((secs * 10.0).round() / 10.0);
    l.note(format!("ready: {url} lists {}", r.spec.model_id));
    l.status("ready");
    println!(
        "ready: {url} (Ray Serve application {app}, {secs:.0} s after serve deploy; record in {})",
        l.path.display()
    );
    use std::io::Write;
    let _ = std::io::stdout().flush();
    if a.detach {
        eprintln!(
            "launch: left running; remove it with serve.delete(\"{app}\") (Python, ray.init(address=...)) or `{} shutdown --yes --address {dashboard}` (removes every application)",
            l.serve.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    // stay: a stop signal shuts it down; an application that goes away or fails ends the launch
    let mut next_check = Instant::now() + Duration::from_secs(5);
    // one UNHEALTHY reading can be a replica restarting: three in a row (15 s) end the launch
    let mut failed_reads = 0;
    loop {
        if crate::child::interrupted() {
            l.finish(&app, false, "stopped");
            return Ok(ExitCode::SUCCESS);
        }
        if Instant::now() >= next_check {
            next_check = Instant::now() + Duration::from_secs(5);
            if let Ok(d) = ray::serve_details(&dash) {
                let ph = ray::phase(&d, &app);
                failed_reads = if ph == AppPhase::Failed { failed_reads + 1 } else { 0 };
                match ph {
                    AppPhase::Running | AppPhase::Deploying => {}
                    AppPhase::Failed if failed_reads < 3 => {}
                    AppPhase::Failed => {
                        let report = ray::failure_report(&d, &app);
                        l.record.serve_app = Some(d["applications"][&app].clone());
                        l.capture_status(&out);
                        l.finish(&app, a.keep_on_failure, "failed");
                        return fail(&mut l, "failed", format!("the application failed after it was ready:\n{report}"));
                    }
                    other => {
                        return fail(
                            &mut l,
                            "failed",
                            format!("the application is {other:?} now (removed by someone else?)"),
                        );
                    }
                }
            }
        }
        std::thread::sleep(Duration::from_millis(200));
    }
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
