//! The Ray side of `kvprobe launch --engine ray`: finding a Python with Ray,
//! the cluster's inventory (nodes, GPUs and the versions of Ray, vLLM, NIXL
//! and UCX on each node, from a probe task pinned to it), running Ray's CLI
//! with a time limit, and reading Serve's state from the dashboard's REST
//! API (`/api/serve/applications/`) to tell ready from failed.
//!
//! Ray itself is Python; kvprobe drives it through its CLI (`serve deploy`,
//! `serve status`, `serve shutdown`, the commands a user would type and can
//! re-run from the manifest) and one embedded script, `ray_inventory.py`.

use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::http::{self, BaseUrl};
use super::launch::Node;

/// The inventory script run with the cluster's Python.
const INVENTORY_PY: &str = include_str!("ray_inventory.py");

/// What went wrong on the Ray side.
#[derive(Debug, thiserror::Error)]
pub enum RayError {
    /// No Python that can `import ray`.
    #[error(
        "no Python with Ray found (tried: {tried}); run debug/setup.sh (it installs ray[serve] into the project's .venv), or pass --python PATH / set KVPROBE_PYTHON to a Python whose `import ray` works"
    )]
    NoPython {
        /// Every candidate and why it failed.
        tried: String,
    },
    /// No `serve` CLI next to that Python or on PATH.
    #[error("Ray's `serve` CLI was not found next to {python} or on PATH; install ray[serve] in that environment")]
    NoServeCli {
        /// The Python used.
        python: String,
    },
    /// A command failed or timed out.
    #[error("{0}")]
    Command(String),
    /// The cluster answered something kvprobe cannot read.
    #[error("{0}")]
    Protocol(String),
}

/// A Python with Ray, and the `serve` CLI beside it when there is one.
#[derive(Debug, Clone, Serialize)]
pub struct RayPython {
    /// The interpreter.
    pub python: PathBuf,
    /// The `serve` CLI (launch needs it; the matrix does not).
    pub serve: Option<PathBuf>,
    /// `ray.__version__` there.
    pub ray_version: String,
}

/// One command kvprobe ran, as the manifest records it.
#[derive(Debug, Clone, Serialize)]
pub struct CommandRecord {
    /// The command line (the inventory script is shown by name).
    pub argv: Vec<String>,
    /// Exit code (None: killed, timed out or interrupted).
    pub exit_code: Option<i32>,
    /// Wall time, seconds.
    pub seconds: f64,
    /// It ran past its time limit and was ended.
    pub timed_out: bool,
    /// An interrupt (SIGINT/SIGTERM) ended it.
    pub interrupted: bool,
    /// The last 4 KiB of its stdout.
    pub stdout_tail: String,
    /// The last 4 KiB of its stderr.
    pub stderr_tail: String,
    /// Its whole stdout (not recorded; parsed by the caller).
    #[serde(skip)]
    pub stdout: String,
}

impl CommandRecord {
    /// The record of a command that could not be started at all.
    pub fn not_started(argv: Vec<String>, why: String) -> CommandRecord {
        CommandRecord {
            argv,
            exit_code: None,
            seconds: 0.0,
            timed_out: false,
            interrupted: false,
            stdout_tail: String::new(),
            stderr_tail: why,
            stdout: String::new(),
        }
    }

    /// Did it exit 0?
    pub fn ok(&self) -> bool {
        self.exit_code == Some(0)
    }

    /// One line for an error message: what ran, how it ended, its last words.
    pub fn failure(&self) -> String {
        let how = if self.interrupted {
            "interrupted".to_string()
        } else if self.timed_out {
            format!("no result within {:.0} s", self.seconds)
        } else {
            match self.exit_code {
                Some(c) => format!("exit {c}"),
                None => "killed by a signal".into(),
            }
        };
        let words = if self.stderr_tail.trim().is_empty() { &self.stdout_tail } else { &self.stderr_tail };
        let last: Vec<&str> = words.lines().filter(|l| !l.trim().is_empty()).collect();
        let last = last[last.len().saturating_sub(6)..].join("\n    ");
        format!("`{}`: {how}\n    {last}", self.argv.join(" "))
    }
}

fn head(s: &str, n: usize) -> &str {
    let mut i = n.min(s.len());
    while !s.is_char_boundary(i) {
        i -= 1;
    }
    &s[..i]
}

fn tail(s: &str, n: usize) -> String {
    if s.len() <= n {
        return s.to_string();
    }
    let mut i = s.len() - n;
    while !s.is_char_boundary(i) {
        i += 1;
    }
    s[i..].to_string()
}

/// Runs `argv` with a time limit, stdout and stderr captured; the limit, or
/// an interrupt (`child::interrupted`) when `stoppable`, ends it (SIGKILL to
/// its process group, which it leads: only what it started). Clean-up
/// commands run after an interrupt are not stoppable.
pub fn run_captured(
    argv: &[String],
    shown: &[String],
    limit: Duration,
    stoppable: bool,
) -> Result<CommandRecord, RayError> {
    let (exe, args) = argv.split_first().ok_or_else(|| RayError::Command("empty command".into()))?;
    let mut cmd = Command::new(exe);
    cmd.args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped()).process_group(0);
    let t0 = Instant::now();
    let mut child = cmd.spawn().map_err(|e| RayError::Command(format!("cannot start {exe}: {e}")))?;
    let reader = |mut r: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut v = Vec::new();
            let _ = r.read_to_end(&mut v);
            String::from_utf8_lossy(&v).into_owned()
        })
    };
    let out = child.stdout.take().map(|s| reader(Box::new(s)));
    let err = child.stderr.take().map(|s| reader(Box::new(s)));
    let (mut timed_out, mut interrupted) = (false, false);
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break Some(s),
            Ok(None) => {}
            Err(_) => break None,
        }
        let stop = stoppable && crate::child::interrupted();
        if stop || t0.elapsed() > limit {
            interrupted = stop;
            timed_out = !interrupted;
            crate::child::signal_group(&child, libc::SIGKILL);
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let stdout = out.and_then(|h| h.join().ok()).unwrap_or_default();
    let stderr = err.and_then(|h| h.join().ok()).unwrap_or_default();
    Ok(CommandRecord {
        argv: shown.to_vec(),
        exit_code: if timed_out || interrupted { None } else { status.and_then(|s| s.code()) },
        seconds: t0.elapsed().as_secs_f64(),
        timed_out,
        interrupted,
        stdout_tail: tail(&stdout, 4096),
        stderr_tail: tail(&stderr, 4096),
        stdout,
    })
}

/// Finds a Python whose `import ray` works: `explicit`, then
/// `$KVPROBE_PYTHON`, `$VIRTUAL_ENV/bin/python`, the project's `.venv`
/// (beside `target/` of this binary, or in the working directory), then
/// `python3` on PATH; and the `serve` CLI beside it (or on PATH).
pub fn find_python(explicit: Option<&Path>) -> Result<RayPython, RayError> {
    let mut cands: Vec<PathBuf> = Vec::new();
    if let Some(p) = explicit {
        cands.push(p.to_path_buf());
    } else {
        if let Some(p) = std::env::var_os("KVPROBE_PYTHON") {
            cands.push(PathBuf::from(p));
        }
        if let Some(v) = std::env::var_os("VIRTUAL_ENV") {
            cands.push(PathBuf::from(v).join("bin/python"));
        }
        if let Ok(exe) = std::env::current_exe() {
            // target/release/kvprobe -> the checkout's .venv
            if let Some(root) = exe.parent().and_then(Path::parent).and_then(Path::parent) {
                cands.push(root.join(".venv/bin/python"));
            }
        }
        cands.push(PathBuf::from(".venv/bin/python"));
        cands.push(PathBuf::from("python3"));
    }
    let mut tried = Vec::new();
    for c in cands {
        let shown = c.display().to_string();
        if tried.iter().any(|t: &String| t.starts_with(&format!("{shown}:"))) {
            continue;
        }
        let argv = vec![shown.clone(), "-c".into(), "import ray; print(ray.__version__)".into()];
        match run_captured(&argv, &argv, Duration::from_secs(60), true) {
            Ok(r) if r.ok() => {
                let version = r.stdout.trim().to_string();
                let serve = serve_cli(&c);
                return Ok(RayPython { python: c, serve, ray_version: version });
            }
            Ok(r) => {
                let why = r.stderr_tail.lines().rfind(|l| !l.trim().is_empty()).unwrap_or("failed").trim().to_string();
                tried.push(format!("{shown}: {why}"));
            }
            Err(e) => tried.push(format!("{shown}: {e}")),
        }
    }
    Err(RayError::NoPython { tried: tried.join("; ") })
}

impl RayPython {
    /// The `serve` CLI, or why there is none.
    pub fn serve_cli(&self) -> Result<&Path, RayError> {
        self.serve.as_deref().ok_or_else(|| RayError::NoServeCli { python: self.python.display().to_string() })
    }
}

fn serve_cli(python: &Path) -> Option<PathBuf> {
    if python.components().count() > 1 {
        let beside = python.parent()?.join("serve");
        if beside.is_file() {
            return Some(beside);
        }
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join("serve")).find(|p| p.is_file())
}

/// GPUs nvidia-smi lists on a node.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GpuInfo {
    /// nvidia-smi's index.
    pub index: u32,
    /// Product name.
    pub name: String,
    /// Memory, MiB.
    pub memory_mib: u64,
    /// PCI bus id.
    pub pci_bus_id: String,
}

/// What nvidia-smi said on a node.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct GpuQuery {
    /// The GPUs.
    pub gpus: Vec<GpuInfo>,
    /// Why there are none, when that is so.
    pub error: Option<String>,
    /// Driver version.
    pub driver: Option<String>,
}

/// UCX as found on a node.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct UcxInfo {
    /// `ucp_get_version_string()`.
    pub version: Option<String>,
    /// The libucp loaded.
    pub library: Option<String>,
    /// Why none was found.
    pub error: Option<String>,
}

/// What the probe task found on its node.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Probe {
    /// The node's hostname.
    pub hostname: String,
    /// Python version there.
    pub python: String,
    /// Installed distributions of interest (ray, vllm, torch, nixl*, libucx*).
    pub dists: std::collections::BTreeMap<String, String>,
    /// UCX.
    pub ucx: UcxInfo,
    /// GPUs.
    pub gpu_query: GpuQuery,
}

/// One node of the Ray cluster.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RayNode {
    /// Ray's node id.
    pub node_id: String,
    /// Its address (`node:<address>` is its implicit resource).
    pub address: String,
    /// Hostname Ray reports.
    pub hostname: Option<String>,
    /// Alive in the GCS.
    pub alive: bool,
    /// The head node.
    pub is_head: bool,
    /// GPUs Ray schedules on it (its `GPU` resource).
    pub gpus: f64,
    /// CPUs Ray schedules on it.
    pub cpus: f64,
    /// Node labels.
    pub labels: std::collections::BTreeMap<String, String>,
    /// What the probe found there.
    pub probe: Option<Probe>,
    /// Why the probe found nothing.
    pub probe_error: Option<String>,
}

/// The cluster's inventory.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Inventory {
    /// The address kvprobe joined.
    pub address: String,
    /// The GCS address.
    pub gcs_address: Option<String>,
    /// The dashboard, `host:port` (Serve's REST API and `serve deploy` go there).
    pub dashboard_url: Option<String>,
    /// Versions where kvprobe runs (the driver).
    pub driver: std::collections::BTreeMap<String, String>,
    /// The nodes.
    pub nodes: Vec<RayNode>,
    /// Seconds the inventory took.
    pub seconds: f64,
}

impl Inventory {
    /// The alive nodes with GPUs, as `launch` places on them, by address.
    pub fn gpu_nodes(&self) -> Vec<Node> {
        let mut v: Vec<Node> = self
            .nodes
            .iter()
            .filter(|n| n.alive && n.gpus >= 1.0)
            .map(|n| Node { address: n.address.clone(), gpus: n.gpus.floor() as u32 })
            .collect();
        v.sort_by(|a, b| a.address.cmp(&b.address));
        v
    }

    /// The head node.
    pub fn head(&self) -> Option<&RayNode> {
        self.nodes.iter().find(|n| n.is_head && n.alive)
    }

    /// Checks `--nodes` against the cluster: every node must be alive there
    /// with at least the GPUs claimed.
    pub fn check(&self, given: &[Node]) -> Result<(), RayError> {
        let mut bad = Vec::new();
        for g in given {
            match self.nodes.iter().find(|n| n.address == g.address && n.alive) {
                None => bad.push(format!("{} is not an alive node of the cluster", g.address)),
                Some(n) if n.gpus < f64::from(g.gpus) => {
                    bad.push(format!("{} has {} GPUs in Ray, not {}", g.address, n.gpus, g.gpus))
                }
                Some(_) => {}
            }
        }
        if bad.is_empty() {
            return Ok(());
        }
        let have: Vec<String> =
            self.nodes.iter().filter(|n| n.alive).map(|n| format!("{}={}", n.address, n.gpus)).collect();
        Err(RayError::Protocol(format!(
            "--nodes does not match the cluster: {} (the cluster has {}; leave --nodes out to take them from it)",
            bad.join("; "),
            have.join(",")
        )))
    }

    /// Alive nodes whose probe found no distribution named `dist` (or
    /// `dist-*`, as `nixl-cu12`): vLLM or NIXL missing where engines go.
    pub fn missing(&self, dist: &str) -> Vec<String> {
        let mut v: Vec<String> = self
            .nodes
            .iter()
            .filter(|n| n.alive && n.gpus >= 1.0)
            .filter(|n| {
                n.probe
                    .as_ref()
                    .is_some_and(|p| !p.dists.keys().any(|d| d == dist || d.starts_with(&format!("{dist}-"))))
            })
            .map(|n| n.address.clone())
            .collect();
        v.sort();
        v
    }

    /// A line per node for the terminal.
    pub fn describe(&self) -> String {
        let mut s = String::new();
        for n in &self.nodes {
            let p = n.probe.as_ref();
            let ver = |k: &str| {
                p.and_then(|p| p.dists.iter().find(|(d, _)| d.as_str() == k || d.starts_with(&format!("{k}-"))))
                    .map(|(d, v)| format!("{d} {v}"))
            };
            let gpus = match p {
                Some(p) if !p.gpu_query.gpus.is_empty() => {
                    format!("{} x {}", p.gpu_query.gpus.len(), p.gpu_query.gpus[0].name)
                }
                Some(p) => p.gpu_query.error.clone().unwrap_or_default(),
                None => n.probe_error.clone().unwrap_or_default(),
            };
            let ucx = p.and_then(|p| p.ucx.version.clone()).map(|v| format!("UCX {v}"));
            let parts: Vec<String> =
                [ver("ray"), ver("vllm").or(Some("no vllm".into())), ver("nixl"), ucx].into_iter().flatten().collect();
            s.push_str(&format!(
                "  {}{} {} ({}): {} Ray GPUs [{gpus}]; {}\n",
                n.address,
                if n.is_head { " (head)" } else { "" },
                n.hostname.as_deref().unwrap_or("?"),
                if n.alive { "alive" } else { "dead" },
                n.gpus,
                parts.join(", ")
            ));
        }
        s
    }
}

/// Joins the cluster at `address` and takes its inventory (a probe task per
/// node, `limit` for all of them).
pub fn inventory(py: &RayPython, address: &str, limit: Duration) -> Result<(Inventory, CommandRecord), RayError> {
    reachable(address)?;
    let argv = vec![
        py.python.display().to_string(),
        "-c".into(),
        INVENTORY_PY.into(),
        address.into(),
        format!("{}", limit.as_secs_f64()),
    ];
    let shown = vec![
        py.python.display().to_string(),
        "-c".into(),
        "<kvprobe ray_inventory.py>".into(),
        address.into(),
        format!("{}", limit.as_secs_f64()),
    ];
    // joining the cluster and starting a worker per node take their own time
    let r = run_captured(&argv, &shown, limit + Duration::from_secs(90), true)?;
    if !r.ok() {
        return Err(RayError::Command(format!(
            "cannot take the inventory of the Ray cluster at {address:?}: {}\n  is a cluster running there (`ray start --head` on the head node; `ray status`)? pass its GCS address with --ray-address HOST:PORT or set RAY_ADDRESS",
            r.failure()
        )));
    }
    let line = r.stdout.lines().rfind(|l| l.trim_start().starts_with('{')).unwrap_or("");
    let inv: Inventory = serde_json::from_str(line).map_err(|e| {
        RayError::Protocol(format!("the inventory script printed something unreadable ({e}): {}", tail(&r.stdout, 300)))
    })?;
    Ok((inv, r))
}

/// A quick look before Ray's own client, which retries an address where
/// nothing listens for minutes: a `HOST:PORT` GCS address must accept a TCP
/// connection within 5 s. `auto` and `ray://` addresses are left to Ray.
pub fn reachable(address: &str) -> Result<(), RayError> {
    use std::net::ToSocketAddrs;
    if address == "auto" || address.contains("://") {
        return Ok(());
    }
    let addrs: Vec<std::net::SocketAddr> = match address.to_socket_addrs() {
        Ok(a) => a.collect(),
        Err(e) => {
            return Err(RayError::Command(format!(
                "--ray-address {address:?} is not HOST:PORT of a Ray head's GCS ({e}); example: 10.0.0.1:6379"
            )));
        }
    };
    let mut why = String::from("no address");
    for a in &addrs {
        match std::net::TcpStream::connect_timeout(a, Duration::from_secs(5)) {
            Ok(_) => return Ok(()),
            Err(e) => why = e.to_string(),
        }
    }
    Err(RayError::Command(format!(
        "nothing answers at {address} ({why}): is the Ray head's GCS there? (`ray start --head --port PORT` on the head node; `ray status` shows the address)"
    )))
}

/// Serve's state of the cluster (`GET /api/serve/applications/` on the dashboard).
pub fn serve_details(dashboard: &BaseUrl) -> Result<Value, RayError> {
    let rt = super::runtime().map_err(|e| RayError::Command(format!("cannot start the I/O runtime: {e}")))?;
    let (status, _, body) = rt
        .block_on(http::get(dashboard, "/api/serve/applications/", Duration::from_secs(20)))
        .map_err(|e| RayError::Command(format!("the Ray dashboard at {} did not answer: {e}", dashboard.url(""))))?;
    if status != 200 {
        return Err(RayError::Protocol(format!(
            "the Ray dashboard at {} answered HTTP {status} to /api/serve/applications/: {}",
            dashboard.url(""),
            tail(&String::from_utf8_lossy(&body), 300)
        )));
    }
    serde_json::from_slice(&body).map_err(|e| RayError::Protocol(format!("Serve's details are not JSON: {e}")))
}

/// Whether an OpenAI `/v1/models` answer lists `id` (ready to serve it).
pub fn lists_model(models: &Value, id: &str) -> bool {
    models["data"].as_array().is_some_and(|v| v.iter().any(|m| m["id"] == id))
}

/// The applications Serve runs, by name.
pub fn app_names(details: &Value) -> Vec<String> {
    details["applications"].as_object().map(|m| m.keys().cloned().collect()).unwrap_or_default()
}

/// Where an application stands.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AppPhase {
    /// Not there (yet).
    Missing,
    /// DEPLOYING or an update in progress.
    Deploying,
    /// RUNNING: every deployment healthy.
    Running,
    /// DEPLOY_FAILED or UNHEALTHY: it will not come up by waiting.
    Failed,
    /// DELETING or anything else.
    Other(String),
}

/// The phase of `app` in Serve's details.
pub fn phase(details: &Value, app: &str) -> AppPhase {
    match details["applications"][app]["status"].as_str() {
        None => AppPhase::Missing,
        Some("RUNNING") => AppPhase::Running,
        Some("DEPLOYING") | Some("NOT_STARTED") => AppPhase::Deploying,
        Some("DEPLOY_FAILED") | Some("UNHEALTHY") => AppPhase::Failed,
        Some(s) => AppPhase::Other(s.to_string()),
    }
}

/// One line of progress: the app's status and each deployment's, with
/// replica states counted.
pub fn progress(details: &Value, app: &str) -> String {
    let a = &details["applications"][app];
    let mut parts = Vec::new();
    if let Some(ds) = a["deployments"].as_object() {
        for (name, d) in ds {
            let mut states: std::collections::BTreeMap<String, usize> = Default::default();
            for r in d["replicas"].as_array().into_iter().flatten() {
                *states.entry(r["state"].as_str().unwrap_or("?").to_string()).or_default() += 1;
            }
            let states: Vec<String> = states.iter().map(|(s, n)| format!("{n} {s}")).collect();
            parts.push(format!(
                "{name} {}{}",
                d["status"].as_str().unwrap_or("?"),
                if states.is_empty() { String::new() } else { format!(" ({})", states.join(", ")) }
            ));
        }
    }
    format!(
        "{} {}{}",
        app,
        a["status"].as_str().unwrap_or("NOT_STARTED"),
        if parts.is_empty() { String::new() } else { format!(": {}", parts.join("; ")) }
    )
}

/// Why `app` is not running, from Serve's own messages: the application's
/// message (the end of a traceback, where the cause is) and every deployment
/// that is not healthy with its message.
pub fn failure_report(details: &Value, app: &str) -> String {
    let a = &details["applications"][app];
    let mut s = format!("application {app}: {}\n", a["status"].as_str().unwrap_or("not deployed"));
    let msg = a["message"].as_str().unwrap_or("").trim();
    if !msg.is_empty() {
        let lines: Vec<&str> = msg.lines().collect();
        let cut = lines.len().saturating_sub(12);
        if cut > 0 {
            s.push_str(&format!("  ... ({cut} lines of Serve's message above; all of it is in launch.json)\n"));
        }
        for l in &lines[cut..] {
            s.push_str(&format!("  {l}\n"));
        }
    }
    if let Some(ds) = a["deployments"].as_object() {
        for (name, d) in ds {
            let st = d["status"].as_str().unwrap_or("?");
            if st == "HEALTHY" {
                continue;
            }
            let m = d["message"].as_str().unwrap_or("").trim();
            let m = if m.len() > 600 { format!("{}...", head(m, 600)) } else { m.to_string() };
            s.push_str(&format!(
                "  deployment {name}: {st}{}\n",
                if m.is_empty() { String::new() } else { format!(": {m}") }
            ));
        }
    }
    s
}

/// `launch.json` for `--engine ray` (schema `kvprobe.launch/1`, engine
/// `ray`): rewritten at every change of `status`, so an interrupted or
/// failed launch leaves what it knew.
#[derive(Debug, Clone, Serialize)]
pub struct LaunchRecord {
    /// `kvprobe.launch/1`.
    pub schema: &'static str,
    /// kvprobe's version.
    pub kvprobe_version: String,
    /// `ray`.
    pub engine: &'static str,
    /// kvprobe's own command line.
    pub command_line: Vec<String>,
    /// `inventory`, `deploying`, `ready`, `stopped`, `failed`, `timeout`, `interrupted`.
    pub status: String,
    /// Why it failed (Serve's messages), when it did.
    pub failure: Option<String>,
    /// Started, UTC.
    pub started_at: String,
    /// Last written, UTC.
    pub updated_at: String,
    /// The Python and Ray kvprobe drove.
    pub python: RayPython,
    /// The GCS address given (`--ray-address`).
    pub ray_address: String,
    /// The dashboard `serve` talked to.
    pub dashboard: Option<String>,
    /// Where the nodes came from: `cluster` or `--nodes`.
    pub nodes_from: &'static str,
    /// The cluster as found (nodes, GPUs, versions per node).
    pub cluster: Inventory,
    /// The layout asked for.
    pub spec: Value,
    /// Where it was placed.
    pub placement: Value,
    /// The Serve application's name.
    pub app_name: String,
    /// The Serve config file deployed.
    pub serve_config_path: String,
    /// Every command run, in order.
    pub commands: Vec<CommandRecord>,
    /// Each status line Serve went through, with seconds since the deploy.
    pub timeline: Vec<(f64, String)>,
    /// The OpenAI endpoint.
    pub url: Option<String>,
    /// Seconds from `serve deploy` to `/v1/models` answering.
    pub ready_seconds: Option<f64>,
    /// `/v1/models`'s answer when ready.
    pub models: Option<Value>,
    /// Serve's last details of the application (REST API).
    pub serve_app: Option<Value>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn details(status: &str) -> Value {
        json!({"applications": {"app": {
            "status": status,
            "message": "Traceback (most recent call last):\n  File \"x.py\"\nImportError: Neither vLLM nor SGLang is installed.",
            "deployments": {
                "PDProxyServer": {"status": "HEALTHY", "message": "", "replicas": [{"state": "RUNNING"}]},
                "Prefill": {"status": "UNHEALTHY", "message": "replica failed to start", "replicas": [{"state": "STARTING"}, {"state": "STARTING"}]}
            }
        }}})
    }

    #[test]
    fn phases_progress_and_the_failure_report() {
        assert_eq!(phase(&details("RUNNING"), "app"), AppPhase::Running);
        assert_eq!(phase(&details("DEPLOY_FAILED"), "app"), AppPhase::Failed);
        assert_eq!(phase(&details("UNHEALTHY"), "app"), AppPhase::Failed);
        assert_eq!(phase(&details("DEPLOYING"), "app"), AppPhase::Deploying);
        assert_eq!(phase(&details("DELETING"), "app"), AppPhase::Other("DELETING".into()));
        assert_eq!(phase(&json!({"applications": {}}), "app"), AppPhase::Missing);
        let p = progress(&details("DEPLOYING"), "app");
        assert_eq!(p, "app DEPLOYING: PDProxyServer HEALTHY (1 RUNNING); Prefill UNHEALTHY (2 STARTING)");
        let r = failure_report(&details("DEPLOY_FAILED"), "app");
        assert!(r.contains("ImportError: Neither vLLM"), "{r}");
        assert!(r.contains("deployment Prefill: UNHEALTHY: replica failed to start"), "{r}");
        assert!(!r.contains("PDProxyServer"), "healthy deployments are left out: {r}");
        assert_eq!(app_names(&details("RUNNING")), vec!["app".to_string()]);
        let models = json!({"object": "list", "data": [{"id": "gptoss", "object": "model"}]});
        assert!(lists_model(&models, "gptoss"));
        assert!(!lists_model(&models, "gpt"));
        assert!(!lists_model(&json!({"detail": "Not Found"}), "gptoss"));
    }

    #[test]
    fn inventory_nodes_and_the_nodes_check() {
        let inv: Inventory = serde_json::from_value(json!({
            "address": "10.0.0.1:6379", "gcs_address": "10.0.0.1:6379", "dashboard_url": "10.0.0.1:8265",
            "driver": {"ray": "2.60.0"}, "seconds": 1.0,
            "nodes": [
                {"node_id": "b", "address": "10.0.0.2", "hostname": "h2", "alive": true, "is_head": false, "gpus": 8.0, "cpus": 96.0, "labels": {}, "probe": null, "probe_error": "timed out"},
                {"node_id": "a", "address": "10.0.0.1", "hostname": "h1", "alive": true, "is_head": true, "gpus": 4.0, "cpus": 96.0, "labels": {}, "probe": null, "probe_error": null},
                {"node_id": "c", "address": "10.0.0.3", "hostname": "h3", "alive": false, "is_head": false, "gpus": 8.0, "cpus": 96.0, "labels": {}, "probe": null, "probe_error": null},
                {"node_id": "d", "address": "10.0.0.4", "hostname": "cpu", "alive": true, "is_head": false, "gpus": 0.0, "cpus": 8.0, "labels": {}, "probe": null, "probe_error": null}
            ]
        }))
        .unwrap();
        let nodes = inv.gpu_nodes();
        assert_eq!(
            nodes,
            vec![Node { address: "10.0.0.1".into(), gpus: 4 }, Node { address: "10.0.0.2".into(), gpus: 8 }]
        );
        assert_eq!(inv.head().unwrap().node_id, "a");
        assert!(inv.check(&nodes).is_ok());
        let e = inv.check(&[Node { address: "10.0.0.1".into(), gpus: 8 }]).unwrap_err().to_string();
        assert!(e.contains("10.0.0.1 has 4 GPUs in Ray, not 8"), "{e}");
        let e = inv.check(&[Node { address: "10.0.0.3".into(), gpus: 8 }]).unwrap_err().to_string();
        assert!(e.contains("10.0.0.3 is not an alive node"), "{e}");
        // probes that found no vllm: only nodes with a probe are named
        let mut inv = inv;
        inv.nodes[1].probe = Some(Probe {
            hostname: "h1".into(),
            python: "3.11".into(),
            dists: [("nixl-cu12".to_string(), "1.5.1".to_string())].into_iter().collect(),
            ucx: UcxInfo { version: None, library: None, error: None },
            gpu_query: GpuQuery { gpus: vec![], error: None, driver: None },
        });
        assert_eq!(inv.missing("vllm"), vec!["10.0.0.1".to_string()]);
        assert!(inv.missing("nixl").is_empty());
    }

    #[test]
    fn a_command_past_its_limit_is_ended_and_said_so() {
        let argv: Vec<String> = vec!["sh".into(), "-c".into(), "echo started; sleep 30".into()];
        let r = run_captured(&argv, &argv, Duration::from_millis(300), false).unwrap();
        assert!(r.timed_out && r.exit_code.is_none() && r.seconds < 5.0, "{r:?}");
        assert!(r.failure().contains("no result within"), "{}", r.failure());
        let argv: Vec<String> = vec!["sh".into(), "-c".into(), "echo out; echo oops >&2; exit 3".into()];
        let r = run_captured(&argv, &argv, Duration::from_secs(10), false).unwrap();
        assert_eq!(r.exit_code, Some(3));
        assert_eq!(r.stdout, "out\n");
        assert!(r.failure().contains("exit 3") && r.failure().contains("oops"), "{}", r.failure());
    }
}
