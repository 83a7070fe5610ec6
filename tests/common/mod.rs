//! Helpers shared by the integration tests. Every test here runs the real
//! binary against the real NIXL that `debug/setup.sh` installs.

#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

/// The kvprobe binary under test (`KVPROBE_BIN` overrides the one cargo
/// built: the GPU machine runs carried test binaries from another path).
pub fn kvprobe() -> Command {
    let bin = std::env::var_os("KVPROBE_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_kvprobe").into());
    let mut c = Command::new(bin);
    c.env("NO_COLOR", "1");
    c
}

/// Fails with a clear message when NIXL is not installed (the README's test
/// command installs it first).
pub fn require_nixl() {
    let out = kvprobe().args(["info", "--json"]).output().expect("run kvprobe info");
    assert!(
        out.status.success(),
        "NIXL is not available to the tests; run debug/setup.sh first (the README's test command does).\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs a quick sweep into `dir` with extra args; returns the output.
pub fn sweep(dir: &Path, extra: &[&str], envs: &[(&str, &str)]) -> Output {
    let mut c = kvprobe();
    c.args(["sweep", "-q", "--duration", "50ms", "--warmup", "10ms", "--min-iters", "3", "--out"]).arg(dir).args(extra);
    for (k, v) in envs {
        c.env(k, v);
    }
    c.output().expect("run kvprobe sweep")
}

/// results.json of a sweep folder.
pub fn results(dir: &Path) -> serde_json::Value {
    let text = std::fs::read_to_string(dir.join("results.json")).expect("results.json exists");
    serde_json::from_str(&text).expect("results.json is valid JSON")
}

/// Text of a file (empty if absent).
pub fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

/// True while the process exists and is not a zombie.
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(s) => s.rsplit_once(')').map(|(_, rest)| !rest.trim_start().starts_with('Z')).unwrap_or(false),
        Err(_) => false,
    }
}

/// Polls `f` every 50 ms until it returns Some or `limit` passes.
pub fn wait_for<T>(limit: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Some(v) = f() {
            return Some(v);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

/// Reads results.json if it parses (it is replaced atomically, but may not exist yet).
pub fn try_results(dir: &Path) -> Option<serde_json::Value> {
    serde_json::from_str(&std::fs::read_to_string(dir.join("results.json")).ok()?).ok()
}

/// Sends a signal to a process this test started (or one of its children, by the PID kvprobe recorded).
pub fn signal(pid: u32, sig: i32) {
    // SAFETY: kill has no memory-safety preconditions.
    unsafe { libc::kill(pid as i32, sig) };
}

/// Whether this machine can make emulated hosts (debug/hosts.sh); prints why not.
pub fn can_make_hosts(test: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let tools = ["ip", "unshare", "tc"].iter().all(|t| {
        Command::new("sh").args(["-c", &format!("command -v {t}")]).output().is_ok_and(|o| o.status.success())
    });
    if !root || !tools {
        eprintln!(
            "SKIPPED {test}: emulated hosts need root and iproute2/util-linux (root: {root}, ip/unshare/tc: {tools})"
        );
        return false;
    }
    true
}

/// Whether emulated hosts can be made and the project venv has Ray (a real
/// Ray cluster of emulated hosts can run); prints why not.
pub fn can_run_ray_cluster(test: &str) -> bool {
    if !can_make_hosts(test) {
        return false;
    }
    let py = Path::new(env!("CARGO_MANIFEST_DIR")).join(".venv/bin/python");
    if !Command::new(&py).args(["-c", "import ray"]).output().is_ok_and(|o| o.status.success()) {
        eprintln!("SKIPPED {test}: no Ray in the project venv (debug/setup.sh installs it unless KVPROBE_NO_RAY=1)");
        return false;
    }
    true
}

/// Runs the bash `script` on a real Ray cluster of `nodes` emulated hosts
/// (debug/ray-cluster.sh), with ROOT (the checkout), KV (the kvprobe under
/// test), D (`dir`, where the script writes its results and the nodes their
/// logs) and `envs` set.
pub fn on_ray_cluster(name: &str, nodes: usize, dir: &Path, script: &str, envs: &[(&str, &std::ffi::OsStr)]) -> Output {
    let root = env!("CARGO_MANIFEST_DIR");
    let mut c = Command::new(format!("{root}/debug/ray-cluster.sh"));
    c.args(["run", &format!("{name}{}", std::process::id() % 100_000), "bash", "-c", script])
        .env("RAY_NODES", nodes.to_string())
        .env("ROOT", root)
        .env("KV", std::env::var_os("KVPROBE_BIN").unwrap_or_else(|| env!("CARGO_BIN_EXE_kvprobe").into()))
        .env("D", dir)
        .env("RAY_LOGS", dir)
        .env("NO_COLOR", "1");
    for (k, v) in envs {
        c.env(k, v);
    }
    c.output().expect("run debug/ray-cluster.sh")
}
