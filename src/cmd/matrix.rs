//! `kvprobe matrix`: every ordered pair of a Ray cluster's nodes (or, with
//! `--gpus-per-node`, of their GPUs across nodes) measured with `kvprobe
//! sweep --peer`, in rounds that keep each endpoint in one transfer at a time
//! (or deliberately overlapping ones with `--contention`), through the
//! cluster's own Ray: a Python driver shipped inside kvprobe places one agent
//! per node. Writes matrix.json as it goes, then the heatmap, the table and
//! the verdict (outlier links, nodes and GPUs).

use std::io::BufRead;
use std::path::PathBuf;
use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, anyhow};
use serde_json::Value;

use super::CliError;
use crate::matrix::{self, DoctorSummary, MatrixEndpoint, MatrixNode, MatrixResult, PairResult};
use crate::pipeline::ray;

const DRIVER_PY: &str = include_str!("../matrix/driver.py");

/// Arguments of `kvprobe matrix`.
#[derive(Debug, clap::Args)]
pub struct MatrixArgs {
    /// The Ray cluster's GCS address, HOST:PORT [default: $RAY_ADDRESS, else auto]
    #[arg(long, value_name = "ADDR")]
    pub ray_address: Option<String>,
    /// Only these nodes (Ray node addresses, comma-separated) [default: every alive node]
    #[arg(long, value_name = "ADDR,...")]
    pub nodes: Option<String>,
    /// One endpoint per GPU (GPUs 0..N-1 of every node, GPU memory on both ends) instead of one per node (host memory): every GPU of a node reads from a GPU of another node at once, each GPU in one transfer at a time; doctor always runs, to count each node's GPUs
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u32).range(1..=64))]
    pub gpus_per_node: Option<u32>,
    /// This host's GPUs against each other, no Ray: every ordered pair of GPUs (cuda_ipc over NVLink or PCIe), GPU memory on both ends, with NVML's NVLink topology beside the matrix
    #[arg(long, conflicts_with_all = ["ray_address", "nodes", "gpus_per_node", "ship", "kvprobe", "python"])]
    pub local: bool,
    /// --local: these GPUs (CUDA ordinals, comma-separated) [default: every GPU CUDA sees]
    #[arg(long, value_name = "N,...", value_delimiter = ',', requires = "local")]
    pub gpus: Option<Vec<u32>>,
    /// --local: also each GPU with itself (two processes on one GPU: its own copy path, the baseline; kept out of the outlier statistics)
    #[arg(long, requires = "local")]
    pub same_gpu: bool,
    /// Transfer sizes of each pair's sweep
    #[arg(long, default_value = "1M,16M,64M", value_name = "LIST")]
    pub sizes: String,
    /// Operations (the first is the one the matrix compares)
    #[arg(long, default_value = "READ", value_name = "LIST")]
    pub ops: String,
    /// Time per size and operation of each sweep (kvprobe sweep --duration)
    #[arg(long, value_name = "DURATION")]
    pub duration: Option<String>,
    /// KV-shaped pairs: the sweep's --model (a preset or a config.json path on every node)
    #[arg(long, value_name = "NAME")]
    pub model: Option<String>,
    /// Run every node's transfers at once in shifted rounds (each node sends and receives at the same time) instead of one transfer per node
    #[arg(long)]
    pub contention: bool,
    /// A link under this fraction of the cluster's median is an outlier
    #[arg(long, default_value_t = 0.5, value_name = "FRACTION")]
    pub outlier_at: f64,
    /// A link under this fraction of its NIC's rated line rate is an outlier
    #[arg(long, default_value_t = 0.25, value_name = "FRACTION")]
    pub line_rate_at: f64,
    /// The kvprobe binary on every node [default: this binary's path: a shared path or the same install everywhere]
    #[arg(long, value_name = "PATH")]
    pub kvprobe: Option<PathBuf>,
    /// Ship this binary to the nodes with Ray (runtime_env working_dir) instead of --kvprobe
    #[arg(long, conflicts_with = "kvprobe")]
    pub ship: bool,
    /// Skip `kvprobe doctor` on the nodes
    #[arg(long)]
    pub no_doctor: bool,
    /// Give up on a pair after this many seconds
    #[arg(long, default_value_t = 600.0, value_name = "S")]
    pub pair_timeout: f64,
    /// The Python with Ray [default: $KVPROBE_PYTHON, $VIRTUAL_ENV, the project's .venv, python3]
    #[arg(long, value_name = "PATH")]
    pub python: Option<PathBuf>,
    /// Results folder [default: results/matrix-<UTC time>]
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// Exit 0 even when the verdict is FAIL
    #[arg(long)]
    pub no_fail: bool,
    /// No progress lines
    #[arg(short, long)]
    pub quiet: bool,
}

fn save(path: &std::path::Path, r: &mut MatrixResult) {
    r.updated_at = crate::hostinfo::rfc3339_utc(SystemTime::now());
    match serde_json::to_vec_pretty(r) {
        Ok(d) => {
            if let Err(e) = crate::report::write_atomic(path, &d) {
                eprintln!("matrix: cannot write {}: {e}", path.display());
            }
        }
        Err(e) => eprintln!("matrix: cannot encode matrix.json: {e}"),
    }
}

/// The headline numbers of one pair's results.json.
struct PairSummary {
    /// GB/s per size of the headline operation, in size order.
    by_size: Vec<(u64, f64)>,
    /// Lanes at the largest size.
    lanes: Option<String>,
    /// The sweep's verdict grade.
    grade: Option<String>,
    /// The initiator NIC's rated line rate, GB/s.
    rated: Option<f64>,
    /// The checks that failed the sweep's verdict.
    failed_checks: Vec<String>,
}

fn summarize(results: &Value, op: &str) -> PairSummary {
    let mut by: Vec<(u64, f64, Option<String>)> = results["rows"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|r| r["op"].as_str().is_some_and(|o| o.eq_ignore_ascii_case(op)))
        .filter_map(|r| {
            let lanes = r["transport"]["lanes"]
                .as_array()
                .map(|l| l.iter().filter_map(|x| x.as_str()).collect::<Vec<_>>().join(","));
            Some((r["size_bytes"].as_u64()?, r["gbps"].as_f64()?, lanes))
        })
        .collect();
    by.sort_by_key(|x| x.0);
    let lanes = by.last().and_then(|x| x.2.clone());
    let grade = results["verdict"]["grade"].as_str().map(str::to_string);
    // the initiator NIC's rating; for GPU pairs of one host, the rate the
    // sweep's own verdict expected (NVLink generation, or the GPU's own copy)
    let rated = results["header"]["link"]["local_dev_mbps"].as_f64().map(|m| m * 1e6 / 8.0 / 1e9).or_else(|| {
        results["verdict"]["paths"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|p| p["op"].as_str().is_some_and(|o| o.eq_ignore_ascii_case(op)))
            .and_then(|p| p["expected"]["gbps"].as_f64())
    });
    let mut failed_checks: Vec<String> = results["verdict"]["paths"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|p| p["reasons"].as_array().into_iter().flatten())
        .filter(|r| r["grade"] == "FAIL")
        .filter_map(|r| r["check"].as_str().map(str::to_string))
        .collect();
    failed_checks.sort();
    failed_checks.dedup();
    PairSummary { by_size: by.into_iter().map(|(s, g, _)| (s, g)).collect(), lanes, grade, rated, failed_checks }
}

fn doctor_summary(ev: &Value) -> DoctorSummary {
    let report = &ev["report"];
    let across = report["diagnosis"]["carriers"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|c| c["path"].as_str().is_some_and(|p| p.contains("across")))
        .and_then(|c| c["carrier"].as_str().map(str::to_string));
    let findings = report["diagnosis"]["findings"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|f| format!("{} {}", f["severity"].as_str().unwrap_or("?"), f["id"].as_str().unwrap_or("?")))
        .collect();
    DoctorSummary {
        exit_code: ev["exit_code"].as_i64().map(|c| c as i32),
        across_hosts: across,
        findings,
        error: ev["error"].as_str().map(str::to_string),
    }
}

/// Runs `kvprobe matrix`.
pub fn run(a: MatrixArgs) -> Result<ExitCode, CliError> {
    let usage = |m: String| CliError::usage(anyhow!(m));
    if !(a.outlier_at > 0.0 && a.outlier_at < 1.0 && a.line_rate_at >= 0.0 && a.line_rate_at < 1.0) {
        return Err(usage("--outlier-at must be in (0, 1) and --line-rate-at in [0, 1)".into()));
    }
    if !(a.pair_timeout >= 10.0 && a.pair_timeout <= 86_400.0) {
        return Err(usage(format!("--pair-timeout must be 10 s to a day, got {}", a.pair_timeout)));
    }
    let ops: Vec<String> = a.ops.split(',').map(|s| s.trim().to_ascii_uppercase()).filter(|s| !s.is_empty()).collect();
    let headline = ops.first().cloned().ok_or_else(|| usage("--ops lists nothing".into()))?;
    if (a.gpus_per_node.is_some() || a.local) && ops.len() > 1 {
        // READ reads the target's GPU into the initiator's, WRITE the other
        // way: the sweep's --gpu SRC,DST names one placement per run
        return Err(usage(format!(
            "per-GPU matrices take one operation (--ops read or --ops write), got {}: every ordered GPU pair is measured, so both directions of each link are covered",
            ops.join(",")
        )));
    }
    let mut sweep_args = vec!["--ops".to_string(), ops.join(","), "--backend".into(), "nixl-ucx".into()];
    if a.gpus_per_node.is_some() || a.local {
        sweep_args.extend(["--src-mem".into(), "vram".into(), "--dst-mem".into(), "vram".into()]);
    }
    match &a.model {
        // KV-shaped: the model's requests are the sizes
        Some(m) => sweep_args.extend(["--model".into(), m.clone()]),
        None => sweep_args.extend(["--sizes".into(), a.sizes.clone()]),
    }
    if let Some(d) = &a.duration {
        sweep_args.extend(["--duration".into(), d.clone()]);
    }
    // the nodes run exactly these: bad values must stop here, not on every node minutes later
    let probe: Vec<String> = ["kvprobe", "sweep", "--peer", "127.0.0.1:1", "--token", "t"]
        .iter()
        .map(|s| s.to_string())
        .chain(sweep_args.iter().cloned())
        .chain(
            (a.gpus_per_node.is_some() || a.local)
                .then(|| ["--gpu".to_string(), "0,0".to_string()])
                .into_iter()
                .flatten(),
        )
        .collect();
    if let Err(e) = <super::Cli as clap::Parser>::try_parse_from(&probe) {
        return Err(usage(format!("the pairs' sweep would refuse its arguments: {}", e.to_string().trim())));
    }
    crate::child::install_interrupt_handler();
    if a.local {
        return run_local(&a, &headline, sweep_args);
    }
    let py = ray::find_python(a.python.as_deref()).map_err(CliError::failed)?;
    let address = a
        .ray_address
        .clone()
        .or_else(|| std::env::var("RAY_ADDRESS").ok().filter(|s| !s.is_empty()))
        .unwrap_or_else(|| "auto".into());
    if !a.quiet {
        eprintln!("matrix: taking the inventory of the Ray cluster at {address}");
    }
    let (inv, _) = ray::inventory(&py, &address, Duration::from_secs(120)).map_err(CliError::failed)?;
    if !a.quiet {
        eprint!("{}", inv.describe());
    }
    let mut alive: Vec<&ray::RayNode> = inv.nodes.iter().filter(|n| n.alive).collect();
    alive.sort_by(|x, y| x.address.cmp(&y.address));
    let chosen: Vec<&ray::RayNode> = match &a.nodes {
        None => alive,
        Some(list) => {
            let mut v = Vec::new();
            for addr in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                let n = alive.iter().find(|n| n.address == addr).ok_or_else(|| {
                    usage(format!(
                        "--nodes: {addr} is not an alive node of the cluster (alive: {})",
                        alive.iter().map(|n| n.address.as_str()).collect::<Vec<_>>().join(", ")
                    ))
                })?;
                if !v.iter().any(|x: &&ray::RayNode| x.address == addr) {
                    v.push(*n);
                }
            }
            v
        }
    };
    if chosen.len() < 2 {
        return Err(usage(format!("a matrix needs at least 2 nodes; {} chosen", chosen.len())));
    }
    if let Some(g) = a.gpus_per_node {
        // Ray's GPU resource is what the operator declared; doctor on the node decides
        for n in chosen.iter().filter(|n| n.gpus < f64::from(g)) {
            eprintln!(
                "matrix: warning: Ray schedules {} GPU(s) on {}; --gpus-per-node {g} asks for {g} (kvprobe doctor there counts the real ones)",
                n.gpus, n.address
            );
        }
    }
    let out = super::out_dir(a.out.as_deref(), "matrix", SystemTime::now());
    std::fs::create_dir_all(out.join("pairs"))
        .with_context(|| format!("cannot create {}", out.display()))
        .map_err(CliError::usage)?;
    let exe = std::env::current_exe().context("cannot find this binary").map_err(CliError::failed)?;
    let (kv_path, ship_dir) = if a.ship {
        let dir = out.join("ship");
        std::fs::create_dir_all(&dir).map_err(|e| CliError::failed(anyhow!("cannot create {}: {e}", dir.display())))?;
        std::fs::copy(&exe, dir.join("kvprobe"))
            .with_context(|| format!("cannot copy {} to ship it", exe.display()))
            .map_err(CliError::failed)?;
        ("kvprobe".to_string(), Some(std::fs::canonicalize(&dir).unwrap_or(dir).display().to_string()))
    } else {
        (a.kvprobe.clone().unwrap_or(exe).display().to_string(), None)
    };
    let (eps, rounds) = matrix::plan::endpoint_rounds(chosen.len(), a.gpus_per_node, a.contention);
    let total_pairs: usize = rounds.iter().map(Vec::len).sum();
    // a pair's own arguments: per GPU, which GPU on each end (READ moves
    // the target's GPU into the initiator's, WRITE the other way)
    let pair_args = |p: &matrix::Pair| -> Vec<String> {
        match (eps[p.initiator].gpu, eps[p.target].gpu) {
            (Some(gi), Some(gt)) => {
                let (src, dst) = if headline == "WRITE" { (gi, gt) } else { (gt, gi) };
                vec!["--gpu".into(), format!("{src},{dst}")]
            }
            _ => vec![],
        }
    };
    let nodes_json: Vec<Value> =
        chosen.iter().map(|n| serde_json::json!({"node_id": n.node_id, "address": n.address})).collect();
    // the nodes' kvprobe finds NIXL as here: pass on what points at it
    let env: serde_json::Map<String, Value> = std::env::vars()
        .filter(|(k, _)| k.starts_with("KVPROBE_") || k.starts_with("UCX_") || k.starts_with("NIXL_"))
        .map(|(k, v)| (k, Value::String(v)))
        .collect();
    let plan = serde_json::json!({
        "address": address,
        "kvprobe": kv_path,
        "ship_dir": ship_dir,
        "env": env,
        "nodes": nodes_json,
        "endpoints": eps.iter().map(|e| serde_json::json!([e.node, e.gpu])).collect::<Vec<_>>(),
        "gpus_per_node": a.gpus_per_node,
        "rounds": rounds
            .iter()
            .map(|r| r.iter().map(|p| serde_json::json!([p.initiator, p.target, pair_args(p)])).collect::<Vec<_>>())
            .collect::<Vec<_>>(),
        "sweep_args": sweep_args,
        // per GPU, doctor counts each node's GPUs
        "doctor": !a.no_doctor || a.gpus_per_node.is_some(),
        "doctor_timeout": 120.0,
        "start_timeout": 180.0,
        "pair_timeout": a.pair_timeout,
    });
    let plan_path = out.join("plan.json");
    crate::report::write_atomic(&plan_path, &serde_json::to_vec_pretty(&plan).unwrap_or_default())
        .with_context(|| format!("cannot write {}", plan_path.display()))
        .map_err(CliError::failed)?;
    let now = crate::hostinfo::rfc3339_utc(SystemTime::now());
    let nodes: Vec<MatrixNode> = chosen
        .iter()
        .map(|n| MatrixNode {
            address: n.address.clone(),
            hostname: n.hostname.clone(),
            node_id: n.node_id.clone(),
            doctor: None,
            lost: None,
        })
        .collect();
    let endpoints: Vec<MatrixEndpoint> = eps
        .iter()
        .map(|e| MatrixEndpoint { node: e.node, gpu: e.gpu, label: matrix::endpoint_label(&nodes, e), lost: None })
        .collect();
    let mut r = MatrixResult {
        schema: matrix::SCHEMA.into(),
        kvprobe_version: crate::version().to_string(),
        command_line: crate::hostinfo::redacted_args(),
        status: "running".into(),
        started_at: now.clone(),
        updated_at: now,
        ray_address: address.clone(),
        contention: a.contention,
        sweep_args: sweep_args.clone(),
        nodes,
        gpus_per_node: a.gpus_per_node,
        endpoints,
        rounds: rounds.clone(),
        round_seconds: vec![],
        pairs: vec![],
        seconds: None,
        verdict: None,
        errors: vec![],
        local: false,
        gpu_links: vec![],
    };
    let mpath = out.join("matrix.json");
    save(&mpath, &mut r);
    if !a.quiet {
        eprintln!(
            "matrix: {} nodes{}, {total_pairs} pairs in {} rounds{}; results in {}",
            chosen.len(),
            a.gpus_per_node.map(|g| format!(" x {g} GPUs")).unwrap_or_default(),
            rounds.len(),
            if a.contention { " (overlapping)" } else { " (one transfer per node at a time)" },
            out.display()
        );
    }
    let log = std::fs::File::create(out.join("driver.log"))
        .with_context(|| format!("cannot create {}", out.join("driver.log").display()))
        .map_err(CliError::failed)?;
    let t0 = Instant::now();
    let mut cmd = Command::new(&py.python);
    cmd.args(["-c", DRIVER_PY]).arg(&plan_path).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::from(log));
    // the driver dies with kvprobe, and its actors with it
    crate::child::dies_with_parent(&mut cmd);
    let mut child = cmd
        .spawn()
        .with_context(|| format!("cannot start the Ray driver with {}", py.python.display()))
        .map_err(CliError::failed)?;
    let (tx, rx) = std::sync::mpsc::channel::<String>();
    let stdout = child.stdout.take();
    std::thread::spawn(move || {
        if let Some(s) = stdout {
            for line in std::io::BufReader::new(s).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        }
    });
    let mut events = std::fs::File::create(out.join("events.jsonl")).ok();
    let addr = |r: &MatrixResult, i: usize| r.nodes.get(i).map(|n| n.address.clone()).unwrap_or_default();
    let label = |r: &MatrixResult, e: usize| r.endpoints.get(e).map(|x| x.label.clone()).unwrap_or_default();
    let mut done = false;
    let mut interrupted: Option<Instant> = None;
    // every wait of the driver is bounded by the plan; this bounds the driver as a whole
    let deadline =
        t0 + Duration::from_secs_f64(180.0 + 150.0 + 120.0 + rounds.len() as f64 * (a.pair_timeout + 90.0) + 120.0);
    let group = -(child.id() as i32);
    loop {
        if crate::child::interrupted() && interrupted.is_none() {
            interrupted = Some(Instant::now());
            // SAFETY: kill has no memory-safety preconditions; the group is the driver's own.
            unsafe { libc::kill(group, libc::SIGINT) };
        }
        // a driver that does not stop within 15 s of the interrupt, or runs past
        // the plan's bound, is killed (its actors die with it)
        let overdue = Instant::now() > deadline;
        if interrupted.is_some_and(|t| t.elapsed() > Duration::from_secs(15)) || overdue {
            if overdue && interrupted.is_none() {
                r.errors.push("the Ray driver ran past the plan's time bound and was stopped".into());
            }
            // SAFETY: as above.
            unsafe { libc::kill(group, libc::SIGKILL) };
            break;
        }
        let line = match rx.recv_timeout(Duration::from_millis(200)) {
            Ok(l) => l,
            Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {
                if interrupted.is_some() {
                    if let Ok(Some(_)) = child.try_wait() {
                        break;
                    }
                }
                continue;
            }
            Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => break,
        };
        let Ok(ev) = serde_json::from_str::<Value>(&line) else { continue };
        if let Some(f) = events.as_mut() {
            use std::io::Write;
            let _ = writeln!(f, "{line}");
        }
        let node = ev["node"].as_u64().map(|n| n as usize);
        match ev["event"].as_str().unwrap_or("") {
            "agent" => {
                if let Some(n) = node.and_then(|i| r.nodes.get_mut(i)) {
                    n.hostname = ev["hostname"].as_str().map(str::to_string).or(n.hostname.take());
                }
            }
            "doctor" => {
                if let Some(n) = node.and_then(|i| r.nodes.get_mut(i)) {
                    n.doctor = Some(doctor_summary(&ev));
                }
            }
            "node_lost" => {
                let why = ev["error"].as_str().unwrap_or("lost").to_string();
                if let Some(i) = node {
                    if !a.quiet {
                        eprintln!("matrix: node {} lost: {why}", addr(&r, i));
                    }
                    if let Some(n) = r.nodes.get_mut(i) {
                        n.lost = Some(why);
                    }
                }
            }
            "endpoint_lost" => {
                let why = ev["error"].as_str().unwrap_or("missing").to_string();
                if let Some(e) = ev["endpoint"].as_u64().map(|e| e as usize) {
                    if !a.quiet {
                        eprintln!("matrix: {} lost: {why}", label(&r, e));
                    }
                    if let Some(x) = r.endpoints.get_mut(e) {
                        x.lost = Some(why);
                    }
                }
            }
            "pair" => {
                let (i, j) =
                    (ev["initiator"].as_u64().unwrap_or(0) as usize, ev["target"].as_u64().unwrap_or(0) as usize);
                let round = ev["round"].as_u64().unwrap_or(0) as usize;
                let status = ev["status"].as_str().unwrap_or("failed").to_string();
                let PairSummary { by_size: by, lanes, grade, rated, failed_checks } =
                    summarize(&ev["results"], &headline);
                if !ev["results"].is_null() {
                    let f = out.join("pairs").join(format!("{i}-{j}.json"));
                    let _ =
                        crate::report::write_atomic(&f, &serde_json::to_vec_pretty(&ev["results"]).unwrap_or_default());
                }
                let gbps = if status == "ok" { by.last().map(|x| x.1) } else { None };
                let p = PairResult {
                    initiator: i,
                    target: j,
                    round,
                    status: status.clone(),
                    gbps_by_size: by,
                    gbps,
                    carried_by: lanes.clone(),
                    sweep_grade: grade,
                    sweep_failed: failed_checks,
                    expected_gbps: rated,
                    seconds: ev["seconds"].as_f64(),
                    error: ev["error"].as_str().map(|s| s.trim().to_string()).filter(|s| !s.is_empty()),
                };
                if !a.quiet {
                    let what = match gbps {
                        Some(g) => format!("{g:.3} GB/s{}", lanes.map(|l| format!(" over {l}")).unwrap_or_default()),
                        None => format!("{status}: {}", p.error.as_deref().unwrap_or("").lines().last().unwrap_or("")),
                    };
                    eprintln!(
                        "matrix: round {}/{} {} <- {}: {what}",
                        round + 1,
                        rounds.len(),
                        label(&r, i),
                        label(&r, j)
                    );
                }
                r.pairs.push(p);
            }
            "round" => r.round_seconds.push(ev["seconds"].as_f64().unwrap_or(0.0)),
            "done" => done = true,
            _ => {}
        }
        save(&mpath, &mut r);
    }
    let status = child.wait().ok();
    r.seconds = Some((t0.elapsed().as_secs_f64() * 10.0).round() / 10.0);
    let interrupted = interrupted.is_some();
    if !done && !interrupted && r.errors.is_empty() {
        let tail = std::fs::read_to_string(out.join("driver.log")).unwrap_or_default();
        let tail: Vec<&str> = tail.lines().rev().take(8).collect::<Vec<_>>().into_iter().rev().collect();
        r.errors.push(format!(
            "the Ray driver ended early ({}): {}",
            status.map(crate::child::describe).unwrap_or_default(),
            tail.join(" | ")
        ));
    }
    r.status = if interrupted {
        "interrupted"
    } else if done {
        "complete"
    } else {
        "failed"
    }
    .into();
    finish(&a, &mut r, &out, interrupted)
}

/// The end of a matrix run (Ray or --local): the verdict, matrix.json, the
/// heatmap, the table, the exit code.
fn finish(
    a: &MatrixArgs,
    r: &mut MatrixResult,
    out: &std::path::Path,
    interrupted: bool,
) -> Result<ExitCode, CliError> {
    let mpath = out.join("matrix.json");
    r.verdict = Some(matrix::verdict(r, a.outlier_at, a.line_rate_at));
    save(&mpath, r);
    let (files, warning) = matrix::heatmap::write(out, r);
    if let Some(w) = warning {
        eprintln!("matrix: {w}");
    }
    print!("{}", table(r));
    if let Some(v) = &r.verdict {
        println!("verdict: {}", v.grade);
        for reason in &v.reasons {
            println!("  {reason}");
        }
    }
    println!(
        "{} -> {}{}",
        r.status,
        mpath.display(),
        files.iter().map(|f| format!(", {}", f.display())).collect::<String>()
    );
    if interrupted {
        return Ok(ExitCode::from(130));
    }
    if !r.errors.is_empty() {
        return Err(CliError::failed(anyhow!("{}", r.errors.join("; "))));
    }
    let fail = r.verdict.as_ref().is_some_and(|v| v.grade == "FAIL");
    Ok(if fail && !a.no_fail { ExitCode::from(1) } else { ExitCode::SUCCESS })
}

/// The matrix as a table: rows initiators, columns targets, GB/s at the
/// largest size (one row and column per endpoint: node, or GPU).
fn table(r: &MatrixResult) -> String {
    let mut t = crate::report::style::table();
    let mut header = vec!["initiator \\ target".to_string()];
    header.extend(r.endpoints.iter().map(|e| e.label.clone()));
    t.set_header(header);
    let by_pair: std::collections::HashMap<(usize, usize), &PairResult> =
        r.pairs.iter().map(|p| ((p.initiator, p.target), p)).collect();
    for (i, e) in r.endpoints.iter().enumerate() {
        let lost = e.lost.is_some() || r.nodes.get(e.node).is_some_and(|n| n.lost.is_some());
        let mut row = vec![format!("{}{}", e.label, if lost { " (lost)" } else { "" })];
        for j in 0..r.endpoints.len() {
            let cell = if !r.is_link(i, j) {
                "-".to_string()
            } else {
                match by_pair.get(&(i, j)) {
                    Some(p) => match p.gbps {
                        Some(g) => format!("{g:.3}"),
                        None => p.status.clone(),
                    },
                    None if i == j => "-".into(),
                    None => "?".into(),
                }
            };
            row.push(cell);
        }
        t.add_row(row);
    }
    // what carried the bytes: one line, so a cluster that silently fell back to tcp shows at a glance
    let mut by_lane: std::collections::BTreeMap<&str, usize> = std::collections::BTreeMap::new();
    for p in r.pairs.iter().filter(|p| p.gbps.is_some()) {
        *by_lane.entry(p.carried_by.as_deref().unwrap_or("unknown")).or_default() += 1;
    }
    let lanes = if by_lane.is_empty() {
        String::new()
    } else {
        format!(
            "carried by (largest size): {}\n",
            by_lane.iter().map(|(l, n)| format!("{l} ({n} pairs)")).collect::<Vec<_>>().join(", ")
        )
    };
    format!("GB/s (1e9 B/s) at the largest size\n{t}\n{}{lanes}", nvlink_table(r))
}

/// With --local: NVML's NVLink topology between the same GPUs, beside the GB/s.
fn nvlink_table(r: &MatrixResult) -> String {
    if !r.local {
        return String::new();
    }
    let mut t = crate::report::style::table();
    let mut header = vec!["NVLink (NVML)".to_string()];
    header.extend(r.endpoints.iter().map(|e| e.label.clone()));
    t.set_header(header);
    for (i, e) in r.endpoints.iter().enumerate() {
        let mut row = vec![e.label.clone()];
        for j in 0..r.endpoints.len() {
            row.push(if i == j { "self".into() } else { r.nvlink(i, j).unwrap_or_else(|| "PCIe".into()) });
        }
        t.add_row(row);
    }
    format!(
        "{t}\n(NV<n>: n active links between the two; NVSwitch: both reach the switch fabric; PCIe: no NVLink path)\n"
    )
}

/// A pair's sweep of `matrix --local` while it runs.
struct Running {
    pair: matrix::Pair,
    child: std::process::Child,
    dir: PathBuf,
    /// Seconds from the round's start to its end.
    seconds: Option<f64>,
    status: Option<std::process::ExitStatus>,
}

/// `matrix --local`: this host's GPUs against each other. Each round's pairs
/// run at once as `kvprobe sweep --gpu SRC,DST` in processes of their own
/// (each GPU in one transfer at a time); no Ray.
fn run_local(a: &MatrixArgs, headline: &str, sweep_args: Vec<String>) -> Result<ExitCode, CliError> {
    let usage = |m: String| CliError::usage(anyhow!(m));
    let devices = crate::cuda::Cuda::open()
        .and_then(|c| c.devices())
        .map_err(|e| usage(format!("matrix --local measures this host's GPUs against each other: {e}")))?;
    crate::cuda::release_all();
    let gpus: Vec<u32> = match &a.gpus {
        Some(g) => {
            let mut v: Vec<u32> = Vec::new();
            for &x in g {
                if !devices.iter().any(|d| d.index == x) {
                    return Err(usage(format!(
                        "--gpus: GPU {x} does not exist here (CUDA sees {})",
                        devices.iter().map(|d| d.index.to_string()).collect::<Vec<_>>().join(", ")
                    )));
                }
                if !v.contains(&x) {
                    v.push(x);
                }
            }
            v
        }
        None => devices.iter().map(|d| d.index).collect(),
    };
    if gpus.len() < 2 && !a.same_gpu {
        return Err(usage(format!(
            "matrix --local needs two GPUs for a pair; this host has {} (--same-gpu measures each GPU with itself)",
            gpus.len()
        )));
    }
    let (eps, rounds) = matrix::plan::local_rounds(&gpus, a.same_gpu, a.contention);
    let pcis: Vec<String> = gpus
        .iter()
        .map(|g| devices.iter().find(|d| d.index == *g).map(|d| d.pci.clone()).unwrap_or_default())
        .collect();
    let (gpu_links, nvml_error) = match crate::nvml::Nvml::open().and_then(|n| n.report()) {
        Ok(rep) => (matrix::gpu_links(&pcis, &rep), None),
        Err(e) => (vec![], Some(format!("NVML: {e} (no NVLink topology beside the matrix)"))),
    };
    let out = super::out_dir(a.out.as_deref(), "matrix-local", SystemTime::now());
    std::fs::create_dir_all(out.join("pairs"))
        .with_context(|| format!("cannot create {}", out.display()))
        .map_err(CliError::usage)?;
    let exe = std::env::current_exe().context("cannot find this binary").map_err(CliError::failed)?;
    let host = crate::hostinfo::hostname();
    let nodes = vec![MatrixNode {
        address: host.clone(),
        hostname: Some(host),
        node_id: "local".into(),
        doctor: None,
        lost: None,
    }];
    let endpoints: Vec<MatrixEndpoint> = eps
        .iter()
        .map(|e| MatrixEndpoint { node: 0, gpu: e.gpu, label: format!("gpu{}", e.gpu.unwrap_or(0)), lost: None })
        .collect();
    let now = crate::hostinfo::rfc3339_utc(SystemTime::now());
    let mut r = MatrixResult {
        schema: matrix::SCHEMA.into(),
        kvprobe_version: crate::version().to_string(),
        command_line: crate::hostinfo::redacted_args(),
        status: "running".into(),
        started_at: now.clone(),
        updated_at: now,
        ray_address: "local".into(),
        contention: a.contention,
        sweep_args: sweep_args.clone(),
        nodes,
        gpus_per_node: Some(gpus.len() as u32),
        endpoints,
        rounds: rounds.clone(),
        round_seconds: vec![],
        pairs: vec![],
        seconds: None,
        verdict: None,
        errors: vec![],
        local: true,
        gpu_links,
    };
    if let Some(n) = &nvml_error {
        eprintln!("matrix: {n}");
    }
    let mpath = out.join("matrix.json");
    save(&mpath, &mut r);
    let total: usize = rounds.iter().map(Vec::len).sum();
    if !a.quiet {
        eprintln!(
            "matrix: GPUs {} of this host, {total} pairs in {} rounds{}; results in {}",
            gpus.iter().map(u32::to_string).collect::<Vec<_>>().join(","),
            rounds.len(),
            if a.contention { " (overlapping)" } else { " (each GPU in one transfer at a time)" },
            out.display()
        );
    }
    let t0 = Instant::now();
    let mut interrupted = false;
    'rounds: for (ri, round) in rounds.iter().enumerate() {
        let tr = Instant::now();
        let mut running = Vec::new();
        for p in round {
            let (gi, gt) = (gpus[p.initiator], gpus[p.target]);
            // READ moves the target's GPU into the initiator's, WRITE the other way
            let (src, dst) = if headline == "WRITE" { (gi, gt) } else { (gt, gi) };
            let dir = out.join("pairs").join(format!("{}-{}", p.initiator, p.target));
            let log = std::fs::File::create(out.join("pairs").join(format!("{}-{}.log", p.initiator, p.target)))
                .with_context(|| format!("cannot create the log of pair {}-{}", p.initiator, p.target))
                .map_err(CliError::failed)?;
            let mut cmd = Command::new(&exe);
            cmd.args(["sweep", "-q", "--no-fail", "--out"])
                .arg(&dir)
                .args(&sweep_args)
                .args(["--gpu", &format!("{src},{dst}")])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::from(log));
            // the pair's sweep dies with this process (and its helpers with it)
            crate::child::dies_with_parent(&mut cmd);
            let child =
                cmd.spawn().with_context(|| "cannot start a pair's sweep".to_string()).map_err(CliError::failed)?;
            running.push(Running { pair: *p, child, dir, seconds: None, status: None });
        }
        // wait for the round; an interrupt or the pair timeout stops what still runs
        let mut stop_at: Option<Instant> = None;
        loop {
            for x in running.iter_mut().filter(|x| x.status.is_none()) {
                if let Ok(Some(s)) = x.child.try_wait() {
                    x.status = Some(s);
                    x.seconds = Some(tr.elapsed().as_secs_f64());
                }
            }
            if running.iter().all(|x| x.status.is_some()) {
                break;
            }
            let late = tr.elapsed().as_secs_f64() > a.pair_timeout;
            if (crate::child::interrupted() || late) && stop_at.is_none() {
                interrupted |= crate::child::interrupted();
                stop_at = Some(Instant::now());
                for x in running.iter().filter(|x| x.status.is_none()) {
                    crate::child::signal_group(&x.child, libc::SIGINT);
                }
            }
            if stop_at.is_some_and(|t| t.elapsed() > Duration::from_secs(15)) {
                for x in running.iter_mut().filter(|x| x.status.is_none()) {
                    crate::child::signal_group(&x.child, libc::SIGKILL);
                    x.status = x.child.wait().ok();
                    x.seconds = Some(tr.elapsed().as_secs_f64());
                }
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        for Running { pair: p, dir, seconds, status, .. } in running {
            let results: Option<Value> =
                std::fs::read_to_string(dir.join("results.json")).ok().and_then(|s| serde_json::from_str(&s).ok());
            let complete = results.as_ref().is_some_and(|v| v["status"] == "complete");
            let error = (!complete).then(|| {
                let log = std::fs::read_to_string(out.join("pairs").join(format!("{}-{}.log", p.initiator, p.target)))
                    .unwrap_or_default();
                let last = log.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").trim().to_string();
                format!(
                    "sweep {}: {last}",
                    status.map(crate::child::describe).unwrap_or_else(|| "did not finish".into())
                )
            });
            let s = results.as_ref().map(|v| summarize(v, headline));
            let gbps = if complete { s.as_ref().and_then(|s| s.by_size.last().map(|x| x.1)) } else { None };
            if !a.quiet {
                let what = match gbps {
                    Some(g) => format!(
                        "{g:.3} GB/s{}",
                        s.as_ref().and_then(|s| s.lanes.clone()).map(|l| format!(" over {l}")).unwrap_or_default()
                    ),
                    None => format!("failed: {}", error.as_deref().unwrap_or("")),
                };
                eprintln!(
                    "matrix: round {}/{} {} <- {}: {what}",
                    ri + 1,
                    rounds.len(),
                    r.endpoints[p.initiator].label,
                    r.endpoints[p.target].label
                );
            }
            r.pairs.push(PairResult {
                initiator: p.initiator,
                target: p.target,
                round: ri,
                status: if complete { "ok" } else { "failed" }.into(),
                gbps_by_size: s.as_ref().map(|s| s.by_size.clone()).unwrap_or_default(),
                gbps,
                carried_by: s.as_ref().and_then(|s| s.lanes.clone()),
                sweep_grade: s.as_ref().and_then(|s| s.grade.clone()),
                sweep_failed: s.as_ref().map(|s| s.failed_checks.clone()).unwrap_or_default(),
                expected_gbps: s.as_ref().and_then(|s| s.rated),
                seconds: seconds.map(|s| (s * 10.0).round() / 10.0),
                error,
            });
            save(&mpath, &mut r);
        }
        r.round_seconds.push((tr.elapsed().as_secs_f64() * 10.0).round() / 10.0);
        save(&mpath, &mut r);
        if interrupted {
            break 'rounds;
        }
    }
    r.seconds = Some((t0.elapsed().as_secs_f64() * 10.0).round() / 10.0);
    r.status = if interrupted { "interrupted" } else { "complete" }.into();
    finish(a, &mut r, &out, interrupted)
}
