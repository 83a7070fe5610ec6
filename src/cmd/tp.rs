//! `kvprobe tp`: a P_tp -> D_tp KV transfer as the concurrent rank pairs
//! vLLM's NixlConnector uses (docs/TP.md). Per round (backend x block size):
//! one `__target --sessions N` per prefill rank (its KV cache registered
//! once, read by its N decode ranks), one `sweep --peer --sync` per decode
//! rank, and a barrier here that starts every timed loop on all ranks at
//! once. Then each rank's results.json is lined up into tp.json: aggregate
//! and per-pair figures, and a verdict.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, ExitStatus, Stdio};
use std::time::{Duration, Instant, SystemTime};

use anyhow::{Context, anyhow};

use super::CliError;
use super::kv_shape::ModelArgs;
use crate::child::{self, Child};
use crate::mem::MemKind;
use crate::nixl::XferOp;
use crate::peer::{BackendKind, Channel, SyncMsg};
use crate::report::schema::SweepResults;
use crate::report::style::Style;
use crate::tp::{self, RankPair, TpResult, TpRound};
use crate::units;

/// Arguments of `kvprobe tp`.
#[derive(Debug, clap::Args)]
pub struct TpArgs {
    /// The model and its KV layout (as `sweep --model`; every decode rank is run, so no --d-rank)
    #[command(flatten)]
    pub kv: ModelArgs,
    /// Prefill TP size
    #[arg(long, value_name = "N")]
    pub p_tp: u32,
    /// Decode TP size (a multiple of the prefill TP size, as vLLM's NixlConnector needs)
    #[arg(long, value_name = "N")]
    pub d_tp: u32,
    /// GPU of each prefill rank, comma-separated (may repeat) [default: 0..P_tp]
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    pub prefill_gpus: Option<Vec<u32>>,
    /// GPU of each decode rank, comma-separated (may repeat) [default: the next D_tp GPUs after the prefill ones]
    #[arg(long, value_name = "LIST", value_delimiter = ',')]
    pub decode_gpus: Option<Vec<u32>>,
    /// Memory of the prefill ranks' KV caches: dram or vram
    #[arg(long, default_value = "dram", value_name = "dram|vram")]
    pub prefill_mem: MemKind,
    /// Memory of the decode ranks' KV caches: dram or vram
    #[arg(long, default_value = "dram", value_name = "dram|vram")]
    pub decode_mem: MemKind,
    /// Input lengths (tokens), comma-separated
    #[arg(long, value_delimiter = ',', default_value = "1000,5000,20000", value_name = "N,...")]
    pub isl: Vec<u64>,
    /// Tokens per KV block, comma-separated (a round each)
    #[arg(long, value_delimiter = ',', default_value = "16", value_name = "TOKENS,...")]
    pub kv_block_size: Vec<u32>,
    /// Request block ids: contiguous or random
    #[arg(long, default_value = "contiguous", value_name = "contiguous|random")]
    pub block_pattern: String,
    /// Requests in flight at once, per rank
    #[arg(long, default_value_t = 1, value_name = "N")]
    pub inflight: u32,
    /// Operations, from the decode side: READ (vLLM's decode pulls) and/or WRITE
    #[arg(long, value_name = "LIST", value_delimiter = ',', default_value = "READ")]
    pub ops: Vec<XferOp>,
    /// NIXL backends, comma-separated (a round each): nixl-ucx, nixl-libfabric
    #[arg(long = "backend", value_name = "LIST", value_delimiter = ',', default_value = "nixl-ucx")]
    pub backends: Vec<BackendKind>,
    /// NIXL backend parameter, repeatable (as sweep's)
    #[arg(long = "backend-param", value_name = "KEY=VALUE", value_parser = super::sweep::parse_kv)]
    pub backend_params: Vec<(String, String)>,
    /// Set UCX_TLS for every process [default: as in the environment]
    #[arg(long, value_name = "LIST")]
    pub ucx_tls: Option<String>,
    /// Timed loop length per point (every rank's loop starts on one barrier)
    #[arg(long, default_value = "1s", value_parser = units::parse_duration)]
    pub duration: Duration,
    /// Warm-up per point
    #[arg(long, default_value = "100ms", value_parser = units::parse_duration)]
    pub warmup: Duration,
    /// Fewest timed requests per point and rank
    #[arg(long, default_value_t = 5)]
    pub min_iters: u64,
    /// One transfer taking longer than this is an error
    #[arg(long, default_value = "60s", value_parser = units::parse_duration)]
    pub xfer_timeout: Duration,
    /// A control request (or a barrier) unanswered for this long is an error
    #[arg(long, default_value = "120s", value_parser = units::parse_duration)]
    pub peer_timeout: Duration,
    /// Exit 0 even when the verdict is FAIL (default: exit 3)
    #[arg(long)]
    pub no_fail: bool,
    /// Output folder [default: results/tp-<UTC time>]
    #[arg(long, value_name = "DIR")]
    pub out: Option<PathBuf>,
    /// NIXL C API library (libnixl_capi.so) or a folder holding it [env: KVPROBE_NIXL_LIB]
    #[arg(long, value_name = "PATH")]
    pub nixl_lib: Option<PathBuf>,
    /// Print tp.json on stdout instead of the tables
    #[arg(long)]
    pub json: bool,
    /// No progress lines
    #[arg(long, short)]
    pub quiet: bool,
    /// (self-test) kill this decode rank's sweep once the third timed loop has started (the second point's reference)
    #[arg(long, hide = true, value_name = "RANK")]
    pub kill_rank: Option<u32>,
}

/// Runs `kvprobe tp`.
pub fn run(a: TpArgs) -> Result<ExitCode, CliError> {
    let usage = |m: String| CliError::usage(anyhow!(m));
    if !a.kv.given() {
        return Err(usage("kvprobe tp moves a model's KV cache: give --model NAME or --model-config PATH".into()));
    }
    if a.kv.d_rank != 0 {
        return Err(usage("kvprobe tp runs every decode rank at once; --d-rank is for `sweep` (one rank pair)".into()));
    }
    if a.p_tp == 0 || a.d_tp == 0 || a.d_tp > 64 {
        return Err(usage(format!("--p-tp {} --d-tp {}: TP sizes are 1 to 64", a.p_tp, a.d_tp)));
    }
    crate::kv::check_isls(&a.isl).map_err(|e| usage(format!("--isl: {e}")))?;
    if a.inflight == 0 {
        return Err(usage("--inflight must be at least 1".into()));
    }
    if let Some(b) = a.backends.iter().find(|b| !b.is_nixl()) {
        return Err(usage(format!(
            "--backend {b}: kvprobe tp measures NIXL's backends (nixl-ucx, nixl-libfabric), as vLLM's NixlConnector uses them; raw UCX needs a target per initiator"
        )));
    }
    let _: crate::report::schema::BlockPattern = a.block_pattern.parse().map_err(|e: String| usage(e))?;
    let block_sizes = dedup(&a.kv_block_size);
    let mut pairs_of = Vec::new();
    let mut model = String::new();
    for &bt in &block_sizes {
        let spec = a.kv.spec(a.p_tp, a.d_tp, bt)?;
        let (geos, p) = tp::rank_map(&spec).map_err(CliError::usage)?;
        model = geos.first().map(|g| g.model.clone()).unwrap_or_default();
        pairs_of.push(p);
    }
    let pairs = pairs_of.first().cloned().unwrap_or_default();
    let ops = dedup(&a.ops);
    let (prefill_gpus, decode_gpus) = gpus_of(&a)?;
    // sweep's rule: READ and WRITE in one run need the same memory at both ends
    if ops.len() > 1 && (a.prefill_mem != a.decode_mem || pairs_cross_gpus(&pairs, &prefill_gpus, &decode_gpus)) {
        return Err(usage(
            "READ and WRITE in one run need the same memory on both ends of every pair (READ moves prefill -> decode, WRITE decode -> prefill): give one direction (--ops read or --ops write)".into(),
        ));
    }
    let loc = crate::locate::locate(&crate::locate::Inputs::from_env(a.nixl_lib.clone())).map_err(CliError::usage)?;
    if a.backends.contains(&BackendKind::NixlLibfabric) {
        super::sweep::libfabric_preflight(&loc).map_err(CliError::usage)?;
    }
    let out = super::out_dir(a.out.as_deref(), "tp", SystemTime::now());
    std::fs::create_dir_all(&out)
        .with_context(|| format!("cannot create the output folder {}", out.display()))
        .map_err(CliError::usage)?;
    child::install_interrupt_handler();

    let sweep_args = sweep_args(&a, &ops, &loc.lib);
    let now = crate::hostinfo::rfc3339_utc(SystemTime::now());
    let mut r = TpResult {
        schema: tp::SCHEMA.into(),
        kvprobe_version: crate::version().to_string(),
        command_line: crate::hostinfo::redacted_args(),
        status: "running".into(),
        started_at: now.clone(),
        updated_at: now,
        host: crate::hostinfo::hostname(),
        model,
        p_tp: a.p_tp,
        d_tp: a.d_tp,
        prefill_gpus,
        decode_gpus,
        pairs: pairs.clone(),
        sweep_args: sweep_args.clone(),
        rounds: vec![],
        verdict: None,
        errors: vec![],
    };
    let path = out.join("tp.json");
    save(&path, &mut r);
    let mut failed = false;
    'rounds: for &backend in &dedup(&a.backends) {
        for (&bt, pairs) in block_sizes.iter().zip(&pairs_of) {
            if child::interrupted() {
                break 'rounds;
            }
            let name = format!("{backend}-block{bt}");
            if !a.quiet {
                eprintln!(
                    "tp: {name}: {} prefill ranks, {} decode ranks, every timed loop on one barrier; in {}",
                    a.p_tp,
                    a.d_tp,
                    out.join(&name).display()
                );
            }
            let round = run_round(&a, &r, pairs, &loc, backend, bt, &out, &name, &sweep_args);
            let round = match round {
                Ok(x) => x,
                Err(e) => {
                    r.errors.push(format!("{name}: {e:#}"));
                    failed = true;
                    save(&path, &mut r);
                    break 'rounds;
                }
            };
            failed |= round.error.is_some() || round.ranks.iter().any(|k| k.status.as_deref() != Some("complete"));
            r.rounds.push(round);
            save(&path, &mut r);
        }
    }
    let interrupted = child::interrupted();
    r.verdict = Some(tp::judge(&r));
    r.status = if interrupted {
        "interrupted"
    } else if failed {
        "failed"
    } else {
        "complete"
    }
    .into();
    save(&path, &mut r);
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r).context("tp.json")?);
    } else {
        print!("{}", tp::render(&r, Style::for_stdout()));
        println!("results: {}", path.display());
    }
    if interrupted {
        return Ok(ExitCode::from(130));
    }
    if failed {
        return Ok(ExitCode::from(1));
    }
    if r.verdict.as_ref().is_some_and(|v| v.grade == crate::verdict::Grade::Fail) && !a.no_fail {
        return Ok(ExitCode::from(3));
    }
    Ok(ExitCode::SUCCESS)
}

/// The control address of prefill rank `p`'s target.
fn peer_of(targets: &[Option<(Child, String)>], p: u32) -> String {
    targets.get(p as usize).and_then(|t| t.as_ref()).map(|t| t.1.clone()).unwrap_or_default()
}

/// Whether some pair has its two ends on different GPUs.
fn pairs_cross_gpus(pairs: &[RankPair], pg: &[Option<u32>], dg: &[Option<u32>]) -> bool {
    pairs.iter().any(|p| pg.get(p.p_rank as usize) != dg.get(p.d_rank as usize))
}

fn dedup<T: PartialEq + Copy>(v: &[T]) -> Vec<T> {
    let mut out = Vec::new();
    for x in v {
        if !out.contains(x) {
            out.push(*x);
        }
    }
    out
}

/// Each rank's GPU, or None for host memory.
type RankGpus = Vec<Option<u32>>;

/// Each rank's GPU (None for host memory), checked against the GPUs CUDA sees.
fn gpus_of(a: &TpArgs) -> Result<(RankGpus, RankGpus), CliError> {
    let usage = |m: String| CliError::usage(anyhow!(m));
    let (p, d) = (a.p_tp as usize, a.d_tp as usize);
    for (flag, list, n) in [("--prefill-gpus", &a.prefill_gpus, p), ("--decode-gpus", &a.decode_gpus, d)] {
        if let Some(l) = list {
            if l.len() != n {
                return Err(usage(format!("{flag} lists {} GPUs for {n} ranks", l.len())));
            }
        }
    }
    let vram = [a.prefill_mem, a.decode_mem].contains(&MemKind::Vram);
    if !vram {
        if a.prefill_gpus.is_some() || a.decode_gpus.is_some() {
            return Err(usage(
                "--prefill-gpus/--decode-gpus place GPU memory: add --prefill-mem vram and/or --decode-mem vram".into(),
            ));
        }
        return Ok((vec![None; p], vec![None; d]));
    }
    let devices = crate::cuda::Cuda::open()
        .and_then(|c| c.devices())
        .map_err(|e| usage(format!("GPU memory needs CUDA: {e}")))?;
    crate::cuda::release_all();
    let n = devices.len() as u32;
    let pg: Vec<u32> = a.prefill_gpus.clone().unwrap_or_else(|| (0..a.p_tp).collect());
    let dg: Vec<u32> = a.decode_gpus.clone().unwrap_or_else(|| (a.p_tp..a.p_tp + a.d_tp).collect());
    if let Some(g) = pg.iter().chain(dg.iter()).find(|&&g| g >= n) {
        return Err(usage(format!(
            "GPU {g} does not exist here (CUDA sees {n}){}",
            if a.prefill_gpus.is_none() || a.decode_gpus.is_none() {
                format!(
                    ": by default prefill ranks take GPUs 0..{} and decode ranks the next {}; name them with --prefill-gpus/--decode-gpus (a GPU may hold several ranks)",
                    a.p_tp, a.d_tp
                )
            } else {
                String::new()
            }
        )));
    }
    let side = |mem: MemKind, g: Vec<u32>| -> Vec<Option<u32>> {
        g.into_iter().map(|x| (mem == MemKind::Vram).then_some(x)).collect()
    };
    Ok((side(a.prefill_mem, pg), side(a.decode_mem, dg)))
}

/// What every rank's sweep gets (its rank, GPUs, peer and folder come on top).
fn sweep_args(a: &TpArgs, ops: &[XferOp], lib: &Path) -> Vec<String> {
    let mut v: Vec<String> = Vec::new();
    let mut push = |k: &str, x: String| {
        v.push(k.to_string());
        v.push(x);
    };
    if let Some(m) = &a.kv.model {
        push("--model", m.clone());
    }
    if let Some(m) = &a.kv.model_config {
        push("--model-config", m.display().to_string());
    }
    push("--kv-dtype", a.kv.kv_dtype.clone());
    if let Some(l) = &a.kv.layout {
        push("--layout", l.clone());
    }
    push("--sliding", a.kv.sliding.clone());
    push("--p-tp", a.p_tp.to_string());
    push("--d-tp", a.d_tp.to_string());
    push("--isl", a.isl.iter().map(u64::to_string).collect::<Vec<_>>().join(","));
    push("--block-pattern", a.block_pattern.clone());
    push("--inflight", a.inflight.to_string());
    push("--ops", ops.iter().map(|o| o.to_string()).collect::<Vec<_>>().join(","));
    for (k, v) in &a.backend_params {
        push("--backend-param", format!("{k}={v}"));
    }
    if let Some(t) = &a.ucx_tls {
        push("--ucx-tls", t.clone());
    }
    push("--duration", format!("{:.6}s", a.duration.as_secs_f64()));
    push("--warmup", format!("{:.6}s", a.warmup.as_secs_f64()));
    push("--min-iters", a.min_iters.to_string());
    push("--xfer-timeout", format!("{:.6}s", a.xfer_timeout.as_secs_f64()));
    push("--peer-timeout", format!("{:.6}s", a.peer_timeout.as_secs_f64()));
    push("--link-probe", "0s".into());
    push("--nixl-lib", lib.display().to_string());
    v
}

fn save(path: &Path, r: &mut TpResult) {
    r.updated_at = crate::hostinfo::rfc3339_utc(SystemTime::now());
    match serde_json::to_vec_pretty(r) {
        Ok(d) => {
            if let Err(e) = crate::report::write_atomic(path, &d) {
                eprintln!("tp: cannot write {}: {e}", path.display());
            }
        }
        Err(e) => eprintln!("tp: cannot encode tp.json: {e}"),
    }
}

/// A decode rank's sweep while it runs.
struct RankRun {
    pair: RankPair,
    child: std::process::Child,
    status: Option<ExitStatus>,
    sync: Option<Channel>,
    ready: Option<u64>,
    dir: PathBuf,
}

/// One round: start the prefill targets and the decode sweeps, drive the
/// barrier until every sweep has ended, read their results.
#[allow(clippy::too_many_arguments)]
fn run_round(
    a: &TpArgs,
    r: &TpResult,
    pairs: &[RankPair],
    loc: &crate::locate::NixlLocation,
    backend: BackendKind,
    bt: u32,
    out: &Path,
    name: &str,
    sweep_args: &[String],
) -> anyhow::Result<TpRound> {
    let dir = out.join(name);
    std::fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let t0 = Instant::now();
    let token = crate::peer::new_token();
    let sync_token = crate::peer::new_token();
    // every process of the run on this host: network transports over loopback only
    let mut env = super::sweep::child_env(loc, a.ucx_tls.as_deref(), true);
    if backend == BackendKind::NixlLibfabric {
        super::sweep::log_libfabric_rails(&mut env);
    }
    let idle = format!("{}s", a.peer_timeout.max(a.xfer_timeout).as_secs_f64().ceil() + 30.0);
    let sessions = tp::sessions_per_prefill(a.p_tp, pairs);
    let mut tenv = env.clone();
    tenv.push(("KVPROBE_TOKEN".into(), token.clone()));
    let lib = loc.lib.display().to_string();
    // one target per prefill rank that some decode rank reads (MLA with
    // P_tp > D_tp leaves some unread)
    let mut targets: Vec<Option<(Child, String)>> = Vec::new();
    for p in 0..a.p_tp {
        let n = sessions[p as usize];
        if n == 0 {
            targets.push(None);
            continue;
        }
        let args: Vec<String> = [
            "__target",
            "--listen",
            "127.0.0.1:0",
            "--nixl-lib",
            &lib,
            "--idle-timeout",
            &idle,
            "--sessions",
            &n.to_string(),
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        let log = dir.join(format!("prefill{p}.log"));
        let mut t = child::spawn("target", &args, &tenv, false, Some(&log)).context("cannot start a prefill target")?;
        let lines = t.stdout_lines().ok_or_else(|| anyhow!("no stdout from prefill target {p}"))?;
        match super::sweep::wait_listening(&mut t, &lines, Duration::from_secs(60))? {
            Some(addr) => targets.push(Some((t, addr))),
            None => return Err(anyhow!("interrupted while prefill target {p} was starting")),
        }
    }
    let listener = TcpListener::bind("127.0.0.1:0").context("the barrier's listener")?;
    let sync_addr = listener.local_addr().context("the barrier's address")?.to_string();
    listener.set_nonblocking(true).context("the barrier's listener")?;
    let exe = std::env::current_exe().context("cannot find this binary")?;
    let mut ranks: Vec<RankRun> = Vec::new();
    let read = a.ops.contains(&XferOp::Read);
    for pair in pairs {
        let rdir = dir.join(format!("rank{}", pair.d_rank));
        let log = std::fs::File::create(dir.join(format!("rank{}.log", pair.d_rank)))
            .with_context(|| format!("cannot create the log of rank {}", pair.d_rank))?;
        let mut cmd = Command::new(&exe);
        cmd.arg("sweep")
            .args(sweep_args)
            .args(["--backend", &backend.to_string(), "--kv-block-size", &bt.to_string()])
            .args(["--d-rank", &pair.d_rank.to_string(), "--peer", &peer_of(&targets, pair.p_rank)])
            .args(["--sync", &sync_addr, "-q", "--no-fail", "--out"])
            .arg(&rdir)
            .env("KVPROBE_TOKEN", &token)
            .env("KVPROBE_SYNC_TOKEN", &sync_token)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::from(log));
        // a rank's sweep: READ reads the prefill side's memory, WRITE the decode side's
        let (pm, dm) = (a.prefill_mem, a.decode_mem);
        let (src_mem, dst_mem) = if read { (pm, dm) } else { (dm, pm) };
        cmd.args(["--src-mem", &src_mem.to_string(), "--dst-mem", &dst_mem.to_string()]);
        let pg = r.prefill_gpus[pair.p_rank as usize];
        let dg = r.decode_gpus[pair.d_rank as usize];
        if pg.is_some() || dg.is_some() {
            let (s, d) = if read { (pg, dg) } else { (dg, pg) };
            cmd.args(["--gpu", &format!("{},{}", s.unwrap_or(0), d.unwrap_or(0))]);
        }
        for (k, v) in &env {
            if k == "UCX_NET_DEVICES" {
                cmd.env(k, v);
            }
        }
        child::dies_with_parent(&mut cmd);
        match cmd.spawn() {
            Ok(c) => {
                ranks.push(RankRun { pair: pair.clone(), child: c, status: None, sync: None, ready: None, dir: rdir })
            }
            Err(e) => {
                // what started before ends now, not when this process does
                for k in &mut ranks {
                    crate::child::signal_group(&k.child, libc::SIGKILL);
                    let _ = k.child.wait();
                }
                for (t, _) in targets.iter_mut().flatten() {
                    t.kill();
                }
                return Err(anyhow!("cannot start decode rank {}'s sweep: {e}", pair.d_rank));
            }
        }
    }
    let (barriers, error) = drive_barrier(a, &listener, &sync_token, &mut ranks);
    // the targets end when their last session does
    for (t, _) in targets.iter_mut().flatten() {
        if t.wait_timeout(Duration::from_secs(15)).is_none() {
            t.kill();
        }
    }
    let mut out_ranks = Vec::new();
    let mut rows = Vec::new();
    for k in &ranks {
        let res: Option<SweepResults> =
            std::fs::read_to_string(k.dir.join("results.json")).ok().and_then(|s| serde_json::from_str(&s).ok());
        let exit = k.status.map(child::describe).unwrap_or_else(|| "still running".into());
        let rel = format!("{name}/rank{}", k.pair.d_rank);
        out_ranks.push(tp::rank_of(&k.pair, &rel, exit, res.as_ref()));
        rows.push((k.pair.clone(), res.map(|x| x.rows).unwrap_or_default()));
    }
    Ok(TpRound {
        backend: backend.to_string(),
        block_tokens: bt,
        pairs: pairs.to_vec(),
        dir: name.to_string(),
        ranks: out_ranks,
        points: tp::points(&rows),
        barriers,
        seconds: t0.elapsed().as_secs_f64(),
        error,
    })
}

/// Accepts every rank at the barrier, then starts each timed loop when all
/// live ranks are ready for it; stops the others when a rank ends early,
/// the ranks disagree, or the user interrupts. Waits for every sweep to
/// end. Returns the loops started and why the round stopped, if it did.
fn drive_barrier(a: &TpArgs, listener: &TcpListener, token: &str, ranks: &mut [RankRun]) -> (u64, Option<String>) {
    let mut error: Option<String> = None;
    let mut barriers = 0u64;
    let mut stopping = false;
    let mut stop_at: Option<Instant> = None;
    // a backstop only (a hung rank's own sweep notices first): how long the
    // first rank at a barrier may wait for the last
    let limit = a.peer_timeout
        + a.xfer_timeout.saturating_mul(a.min_iters.saturating_add(4).min(1000) as u32)
        + a.duration
        + a.warmup;
    let mut waiting_since: Option<Instant> = None;
    let mut killed = false;
    loop {
        // new connections: hello with the token and a rank not yet seen
        while let Ok((s, _)) = listener.accept() {
            let _ = s.set_nonblocking(false);
            let Ok(mut ch) = Channel::new(s) else { continue };
            match ch.recv::<SyncMsg>(Some(Duration::from_secs(10)), "a rank's hello") {
                Ok(SyncMsg::Hello { token: t, rank })
                    if !stopping
                        && crate::peer::tokens_match(&t, token)
                        && ranks.iter().any(|k| k.pair.d_rank == rank && k.sync.is_none()) =>
                {
                    if ch.send(&SyncMsg::Welcome, "welcome").is_ok() {
                        if let Some(k) = ranks.iter_mut().find(|k| k.pair.d_rank == rank) {
                            k.sync = Some(ch);
                        }
                    }
                }
                _ => {
                    let reason = if stopping { "the run is stopping" } else { "not a rank of this run" };
                    let _ = ch.send(&SyncMsg::Stop { reason: reason.into() }, "refusal");
                }
            }
        }
        // messages and ended sweeps
        for k in ranks.iter_mut() {
            if k.status.is_none() {
                if let Ok(Some(s)) = k.child.try_wait() {
                    k.status = Some(s);
                    if !s.success() && error.is_none() {
                        error = Some(format!("decode rank {}'s sweep {}", k.pair.d_rank, child::describe(s)));
                    }
                }
            }
            let Some(ch) = k.sync.as_mut() else { continue };
            match ch.readable(Duration::ZERO) {
                Ok(true) => match ch.recv::<SyncMsg>(Some(Duration::from_secs(10)), "a rank's ready") {
                    Ok(SyncMsg::Ready { point }) => k.ready = Some(point),
                    _ => k.sync = None, // closed: the rank is done (or gone)
                },
                Ok(false) => {}
                Err(_) => k.sync = None,
            }
        }
        if a.kill_rank.is_some() && barriers >= 3 && !killed {
            if let Some(k) = ranks.iter_mut().find(|k| Some(k.pair.d_rank) == a.kill_rank && k.status.is_none()) {
                crate::child::signal_group(&k.child, libc::SIGKILL);
                killed = true;
            }
        }
        let all_ended = ranks.iter().all(|k| k.status.is_some());
        if all_ended {
            break;
        }
        if child::interrupted() && !stopping {
            error.get_or_insert_with(|| "interrupted by the user".into());
        }
        // a rank that left while others wait (or any failure): stop the rest
        let waiting = ranks.iter().any(|k| k.ready.is_some());
        let gone: Vec<u32> =
            ranks.iter().filter(|k| k.sync.is_none() && k.status.is_some()).map(|k| k.pair.d_rank).collect();
        if error.is_none() && waiting && !gone.is_empty() {
            error = Some(format!(
                "decode rank{} {} ended while the others waited at the barrier",
                if gone.len() > 1 { "s" } else { "" },
                gone.iter().map(u32::to_string).collect::<Vec<_>>().join(",")
            ));
        }
        if !waiting {
            waiting_since = None;
        } else if waiting_since.is_none() {
            waiting_since = Some(Instant::now());
        }
        if error.is_none() && waiting_since.is_some_and(|t| t.elapsed() > limit) {
            error = Some(format!(
                "no barrier completed within {limit:?}: ranks ready {:?}",
                ranks.iter().map(|k| (k.pair.d_rank, k.ready)).collect::<Vec<_>>()
            ));
        }
        if let Some(e) = &error {
            if !stopping {
                stopping = true;
                stop_at = Some(Instant::now());
                for k in ranks.iter_mut() {
                    if let Some(ch) = k.sync.as_mut() {
                        let _ = ch.send(&SyncMsg::Stop { reason: e.clone() }, "stop");
                    }
                    if child::interrupted() && k.status.is_none() {
                        crate::child::signal_group(&k.child, libc::SIGINT);
                    }
                }
            }
            if stop_at.is_some_and(|t| t.elapsed() > Duration::from_secs(30)) {
                for k in ranks.iter_mut().filter(|k| k.status.is_none()) {
                    crate::child::signal_group(&k.child, libc::SIGKILL);
                    k.status = k.child.wait().ok();
                }
            }
        } else {
            // every rank connected and ready for the same loop: go
            let live: Vec<&RankRun> = ranks.iter().filter(|k| k.status.is_none() || k.sync.is_some()).collect();
            let all_ready = !live.is_empty() && live.iter().all(|k| k.sync.is_some() && k.ready.is_some());
            if all_ready {
                let first = live[0].ready;
                if live.iter().all(|k| k.ready == first) {
                    barriers += 1;
                    waiting_since = None;
                    for k in ranks.iter_mut() {
                        k.ready = None;
                        if let Some(ch) = k.sync.as_mut() {
                            let _ = ch.send(&SyncMsg::Go, "go");
                        }
                    }
                } else {
                    error = Some(format!(
                        "the ranks are out of step: ready for loops {:?}",
                        ranks.iter().map(|k| (k.pair.d_rank, k.ready)).collect::<Vec<_>>()
                    ));
                }
            }
        }
        std::thread::sleep(Duration::from_micros(500));
    }
    (barriers, error)
}
